"""Training as a Hugging Face Job: the command as data, and a real HfApi against the fake Jobs API.

The fake (tests/fakes/hub_server.py) moves each job SCHEDULING -> RUNNING -> an end stage;
here its jobs fail or hang ("run" jobs, which execute the command, are driven end to end by
tests/cowest_app/loop/test_hub_training.py).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import pytest
from huggingface_hub import HfApi

from cowest_app.hub import jobs
from tests.fakes.hub_server import FakeHub, serve_hub

TOKEN = "hf_JobsTestSecret0123456789"
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with serve_hub(require_token=TOKEN) as server:
        yield server


def plan(**changes) -> jobs.LaunchPlan:
    fields = dict(stage="dpo", recipe="training/recipes/dpo.yaml",
                  data=jobs.HubRef("me/log", SHA, "training-inputs/run/train.jsonl"),
                  push_repo="me/adapter", push_branch="candidate-run")
    return jobs.LaunchPlan(**(fields | changes))


def runner(hub: FakeHub, timeout_s: float = 30.0, image: str = "hf.co/spaces/me/cowest") -> jobs.HubJobs:
    settings = jobs.JobSettings(image=image, flavor="l4x4", timeout_s=timeout_s, poll_s=0.05)
    return jobs.HubJobs(HfApi(endpoint=hub.endpoint, token=TOKEN), settings, endpoint=hub.endpoint)


# -- the command, as data ------------------------------------------------------
def test_a_one_process_job_runs_the_stage_with_the_local_backend() -> None:
    assert jobs.job_command(plan()) == [
        "python", "-m", "training.launch", "dpo", "--config", "training/recipes/dpo.yaml", "--backend", "local",
        "--data-repo", "me/log", "--data-revision", SHA, "--data-path", "training-inputs/run/train.jsonl",
        "--push-repo", "me/adapter", "--push-branch", "candidate-run",
    ]


def test_a_multi_gpu_job_continues_an_adapter_with_accelerate() -> None:
    args = jobs.launch_args(plan(
        stage="sft", num_processes=4, push_folder="candidates/general-v3", overrides=("base_model=HuggingFaceTB/x",),
        data=jobs.HubRef("me/corpus", "v1", "docs", repo_type="model"),
        init_adapter=jobs.HubRef("me/log", SHA, "training-inputs/run/init_adapter"),
    ))
    assert args == [
        "sft", "--config", "training/recipes/dpo.yaml", "--backend", "accelerate", "--num-processes", "4",
        "--data-repo", "me/corpus", "--data-revision", "v1", "--data-path", "docs", "--data-repo-type", "model",
        "--init-repo", "me/log", "--init-revision", SHA, "--init-path", "training-inputs/run/init_adapter",
        "--push-repo", "me/adapter", "--push-branch", "candidate-run", "--push-folder", "candidates/general-v3",
        "--set", "base_model=HuggingFaceTB/x",
    ]


@pytest.mark.parametrize("changes, message", [
    ({"stage": "rlhf"}, "stage must be one of"),
    ({"push_branch": "main"}, "not main"),
    ({"push_branch": "has space"}, "a new branch name"),
    ({"push_repo": "noslash"}, "namespace/name"),
    ({"num_processes": 0}, "at least 1"),
    ({"overrides": ("lr",)}, "not KEY=VALUE"),
])
def test_a_plan_that_cannot_run_is_refused_with_the_reason(changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        plan(**changes)


def test_inputs_must_be_pinned_and_inside_the_repo() -> None:
    with pytest.raises(ValueError, match="a revision is needed"):
        jobs.HubRef("me/log", "", "train.jsonl")
    with pytest.raises(ValueError, match="leaves the repo"):
        jobs.HubRef("me/log", SHA, "../secrets")


def test_env_and_progress_lines() -> None:
    assert jobs.job_env(None) == {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    assert jobs.job_env("http://hub")["HF_ENDPOINT"] == "http://hub"
    assert jobs.parse_progress('cowest-progress {"step": 2, "max_steps": 3}') == {"step": 2, "max_steps": 3}
    assert jobs.parse_progress("{'loss': 0.69}") is None and jobs.parse_progress("cowest-progress {half") is None


# -- a real HfApi against the fake Jobs API --------------------------------------
def test_a_failing_job_reports_its_stage_message_and_logs(hub: FakeHub) -> None:
    hub.job_mode = "fail"
    jobs_api, seen_stages, lines = runner(hub), [], []
    job_id = jobs_api.submit(plan(), TOKEN)
    outcome = jobs_api.follow(job_id, "me", lines.append, seen_stages.append)

    assert not outcome.ok and outcome.stage == "ERROR" and outcome.message == "Job failed with exit code: 1"
    assert lines == ["Traceback (most recent call last):", "torch.OutOfMemoryError: CUDA out of memory."]
    assert outcome.log_tail == lines and seen_stages[-1] == "ERROR"
    job = hub.job(job_id)
    assert job.stages == ["SCHEDULING", "RUNNING", "ERROR"]
    assert job.spec["spaceId"] == "me/cowest" and job.spec["flavor"] == "l4x4" and job.spec["timeoutSeconds"] == 30
    assert job.spec["command"] == jobs.job_command(plan())
    # The token travels as a secret, never in the job's plain environment.
    assert job.spec["secrets"] == {"HF_TOKEN": TOKEN} and TOKEN not in str(job.spec["environment"])
    assert job.spec["environment"]["HF_ENDPOINT"] == hub.endpoint
    assert job.spec["labels"]["app"] == "cowest"


def test_a_job_past_its_timeout_is_cancelled(hub: FakeHub) -> None:
    hub.job_mode = "hang"
    jobs_api = runner(hub, timeout_s=0.6, image="python:3.12")
    job_id = jobs_api.submit(plan(), TOKEN)
    with pytest.raises(jobs.HubJobTimeout, match=f"HF Job {job_id} was still RUNNING after 1 s; cancelled it"):
        jobs_api.follow(job_id, "me", lambda line: None, lambda stage: None)
    assert hub.job(job_id).cancel_requested.is_set() and hub.requests_to(f"/{job_id}/cancel", "POST")
    assert hub.job(job_id).spec["dockerImage"] == "python:3.12"


def test_a_stop_cancels_the_job_and_says_so(hub: FakeHub) -> None:
    hub.job_mode = "hang"
    jobs_api, stop = runner(hub), threading.Event()
    job_id = jobs_api.submit(plan(), TOKEN)

    def on_stage(stage: str) -> None:
        if stage == "RUNNING":
            stop.set()

    outcome = jobs_api.follow(job_id, "me", lambda line: None, on_stage, stop)
    assert outcome.stopped and outcome.stage == "CANCELED" and hub.job(job_id).cancel_requested.is_set()


def test_an_unknown_job_is_a_clear_http_error(hub: FakeHub) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError, match="404"):
        HfApi(endpoint=hub.endpoint, token=TOKEN).inspect_job(job_id="nope", namespace="me")


# -- inputs and output -----------------------------------------------------------
def test_inputs_are_pinned_by_their_commit_and_the_candidate_lands_on_a_branch(hub: FakeHub, tmp_path: Path) -> None:
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    (tmp_path / "train.jsonl").write_text('{"a": 1}\n')
    (tmp_path / "adapter_config.json").write_text("{}")
    sha = jobs.upload_inputs(api, "me/log", "training-inputs/run", {"train.jsonl": tmp_path / "train.jsonl",
                                                                     "init/adapter_config.json": tmp_path / "adapter_config.json"}, "inputs")
    (tmp_path / "train.jsonl").write_text('{"a": 2}\n')
    jobs.upload_inputs(api, "me/log", "training-inputs/run", {"train.jsonl": tmp_path / "train.jsonl"}, "later")

    got = jobs.download(api, jobs.HubRef("me/log", sha, "training-inputs/run/train.jsonl"), tmp_path / "a")
    assert got == tmp_path / "a" / "train.jsonl" and got.read_text() == '{"a": 1}\n'  # the pinned commit's, not main's
    folder = jobs.download(api, jobs.HubRef("me/log", sha, "training-inputs/run/init"), tmp_path / "b")
    assert (folder / "adapter_config.json").read_text() == "{}"
    with pytest.raises(jobs.HubJobError, match="no file or folder 'missing'"):
        jobs.download(api, jobs.HubRef("me/log", sha, "missing"), tmp_path / "c")
    assert hub.repo("me/log", "dataset").private

    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_config.json").write_text('{"r": 4}')
    commit = jobs.push_candidate(api, out, "me/adapter", "candidate-run", "candidates/general-v2", "candidate")
    repo = hub.repo("me/adapter")
    assert repo.branches["candidate-run"] == commit and "candidates/general-v2/adapter_config.json" not in repo.head.files
    back = jobs.download(api, jobs.HubRef("me/adapter", "candidate-run", "candidates/general-v2", "model"), tmp_path / "d")
    assert (back / "adapter_config.json").read_text() == '{"r": 4}'
