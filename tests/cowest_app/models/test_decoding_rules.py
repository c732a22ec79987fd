"""Anti-loop decoding options: stop rules, repetition penalty and no-repeat n-grams,
as pure functions and as honoured by the local and remote backends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cowest_app.models.base import GenerationOptions, apply_stop_rules, cut_at_stop, options_from, stop_index
from cowest_app.models.local import TransformersBackend, _ReplyNoRepeatNGram
from cowest_app.models.remote import InferenceClientBackend
from tests.fakes.openai_server import serve_openai

DRAFT = GenerationOptions(stop_after_line="Draft answer:")
MESSAGES = [{"role": "user", "content": "Name a primary colour."}]


# -- pure stop rules -------------------------------------------------------
def test_defaults_leave_every_rule_off():
    opts = GenerationOptions()
    assert (opts.repetition_penalty, opts.no_repeat_ngram_size, opts.stop, opts.stop_after_line) == (1.0, 0, (), None)
    assert not opts.has_stop_rules


def test_options_from_keyword_arguments_accept_a_list_of_stops_and_reject_bad_values():
    assert options_from({"stop": ["\n\n", "Question:"]}).stop == ("\n\n", "Question:")
    with pytest.raises(ValueError):
        GenerationOptions(stop=("",))
    with pytest.raises(ValueError):
        GenerationOptions(no_repeat_ngram_size=-1)


@pytest.mark.parametrize("text, cut", [
    ("Background: facts.\nDraft answer: Vitamin C.\nQuestion: next", "Background: facts.\nDraft answer: Vitamin C."),
    ("Background: facts.\n**Draft Answer:** Vitamin C.\n\nmore", "Background: facts.\n**Draft Answer:** Vitamin C."),
    ("Background: x\nDraft answer:\n\nVitamin C\nloop loop", "Background: x\nDraft answer:\n\nVitamin C"),
])
def test_the_draft_ends_after_its_answer_line(text, cut):
    assert cut_at_stop(text, DRAFT) == cut


def test_no_cut_while_the_answer_line_is_unfinished():
    assert stop_index("Background: facts.\nDraft answer: Vitamin", DRAFT) is None
    assert stop_index("Background: the draft answer: is pending\n", DRAFT) is None  # not at a line start


def test_stop_strings_cut_before_the_earliest():
    opts = GenerationOptions(stop=("END", "\n\n"))
    assert cut_at_stop("one\n\ntwo END", opts) == "one"


def test_stream_never_shows_a_stop_string_split_across_chunks():
    opts = GenerationOptions(stop=("Question:",))
    chunks = ["Vitamin C.", " Ques", "tion: what", " next"]
    assert list(apply_stop_rules(chunks, opts)) == ["Vitamin C.", " "]
    # A held-back prefix that turns out not to be a stop string is released.
    assert "".join(apply_stop_rules(["a Ques", "t b"], opts)) == "a Quest b"


def test_stream_stops_pulling_and_closes_its_source_once_a_rule_fires():
    pulled: list[str] = []
    closed: list[bool] = []

    def source():
        try:
            for chunk in ["Background: b\n", "Draft answer: C\n", "Background: loop\n", "never"]:
                pulled.append(chunk)
                yield chunk
        finally:
            closed.append(True)

    assert "".join(apply_stop_rules(source(), DRAFT)) == "Background: b\nDraft answer: C"
    assert pulled == ["Background: b\n", "Draft answer: C\n"] and closed == [True]


# -- local backend ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> TransformersBackend:
    return TransformersBackend(str(tiny_model_dir))


def _reply_ids(backend: TransformersBackend, opts: GenerationOptions) -> list[int]:
    inputs = backend.encode(MESSAGES)
    width = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        out = backend.model.generate(**inputs, **backend.generation_kwargs(opts, width),
                                     stopping_criteria=backend.stopping_criteria(opts, width))
    return out[0, width:].tolist()


def test_stop_string_ends_a_local_generation_early_and_is_not_shown(tiny):
    full = "".join(tiny.generate(MESSAGES, max_new_tokens=24))
    words = full.split()
    stop = next(w for w in words[len(words) // 2:] if full.find(w) > 0)
    opts = GenerationOptions(max_new_tokens=24, stop=(stop,))
    assert "".join(tiny.generate(MESSAGES, **vars(opts))) == full[:full.find(stop)]
    # The generation itself stopped (the criterion fired), not just its text.
    assert len(_reply_ids(tiny, opts)) < 24
    assert tiny.sample(MESSAGES, 1, **vars(opts)) == [full[:full.find(stop)]]


@pytest.fixture(scope="module")
def looping(tiny_model_dir: Path) -> TransformersBackend:
    """A tiny model that repeats its last token forever, as a small model loops.

    With every attention and MLP output zeroed the last hidden state is the
    last token's embedding, and the tied head scores that token highest.
    """
    backend = TransformersBackend(str(tiny_model_dir))
    model = backend.model
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.copy_(model.model.embed_tokens.weight)
    return backend


def test_no_repeat_ngram_breaks_a_loop_within_the_reply(looping):
    plain = _reply_ids(looping, GenerationOptions(max_new_tokens=30))
    assert len(set(plain)) == 1  # the loop
    ruled = _reply_ids(looping, GenerationOptions(max_new_tokens=30, no_repeat_ngram_size=2))
    bigrams = list(zip(ruled, ruled[1:]))
    assert len(bigrams) == 29 and len(set(bigrams)) == len(bigrams)


def test_repetition_penalty_breaks_a_loop(looping):
    penalised = _reply_ids(looping, GenerationOptions(max_new_tokens=30, repetition_penalty=3.0))
    assert len(set(penalised)) > 10


def test_no_repeat_ngram_ignores_the_prompt():
    # Prompt [5, 6, 7]; reply so far [5, 6, 9, 5]. The stock rule would ban 6 (prompt "5 6")
    # after the final 5; within the reply "5 6" exists too, so 6 is banned -- but 7 never is.
    rule = _ReplyNoRepeatNGram(size=2, prompt_len=3)
    ids = torch.tensor([[5, 6, 7, 5, 6, 9, 5]])
    scores = rule(ids, torch.zeros(1, 10))
    assert scores[0, 6] == float("-inf") and scores[0, 7] == 0
    # A bigram only the prompt holds stays allowed: after 6, "6 7" is in the prompt, not the reply.
    scores = rule(torch.tensor([[5, 6, 7, 5, 6]]), torch.zeros(1, 10))
    assert torch.isfinite(scores).all()


def test_assisted_prompt_lookup_honours_stop_rules(tiny_model_dir: Path, tiny):
    looked_up = TransformersBackend(str(tiny_model_dir), prompt_lookup_tokens=10)
    full = "".join(tiny.generate(MESSAGES, max_new_tokens=24))
    stop = full.split()[len(full.split()) // 2]
    opts = dict(max_new_tokens=24, stop=(stop,))
    assert "".join(looked_up.generate(MESSAGES, **opts)) == "".join(tiny.generate(MESSAGES, **opts))


# -- remote backend -----------------------------------------------------------
def test_remote_sends_stop_and_a_frequency_penalty_and_enforces_the_answer_line():
    reply = "Background: b\nDraft answer: C\nBackground: loop again\n"
    with serve_openai(reply=reply) as server:
        backend = InferenceClientBackend(model="m", base_url=server.base_url)
        text = "".join(backend.generate(MESSAGES, stop=("Question:",), repetition_penalty=1.3,
                                        stop_after_line="Draft answer:"))
    body = server.requests[0].body
    assert body["stop"] == ["Question:"] and body["frequency_penalty"] == pytest.approx(0.3)
    assert text == "Background: b\nDraft answer: C"


def test_remote_sends_no_penalty_or_stop_by_default():
    with serve_openai() as server:
        list(InferenceClientBackend(model="m", base_url=server.base_url).generate(MESSAGES))
    body = server.requests[0].body
    assert "stop" not in body and "frequency_penalty" not in body
