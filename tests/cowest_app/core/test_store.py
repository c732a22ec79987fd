"""The SQLite log: real database files, real threads and real processes."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cowest_app.core.store import Feedback, Interaction, LogStore, StoreError, storable as clean_text


def make_interaction(**overrides) -> Interaction:
    values = dict(
        domain="code",
        question="How do I reverse a list in Python?",
        weak_draft="Use reversed().",
        final_answer="Use `lst[::-1]` or `lst.reverse()`.",
        weak_alone="reversed()",
        strong_alone="lst[::-1]",
        weak_model="packaged:smollm2-135m-instruct",
        strong_model="packaged:qwen2.5-coder-1.5b-instruct",
        adapter_version="v1",
        timings={"weak_ms": 812, "strong_ms": 3010.5},
        status="ok",
        session_id="sess-1",
    )
    values.update(overrides)
    return Interaction(**values)


@pytest.fixture
def store(tmp_path: Path) -> LogStore:
    return LogStore(tmp_path / "nested" / "dir" / "cowest.sqlite3")


def test_creates_parent_dirs_schema_and_wal(store: LogStore) -> None:
    assert store.path.is_file()
    with closing(sqlite3.connect(store.path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"interactions", "feedback"} <= tables
    assert "feedback_interaction" in indexes


def test_reopening_an_existing_db_is_harmless(store: LogStore) -> None:
    iid = store.log_interaction(make_interaction())
    again = LogStore(store.path)
    assert again.get_interaction(iid) is not None
    assert again.counts()["interactions"] == 1


def test_newer_schema_is_refused(store: LogStore) -> None:
    with closing(sqlite3.connect(store.path)) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(StoreError, match="v99"):
        LogStore(store.path)


def test_interaction_roundtrip(store: LogStore) -> None:
    original = make_interaction()
    iid = store.log_interaction(original)
    assert len(iid) == 32 and int(iid, 16) >= 0  # uuid4 hex

    got = store.get_interaction(iid)
    assert got is not None
    assert got.id == iid
    assert got.created_at and got.created_at.endswith("+00:00")
    assert got.timings == {"weak_ms": 812.0, "strong_ms": 3010.5}
    for name in ("domain", "question", "weak_draft", "final_answer", "weak_alone", "strong_alone",
                 "weak_model", "strong_model", "adapter_version", "status", "error", "session_id"):
        assert getattr(got, name) == getattr(original, name), name


def test_failed_interaction_with_missing_parts(store: LogStore) -> None:
    iid = store.log_interaction(
        Interaction(domain="math", question="2+2?", status="strong_failed", error="timeout after 120 s")
    )
    got = store.get_interaction(iid)
    assert got == Interaction(domain="math", question="2+2?", status="strong_failed",
                              error="timeout after 120 s", id=iid, created_at=got.created_at)
    assert got.final_answer is None and got.timings == {}


def test_unknown_interaction_is_none(store: LogStore) -> None:
    assert store.get_interaction("nope") is None
    assert store.feedback_for("nope") == []


def test_caller_chosen_id_is_kept_and_duplicates_refused(store: LogStore) -> None:
    assert store.log_interaction(make_interaction(id="fixed-id")) == "fixed-id"
    with pytest.raises(StoreError, match="already logged"):
        store.log_interaction(make_interaction(id="fixed-id"))
    assert store.counts()["interactions"] == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "12", None, True])
def test_bad_timings_refused(store: LogStore, bad) -> None:
    with pytest.raises(StoreError, match="timing"):
        store.log_interaction(make_interaction(timings={"weak_ms": bad}))
    assert store.counts()["interactions"] == 0


def test_feedback_roundtrip(store: LogStore) -> None:
    iid = store.log_interaction(make_interaction())
    first = store.log_feedback(Feedback(interaction_id=iid, rating=1, session_id="sess-1"))
    second = store.log_feedback(Feedback(interaction_id=iid, best="collab", comment="clearer"))
    third = store.log_feedback(Feedback(interaction_id=iid, rating=-1, best="strong", comment="  wrong  "))
    assert first < second < third

    events = store.feedback_for(iid)
    assert [(f.id, f.rating, f.best, f.comment) for f in events] == [
        (first, 1, None, None),
        (second, None, "collab", "clearer"),
        (third, -1, "strong", "  wrong  "),  # stored as typed, not trimmed
    ]
    assert all(f.interaction_id == iid and f.created_at for f in events)
    assert events[0].session_id == "sess-1"
    assert store.counts() == {"interactions": 1, "feedback": 3, "thumbs_up": 1, "thumbs_down": 1}


def test_feedback_for_unknown_interaction(store: LogStore) -> None:
    with pytest.raises(StoreError, match="unknown interaction id 'ghost'"):
        store.log_feedback(Feedback(interaction_id="ghost", rating=1))
    assert store.counts()["feedback"] == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rating": 2}, "rating"),
        ({"rating": 0}, "rating"),
        ({"rating": True}, "rating"),
        ({"rating": "1"}, "rating"),
        ({"best": "both"}, "best"),
        ({"best": ""}, "best"),
        ({}, "empty feedback"),
        ({"comment": ""}, "empty feedback"),
        ({"comment": " \n\t"}, "empty feedback"),
    ],
)
def test_invalid_feedback(store: LogStore, kwargs, message) -> None:
    iid = store.log_interaction(make_interaction())
    with pytest.raises(StoreError, match=message):
        store.log_feedback(Feedback(interaction_id=iid, **kwargs))
    assert store.counts()["feedback"] == 0


def test_store_error_is_a_value_error() -> None:
    assert issubclass(StoreError, ValueError)


def test_awkward_text_does_not_crash(store: LogStore) -> None:
    weird = "emoji 🤖🧪 中文 عربي NUL\x00 bell\x07 esc\x1b line\u2028sep \r\n tab\t"
    lone = "broken \ud83d paste \udc00 end"
    iid = store.log_interaction(make_interaction(question=weird, final_answer=lone, domain="🧮"))
    store.log_feedback(Feedback(interaction_id=iid, comment=lone + weird, rating=-1))

    got = store.get_interaction(iid)
    assert got.question == weird  # exactly as typed, NUL included
    assert got.domain == "🧮"
    assert got.final_answer == "broken \ufffd paste \ufffd end"
    assert store.feedback_for(iid)[0].comment == "broken \ufffd paste \ufffd end" + weird


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# characters() leaves out surrogates by default; mix them back in explicitly.
@given(text=st.text(alphabet=st.characters() | st.characters(categories=["Cs"]), max_size=40))
def test_any_text_roundtrips(store: LogStore, text: str) -> None:
    iid = store.log_interaction(make_interaction(question=text, session_id=text))
    got = store.get_interaction(iid)
    assert got.question == got.session_id == clean_text(text)
    got.question.encode("utf-8")  # always valid UTF-8 after storing


def test_durable_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "cowest.sqlite3"
    first = LogStore(path)
    iid = first.log_interaction(make_interaction())
    fid = first.log_feedback(Feedback(interaction_id=iid, rating=1))
    del first

    reopened = LogStore(path)
    assert reopened.get_interaction(iid).question == make_interaction().question
    assert [f.id for f in reopened.feedback_for(iid)] == [fid]


def test_no_update_or_delete_api() -> None:
    public = {name for name in dir(LogStore) if not name.startswith("_")}
    assert not {n for n in public if any(w in n for w in ("update", "delete", "remove", "clear"))}


def test_iter_records_nests_feedback_in_order(store: LogStore) -> None:
    ids = [
        store.log_interaction(make_interaction(question=f"q{i}", created_at=f"2024-01-0{i}T00:00:00.000000+00:00"))
        for i in (3, 1, 2)
    ]
    store.log_feedback(Feedback(interaction_id=ids[0], rating=1))
    store.log_feedback(Feedback(interaction_id=ids[0], best="weak"))
    store.log_feedback(Feedback(interaction_id=ids[2], comment="ok"))

    records = list(store.iter_records(batch=2))  # batch smaller than the table
    assert [r["question"] for r in records] == ["q1", "q2", "q3"]
    by_q = {r["question"]: r for r in records}
    assert [(f["rating"], f["best"]) for f in by_q["q3"]["feedback"]] == [(1, None), (None, "weak")]
    assert by_q["q1"]["feedback"] == []
    assert by_q["q2"]["feedback"][0]["comment"] == "ok"
    assert set(by_q["q2"]["feedback"][0]) == {"id", "created_at", "session_id", "rating", "best", "comment"}
    assert by_q["q3"]["timings"] == {"weak_ms": 812.0, "strong_ms": 3010.5}
    assert by_q["q3"]["id"] == ids[0]


def test_iter_records_empty_and_abandoned(store: LogStore) -> None:
    assert list(store.iter_records()) == []
    for i in range(3):
        store.log_interaction(make_interaction(question=f"q{i}"))
    records = store.iter_records(batch=1)
    next(records)
    records.close()  # abandoning the walk must release its read transaction
    store.log_interaction(make_interaction())
    assert store.counts()["interactions"] == 4


# -- concurrency -------------------------------------------------------------

THREADS, PER_THREAD = 8, 50


def test_concurrent_threads(store: LogStore) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for i in range(PER_THREAD):
                iid = store.log_interaction(make_interaction(question=f"t{t}-{i}", session_id=f"t{t}"))
                store.log_feedback(Feedback(interaction_id=iid, rating=1 if i % 2 else -1))
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()

    assert errors == []
    total = THREADS * PER_THREAD
    questions = sorted(r["question"] for r in store.iter_records())
    assert questions == sorted(f"t{t}-{i}" for t in range(THREADS) for i in range(PER_THREAD))
    assert store.counts() == {"interactions": total, "feedback": total, "thumbs_up": total // 2, "thumbs_down": total // 2}
    assert all(len(r["feedback"]) == 1 for r in store.iter_records())


def _process_writer(path: str, tag: str, n: int, start) -> None:
    # Top level so the spawn start method can import it in the child.
    store = LogStore(Path(path))
    start.wait()
    for i in range(n):
        iid = store.log_interaction(make_interaction(question=f"{tag}-{i}"))
        store.log_feedback(Feedback(interaction_id=iid, best="collab"))


def test_concurrent_processes(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"  # created by the children, racing each other
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_process_writer, args=(str(path), f"p{p}", 40, start)) for p in range(2)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0, 0]

    store = LogStore(path)
    questions = sorted(r["question"] for r in store.iter_records())
    assert questions == sorted(f"p{p}-{i}" for p in range(2) for i in range(40))
    assert store.counts()["feedback"] == 80


def test_a_log_from_before_client_ids_gains_the_column(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    LogStore(path)
    with sqlite3.connect(path) as conn:  # the table as it shipped before the column existed
        conn.execute("ALTER TABLE interactions DROP COLUMN client_id")
        conn.execute("INSERT INTO interactions (id, created_at, domain, question, status) VALUES ('a', 't', 'g', 'q?', 'ok')")
    store = LogStore(path)
    assert store.get_interaction("a").client_id is None
    iid = store.log_interaction(Interaction(domain="g", question="q2?", client_id="h"))
    assert store.clients_of(["a", iid]) == {"a": None, iid: "h"}
