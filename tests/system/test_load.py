"""Load: 20 simulated users ask and rate through gradio_client against the real app.

The app runs as a child process with a tiny random model in both roles, two
questions answered at once and a queue of at most 8 waiting requests, so 20
users overload it on purpose. Checked afterwards in SQLite: every rating the
server acknowledged is stored exactly once, no refused rating was stored, every
answered question is logged once, and no more questions ran at once than the
configured limit. Throughput and latency are printed (run with -s), not asserted:
bench/load.py measures them against a one-user baseline.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
from gradio_client import Client

from tests.system.app_process import AppProcess, tiny_model_env
from tests.system.users import run_users

USERS = 20
DURATION_S = 20.0
MAX_ASKS = 600  # bounds the run in count as well as in time
CONCURRENCY = 2
QUEUE_MAX_SIZE = 8


@pytest.fixture
def loaded_app(tiny_model_dir: Path, tmp_path: Path):
    env = tiny_model_env(tiny_model_dir, tmp_path / "data", COWEST_CONCURRENCY=str(CONCURRENCY),
                         COWEST_QUEUE_MAX_SIZE=str(QUEUE_MAX_SIZE))
    app = AppProcess.start(env, tmp_path / "server.log")
    try:
        yield app, tmp_path / "data" / "cowest.sqlite3"
    finally:
        app.stop()


def most_at_once(rows: list[sqlite3.Row]) -> int:
    """The most questions being answered at the same moment, from the logged timings.

    Each interaction is logged right after its last stage, and its stage times
    are measured inside the request, so [logged_at - stages, logged_at] lies
    within the request's real run: the overlap found here is a lower bound of
    the real one, and can only exceed the limit if the limit was broken.
    """
    import json

    events = []
    for row in rows:
        end = datetime.fromisoformat(row["created_at"]).timestamp()
        timings = json.loads(row["timings"])
        busy_s = (timings.get("weak_draft_ms", 0) + timings.get("final_answer_ms", 0)) / 1000
        events += [(end - busy_s, 1), (end, -1)]
    running = peak = 0
    for _, change in sorted(events):  # at a tie, -1 sorts first: one ends before the next starts
        running += change
        peak = max(peak, running)
    return peak


def test_twenty_users_ask_and_rate_and_every_acknowledged_rating_is_stored_once(loaded_app):
    app, db_path = loaded_app
    result = run_users(app.url, USERS, DURATION_S, MAX_ASKS)
    print(f"\nload: {result.summary()}")

    # After the burst the app still answers a newcomer.
    *_, interaction_id = Client(app.url, verbose=False).predict("Still there?", "general", False, api_name="/ask")
    assert interaction_id

    assert result.errors == [], result.errors[:5]
    assert len(result.acknowledged) >= USERS, "every user should complete at least one cycle"
    # The queue is bounded: overload was refused with a clear error rather than piled up.
    assert result.refused_asks + len(result.refused_ratings) > 0

    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        feedback = conn.execute("SELECT interaction_id, rating, comment FROM feedback").fetchall()
        interactions = conn.execute("SELECT id, status, created_at, timings FROM interactions").fetchall()

    stored = Counter(row["comment"] for row in feedback)
    by_comment = {row["comment"]: row for row in feedback}
    missing = [r.token for r in result.acknowledged if stored[r.token] == 0]
    twice = [token for token, n in stored.items() if n > 1]
    assert missing == [] and twice == []
    for rating in result.acknowledged:
        row = by_comment[rating.token]
        assert (row["interaction_id"], row["rating"]) == (rating.interaction_id, rating.rating)
    assert not [token for token in result.refused_ratings if stored[token]], "a refused rating was written"
    assert len(feedback) == len(result.acknowledged)

    logged = Counter(row["id"] for row in interactions)
    assert set(result.interaction_ids) | {interaction_id} == set(logged) and max(logged.values()) == 1
    assert {row["status"] for row in interactions} == {"ok"}
    peak = most_at_once(interactions)
    print(f"load: at most {peak} questions answered at once (limit {CONCURRENCY})")
    assert peak <= CONCURRENCY
