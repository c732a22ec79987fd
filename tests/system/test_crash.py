"""Crash safety: SIGKILL the real app while users write feedback and a DPO run trains, then restart it.

Before the first start the data directory holds an active adapter v1 and enough
preference pairs to train. The app is killed (SIGKILL: no shutdown code runs)
while four users ask and rate, and while an admin-started training run writes
candidate v2 into the registry's staging area (a half-saved adapter is added
there, as a kill in the middle of saving would leave it). After a restart on
the same data directory: the database passes its integrity check, every
acknowledged interaction and rating is there once, the training child died
with the app, v1 is still the active adapter and serves answers, the
half-written v2 is discarded, and the retraining job is scheduled again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections import Counter
from pathlib import Path

import psutil
from gradio_client import Client

from cowest_app.loop.registry import AdapterRegistry, AdapterVersion
from cowest_app.core.store import LogStore, PreferencePair
from tests.conftest import make_lora_adapter
from tests.system.app_process import ROOT, AppProcess, tiny_model_env, wait_for
from tests.system.users import LoadResult, run_users
from tests.served import served_pack

ADMIN_SECRET = "crash-test-admin-secret"
WRITERS = 4




def digest(folder: Path) -> str:
    """Hash of every file in an adapter folder, to prove it was not touched."""
    sha = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        sha.update(path.name.encode() + path.read_bytes())
    return sha.hexdigest()


def prepare_data_dir(data_dir: Path, model_dir: Path) -> str:
    """An active adapter v1 and 8 trainable pairs, as an earlier cycle would have left them."""
    registry = AdapterRegistry(data_dir / "adapters" / "general")
    staged = make_lora_adapter(model_dir, registry.staging_dir("v1"), seed=1)
    registry.register(staged, AdapterVersion(version="v1", status="candidate", base_model=str(model_dir)))
    registry.promote("v1")
    store = LogStore(data_dir / "cowest.sqlite3")
    for n in range(8):
        question = f"What is {n} + {n}?"
        store.log_pair(PreferencePair(
            domain="general", question=question, prompt=served_pack("general").weak_messages(question),
            chosen=f"Draft answer: {2 * n}.", rejected=f"Draft answer: {2 * n + 1}.", margin=1.0,
            evaluator="reference", chosen_score=1.0, rejected_score=0.0, confidence=1.0,
        ))
    return digest(registry.path("v1"))


def long_recipe(tmp_path: Path) -> Path:
    text = (ROOT / "training/recipes/dpo-tiny.yaml").read_text()
    assert "max_steps: 3" in text
    path = tmp_path / "dpo-long.yaml"
    path.write_text(text.replace("max_steps: 3", "max_steps: 100000").replace("torch_threads: 2", "torch_threads: 1"))
    return path


def training_children(staging: Path) -> list[psutil.Process]:
    """The DPO child processes writing into `staging` (their command line names it)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "training.dpo" in cmdline and f"output_dir={staging}" in cmdline:
            found.append(proc)
    return found


def thread_niceness(proc: psutil.Process) -> set[int]:
    """Niceness of each thread (Linux keeps it per thread): field 19 of /proc/PID/task/TID/stat."""
    values = set()
    for tid in os.listdir(f"/proc/{proc.pid}/task"):
        stat = Path(f"/proc/{proc.pid}/task/{tid}/stat").read_text()
        values.add(int(stat.rsplit(")", 1)[1].split()[16]))  # fields after the command name start at field 3
    return values


