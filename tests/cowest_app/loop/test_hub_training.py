"""The scheduled cycle with COWEST_TRAIN_BACKEND=hf-jobs, against the Hub stand-in and its Jobs API.

The fake runs a submitted job's command here (`python -m training.launch dpo ...` in the
project root), so the job really downloads the pinned pairs and parent adapter, trains
the tiny model, and pushes its candidate to a branch, which the cycle downloads, gates
and promotes. A failing job and one that never finishes leave the active adapter serving.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from huggingface_hub import constants

from cowest_app.loop.registry import AdapterRegistry, AdapterVersion
from cowest_app.loop.training_job import TrainingJob
from tests.conftest import make_lora_adapter
from tests.cowest_app.loop.test_training_job import setup  # noqa: F401 - the shared fixture
from tests.fakes.hub_server import serve_hub

ROOT = Path(__file__).parents[3]
TOKEN = "hf_tok_never_shown"  # the setup fixture's HF token
ADAPTER_REPO, LOG_REPO = "cowest/weak-adapter", "cowest/feedback-log"


@pytest.fixture
def on_hub(setup, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    """The setup fixture's app with an active v1 for the general pack, training through HF Jobs."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    config, service = setup
    registry = AdapterRegistry(config.pack_adapters_dir("general"))
    staging = registry.staging_dir("v1")
    shutil.rmtree(staging, ignore_errors=True)
    make_lora_adapter(tiny_model_dir, staging, seed=1)
    registry.register(staging, AdapterVersion(version="v1", status="candidate", base_model=config.weak_model))
    registry.promote("v1")
    service.weak.swap_adapter(str(registry.path("v1")), "v1", "general")
    with serve_hub(require_token=TOKEN, job_cwd=str(ROOT)) as hub:
        config = replace(config, train_backend="hf-jobs", hub_repo=ADAPTER_REPO, hub_log_repo=LOG_REPO,
                         hub_endpoint=hub.endpoint, job_image="hf.co/spaces/cowest/app", job_timeout_minutes=5.0)
        yield TrainingJob(config, service, registry, job_poll_s=0.1), hub


def test_a_job_trains_the_candidate_that_the_cycle_gates_and_promotes(on_hub) -> None:
    job, hub = on_hub
    result = job.run_cycle()
    assert result.startswith("v2 promoted"), (result, job.snapshot())

    submitted = hub.job()
    assert submitted.stages == ["SCHEDULING", "RUNNING", "COMPLETED"] and submitted.spec["spaceId"] == "cowest/app"
    command = submitted.spec["command"]
    assert command[:5] == ["python", "-m", "training.launch", "dpo", "--config"]
    assert command[5] == "training/recipes/dpo-tiny.yaml"  # the recipe as the image holds it
    # The pairs the cycle chose and the parent adapter, pinned by one commit of the log dataset.
    revision = command[command.index("--data-revision") + 1]
    inputs = hub.repo(LOG_REPO, "dataset").commit(revision).files
    [pairs_path] = [name for name in inputs if name.endswith("/train.jsonl")]
    registry = job.registry
    assert inputs[pairs_path] == (registry.path("v2") / "train.jsonl").read_bytes()
    assert command[command.index("--init-revision") + 1] == revision
    assert inputs[pairs_path.replace("train.jsonl", "init_adapter/adapter_model.safetensors")] == \
        (registry.path("v1") / "adapter_model.safetensors").read_bytes()

    # The candidate came back from its branch, trained on from v1, and now serves.
    v2 = registry.get("v2")
    assert v2.status == "active" and v2.parent == "v1" and v2.metrics["steps"] == 3
    assert v2.metrics["init_adapter"] and "candidate_score" in v2.metrics
    record = json.loads((registry.path("v2") / "job.json").read_text())
    assert record["job_id"] == submitted.id and record["inputs"] == revision
    branch = hub.repo(ADAPTER_REPO).branches[record["branch"]]
    assert "candidates/general-v2/adapter_model.safetensors" in hub.repo(ADAPTER_REPO).commit(branch).files
    assert not any(name.startswith("candidates/") for name in hub.repo(ADAPTER_REPO).head.files)  # main untouched
    assert job.service.weak.adapter_versions()["general"] == "v2"

    # The Training tab's progress came from the job's log lines.
    progress = [json.loads(line) for line in (registry.path("v2") / "progress.jsonl").read_text().splitlines()]
    assert [p["step"] for p in progress if "loss" in p] == [1, 2, 3]
    assert job.snapshot()["total_steps"] == 3 and job.snapshot()["step"] == 3
    log_text = (registry.path("v2") / "train.log").read_text()
    assert "DPO done" in log_text and "cowest-candidate" in log_text and TOKEN not in log_text


def test_a_failed_job_is_reported_and_the_active_adapter_keeps_serving(on_hub) -> None:
    job, hub = on_hub
    hub.job_mode = "fail"
    result = job.run_cycle()

    assert result.startswith("failed: HF Job") and "ended ERROR: Job failed with exit code: 1" in result, result
    assert "CUDA out of memory" in job.snapshot()["last_error"]
    assert job.registry.get("v2").status == "failed" and job.registry.active().version == "v1"
    assert job.service.weak.adapter_versions()["general"] == "v1"
    assert not list(job.registry.root.glob(".staging-*"))


def test_a_job_that_never_finishes_is_cancelled_at_the_timeout(on_hub) -> None:
    job, hub = on_hub
    hub.job_mode = "hang"
    job.config = replace(job.config, job_timeout_minutes=0.02)  # 1.2 s
    result = job.run_cycle()

    submitted = hub.job()
    assert result == f"failed: HF Job {submitted.id} was still RUNNING after 1 s; cancelled it", result
    assert submitted.cancel_requested.is_set() and hub.requests_to(f"/api/jobs/cowest/{submitted.id}/cancel", "POST")
    assert job.registry.get("v2").status == "failed" and job.registry.active().version == "v1"
    assert job.service.weak.adapter_versions()["general"] == "v1"
