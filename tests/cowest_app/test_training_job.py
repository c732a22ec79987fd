"""The self-improvement loop end to end on CPU with a tiny model.

questions with references -> collaborative feedback -> pairs -> real DPO steps
in a child process -> new adapter version -> evaluation gate -> hot swap ->
the next answer names the new version -> the push arrives at a local Hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from cowest_app.config import AppConfig, Secrets
from cowest_app.control import AdminError, TrainingControl
from cowest_app.hub import HubPublisher
from cowest_app.models.local import TransformersBackend
from cowest_app.models.remote import InferenceClientBackend
from cowest_app.registry import AdapterRegistry
from cowest_app.service import CollabService
from cowest_app.store import Feedback, LogStore
from cowest_app.training_job import TrainingJob, load_items
from tests.fakes.hub_server import serve_hub
from tests.fakes.openai_server import serve_openai

ROOT = Path(__file__).parents[2]
QUESTIONS = [
    ("What is the capital of France?", "Paris"),
    ("What is the chemical symbol for gold?", "Au"),
    ("How many legs does a spider have?", "8"),
    ("Which planet is called the Red Planet?", "Mars"),
]


def strong_reply(messages: list[dict]) -> str:
    """A stand-in strong model whose answer depends on the weak draft it gets:
    half the drafts lead it to the right answer, so drafts differ in influence."""
    user = messages[-1]["content"]
    question = user.split("\n", 1)[0].removeprefix("Question: ")
    reference = dict(QUESTIONS).get(question, "unknown")
    if "\nNotes" not in user:  # the refinement prompt carries the draft as notes
        return "I am not sure."
    draft = user.split('"""')[1]
    helpful = hashlib.sha256(draft.encode()).digest()[0] % 2 == 0
    return f"The answer is {reference}." if helpful else "I am not sure."


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def setup(tmp_path: Path, tiny_model_dir: Path):
    items = [{"question": q, "domain": "general", "reference": a, "task_type": "short_answer"} for q, a in QUESTIONS]
    config = AppConfig(
        weak_model=str(tiny_model_dir),
        weak_4bit=False,
        data_dir=tmp_path / "data",
        weak_max_new_tokens=8,
        strong_max_new_tokens=16,
        feedback_k=4,
        feedback_min_margin=0.1,
        feedback_file=write_jsonl(tmp_path / "feedback.jsonl", items * 3),
        collect_max_questions=12,
        eval_file=write_jsonl(tmp_path / "eval.jsonl", items),
        eval_tolerance=1.0,  # the gate itself is tested below; here the candidate must pass
        train_min_pairs=2,
        train_recipe=ROOT / "training/recipes/dpo-tiny.yaml",
        secrets=Secrets(admin_secret="s3cret", hf_token="hf_tok_never_shown"),
        packs=("packs/general",),  # the job trains the general pack's adapter
    )
    with serve_openai(reply=strong_reply) as server:
        weak = TransformersBackend(str(tiny_model_dir))
        strong = InferenceClientBackend(model="strong", base_url=server.base_url)
        service = CollabService(config, weak, strong, LogStore(config.db_path))
        yield config, service


def test_full_cycle_trains_gates_swaps_and_pushes(setup, monkeypatch):
    config, service = setup
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with serve_hub(require_token="hf_tok_never_shown") as hub:
        publisher = HubPublisher("cowest/weak-adapter", "hf_tok_never_shown", hub.endpoint,
                                 queue_path=config.data_dir / "hub_queue.json", sleep=lambda s: None)
        publisher.start()
        registry = AdapterRegistry(config.pack_adapters_dir("general"))
        job = TrainingJob(config, service, registry, publisher)

        result = job.run_cycle()

        assert result.startswith("v1 promoted"), (result, job.snapshot())
        pairs = list(service.store.iter_pairs())
        assert len(pairs) >= config.train_min_pairs
        assert {p.evaluator for p in pairs} == {"reference"}
        assert all(p.adapter_version == "base" and p.chosen != p.rejected for p in pairs)
        v1 = registry.get("v1")
        assert v1.status == "active" and v1.n_pairs == len(pairs) and v1.parent is None
        assert v1.metrics["steps"] == 3 and "candidate_score" in v1.metrics
        assert (registry.path("v1") / "adapter_model.safetensors").is_file()
        assert (registry.path("v1") / "resolved_config.yaml").is_file()
        assert len((registry.path("v1") / "progress.jsonl").read_text().splitlines()) >= 3

        # Hot-swapped: the next answer names the new version, and the log records it.
        last = list(service.ask("What is the capital of France?", "general"))[-1]
        assert last.snapshot.stages["weak_draft"].info["adapter_version"] == "v1"
        assert service.store.get_interaction(last.interaction_id).adapter_version == "v1"

        # The push arrives at the Hub stand-in as a tagged commit with a model card.
        assert publisher.wait_idle(timeout=60), publisher.status()
        repo = hub.repo("cowest/weak-adapter", "model")
        files = repo.resolve("v1").files
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
        assert b"v1" in files["README.md"] and b"hf_tok_never_shown" not in files["README.md"]
        publisher.stop()

    # A second cycle with nothing new waits instead of training.
    assert job.run_cycle() == "no new trainable pairs"


def test_gate_rejects_a_candidate_that_is_worse(setup):
    config, service = setup
    config = replace(config, eval_tolerance=-1.0)  # must beat the active adapter by a full point: impossible
    registry = AdapterRegistry(config.pack_adapters_dir("general"))
    job = TrainingJob(config, service, registry)
    result = job.run_cycle()
    assert result.startswith("v1 rejected"), result
    assert registry.get("v1").status == "rejected" and registry.active() is None
    assert service.weak.adapter_versions() == {}


