"""Hub faults against the running app: the Hub hangs, refuses the token, then fails with 500s.

The app runs as a child process with a tiny model, an active adapter v1 whose
push is already queued (as a promotion leaves it), and both Hub features on:
adapter pushes (COWEST_HUB_REPO) and the feedback log sync (COWEST_HUB_LOG_REPO),
all aimed at the fake Hub on 127.0.0.1. Throughout, questions are answered and
rated; the push is reported, retried with backoff after an admin retry, and
lands on the Hub once it recovers; the local registry is never touched; the
token never appears in the log or the queue file. (Backoff arithmetic, client
timeouts and the queue file itself are unit-tested in tests/cowest_app/hub/test_hub.py.)
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from gradio_client import Client

from cowest_app.hub.publish import HubPublisher, render_model_card
from cowest_app.loop.registry import AdapterRegistry, AdapterVersion
from tests.conftest import make_lora_adapter
from tests.fakes.hub_server import FakeHub, serve_hub
from tests.system.app_process import AppProcess, tiny_model_env, wait_for

TOKEN = "hf_SystemTestToken0123456789"
ADMIN_SECRET = "hub-test-admin-secret"
REPO = "cowest-org/weak-adapter"
LOG_REPO = "cowest-org/feedback-log"
# The app gives each Hub request 60 s; a start that waited on the hung Hub would miss this.
START_WHILE_HUB_HANGS_S = 45




def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def active_v1_with_queued_push(data_dir: Path, model_dir: Path, hub: FakeHub) -> Path:
    registry = AdapterRegistry(data_dir / "adapters" / "general")
    staged = make_lora_adapter(model_dir, registry.staging_dir("v1"), seed=1)
    registry.register(staged, AdapterVersion(version="v1", status="candidate", base_model=str(model_dir)))
    registry.promote("v1")
    card = render_model_card(repo_id=REPO, version="v1", base_model=str(model_dir), metrics={}, data_stats={},
                             parent=None, created_at="2026-01-01T00:00:00+00:00")
    HubPublisher(REPO, TOKEN, hub.endpoint, queue_path=data_dir / "hub_queue.json").enqueue(registry.path("v1"), "v1", card)
    return registry.path("v1")


def push_queue(data_dir: Path) -> dict:
    return json.loads((data_dir / "hub_queue.json").read_text())


def ask_and_rate(client: Client, tag: str) -> str:
    *_, interaction_id = client.predict(f"Question during {tag}?", "general", False, api_name="/ask")
    message, _ = client.predict(interaction_id, "collab", tag, api_name="/rate_up")
    assert interaction_id and "recorded" in message
    return interaction_id


@pytest.fixture
def hub():
    with serve_hub(require_token=TOKEN) as server:
        yield server


def test_hub_hang_401_and_500s_never_stop_serving_and_the_push_lands_after_retries(
        hub: FakeHub, tiny_model_dir: Path, tmp_path: Path):
    data_dir = tmp_path / "data"
    v1_dir = active_v1_with_queued_push(data_dir, tiny_model_dir, hub)
    v1_files = file_hashes(v1_dir)
    env = tiny_model_env(tiny_model_dir, data_dir, HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.endpoint, HF_TOKEN=TOKEN,
                         COWEST_HUB_REPO=REPO, COWEST_HUB_LOG_REPO=LOG_REPO, COWEST_ADMIN_SECRET=ADMIN_SECRET)

    # Held open, unanswered: create_repo is the first call of a push and of the log sync start.
    hub.hang(path_contains="/api/repos/create")
    app = AppProcess.start(env, tmp_path / "server.log", timeout_s=START_WHILE_HUB_HANGS_S)
    try:
        client = Client(app.url, verbose=False)
        # 1. The Hub hangs: the queued push and the log sync both wait on it, and the app serves.
        wait_for(lambda: hub.held() >= 2, 30, "the push and the log sync to reach the Hub")
        ask_and_rate(client, "hang")
        assert hub.held() >= 2, "the Hub requests should still be hanging while the app answered"

        # 2. The Hub rejects the token: a permanent failure, reported at once, not retried.
        hub.release(status=401)
        failed = wait_for(lambda: push_queue(data_dir)["jobs"][0]["state"] == "failed" and push_queue(data_dir)["jobs"][0],
                          30, "the push to be marked failed")
        assert failed["version"] == "v1" and failed["attempts"] == 1
        assert "authentication failed (HTTP 401)" in failed["last_error"] and "HF_TOKEN" in failed["last_error"]
        ask_and_rate(client, "401")

        # 3. An admin retries; the Hub answers 500 twice: retried with backoff, then it lands.
        hub.fail_next(2, status=500, path_contains="/api/repos/create")  # the first request of each attempt
        assert client.predict(ADMIN_SECRET, api_name="/admin_retry_pushes") == "failed pushes queued again"
        ask_and_rate(client, "500")
        done = wait_for(lambda: push_queue(data_dir)["done"], 60, "the push to succeed")
    finally:
        app.stop()

    assert done[0]["version"] == "v1" and done[0]["attempts"] == 4  # 401, 500, 500, success
    assert push_queue(data_dir)["jobs"] == [] and push_queue(data_dir)["last_error"] is None
    log = app.log_path.read_text()
    assert "Hub unavailable (HTTP 500)" in log and "retrying in 1.0s" in log and "retrying in 2.0s" in log
    assert "feedback log sync disabled" in log
    for text in (log, (data_dir / "hub_queue.json").read_text()):
        assert TOKEN not in text

    # On the Hub: a commit tagged v1 with the local adapter files and our model card; locally nothing changed.
    pushed = hub.repo(REPO).resolve("v1").files
    weights = {name: digest for name, digest in v1_files.items() if name != "README.md"}  # the card replaces peft's
    assert {name: hashlib.sha256(pushed[name]).hexdigest() for name in weights} == weights
    assert pushed["README.md"].decode().startswith("---") and f"# {REPO} (v1)" in pushed["README.md"].decode()
    registry = AdapterRegistry(data_dir / "adapters" / "general")
    assert [(v.version, v.status) for v in registry.versions()] == [("v1", "active")]
    assert registry.active().version == "v1" and file_hashes(v1_dir) == v1_files

    with sqlite3.connect(data_dir / "cowest.sqlite3") as conn:
        rows = conn.execute("SELECT f.comment, i.adapter_version FROM feedback f JOIN interactions i ON i.id = f.interaction_id")
        assert sorted(rows.fetchall()) == [("401", "v1"), ("500", "v1"), ("hang", "v1")]
