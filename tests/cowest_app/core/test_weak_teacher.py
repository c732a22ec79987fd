"""The implicit-reward teacher: a tiny model whose DPO adapter learned a preference labels pairs with it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cowest_app.core.evaluators import (
    EVALUATORS,
    WeakTeacher,
    implicit_rewards,
    make_evaluator,
    policy_and_reference_logprobs,
    preference,
    reply_ids,
)
from cowest_app.core.prompts import PromptSet
from cowest_app.core.store import LogStore
from cowest_app.loop.collect import collect_for_question
from cowest_app.models.base import AdapterSlot, GenerationOptions
from cowest_app.models.local import TransformersBackend
from tests.training.test_dpo import tiny_recipe
from training.dpo import main as dpo_main

SLOT = "pack"
PROMPT = [{"role": "system", "content": "Answer in one word."},
          {"role": "user", "content": "Question 99: is this a good idea?"}]


@pytest.fixture(scope="module")
def preferring_yes(tmp_path_factory, tiny_model_dir: Path) -> Path:
    """A LoRA adapter trained by real DPO steps to prefer "yes" over "no" (as in tests/training/test_dpo.py)."""
    work = tmp_path_factory.mktemp("teacher-dpo")
    config = tiny_recipe(tiny_model_dir, work, max_steps=16, learning_rate=1e-2, beta=0.5, per_device_train_batch_size=2)
    metrics = dpo_main(config)
    assert metrics["rewards/accuracies"] == 1.0  # the adapter really learned the preference
    return Path(config.output_dir)


@pytest.fixture(scope="module")
def teacher_backend(tiny_model_dir: Path, preferring_yes: Path) -> TransformersBackend:
    return TransformersBackend(str(tiny_model_dir), adapters={SLOT: AdapterSlot(str(preferring_yes), "v1")})


def draft_prompt(question: str) -> list[dict[str, str]]:
    return [PROMPT[0], {"role": "user", "content": question}]


def test_labels_a_pair_the_way_the_adapter_learned(teacher_backend: TransformersBackend) -> None:
    teacher = make_evaluator("weak_teacher", teacher_backend, slot=SLOT, beta=0.5, draft_prompt=draft_prompt)
    assert isinstance(teacher, WeakTeacher) and "weak_teacher" in EVALUATORS
    yes, no = teacher.draft_rewards(PROMPT, ["yes", "no"])
    assert yes > no
    right = teacher.pair_confidence(PROMPT[1]["content"], "yes", "no")
    wrong = teacher.pair_confidence(PROMPT[1]["content"], "no", "yes")
    assert right > 0.6 and right == pytest.approx(1 - wrong)


def test_identical_candidates_give_half(teacher_backend: TransformersBackend) -> None:
    teacher = WeakTeacher(teacher_backend, SLOT, draft_prompt=draft_prompt)
    assert teacher.pair_confidence("Anything?", "maybe so", "maybe so") == pytest.approx(0.5, abs=1e-6)


def test_reward_is_beta_times_the_log_ratio(teacher_backend: TransformersBackend) -> None:
    [policy], [reference] = policy_and_reference_logprobs(teacher_backend, SLOT, [PROMPT], [["yes", "no"]])
    assert policy[0] != pytest.approx(reference[0])  # the adapter changes the model; disabling it removes that
    rewards = WeakTeacher(teacher_backend, SLOT, beta=0.25).draft_rewards(PROMPT, ["yes", "no"])
    assert rewards == pytest.approx(implicit_rewards(policy, reference, 0.25), abs=1e-5)
    assert rewards == pytest.approx([0.25 * (p - r) for p, r in zip(policy, reference)], abs=1e-5)


def test_reply_ids_end_with_the_end_of_turn(teacher_backend: TransformersBackend) -> None:
    prompt_ids, ids = reply_ids(teacher_backend, PROMPT, "yes")
    tokenizer = teacher_backend.tokenizer
    assert prompt_ids == teacher_backend.encode(PROMPT)["input_ids"][0].tolist()
    assert tokenizer.decode(ids).startswith("yes") and tokenizer.eos_token in tokenizer.decode(ids)


def test_preference_is_a_stable_sigmoid() -> None:
    assert preference(1.0, 1.0) == 0.5
    assert preference(800.0, 0.0) == pytest.approx(1.0) and preference(0.0, 800.0) == pytest.approx(0.0)


def test_no_adapter_is_a_clear_error(tiny_model_dir: Path) -> None:
    bare = TransformersBackend(str(tiny_model_dir))
    with pytest.raises(ValueError, match="needs a DPO adapter in slot 'pack'.*none"):
        WeakTeacher(bare, SLOT).draft_rewards(PROMPT, ["yes", "no"])
    with pytest.raises(ValueError, match="needs the weak model"):
        make_evaluator("weak_teacher", None)
    with pytest.raises(ValueError, match="transformers weak model"):
        WeakTeacher(object(), SLOT)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="drafting prompt"):
        WeakTeacher(bare, SLOT).pair_confidence("q", "a", "b")


def test_collects_a_pair_without_the_strong_model(teacher_backend: TransformersBackend, tmp_path: Path) -> None:
    """A DraftJudge labels K sampled drafts itself: the stored pair is the teacher's, the strong model never runs."""
    store = LogStore(tmp_path / "log.sqlite3")
    prompt_set = PromptSet(draft=draft_prompt, refine=draft_prompt, direct=draft_prompt)
    teacher = WeakTeacher(teacher_backend, SLOT)
    opts = GenerationOptions(max_new_tokens=6, temperature=1.0, seed=3, adapter=SLOT)
    result = collect_for_question("Is it good?", "toy", teacher_backend, None, teacher, 4,  # type: ignore[arg-type]
                                  min_confidence=0.0, weak_opts=opts, store=store, prompt_set=prompt_set)
    assert result.finals == [] and len(result.drafts) == 4
    if result.pair is None:  # four identical drafts: no pair, and it says why
        assert "same text" in (result.reason or "")
        return
    [stored] = store.iter_pairs()
    assert stored.evaluator == "weak_teacher" and stored.prompt == draft_prompt(result.question)
    rewards = dataclasses.asdict(stored)["details"]["rewards"]
    assert stored.confidence == pytest.approx(preference(max(rewards), min(r for r, d in zip(rewards, result.drafts)
                                                                             if d == stored.rejected)))
