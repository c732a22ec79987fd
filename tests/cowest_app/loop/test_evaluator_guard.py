"""The training guard: labels from an evaluator measured to agree with the truth too rarely are not trained on."""

from __future__ import annotations

import logging

import json
from dataclasses import replace
from pathlib import Path

import pytest

from cowest_app.config import ConfigError, from_env
from cowest_app.core.store import PreferencePair
from cowest_app.loop import agreement
from cowest_app.loop.agreement import agreement_text, guard_pairs, load_agreement
from cowest_app.loop.registry import AdapterRegistry
from cowest_app.loop.training_job import TrainingJob
from tests.cowest_app.loop.test_training_job import setup  # noqa: F401 (the tiny app: a fixture)

PROMPT = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Question: Is 7 prime?"}]


def pair(evaluator: str, n: int) -> PreferencePair:
    return PreferencePair(domain="general", question=f"q{n}", prompt=PROMPT, chosen=f"yes {n}", rejected=f"no {n}",
                          margin=0.5, evaluator=evaluator, confidence=0.9, chosen_score=1.0, rejected_score=0.0)


def write_agreement(path: Path, **values: float) -> Path:
    rows = {name: {"agreement": value, "ci_low": value - 10, "ci_high": value + 10, "n": 40} for name, value in values.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pack": "general", "evaluators": rows}))
    return path


def test_load_agreement_reads_the_pack_file_and_tolerates_none_or_damage(tmp_path: Path) -> None:
    assert load_agreement(tmp_path) == {}
    write_agreement(tmp_path / agreement.AGREEMENT_FILE, weak_judge=52.5, weak_teacher=71.0)
    assert load_agreement(tmp_path) == {"weak_judge": 52.5, "weak_teacher": 71.0}
    (tmp_path / agreement.AGREEMENT_FILE).write_text("{not json")
    assert load_agreement(tmp_path) == {}


def test_agreement_text() -> None:
    measured = {"weak_judge": 52.54}
    assert agreement_text("weak_judge", measured) == "52.5%"
    assert agreement_text("strong_judge", measured) == "not measured"
    assert agreement_text("reference", measured).startswith("the truth")


def test_guard_holds_back_only_evaluators_measured_below_the_minimum() -> None:
    pairs = [pair("weak_judge", 1), pair("reference", 2), pair("strong_judge", 3), pair("human", 4)]
    kept, why = guard_pairs(pairs, {"weak_judge": 52.5, "strong_judge": 61.0}, 60)
    assert [p.evaluator for p in kept] == ["reference", "strong_judge", "human"]
    assert why and "1 pairs from weak_judge (measured agreement 52.5%)" in why and "=60%" in why
    assert guard_pairs(pairs, {"weak_judge": 52.5}, 0) == (pairs, None)  # 0 turns the guard off
    assert guard_pairs(pairs, {}, 60) == (pairs, None)  # nothing measured: nothing to hold back on


def test_the_setting_is_a_percentage() -> None:
    assert from_env({}).min_evaluator_agreement == 60.0
    assert from_env({"COWEST_MIN_EVALUATOR_AGREEMENT": "55"}).min_evaluator_agreement == 55.0
    with pytest.raises(ConfigError, match="0..100"):
        from_env({"COWEST_MIN_EVALUATOR_AGREEMENT": "0.6e3"})


@pytest.fixture
def measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The trained pack's measurement, in a temporary file instead of the repository's pack.
    path = tmp_path / "agreement.json"
    monkeypatch.setattr(agreement, "AGREEMENT_FILE", path)  # absolute: pack_root / path is path
    return path


def test_a_run_with_only_distrusted_labels_does_not_train_and_says_why(setup, measured: Path) -> None:  # noqa: F811
    config, service = setup
    config = replace(config, feedback_file=None)
    for n in range(4):
        service.store.log_pair(pair("weak_judge", n))
    write_agreement(measured, weak_judge=52.5)
    registry = AdapterRegistry(config.pack_adapters_dir("general"))
    result = TrainingJob(config, service, registry).run_cycle(force=True)
    assert result.startswith("not training: 4 pairs from weak_judge (measured agreement 52.5%) held back"), result
    assert registry.versions() == []  # nothing trained, nothing recorded


def test_distrusted_pairs_are_left_out_of_a_run_that_trains(setup, measured: Path) -> None:  # noqa: F811
    config, service = setup
    config = replace(config, feedback_file=None)
    for n in range(3):
        service.store.log_pair(pair("weak_judge", n))
    for n in range(3, 5):
        service.store.log_pair(pair("strong_judge", n))
    write_agreement(measured, weak_judge=52.5, strong_judge=75.0)
    registry = AdapterRegistry(config.pack_adapters_dir("general"))
    result = TrainingJob(config, service, registry).run_cycle()
    assert result.startswith("v1 promoted"), result
    assert registry.get("v1").n_pairs == 2  # the two strong-judge pairs only


def test_the_job_labels_logged_questions_with_the_weak_teacher(setup, tiny_adapters) -> None:  # noqa: F811
    """COWEST_FEEDBACK_EVALUATOR=weak_teacher: the pack's adapter slot labels the drafts of a logged question."""
    config, service = setup
    config = replace(config, feedback_file=None, feedback_evaluator="weak_teacher", feedback_min_confidence=0.0)
    service.weak.swap_adapter(str(tiny_adapters["v1"]), "v1", "general")
    list(service.ask("Is 7 prime?", "general"))
    job = TrainingJob(config, service, AdapterRegistry(config.pack_adapters_dir("general")))
    assert job.evaluator_options("weak_teacher")["slot"] == "general"
    assert job.collect() == 1
    [stored] = service.store.iter_pairs(trainable_only=False)
    assert stored.evaluator == "weak_teacher" and 0.5 <= stored.confidence <= 1.0
    assert stored.prompt == job.prompt_set.draft(stored.question) and len(stored.details["rewards"]) == 4


def test_before_the_pack_has_an_adapter_the_weak_judge_labels_instead(setup, caplog) -> None:  # noqa: F811
    """The weak teacher has nothing to read until the pack's first adapter: no question is lost to an error."""
    config, service = setup
    config = replace(config, feedback_file=None, feedback_evaluator="weak_teacher", feedback_min_margin=0.0,
                     feedback_min_confidence=0.0)
    assert "general" not in service.weak.adapter_versions()
    list(service.ask("Is 9 prime?", "general"))
    job = TrainingJob(config, service, AdapterRegistry(config.pack_adapters_dir("general")))
    assert job.judge_name() == "weak_judge"
    with caplog.at_level(logging.INFO):
        job.collect()
    assert "judging with weak_judge" in caplog.text and "skipped a question" not in caplog.text
    assert {p.evaluator for p in service.store.iter_pairs(trainable_only=False)} <= {"weak_judge"}
