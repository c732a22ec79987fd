"""Choice answers read off the strong model's log-probabilities (cowest_app.core.scoring), on the tiny Llama."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cowest_app.models.base import GenerationOptions
from cowest_app.core.scoring import ANSWER_PREFIX, OptionLikelihood, continuation_logprobs, option_logprobs


# -- scoring with the tiny model ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir: Path):
    from cowest_app.models.local import TransformersBackend

    return TransformersBackend(str(tiny_model_dir), device="cpu")


def conversations(n: int) -> list[list[dict[str, str]]]:
    # Different lengths, so batches really are left-padded.
    return [
        [{"role": "system", "content": "Pick one option."},
         {"role": "user", "content": "Question " + "very " * (3 * i) + f"long number {i}?\nA. yes\nB. no\nC. maybe"}]
        for i in range(n)
    ]


def test_batched_option_scores_equal_one_by_one(tiny_backend) -> None:
    convs = conversations(5)
    letters = [["A", "B", "C"]] * 5
    batched = option_logprobs(tiny_backend, convs, letters, batch_size=8)
    single = option_logprobs(tiny_backend, convs, letters, batch_size=1)
    assert all(math.isfinite(v) and v < 0 for row in batched for v in row)
    for row_b, row_s in zip(batched, single):
        assert row_b == pytest.approx(row_s, abs=1e-4)


def test_multi_token_labels_batched_equal_one_by_one(tiny_backend) -> None:
    convs = conversations(3)
    labels = [["acceptable", "unacceptable", "not sure at all"]] * 3
    assert option_logprobs(tiny_backend, convs, labels, batch_size=8) == [
        pytest.approx(row, abs=1e-4) for row in option_logprobs(tiny_backend, convs, labels, batch_size=1)
    ]


def test_continuation_logprob_is_the_sum_of_token_logprobs(tiny_backend) -> None:
    import torch

    tokenizer, model = tiny_backend.tokenizer, tiny_backend.model
    prompt = tokenizer.encode("The answer is", add_special_tokens=False)
    cont = tokenizer.encode(" not sure", add_special_tokens=False)
    [[got]] = continuation_logprobs(model, tokenizer.pad_token_id, [prompt], [[cont]])
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + cont])).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    want = sum(float(logprobs[len(prompt) - 1 + t, tok]) for t, tok in enumerate(cont))
    assert got == pytest.approx(want, abs=1e-4)


def test_option_scoring_picks_the_option_the_model_is_forced_to_prefer(tiny_backend) -> None:
    tokenizer = tiny_backend.tokenizer
    [forced] = tokenizer.encode(" B", add_special_tokens=False)
    answer_ids = tokenizer.encode(ANSWER_PREFIX, add_special_tokens=False)

    def boost(module, args, output):
        # Make " B" overwhelmingly likely at every position.
        output[..., forced] += 50.0
        return output

    handle = tiny_backend.model.lm_head.register_forward_hook(boost)
    try:
        scores = option_logprobs(tiny_backend, conversations(3), [["A", "B", "C"]] * 3)
    finally:
        handle.remove()
    assert answer_ids  # the options are scored after "Answer:", the prefix the boost must not break
    assert all(max(range(3), key=row.__getitem__) == 1 for row in scores)
    assert all(row[1] > -1e-3 for row in scores)  # P(" B") ≈ 1


def test_option_likelihood_scores_the_probability_of_the_reference(tiny_backend) -> None:
    convs = conversations(3)
    from cowest_app.core.evaluators import SelfAnsweringEvaluator

    evaluator = OptionLikelihood(tiny_backend, batch_size=2)
    assert isinstance(evaluator, SelfAnsweringEvaluator) and evaluator.needs_reference  # declared, not discovered
    answers, scores = evaluator.answer_and_score(convs, 1, ["x", "y", "z"])
    raw = option_logprobs(tiny_backend, convs, [["A", "B", "C"]] * 3)
    for answer, score, row in zip(answers, scores, raw):
        probs = [math.exp(v) for v in row]
        assert score.value == pytest.approx(probs[1] / sum(probs), rel=1e-4) and score.confidence == 1.0
        assert answer == f"{ANSWER_PREFIX} {'ABC'[max(range(3), key=row.__getitem__)]}"
    labelled = OptionLikelihood(tiny_backend, labels=["yes", "no"])
    _, by_label = labelled.answer_and_score(convs[:1], "no", None)
    _, by_index = labelled.answer_and_score(convs[:1], 1, None)
    assert by_label[0].value == pytest.approx(by_index[0].value)
    with pytest.raises(ValueError):
        OptionLikelihood(tiny_backend).answer_and_score(convs[:1], 0, None)  # no options, no labels


def test_complete_batch_batches_greedy_replies(tiny_backend) -> None:
    greedy = GenerationOptions(max_new_tokens=4, temperature=0.0)
    batches = list(tiny_backend.complete_batch(conversations(3), greedy, batch_size=2))
    assert [len(b) for b in batches] == [2, 1] and all(isinstance(r, str) for b in batches for r in b)
    # Greedy: the same prompt alone gives the same reply.
    assert list(tiny_backend.complete_batch(conversations(1), greedy)) == [batches[0][:1]]
