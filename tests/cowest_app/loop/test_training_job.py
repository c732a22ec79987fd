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
from cowest_app.loop.control import AdminError, TrainingControl
from cowest_app.hub.publish import HubPublisher
from cowest_app.models.local import TransformersBackend
from cowest_app.models.remote import InferenceClientBackend
from cowest_app.domains.packs import format_item
from cowest_app.loop.registry import AdapterRegistry
from cowest_app.serving.service import CollabService
from cowest_app.core.store import Feedback, LogStore
from cowest_app.loop.training_job import TrainingJob, load_items
from tests.fakes.hub_server import serve_hub
from tests.fakes.openai_server import serve_openai

ROOT = Path(__file__).parents[3]
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
        # Each pack keeps its own lineage in one repo: its folder, tagged `<pack>-vN`.
        files = repo.resolve("general-v1").files
        assert {"general/adapter_config.json", "general/adapter_model.safetensors", "general/README.md"} <= set(files)
        card = files["general/README.md"]
        assert b"general-v1" in card and b'subfolder="general"' in card and b"hf_tok_never_shown" not in card
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


def test_a_pack_without_a_specialist_gates_its_first_adapter_against_the_strong_model_alone(setup, tiny_adapters):
    config, service = setup
    registry = AdapterRegistry(config.pack_adapters_dir("general"))
    job = TrainingJob(config, service, registry)
    assert service.packs["general"].drafts == "specialist"
    assert job.served_drafter(service.weak) is None  # users get the strong model alone: the bar to beat
    registry.import_adapter(tiny_adapters["v1"])
    assert job.served_drafter(service.weak) is service.weak  # now the active adapter drafts, and is the bar


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
    assert control.rollback("s3cret", None) == "general: active adapter is now base"
    assert service.weak.adapter_versions() == {} and registry.active() is None
    control.rollback("s3cret", "v1")
    assert service.weak.adapter_versions() == {"general": "v1"}
    # A restarted app loads the last promoted adapter.
    from cowest_app.serving.service import build_weak, load_served_packs

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
    assert [(i.ask.text, i.ask.reference) for i in items] == [(format_item(p), p.reference) for p in general.dev]
    # Scored by the pack's metric: the right letter scores 1, another 0.
    right = "ABCDE"[general.dev[0].reference]
    assert items[0].score(f"Answer: {right}") == 1.0 and items[0].score("Answer: Z") == 0.0


# -- the gate on a pack's dev split, with a real trained adapter and a damaged copy -------------
GATE_PACK_YAML = """\
name: gate
description: Every answer is B; a weak model that drafts it helps.
task_type: multiple_choice
metric: accuracy
weak_prompt:
  system: Draft.
  user: "{question}"
strong_prompt:
  system: Answer with the option letter.
  user: "Question: {question}\\nNotes (use or ignore):\\n\\"\\"\\"\\n{draft}\\n\\"\\"\\""
"""
DRAFT_TARGET = "Answer: B"


def write_gate_pack(root: Path) -> Path:
    (root / "corpus").mkdir(parents=True)
    (root / "corpus" / "facts.md").write_text("In this pack the answer is always B.\n")
    (root / "domain.yaml").write_text(GATE_PACK_YAML)
    options = ["red", "blue", "green", "white"]
    rows = [{"id": f"q{i}", "question": f"Which colour is item {i}?", "answer": "B", "options": options}
            for i in range(8)]
    write_jsonl(root / "train.jsonl", rows)
    write_jsonl(root / "test.jsonl", rows[:2])
    return root


def notes_reader(messages: list[dict]) -> str:
    """A strong stand-in that trusts a draft's answer line and is unsure without one."""
    user = messages[-1]["content"]
    notes = user.split('"""')[1] if '"""' in user else ""
    letter = next((w for w in notes.split() if w in "ABCD" and f"Answer: {w}" in notes), None)
    return f"Answer: {letter}" if letter else "I am not sure."


def train_drafting_adapter(base: Path, prompts: list[list[dict]], out: Path) -> Path:
    """A real LoRA adapter, taught with plain torch (Adam, 60 steps) to draft DRAFT_TARGET for these prompts."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        r=8, lora_alpha=16, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    target = tokenizer.encode(DRAFT_TARGET, add_special_tokens=False) + [tokenizer.eos_token_id]
    rows = []
    for messages in prompts:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        rows.append((torch.tensor([prompt + target]), torch.tensor([[-100] * len(prompt) + target])))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(60):
        for ids, labels in rows:
            model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    return out


def damage(adapter: Path, out: Path) -> Path:
    """The same adapter with every LoRA B matrix replaced by noise: a broken candidate."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(adapter, out)
    torch.manual_seed(1)
    weights = load_file(out / "adapter_model.safetensors")
    save_file({k: torch.randn_like(v) * 2 if "lora_B" in k else v for k, v in weights.items()},
              out / "adapter_model.safetensors")
    return out


def test_gate_rejects_a_damaged_adapter_on_the_packs_dev_split(tmp_path: Path, tiny_model_dir: Path):
    pack_dir = write_gate_pack(tmp_path / "gate")
    config = AppConfig(weak_model=str(tiny_model_dir), weak_4bit=False, data_dir=tmp_path / "data",
                       weak_max_new_tokens=6, strong_max_new_tokens=8, packs=(str(pack_dir),), eval_tolerance=0.0)
    with serve_openai(reply=notes_reader) as server:
        strong = InferenceClientBackend(model="strong", base_url=server.base_url)
        service = CollabService(config, TransformersBackend(str(tiny_model_dir)), strong, LogStore(config.db_path))
        pack = service.packs["gate"]
        registry = AdapterRegistry(config.pack_adapters_dir("gate"))
        job = TrainingJob(config, service, registry)
        assert [i.ask.reference for i in job.held_out_items()] == [1] * pack.dev_size == [1] * 4

        # Taught on the fit split only: the gate's dev questions are new to it.
        good = train_drafting_adapter(tiny_model_dir, [pack.weak_messages(format_item(i)) for i in pack.fit],
                                      tmp_path / "good")
        v1 = registry.import_adapter(good, promote=False)
        first = job.evaluate(v1)
        # The bare base's drafts carry no answer line: the strong stand-in is unsure, the taught adapter's lead it right.
        assert (first["candidate_score"], first["active_score"]) == (1.0, 0.0) and job.passes(first)
        registry.promote(v1.version)
        service.weak.swap_adapter(str(registry.path(v1.version)), v1.version, "gate")

        v2 = registry.import_adapter(damage(good, tmp_path / "damaged"), promote=False)
        scores = job.evaluate(v2)
        assert scores["active_score"] == 1.0 and scores["candidate_score"] < 1.0 and scores["eval_items"] == 4
        assert not job.passes(scores)
