"""Adapter publishing and log sync, against a real HTTP fake of the Hub (tests/fakes/hub_server.py).

Every call goes through the real huggingface_hub client to 127.0.0.1; nothing reaches
huggingface.co. Backoff sleeps are injected, so retries cost no wall time.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
import yaml
from huggingface_hub import hf_hub_download
from safetensors.torch import save_file

from cowest_app.hub.publish import (HubAuthError, HubPublisher, HubPushError, TagConflict, render_model_card,
                                    start_log_sync)
from tests.fakes.hub_server import FakeHub, serve_hub

TOKEN = "hf_CoWeStTestSecret0123456789"
REPO = "cowest-org/weak-adapter"


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with serve_hub(require_token=TOKEN) as server:
        yield server


def make_adapter(folder: Path, seed: int) -> Path:
    """A small but real PEFT-shaped folder: config JSON plus a safetensors file."""
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "seed": seed}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(seed)
    save_file({"lora_A": torch.randn(4, 8, generator=generator), "lora_B": torch.randn(8, 4, generator=generator)},
              str(folder / "adapter_model.safetensors"))
    return folder


def card(version: str, parent: str | None = None) -> str:
    return render_model_card(
        repo_id=REPO, version=version, base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        metrics={"win_rate": 0.6251, "dpo_loss": 0.4123}, data_stats={"pairs": 128, "feedback_events": 300},
        parent=parent, created_at="2026-05-09T12:00:00+00:00",
    )


class Sleeps(list):
    """Records backoff delays instead of sleeping; `then` runs after each (to clear a fault)."""

    def __init__(self, then: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.then = then

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        if self.then is not None:
            self.then()


def publisher(hub: FakeHub, tmp_path: Path, **overrides: Any) -> HubPublisher:
    options: dict[str, Any] = {"queue_path": tmp_path / "queue" / "hub_queue.json", "sleep": Sleeps(),
                               "request_timeout_s": 5.0}
    options.update(overrides)
    token = options.pop("token", TOKEN)
    return HubPublisher(REPO, token, hub.endpoint, **options)


def wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


# ---------------------------------------------------------------------------- pushing


def test_push_makes_one_commit_per_version_and_tags_it(hub: FakeHub, tmp_path: Path) -> None:
    v1, v2 = make_adapter(tmp_path / "v1", seed=1), make_adapter(tmp_path / "v2", seed=2)
    pub = publisher(hub, tmp_path)

    (v1 / "train.jsonl").write_text('{"prompt": "a user\'s private question"}\n')  # never published
    first = pub.push_adapter(v1, "v1", card("v1"))
    repo = hub.repo(REPO)
    assert [c.message for c in repo.commits] == ["initial commit", "Adapter v1"]
    assert repo.tags == {"v1": first.commit_id} and repo.head.id == first.commit_id
    assert set(repo.head.files) == {".gitattributes", "adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert repo.head.files["adapter_model.safetensors"] == (v1 / "adapter_model.safetensors").read_bytes()
    assert repo.head.files["README.md"].decode() == card("v1")
    assert len(hub.requests_to("/commit/", "POST")) == 1  # files and card in ONE commit
    assert hub.requests[0].headers["authorization"] == f"Bearer {TOKEN}"

    second = pub.push_adapter(v2, "v2", card("v2", parent="v1"))
    assert [c.message for c in repo.commits][-1] == "Adapter v2"
    assert repo.tags == {"v1": first.commit_id, "v2": second.commit_id} and first.commit_id != second.commit_id

    # A client can load either version by tag: the old one is not overwritten.
    for version, folder in (("v1", v1), ("v2", v2)):
        path = hf_hub_download(REPO, "adapter_config.json", revision=version, endpoint=hub.endpoint,
                               token=TOKEN, cache_dir=tmp_path / "hf-cache")
        assert Path(path).read_text() == (folder / "adapter_config.json").read_text()


def test_packs_share_one_repo_each_in_its_folder_with_its_own_tags(hub: FakeHub, tmp_path: Path) -> None:
    from cowest_app.hub.publish import hub_tag

    a, b = make_adapter(tmp_path / "a", seed=1), make_adapter(tmp_path / "b", seed=2)
    pub = publisher(hub, tmp_path)
    first = pub.push_adapter(a, hub_tag("saltmarsh", "v1"), card("v1"), subfolder="saltmarsh")
    second = pub.push_adapter(b, hub_tag("general", "v1"), card("v1"), subfolder="general")
    repo = hub.repo(REPO)
    assert repo.tags == {"saltmarsh-v1": first.commit_id, "general-v1": second.commit_id}
    # The later commit keeps the other pack's folder: each pack's latest adapter is on main.
    assert {"saltmarsh/adapter_config.json", "general/adapter_config.json", "general/README.md"} <= set(repo.head.files)
    path = hf_hub_download(REPO, "adapter_model.safetensors", subfolder="saltmarsh", revision="saltmarsh-v1",
                           endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path / "hf-cache")
    assert Path(path).read_bytes() == (a / "adapter_model.safetensors").read_bytes()
    for bad in ("../up", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="subfolder"):
            pub.enqueue(a, "x-v1", card("v1"), subfolder=bad)


def test_pushing_an_existing_tag_again_is_a_success_without_a_new_commit(hub: FakeHub, tmp_path: Path) -> None:
    v1 = make_adapter(tmp_path / "v1", seed=1)
    pub = publisher(hub, tmp_path)
    first = pub.push_adapter(v1, "v1", card("v1"))
    again = pub.push_adapter(v1, "v1", card("v1"))
    assert again.already_existed and again.commit_id == first.commit_id
    assert len(hub.repo(REPO).commits) == 2


def test_an_existing_tag_with_other_files_is_never_overwritten(hub: FakeHub, tmp_path: Path) -> None:
    ours, theirs = make_adapter(tmp_path / "ours", seed=1), make_adapter(tmp_path / "theirs", seed=2)
    pub = publisher(hub, tmp_path)
    taken = pub.push_adapter(theirs, "pack-v1", card("pack-v1"), subfolder="pack")  # e.g. before a wiped disk
    with pytest.raises(TagConflict, match="pack-v1 already exists on the Hub with other files"):
        pub.push_adapter(ours, "pack-v1", card("pack-v1"), subfolder="pack")
    assert hub.repo(REPO).tags == {"pack-v1": taken.commit_id}


def test_the_queue_pushes_a_conflicting_version_under_the_next_free_tag(hub: FakeHub, tmp_path: Path) -> None:
    ours = make_adapter(tmp_path / "ours", seed=1)
    pub = publisher(hub, tmp_path)
    for n in (1, 2):
        pub.push_adapter(make_adapter(tmp_path / f"old{n}", seed=10 + n), f"pack-v{n}", card(f"pack-v{n}"),
                         subfolder="pack")
    finished: list[dict] = []
    pub.on_done = finished.append
    pub.enqueue(ours, "pack-v1", card("pack-v1", parent="pack-v0"), subfolder="pack")
    pub.start()
    assert pub.wait_idle(timeout=20)
    pub.stop()
    [done] = pub.status()["done"]
    assert (done["label"], done["version"]) == ("pack-v1", "pack-v3")
    assert "pack-v1 already exists on the Hub with other files; pushed as pack-v3" in done["note"]
    tags = hub.repo(REPO).tags
    assert set(tags) == {"pack-v1", "pack-v2", "pack-v3"}
    files = hub.repo(REPO).commit(tags["pack-v3"]).files
    assert files["pack/adapter_model.safetensors"] == (ours / "adapter_model.safetensors").read_bytes()
    assert "pack-v3" in files["pack/README.md"].decode() and "pack-v1" not in files["pack/README.md"].decode()
    assert finished == [done]


def test_the_active_tag_follows_promotion_and_rollback(hub: FakeHub, tmp_path: Path) -> None:
    pub = publisher(hub, tmp_path)
    for n in (1, 2):
        pub.enqueue(make_adapter(tmp_path / f"v{n}", seed=n), f"pack-v{n}", card(f"pack-v{n}"), subfolder="pack")
        pub.enqueue_active("pack-active", f"pack-v{n}")  # queued right behind its push
    pub.start()
    assert pub.wait_idle(timeout=20)
    tags = hub.repo(REPO).tags
    assert tags["pack-active"] == tags["pack-v2"]
    pub.enqueue_active("pack-active", "pack-v1")  # a rollback
    assert pub.wait_idle(timeout=20)
    assert hub.repo(REPO).tags["pack-active"] == tags["pack-v1"]
    pub.enqueue_active("pack-active", None)  # back to the bare base: no version is marked
    assert pub.wait_idle(timeout=20)
    pub.stop()
    assert "pack-active" not in hub.repo(REPO).tags and pub.status()["failed"] == []


def test_marking_a_version_that_never_reached_the_hub_fails_visibly(hub: FakeHub, tmp_path: Path) -> None:
    pub = publisher(hub, tmp_path)
    pub.enqueue_active("pack-active", "pack-v9")
    pub.start()
    failed = wait_for(lambda: pub.status()["failed"])
    pub.stop()
    assert "pack-v9 is not on the Hub yet" in failed[0]["last_error"]


def test_download_release_fetches_one_versions_files(hub: FakeHub, tmp_path: Path) -> None:
    v1 = make_adapter(tmp_path / "v1", seed=1)
    (v1 / "train.jsonl").write_text("{}\n")
    pub = publisher(hub, tmp_path)
    pushed = pub.push_adapter(v1, "pack-v1", card("pack-v1"), subfolder="pack")
    pub.push_adapter(make_adapter(tmp_path / "v2", seed=2), "pack-v2", card("pack-v2"), subfolder="pack")
    out = tmp_path / "restored"
    assert pub.download_release("pack-v1", "pack", out) == pushed.commit_id
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (out / "adapter_model.safetensors").read_bytes() == (v1 / "adapter_model.safetensors").read_bytes()


def test_model_card_has_metadata_metrics_and_loading_snippet() -> None:
    text = card("v2", parent="v1")
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta == {"library_name": "peft", "pipeline_tag": "text-generation", "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                    "tags": ["cowest", "dpo", "lora"], "license": "apache-2.0"}
    assert "| win_rate | 0.6251 |" in body and "| pairs | 128 |" in body and "| parent version | v1 |" in body
    assert f'PeftModel.from_pretrained(base, "{REPO}", revision="v2")' in body
    assert TOKEN not in text and "hf_" not in text

    # A local/packaged base model is not a Hub id: kept out of the metadata the Hub validates.
    local = render_model_card(repo_id=REPO, version="v1", base_model="packaged:smollm2-135m-instruct",
                              metrics={}, data_stats={}, parent=None, created_at="now")
    assert "base_model" not in yaml.safe_load(local.split("---\n", 2)[1])
    assert "packaged:smollm2-135m-instruct" in local and "none (first adapter)" in local


# ---------------------------------------------------------------------------- retries


def test_server_errors_are_retried_with_growing_capped_backoff(hub: FakeHub, tmp_path: Path) -> None:
    hub.fail_next(4, status=503)  # the first request of four attempts in a row
    sleeps = Sleeps()
    pub = publisher(hub, tmp_path, sleep=sleeps, max_attempts=5, base_delay_s=1.0, max_delay_s=4.0)
    result = pub.push_adapter(make_adapter(tmp_path / "v1", seed=1), "v1", card("v1"))
    assert result.attempts == 5
    assert sleeps == [1.0, 2.0, 4.0, 4.0]
    assert hub.repo(REPO).tags == {"v1": result.commit_id}


def test_two_500s_then_success(hub: FakeHub, tmp_path: Path) -> None:
    hub.fail_next(2, status=500)
    sleeps = Sleeps()
    result = publisher(hub, tmp_path, sleep=sleeps).push_adapter(make_adapter(tmp_path / "v1", seed=1), "v1", card("v1"))
    assert result.attempts == 3 and sleeps == [1.0, 2.0]
    assert len(hub.requests_to("/api/repos/create")) == 3


def test_timeouts_are_retried(hub: FakeHub, tmp_path: Path) -> None:
    hub.delay_s = 2.0  # longer than the client's timeout; cleared after the first backoff
    sleeps = Sleeps(then=hub.clear_faults)
    pub = publisher(hub, tmp_path, sleep=sleeps, request_timeout_s=0.3)
    started = time.monotonic()
    result = pub.push_adapter(make_adapter(tmp_path / "v1", seed=1), "v1", card("v1"))
    assert result.attempts == 2 and sleeps == [1.0]
    assert time.monotonic() - started < 1.8  # the client gave up; it did not wait for the server
    assert "v1" in hub.repo(REPO).tags


@pytest.mark.parametrize("case", ["wrong-token", "forbidden", "bad-request"])
def test_permanent_errors_fail_at_once(case: str, hub: FakeHub, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = "hf_SomeoneElsesToken987654321" if case == "wrong-token" else TOKEN
    if case == "forbidden":
        hub.fail_next(1, status=403)
    if case == "bad-request":
        hub.fail_next(1, status=400)
    sleeps = Sleeps()
    pub = publisher(hub, tmp_path, sleep=sleeps, token=token)
    expected = HubPushError if case == "bad-request" else HubAuthError

    with pytest.raises(expected) as info:
        pub.push_adapter(make_adapter(tmp_path / "v1", seed=1), "v1", card("v1"))

    assert sleeps == [] and info.value.attempts == 1 and not info.value.retryable
    assert len(hub.requests_to("/api/repos/create")) == 1
    message = str(info.value)
    if expected is HubAuthError:
        assert "authentication failed" in message and info.value.status in (401, 403)
    for secret in (token, TOKEN):
        assert secret not in message and secret not in caplog.text and secret not in repr(pub)
    assert info.value.__cause__ is None and info.value.__suppress_context__


# ---------------------------------------------------------------------------- queue


def test_queue_survives_restart_and_drains_once_the_hub_recovers(hub: FakeHub, tmp_path: Path) -> None:
    hub.fail_next(1000, status=503)
    v1 = make_adapter(tmp_path / "v1", seed=1)
    first = publisher(hub, tmp_path, max_attempts=2)
    job_id = first.enqueue(v1, "v1", card("v1"))
    assert [job["id"] for job in first.status()["pending"]] == [job_id]

    first.start()
    failed = wait_for(lambda: first.status()["failed"])
    first.stop()
    assert failed[0]["version"] == "v1" and failed[0]["attempts"] == 2 and "503" in failed[0]["last_error"]
    assert "503" in first.status()["last_error"] and not first.status()["pending"]

    # A new process (new publisher on the same file) still knows about the failed job.
    hub.clear_faults()
    second = publisher(hub, tmp_path)
    assert [job["id"] for job in second.status()["failed"]] == [job_id]
    assert second.retry_failed() == 1
    second.start()
    assert second.wait_idle(timeout=10)
    second.stop()

    status = second.status()
    assert status["pending"] == [] and status["failed"] == [] and status["last_error"] is None
    assert status["done"][0]["version"] == "v1" and status["done"][0]["attempts"] == 3
    assert status["done"][0]["commit_id"] == hub.repo(REPO).tags["v1"]


def test_pending_jobs_are_picked_up_by_a_later_publisher(hub: FakeHub, tmp_path: Path) -> None:
    publisher(hub, tmp_path).enqueue(make_adapter(tmp_path / "v1", seed=1), "v1", card("v1"))
    later = publisher(hub, tmp_path)
    later.start()
    assert later.wait_idle(timeout=10)
    later.stop()
    assert "v1" in hub.repo(REPO).tags


def test_enqueue_returns_at_once_while_the_hub_hangs(hub: FakeHub, tmp_path: Path) -> None:
    hub.delay_s = 1.0
    pub = publisher(hub, tmp_path, request_timeout_s=0.3, max_attempts=1)
    pub.start()
    pub.enqueue(make_adapter(tmp_path / "v1", seed=1), "v1", card("v1"))
    wait_for(lambda: hub.requests)  # the worker is now stuck on the Hub
    started = time.monotonic()
    pub.enqueue(make_adapter(tmp_path / "v2", seed=2), "v2", card("v2"))
    assert time.monotonic() - started < 0.5  # a file write, not a 1 s Hub round trip
    pub.stop()
    saved = json.loads(pub.queue_path.read_text())
    assert [job["version"] for job in saved["jobs"]] == ["v1", "v2"]


def test_a_queued_push_that_hangs_past_the_timeout_is_reported_then_retried(hub: FakeHub, tmp_path: Path) -> None:
    hub.hang()  # the Hub accepts the connection and never answers
    seen: list[dict[str, Any]] = []
    sleeps = Sleeps(then=lambda: (seen.append({**pub.status(), "held": hub.held()}), hub.release()))  # recover in the backoff
    pub = publisher(hub, tmp_path, sleep=sleeps, request_timeout_s=0.3)
    pub.enqueue(make_adapter(tmp_path / "v1", seed=1), "v1", card("v1"))
    pub.start()
    assert pub.wait_idle(timeout=10)
    pub.stop()

    # While it waited to retry, the failure was visible; the request was still held by the Hub.
    [during] = seen
    assert during["pending"][0]["attempts"] == 1 and "timed out" in during["pending"][0]["last_error"]
    assert "timed out" in during["last_error"] and sleeps == [1.0] and during["held"] == 1
    done = pub.status()["done"][0]
    assert done["version"] == "v1" and done["attempts"] == 2 and pub.status()["last_error"] is None
    assert done["commit_id"] == hub.repo(REPO).tags["v1"]


def test_stop_cuts_a_long_backoff_short_and_keeps_the_job(hub: FakeHub, tmp_path: Path) -> None:
    hub.fail_next(1000, status=503)
    pub = publisher(hub, tmp_path, sleep=None, base_delay_s=30.0)  # the real, interruptible wait
    pub.enqueue(make_adapter(tmp_path / "v1", seed=1), "v1", card("v1"))
    pub.start()
    wait_for(lambda: pub.status()["last_error"])  # first attempt failed; now in a 30 s backoff
    started = time.monotonic()
    pub.stop(timeout=5)
    assert time.monotonic() - started < 2 and not pub.is_running()
    pending = pub.status()["pending"]
    assert pending[0]["version"] == "v1" and pending[0]["attempts"] == 1


def test_unreadable_queue_file_is_set_aside(hub: FakeHub, tmp_path: Path) -> None:
    queue = tmp_path / "queue" / "hub_queue.json"
    queue.parent.mkdir()
    queue.write_text("{not json")
    pub = publisher(hub, tmp_path)
    assert pub.status()["pending"] == [] and not queue.exists()
    assert [p.read_text() for p in queue.parent.glob("hub_queue.json.corrupt-*")] == ["{not json"]


def test_token_never_leaks_into_status_queue_file_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "hf_LeakyLeakyToken555555555"
    with serve_hub(require_token=TOKEN) as hub:
        pub = publisher(hub, tmp_path, token=wrong)
        pub.enqueue(make_adapter(tmp_path / "v1", seed=1), "v1", card("v1"))
        pub.start()
        failed = wait_for(lambda: pub.status()["failed"])
        pub.stop()
    assert "authentication failed" in failed[0]["last_error"]
    exposed = [json.dumps(pub.status()), pub.queue_path.read_text(), caplog.text, repr(pub)]
    for text in exposed:
        assert wrong not in text and TOKEN not in text


# ---------------------------------------------------------------------------- log sync


def test_log_sync_pushes_jsonl_shards_to_a_private_dataset(hub: FakeHub, tmp_path: Path) -> None:
    folder = tmp_path / "log"
    (folder / "feedback").mkdir(parents=True)
    shard = folder / "feedback" / "feedback-00000.jsonl"  # the layout write_log_shards writes
    shard.write_text('{"id": 1, "rating": 1}\n')
    (folder / "feedback" / ".feedback-00001.jsonl.tmp").write_text("half written")
    (folder / "training-inputs" / "run-1").mkdir(parents=True)  # a Job's inputs live in the repo, not in the mirror
    (folder / "training-inputs" / "run-1" / "pairs.jsonl").write_text("{}\n")

    scheduler = start_log_sync(folder, "cowest-org/feedback", TOKEN, hub.endpoint, every_minutes=60)
    try:
        scheduler.trigger().result(timeout=10)
        repo = hub.repo("cowest-org/feedback", repo_type="dataset")
        assert repo.private
        assert repo.head.files["feedback/feedback-00000.jsonl"] == shard.read_bytes()
        assert not any(name.endswith(".tmp") or name.startswith("training-inputs") for name in repo.head.files)

        time.sleep(0.01)  # a distinct mtime, which is how the scheduler spots the append
        with shard.open("a") as out:
            out.write('{"id": 2, "rating": -1}\n')
        scheduler.trigger().result(timeout=10)
        assert repo.head.files["feedback/feedback-00000.jsonl"].count(b"\n") == 2
    finally:
        scheduler.stop()
