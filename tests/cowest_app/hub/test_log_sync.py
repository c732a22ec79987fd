from __future__ import annotations

import json
from pathlib import Path

from cowest_app.hub.publish import start_log_sync
from cowest_app.hub.log_sync import WATERMARKS, restore_log, write_log_shards
from cowest_app.core.store import Feedback, Interaction, LogStore, PreferencePair
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


def fill(store: LogStore) -> None:
    from tests.cowest_app.core.test_rows import PAIR

    first = store.log_interaction(Interaction(domain="general", question="a?", session_id="s1", timings={"weak_s": 1.0}))
    store.log_interaction(Interaction(domain="general", question="b?", timings={"strong_s": 2.0, "weak_s": 0.5}))
    store.log_feedback(Feedback(first, rating=1, comment="good"))
    store.log_pair(PreferencePair(**{**PAIR.__dict__, "id": None, "interaction_ids": (first,)}))


def test_the_mirror_loads_as_three_typed_configs(tmp_path: Path):
    from datasets import get_dataset_config_names, load_dataset

    store = LogStore(tmp_path / "log.sqlite3")
    folder = tmp_path / "mirror"
    fill(store)
    write_log_shards(store, folder)
    store.log_interaction(Interaction(domain="general", question="c?", error="late"))  # a second shard, other nulls
    write_log_shards(store, folder)
    assert sorted(get_dataset_config_names(str(folder))) == ["feedback", "interactions", "pairs"]
    interactions = load_dataset(str(folder), "interactions", split="train")
    assert sorted(interactions["question"]) == ["a?", "b?", "c?"]
    assert load_dataset(str(folder), "feedback", split="train")["comment"] == ["good"]
    pairs = load_dataset(str(folder), "pairs", split="train")
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "Background: vitamin C."}]
    assert pairs.features["confidence"].dtype == "float64"  # typed by the card, though every value is null


def test_restore_log_puts_every_row_back_once(tmp_path: Path):
    store = LogStore(tmp_path / "log.sqlite3")
    folder = tmp_path / "mirror"
    fill(store)
    write_log_shards(store, folder)
    (folder / WATERMARKS).unlink()  # a wiped disk: shards come back from the Hub, the bookkeeping does not

    fresh = LogStore(tmp_path / "fresh.sqlite3")
    assert restore_log(fresh, folder) == {"interactions": 2, "feedback": 1, "pairs": 1}
    assert list(fresh.iter_records()) == list(store.iter_records())
    assert list(fresh.iter_pairs(trainable_only=False)) == list(store.iter_pairs(trainable_only=False))
    assert write_log_shards(fresh, folder) == []  # restored rows are not mirrored a second time
