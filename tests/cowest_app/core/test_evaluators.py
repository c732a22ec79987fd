"""Evaluators: the task metric, the strong model as judge over HTTP, the weak model's log-probs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cowest_app.core.evaluators import (
    EVALUATORS,
    ReferenceEvaluator,
    StrongJudge,
    WeakJudge,
    answer_token_ids,
    make_evaluator,
    next_token_logprobs,
    reference_text,
    verify_messages,
)
from cowest_app.models.local import TransformersBackend
from cowest_app.models.remote import InferenceClientBackend
from tests.fakes.openai_server import closed_port_url, serve_openai
from tests.served import served_pack

CITIES = ["Paris", "London", "Berlin", "Rome"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> TransformersBackend:
    return TransformersBackend(str(tiny_model_dir))


def remote(base_url: str) -> InferenceClientBackend:
    return InferenceClientBackend(model="judge/model", base_url=base_url, timeout_s=5.0)


def test_reference_evaluator() -> None:
    evaluator = ReferenceEvaluator("multiple_choice", CITIES)
    scores = evaluator.score_answers("Capital of the UK?", ["Answer: B", "Paris", "not sure"], reference=1)
    assert [s.value for s in scores] == [1.0, 0.0, 0.0]
    assert {(s.confidence, s.evaluator) for s in scores} == {(1.0, "reference")}
    # Per-question options override the evaluator's.
    other = evaluator.score_answers("?", ["Answer: A"], reference=0, options=["Tokyo", "Kyoto"])
    assert other[0].value == 1.0
    with pytest.raises(ValueError, match="reference"):
        evaluator.score_answers("?", ["x"])


def test_reference_text() -> None:
    assert reference_text(1, CITIES) == "B. London"
    assert reference_text(["NYC", "New York"]) == "NYC / New York"
    assert reference_text(None) is None


def test_strong_judge_parses_the_score() -> None:
    with serve_openai(reply="Score: 8/10") as server:
        judge = StrongJudge(remote(server.base_url))
        scores = judge.score_answers("Capital of the UK?", ["London", "Paris"], reference=1, options=CITIES)
    assert [s.value for s in scores] == [pytest.approx(7 / 9)] * 2
    assert all(s.confidence == 1.0 and s.evaluator == "strong_judge" and s.detail == "Score: 8/10" for s in scores)
    first = server.requests[0].body
    assert first["temperature"] == 0.0
    assert "Score: N/10" in first["messages"][0]["content"]
    assert "Reference answer:\nB. London" in first["messages"][1]["content"]
    assert "Answer to grade:\nLondon" in first["messages"][1]["content"]


def test_strong_judge_skips_unparsable_replies() -> None:
    replies = iter(["Score: 3/10", "I refuse to grade this.", "9"])
    with serve_openai(reply=lambda messages: next(replies)) as server:
        scores = StrongJudge(remote(server.base_url)).score_answers("Q?", ["a", "b", "c"])
    assert [s.value for s in scores] == [pytest.approx(2 / 9), None, pytest.approx(8 / 9)]
    assert scores[1].confidence == 0.0 and scores[1].detail == "I refuse to grade this."


def test_strong_judge_failed_call_is_a_skipped_answer() -> None:
    [score] = StrongJudge(remote(closed_port_url())).score_answers("Q?", ["a"])
    assert score.value is None and "judge call failed" in score.detail


def test_answer_token_ids_are_single_distinct_tokens(tiny: TransformersBackend) -> None:
    yes, no = answer_token_ids(tiny.tokenizer, "Yes"), answer_token_ids(tiny.tokenizer, "No")
    assert yes and no and not set(yes) & set(no)
    assert all(tiny.tokenizer.decode([i]).strip().lower() == "yes" for i in yes)


def test_batched_logprobs_match_one_at_a_time(tiny: TransformersBackend) -> None:
    conversations = [verify_messages("Q?", "short"), verify_messages("A much longer question here?", "a longer answer " * 5)]
    batched = next_token_logprobs(tiny, conversations, batch_size=8)
    alone = torch.cat([next_token_logprobs(tiny, [c]) for c in conversations])
    assert batched.shape == (2, tiny.model.config.vocab_size)
    # Left padding with explicit positions: each row is what it would be alone.
    assert torch.allclose(batched, alone, atol=1e-4)
    assert torch.allclose(batched.exp().sum(-1), torch.ones(2), atol=1e-4)


def test_weak_judge_scores_are_probabilities(tiny: TransformersBackend) -> None:
    judge = WeakJudge(tiny)
    scores = judge.score_answers("Capital of the UK?", ["London", "Paris", ""], reference="London")
    assert len(scores) == 3
    for s in scores:
        assert 0.0 <= s.value <= 1.0 and s.evaluator == "weak_judge"
        assert s.confidence == pytest.approx(abs(2 * s.value - 1))


def test_weak_judge_pairwise_is_position_bias_free(tiny: TransformersBackend) -> None:
    judge = WeakJudge(tiny)
    ab = judge.pair_preference("Capital of the UK?", "London", "Paris, definitely Paris.")
    ba = judge.pair_preference("Capital of the UK?", "Paris, definitely Paris.", "London")
    assert 0.0 <= ab <= 1.0
    assert ab + ba == pytest.approx(1.0, abs=1e-5)
    assert judge.pair_confidence("Capital of the UK?", "London", "Paris, definitely Paris.") == pytest.approx(ab)
    assert judge.pair_preference("Q?", "same", "same") == pytest.approx(0.5, abs=1e-5)


def test_weak_judge_on_nf4(tiny_model_dir: Path) -> None:
    nf4 = TransformersBackend(str(tiny_model_dir), load_4bit=True)
    [score] = WeakJudge(nf4).score_answers("Q?", ["A."])
    assert 0.0 <= score.value <= 1.0


def test_make_evaluator(tiny: TransformersBackend) -> None:
    assert set(EVALUATORS) == {"reference", "strong_judge", "weak_judge", "weak_teacher"}
    assert isinstance(make_evaluator("reference", task_type="label", options=["yes", "no"]), ReferenceEvaluator)
    assert isinstance(make_evaluator("weak_judge", weak=tiny), WeakJudge)
    judge = make_evaluator("strong_judge", strong=remote(closed_port_url()), max_new_tokens=8)
    assert isinstance(judge, StrongJudge) and judge.max_new_tokens == 8
    with pytest.raises(ValueError, match="strong"):
        make_evaluator("strong_judge", weak=tiny)
    with pytest.raises(ValueError, match="unknown"):
        make_evaluator("oracle")


def test_evaluator_abilities_are_declared_not_discovered() -> None:
    from cowest_app.loop.collect import collect_for_question
    from cowest_app.core.evaluators import DraftJudge, Evaluator, PairJudge, WeakTeacher, SelfAnsweringEvaluator, TextEvaluator

    assert issubclass(ReferenceEvaluator, TextEvaluator) and ReferenceEvaluator.needs_reference
    assert issubclass(StrongJudge, TextEvaluator) and not StrongJudge.needs_reference
    assert issubclass(WeakJudge, TextEvaluator) and issubclass(WeakJudge, PairJudge)
    assert issubclass(WeakTeacher, DraftJudge) and issubclass(WeakTeacher, PairJudge) and not WeakTeacher.needs_reference
    assert not issubclass(StrongJudge, PairJudge) and not issubclass(ReferenceEvaluator, SelfAnsweringEvaluator)
    with pytest.raises(TypeError):  # an ability is a method to implement, not an optional attribute
        type("NoScores", (TextEvaluator,), {"name": "x"})()

    class LooksSelfAnswering:  # has the method, declares nothing: the collector does not guess
        name = "duck"

        def answer_and_score(self, conversations, reference, options):
            raise AssertionError("never called")

    with pytest.raises(TypeError, match="not a TextEvaluator, SelfAnsweringEvaluator or DraftJudge"):
        collect_for_question("Q?", "general", None, None, LooksSelfAnswering(),  # type: ignore[arg-type]
                             prompt_set=served_pack("general").prompt_set())
    assert not isinstance(LooksSelfAnswering(), Evaluator)
