"""The `pairs` table of the log: append-only preference pairs with provenance."""

from __future__ import annotations

import math
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from cowest_app.core.store import Interaction, LogStore, PreferencePair, StoreError

PROMPT = [{"role": "system", "content": "You are an expert."}, {"role": "user", "content": "Question: why?"}]


def make_pair(**overrides) -> PreferencePair:
    values = dict(
        domain="general", question="why?", prompt=PROMPT, chosen="because A", rejected="because B",
        chosen_score=1.0, rejected_score=0.0, margin=1.0, evaluator="reference", confidence=1.0,
        trainable=True, interaction_ids=("i1",), details={"influences": [1.0, None, 0.0], "strong_alone_score": 0.0},
        weak_model="weak-m", strong_model="strong-m", adapter_version="v3",
    )
    values.update(overrides)
    return PreferencePair(**values)


@pytest.fixture
def store(tmp_path: Path) -> LogStore:
    return LogStore(tmp_path / "cowest.sqlite3")


def test_pair_roundtrip(store: LogStore) -> None:
    original = make_pair()
    pid = store.log_pair(original)
    [got] = store.iter_pairs()
    assert got.id == pid == store.max_pair_id() == 1
    assert got.created_at and got.created_at.endswith("+00:00")
    for name in PreferencePair.__dataclass_fields__:
        if name not in ("id", "created_at"):
            assert getattr(got, name) == getattr(original, name), name


def test_table_added_to_an_existing_log_without_a_version_bump(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    store = LogStore(path)
    iid = store.log_interaction(Interaction(domain="general", question="q"))
    with closing(sqlite3.connect(path)) as conn:  # a log written before pairs existed
        conn.execute("DROP TABLE pairs")
    reopened = LogStore(path)
    assert reopened.get_interaction(iid) is not None
    assert reopened.log_pair(make_pair()) == 1
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1


def test_iter_pairs_after_id_and_trainable_filter(store: LogStore) -> None:
    ids = [store.log_pair(make_pair(chosen=f"c{i}", trainable=i % 2 == 0)) for i in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    assert [p.chosen for p in store.iter_pairs()] == ["c0", "c2", "c4"]
    assert [p.chosen for p in store.iter_pairs(trainable_only=False)] == [f"c{i}" for i in range(5)]
    assert [p.id for p in store.iter_pairs(after_id=3, trainable_only=False, batch=1)] == [4, 5]
    assert list(store.iter_pairs(after_id=5)) == []


def test_pair_counts_by_evaluator(store: LogStore) -> None:
    assert store.max_pair_id() == 0
    assert store.pair_counts() == {e: {"total": 0, "trainable": 0} for e in ("reference", "strong_judge", "weak_judge", "weak_teacher", "human")}
    store.log_pair(make_pair(evaluator="weak_judge", trainable=False, confidence=0.51))
    store.log_pair(make_pair(evaluator="weak_judge"))
    store.log_pair(make_pair(evaluator="human", interaction_ids=("a", "b")))
    counts = store.pair_counts()
    assert counts["weak_judge"] == {"total": 2, "trainable": 1}
    assert counts["human"] == {"total": 1, "trainable": 1}
    assert counts["reference"] == {"total": 0, "trainable": 0}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"evaluator": "oracle"}, "evaluator"),
        ({"rejected": "because A"}, "different"),
        ({"chosen": ""}, "different"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [{"content": "no role"}]}, "prompt"),
        ({"margin": math.nan}, "margin"),
        ({"chosen_score": math.inf}, "chosen_score"),
        ({"confidence": 1.5}, "confidence"),
        ({"details": {"x": math.nan}}, "details"),
    ],
)
def test_invalid_pairs_refused(store: LogStore, overrides: dict, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        store.log_pair(make_pair(**overrides))
    assert store.max_pair_id() == 0


def test_awkward_text_is_stored(store: LogStore) -> None:
    store.log_pair(make_pair(chosen="lone \ud800 surrogate", details={"note": "\udfff"}))
    [got] = store.iter_pairs()
    assert got.chosen == "lone \ufffd surrogate" and got.details == {"note": "\ufffd"}


def test_concurrent_pair_writers(store: LogStore) -> None:
    def write(n: int) -> None:
        for i in range(10):
            store.log_pair(make_pair(chosen=f"w{n}-{i}"))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.max_pair_id() == 40
    assert len({p.chosen for p in store.iter_pairs()}) == 40


def test_a_log_whose_check_predates_the_weak_teacher_is_widened(tmp_path: Path) -> None:
    """SQLite cannot alter a CHECK constraint: opening an older log rebuilds its pairs table,
    keeping every row and id, and the next id follows on."""
    path = tmp_path / "old.sqlite3"
    store = LogStore(path)
    store.log_pair(make_pair(evaluator="weak_judge", confidence=0.7))
    store.log_pair(make_pair(evaluator="human"))
    with closing(sqlite3.connect(path)) as conn, conn:  # the table as an older version of the app created it
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'pairs'").fetchone()[0]
        old = sql.replace("'weak_teacher', ", "")
        assert old != sql
        conn.execute("PRAGMA writable_schema=ON")
        conn.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'pairs'", (old,))
        conn.execute("PRAGMA writable_schema=OFF")
    with closing(sqlite3.connect(path)) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO pairs (created_at, domain, question, prompt_json, chosen, rejected, margin, evaluator, "
                     "trainable) VALUES ('t', 'd', 'q', '[]', 'a', 'b', 1, 'weak_teacher', 1)")
    before = [(p.id, p.evaluator, p.created_at) for p in store.iter_pairs()]
    reopened = LogStore(path)
    assert [(p.id, p.evaluator, p.created_at) for p in reopened.iter_pairs()] == before
    assert reopened.log_pair(make_pair(evaluator="weak_teacher", confidence=0.8)) == 3
    assert reopened.pair_counts()["weak_teacher"] == {"total": 1, "trainable": 1}
    LogStore(path)  # already current: opening again changes nothing
    assert len(list(LogStore(path).iter_pairs())) == 3