def test_human_votes_become_pairs(setup):
    config, service = setup
    config = replace(config, feedback_file=None, collect_max_questions=1)
    ids = [list(service.ask("Is 7 prime?", "general"))[-1].interaction_id for _ in range(2)]
    # Greedy drafts of the same question are equal; make the second interaction differ.
    service.store.log_feedback(Feedback(ids[0], rating=1))
    service.store.log_feedback(Feedback(ids[1], rating=-1))
    job = TrainingJob(config, service, AdapterRegistry(config.pack_adapters_dir("general")))
    job.collect()
    human = [p for p in service.store.iter_pairs(trainable_only=False) if p.evaluator == "human"]
    assert all(set(p.interaction_ids) == set(ids) for p in human)
    job.collect()  # idempotent: the same votes do not make the pair twice
    assert len([p for p in service.store.iter_pairs(trainable_only=False) if p.evaluator == "human"]) == len(human)


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.2)


def long_running(config: AppConfig, tmp_path: Path) -> AppConfig:
    recipe = (ROOT / "training/recipes/dpo-tiny.yaml").read_text().replace("max_steps: 3", "max_steps: 100000")
    (tmp_path / "long.yaml").write_text(recipe)
    return replace(config, train_recipe=tmp_path / "long.yaml")


def test_killed_training_child_leaves_active_adapter_and_app_serving(setup, tmp_path: Path):
    config, service = setup
    config = long_running(config, tmp_path)
    registry = AdapterRegistry(config.pack_adapters_dir("general"))
    job = TrainingJob(config, service, registry)
    outcome: list[str] = []
    runner = threading.Thread(target=lambda: outcome.append(job.run_cycle()))
    runner.start()
    wait_for(lambda: job.snapshot()["phase"] == "training" and job.snapshot()["step"] >= 1)

    # While it trains, the app answers.
    answer = list(service.ask("What is the capital of France?", "general"))[-1]
    assert answer.interaction_id and answer.snapshot.stages["final_answer"].status == "done"

    os.kill(job._child.pid, signal.SIGKILL)  # out-of-memory killer, crash, ...
    runner.join(timeout=60)
    assert outcome and outcome[0].startswith("failed"), outcome
    assert "killed by signal 9" in job.snapshot()["last_error"]
    assert registry.active() is None and service.weak.adapter_versions() == {}
    assert registry.get("v1").status == "failed"
    assert not list(config.pack_adapters_dir("general").glob(".staging-*"))
    assert list(service.ask("Still there?", "general"))[-1].interaction_id


def test_admin_controls_need_the_secret_and_stop_a_run(setup, tmp_path: Path):
    config, service = setup
    config = long_running(config, tmp_path)
    control = TrainingControl(config, service, AdapterRegistry(config.pack_adapters_dir("general")))
    try:
        for action in (control.start_run, control.stop_run, control.retry_pushes):
            with pytest.raises(AdminError, match="Wrong admin secret"):
                action("guess")
        with pytest.raises(AdminError):
            control.rollback(None, None)
        assert control.start_run("s3cret") == "run started"
        wait_for(lambda: control.state()["phase"] == "training" and control.state()["step"] >= 1)
        assert control.start_run("s3cret") == "a run is already in progress"
        assert control.curve() and {r["series"] for r in control.curve()} >= {"loss"}
        assert control.stop_run("s3cret") == "stopping the run"
        wait_for(lambda: control.state()["phase"] == "idle")
        assert control.state()["last_result"] == "stopped by admin"
        assert control.registry.active() is None
    finally:
        control.shutdown()


def test_admin_is_disabled_without_a_configured_secret(setup):
    config, service = setup
    control = TrainingControl(replace(config, secrets=Secrets()), service, AdapterRegistry(config.pack_adapters_dir("general")), start=False)
    with pytest.raises(AdminError, match="disabled"):
        control.start_run("anything")


def test_rollback_swaps_back_and_restart_restores_the_active_version(setup):
    config, service = setup
    registry = AdapterRegistry(config.pack_adapters_dir("general"))
    job = TrainingJob(config, service, registry)
    assert job.run_cycle().startswith("v1 promoted")
    control = TrainingControl(config, service, registry, start=False)
    assert control.rollback("s3cret", None) == "active adapter is now base"
    assert service.weak.adapter_versions() == {} and registry.active() is None
    control.rollback("s3cret", "v1")
    assert service.weak.adapter_versions() == {"general": "v1"}
    # A restarted app loads the last promoted adapter.
    from cowest_app.service import build_weak, load_served_packs

    assert build_weak(config, load_served_packs(config)).describe()["adapters"] == {"general": "v1"}


def test_item_files_report_file_and_line(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok?", "reference": "x"}\n{"question": \n')
    with pytest.raises(Exception, match=r"bad.jsonl:2"):
        load_items(bad)


def test_the_gate_judges_a_candidate_on_its_own_pack_by_default(setup):
    config, service = setup
    job = TrainingJob(replace(config, eval_file=None, eval_max_items=3), service,
                      AdapterRegistry(config.pack_adapters_dir("general")))
    general = service.packs["general"]
    items = job.held_out_items()
    assert [(i.item.question, i.item.domain, i.item.reference, i.task_type) for i in items] == [
        (p.question, "general", p.reference, "multiple_choice") for p in general.train[-3:]]