def still_running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Processes not yet exited (an exited orphan can linger as a zombie until init reaps it)."""
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def half_save_adapter(staging: Path) -> None:
    """What a kill in the middle of saving the adapter leaves: a config and a truncated weights file."""
    (staging / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (staging / "adapter_model.safetensors").write_bytes(b"\x00" * 100)


def feedback_rows(db_path: Path) -> int:
    with sqlite3.connect(db_path, timeout=10) as conn:
        return conn.execute("SELECT count(*) FROM feedback").fetchone()[0]


def progress_steps(staging: Path) -> int:
    path = staging / "progress.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_sigkill_mid_writes_and_mid_training_then_restart_recovers(tiny_model_dir: Path, tmp_path: Path):
    data_dir = tmp_path / "data"
    db_path = data_dir / "cowest.sqlite3"
    staging = data_dir / "adapters" / "general" / ".staging-v2"
    v1_digest = prepare_data_dir(data_dir, tiny_model_dir)
    env = tiny_model_env(tiny_model_dir, data_dir, COWEST_ADMIN_SECRET=ADMIN_SECRET,
                         COWEST_TRAIN_RECIPE=str(long_recipe(tmp_path)), COWEST_TRAIN_EVERY_MINUTES="60",
                         COWEST_TRAIN_MIN_PAIRS="2", COWEST_COLLECT_MAX_QUESTIONS="1", COWEST_FEEDBACK_K="2",
                         COWEST_CONCURRENCY="2")

    app = AppProcess.start(env, tmp_path / "first-run.log")
    stop_writers = threading.Event()
    written: list[LoadResult] = []
    writers = threading.Thread(target=lambda: written.append(run_users(app.url, WRITERS, 300, 5000, stop=stop_writers)))
    children: list[psutil.Process] = []
    try:
        writers.start()
        wait_for(lambda: feedback_rows(db_path) >= 10, 60, "the first ratings")
        assert Client(app.url, verbose=False).predict(ADMIN_SECRET, api_name="/admin_start") == "run started"
        children = wait_for(lambda: training_children(staging), 120, f"the training child\n{app.log_tail()}")
        wait_for(lambda: progress_steps(staging) >= 1, 180, f"a DPO step in {staging}")
        # Every thread of the child, torch's included, runs at the lowest priority: answers come first.
        assert {n for child in children for n in thread_niceness(child)} == {19}
        half_save_adapter(staging)
        app.kill()  # users are still writing, the child is still training
    finally:
        stop_writers.set()
        writers.join(timeout=120)
        app.kill()
    result = written[0]
    print(f"\ncrash: before the kill {result.summary()}")

    # The training child must not outlive the app (it would keep training, and write into the staging area).
    try:
        wait_for(lambda: not still_running(children), 15, "the training child to exit")
    finally:
        for proc in still_running(children):
            proc.kill()  # clean up our own orphan before failing
    assert "is gone; stopping this training run" in (staging / "train.log").read_text()

    restarted = AppProcess.start(env, tmp_path / "second-run.log")
    try:
        client = Client(restarted.url, verbose=False)
        *_, after_id = client.predict("Are you back?", "general", False, api_name="/ask")
        message, _ = client.predict(after_id, "collab", "after-restart", api_name="/rate_up")
        assert "recorded" in message
    finally:
        restarted.stop()

    # The database opens cleanly and holds every acknowledged row, once.
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        feedback = Counter(row["comment"] for row in conn.execute("SELECT comment FROM feedback"))
        interactions = {row["id"]: row for row in conn.execute("SELECT id, adapter_version FROM interactions")}
    assert len(result.acknowledged) >= 10
    assert [r.token for r in result.acknowledged if feedback[r.token] != 1] == []
    assert set(result.interaction_ids) <= set(interactions)
    assert feedback["after-restart"] == 1

    # The registry: v1 active and untouched, the half-written v2 gone, nothing else registered.
    registry = AdapterRegistry(data_dir / "adapters" / "general")
    assert registry.active().version == "v1"
    assert [(v.version, v.status) for v in registry.versions()] == [("v1", "active")]
    assert digest(registry.path("v1")) == v1_digest
    assert not list((data_dir / "adapters" / "general").glob(".staging-*"))
    assert interactions[after_id]["adapter_version"] == "v1"  # the restarted app serves with it

    log = restarted.log_path.read_text()
    assert "discarded half-written candidates from an earlier run: ['.staging-v2']" in log
    assert 'Added job "TrainingJob.run_cycle"' in log  # the retraining job is scheduled again
