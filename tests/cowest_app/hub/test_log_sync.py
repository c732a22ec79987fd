from __future__ import annotations

import json
from pathlib import Path

from cowest_app.hub.publish import start_log_sync
from cowest_app.hub.log_sync import write_log_shards
from cowest_app.core.store import Feedback, Interaction, LogStore
from tests.fakes.hub_server import serve_hub


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shards_only_ever_add_new_rows(tmp_path: Path):
    store = LogStore(tmp_path / "log.sqlite3")
    folder = tmp_path / "shards"
    first = store.log_interaction(Interaction(domain="general", question="a?"))
    store.log_feedback(Feedback(first, rating=1))
    written = write_log_shards(store, folder)
    assert [p.parent.name for p in written] == ["interactions", "feedback"]
    assert [r["question"] for r in lines(written[0])] == ["a?"]
    assert write_log_shards(store, folder) == []  # nothing new, no new file

    second = store.log_interaction(Interaction(domain="general", question="b?"))
    store.log_feedback(Feedback(first, rating=-1, comment="changed my mind"))
    store.log_feedback(Feedback(second, best="weak"))
    written = write_log_shards(store, folder)
    assert [r["question"] for r in lines(written[0])] == ["b?"]
    assert [(r["interaction_id"], r["rating"]) for r in lines(written[1])] == [(first, -1), (second, None)]
    all_files = sorted(folder.rglob("*.jsonl"))
    assert len(all_files) == 4


def test_shards_reach_the_dataset_repo(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    store = LogStore(tmp_path / "log.sqlite3")
    store.log_interaction(Interaction(domain="general", question="synced?"))
    folder = tmp_path / "shards"
    write_log_shards(store, folder)
    with serve_hub() as hub:
        scheduler = start_log_sync(folder, "cowest/feedback-log", "hf_x", hub.endpoint, every_minutes=60)
        try:
            scheduler.trigger().result(timeout=30)
        finally:
            scheduler.stop()
        files = hub.repo("cowest/feedback-log", "dataset").resolve("main").files
    [name] = [f for f in files if f.startswith("interactions/")]
    assert b"synced?" in files[name]
    assert not any(".watermarks" in f for f in files)  # bookkeeping stays local
