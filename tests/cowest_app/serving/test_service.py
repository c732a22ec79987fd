from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from cowest_app.config import AppConfig
from cowest_app.models.local import TransformersBackend
from cowest_app.models.remote import InferenceClientBackend
from cowest_app.core.prompts import InputError
from cowest_app.serving.service import CollabService
from tests.served import drafting_packs
from cowest_app.core.store import LogStore
from tests.fakes.openai_server import closed_port_url


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> TransformersBackend:
    return TransformersBackend(str(tiny_model_dir))


@pytest.fixture
def service(tmp_path: Path, tiny) -> CollabService:
    config = AppConfig(data_dir=tmp_path, weak_max_new_tokens=8, strong_max_new_tokens=8, max_question_chars=200)
    return CollabService(config, tiny, tiny, LogStore(config.db_path), drafting_packs())


def rows(db: Path, table: str) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(f"SELECT * FROM {table}").fetchall()


def test_ask_streams_then_logs_once(service: CollabService):
    updates = list(service.ask("  Is aspirin an NSAID?  ", "medicine", session_id="s1"))
    assert len(updates) > 3 and all(u.interaction_id is None for u in updates[:-1])
    last = updates[-1]
    assert last.interaction_id and last.snapshot.done
    [row] = rows(service.config.db_path, "interactions")
    assert row["id"] == last.interaction_id
    assert (row["question"], row["domain"], row["status"], row["session_id"]) == ("Is aspirin an NSAID?", "medicine", "ok", "s1")
    assert row["weak_draft"] == last.snapshot.stages["weak_draft"].text
    assert row["final_answer"] == last.snapshot.stages["final_answer"].text
    assert row["adapter_version"] == "base"
    timings = json.loads(row["timings"])
    assert timings["weak_draft_ms"] > 0 and timings["final_answer_ms"] > 0


def test_compare_logs_all_answers(service: CollabService):
    last = list(service.ask("Q?", "ethics", compare=True))[-1]
    row = service.store.get_interaction(last.interaction_id)
    assert row.weak_alone and row.strong_alone


@pytest.mark.parametrize("question, domain, message", [
    ("", "general", "type a question"),
    ("   \n ", "general", "type a question"),
    ("x" * 201, "general", "limit is 200"),
    ("fine", "astrology", "Unsupported domain"),
])
def test_bad_input_is_refused_before_any_work(service: CollabService, question, domain, message):
    with pytest.raises(InputError, match=message):
        list(service.ask(question, domain))
    assert rows(service.config.db_path, "interactions") == []


def test_rating_is_stored(service: CollabService):
    iid = list(service.ask("Q?", "general"))[-1].interaction_id
    service.rate(iid, rating="up", session_id="s1")
    service.rate(iid, best="weak", comment="the draft was better")
    fb = rows(service.config.db_path, "feedback")
    assert [(r["rating"], r["best"], r["comment"]) for r in fb] == [(1, None, None), (None, "weak", "the draft was better")]


@pytest.mark.parametrize("kwargs, message", [
    (dict(interaction_id=None, rating="up"), "Ask a question first"),
    (dict(interaction_id="nope", rating="up"), "nope"),
    (dict(interaction_id="x", rating="meh"), "Unknown rating"),
    (dict(interaction_id="x", best="neither"), "Unknown choice"),
])
def test_bad_feedback_is_a_clear_error(service: CollabService, kwargs, message):
    with pytest.raises(InputError, match=message):
        service.rate(**kwargs)


def test_too_long_comment(service: CollabService):
    iid = list(service.ask("Q?", "general"))[-1].interaction_id
    with pytest.raises(InputError, match="limit is 2000"):
        service.rate(iid, comment="c" * 2001)


def test_strong_failure_is_logged_with_the_weak_draft(tmp_path: Path, tiny):
    config = AppConfig(data_dir=tmp_path, weak_max_new_tokens=8)
    strong = InferenceClientBackend(model="m", base_url=closed_port_url(), timeout_s=2)
    service = CollabService(config, tiny, strong, LogStore(config.db_path), drafting_packs())
    last = list(service.ask("Q?", "general"))[-1]
    [row] = rows(config.db_path, "interactions")
    assert row["id"] == last.interaction_id
    assert row["status"] == "final_answer_failed" and "unreachable" in row["error"]
    assert row["weak_draft"] and row["weak_draft"] == last.snapshot.stages["weak_draft"].text


def test_abandoned_question_is_still_logged(service: CollabService):
    updates = service.ask("Q?", "general")
    for _ in range(3):
        next(updates)
    updates.close()  # the browser tab closed mid-answer
    [row] = rows(service.config.db_path, "interactions")
    assert row["status"] == "cancelled" and row["question"] == "Q?"


def test_export_writes_every_interaction(service: CollabService):
    for q in ("a?", "b?"):
        iid = list(service.ask(q, "general"))[-1].interaction_id
        service.rate(iid, rating="down")
    path = service.export("jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["question"] for r in lines] == ["a?", "b?"]
    assert all(r["feedback"][0]["rating"] == -1 for r in lines)


def test_a_sessions_export_holds_its_own_rows_only(service: CollabService):
    mine = list(service.ask("my own question?", "general", session_id="A"))[-1].interaction_id
    theirs = list(service.ask("someone else's secret?", "general", session_id="B"))[-1].interaction_id
    service.rate(mine, rating="up", comment="mine", session_id="A")
    service.rate(theirs, rating="down", comment="their comment", session_id="B")
    for fmt in ("jsonl", "parquet"):
        path = service.export(fmt, session_id="A")
        if fmt == "jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines()]
        else:
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        assert [(r["question"], [f["comment"] for f in r["feedback"]]) for r in rows] == [("my own question?", ["mine"])]
        assert b"secret" not in path.read_bytes() and b"their comment" not in path.read_bytes()
    assert not [json.loads(line) for line in service.export("jsonl", session_id="nobody").read_text().splitlines()]


def test_the_app_serves_its_packs_with_the_adapter_each_ships(tmp_path: Path, tiny_model_dir: Path, tiny_adapters):
    import shutil

    from cowest_app.loop.registry import AdapterRegistry
    from cowest_app.serving.service import build_weak, load_served_packs

    # A pack shipping the adapter its pipeline trained, served first, and a pack without one.
    shipped = tmp_path / "packs" / "general"
    shutil.copytree(Path("packs/general"), shipped)
    shutil.copytree(tiny_adapters["v1"], shipped / "adapter")
    (shipped / "adapter" / "shipped.json").write_text(json.dumps(
        {"base_model": "tiny", "data_sha256": "abc", "command": "python -m training.pipeline ...",
         "results": {"recall": 0.5}}))
    config = AppConfig(data_dir=tmp_path / "data", weak_model=str(tiny_model_dir), weak_4bit=False,
                       packs=(str(shipped), "packs/ethics"), weak_max_new_tokens=8, strong_max_new_tokens=8)
    packs = load_served_packs(config)
    weak = build_weak(config, packs)
    service = CollabService(config, weak, TransformersBackend(str(tiny_model_dir)), LogStore(config.db_path), packs)

    registry = AdapterRegistry(config.pack_adapters_dir("general"))
    installed = registry.active()
    assert (installed.version, installed.data_hash, installed.metrics) == ("v1", "abc", {"recall": 0.5})
    assert service.default_pack == "general" and weak.adapter_versions() == {"general": "v1"}
    general = list(service.ask("Why is the sky blue?", "general"))[-1]
    ethics = list(service.ask("Is lying wrong?", "ethics"))[-1]
    logged = {r.domain: r.adapter_version for r in map(service.store.get_interaction,
                                                        (general.interaction_id, ethics.interaction_id))}
    # ethics has no adapter and drafts only with one: the strong model answered alone, no adapter used
    assert logged == {"general": "v1", "ethics": None}
    assert service.store.get_interaction(ethics.interaction_id).status == "fallback:no specialist for this domain"
    # Restarting does not install it twice.
    build_weak(config, packs)
    assert [v.version for v in registry.versions()] == ["v1"]


def test_packs_that_cannot_be_served_stop_the_start_with_a_clear_error(tmp_path: Path):
    from cowest_app.config import ConfigError
    from cowest_app.serving.service import load_served_packs

    with pytest.raises(ConfigError, match="COWEST_PACKS: .*not a directory"):
        load_served_packs(AppConfig(packs=(str(tmp_path / "missing"),)))
    with pytest.raises(ConfigError, match="two packs are named 'general'"):
        load_served_packs(AppConfig(packs=("packs/general", "packs/general")))
    with pytest.raises(ConfigError, match="COWEST_TRAIN_PACK='medicine' is not served"):
        load_served_packs(AppConfig(packs=("packs/general",), train_pack="medicine"))


@pytest.mark.parametrize("stop_in", ["weak_draft", "final_answer"])
def test_stop_ends_both_stages_fast_and_logs_the_run_as_cancelled(tmp_path: Path, tiny, stop_in: str):
    """Stop comes from another request (thread) while the run waits on the model; stopping the
    draft also means the strong stage never starts."""
    import threading
    import time

    from cowest_app.serving.pipeline import COLLAB, WEAK

    # The stage to stop gets a budget of several seconds; the other a short one.
    budget = {WEAK: "weak_max_new_tokens", COLLAB: "strong_max_new_tokens"}[stop_in]
    config = AppConfig(data_dir=tmp_path, **{"weak_max_new_tokens": 8, "strong_max_new_tokens": 8, budget: 3000})
    service = CollabService(config, tiny, tiny, LogStore(config.db_path), drafting_packs())
    updates = []
    consumer = threading.Thread(target=lambda: updates.extend(service.ask("Tell me all.", "general", session_id="s1")))
    consumer.start()
    deadline = time.monotonic() + 60
    while not (updates and updates[-1].snapshot.stages[stop_in].text) and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    assert service.stop("s1")
    consumer.join(timeout=10)
    assert not consumer.is_alive() and time.monotonic() - started < 1.5
    last = updates[-1]
    assert last.stopped and last.interaction_id
    stages = last.snapshot.stages
    assert stages[stop_in].status == "stopped"
    if stop_in == WEAK:
        assert stages[COLLAB].status == "stopped" and stages[COLLAB].text == ""  # never started
    else:
        assert stages[WEAK].status == "done"
    row = service.store.get_interaction(last.interaction_id)
    assert row.status == "cancelled" and row.final_answer == stages[COLLAB].text
    assert not service.stop("s1")  # nothing left running
    assert not service.stop(None)


def test_a_truncated_stage_names_its_token_limit(service: CollabService):
    from cowest_app.serving.pipeline import COLLAB, truncated_at
    from cowest_app.serving.ui import stage_table

    last = list(service.ask("Name every NSAID.", "general"))[-1]
    assert truncated_at(last.snapshot.stages[COLLAB]) == 8
    assert "stopped at the 8-token limit" in stage_table(last.snapshot)


def test_history_is_the_sessions_own_newest_first_with_ratings(service: CollabService):
    first = list(service.ask("First?", "general", session_id="mine"))[-1].interaction_id
    list(service.ask("Someone else's?", "general", session_id="theirs"))
    second = list(service.ask("Second?", "ethics", session_id="mine"))[-1].interaction_id
    service.rate(first, rating="up", session_id="mine")
    service.rate(first, rating="down", best="strong", session_id="mine")  # a changed vote: the newest stands
    rows = service.history("mine")
    assert [(r["id"], r["question"], r["domain"]) for r in rows] == [(second, "Second?", "ethics"),
                                                                     (first, "First?", "general")]
    assert (rows[1]["rating"], rows[1]["best"], rows[0]["rating"]) == ("👎", "strong", "")
    assert service.history(None) == [] and service.history("nobody") == []


@pytest.mark.parametrize(("app_budget", "expected"), [(300, 160), (100, 100)])
def test_a_packs_answer_budget_applies_where_it_is_shorter(tmp_path: Path, tiny, app_budget, expected):
    config = AppConfig(data_dir=tmp_path, strong_max_new_tokens=app_budget)
    service = CollabService(config, tiny, tiny, LogStore(config.db_path))
    general = service.get_pack("general")
    assert general.answer_tokens == 160
    assert service.strong_options(general).max_new_tokens == expected
    assert service.strong_options(service.get_pack("medicine")).max_new_tokens == app_budget  # no budget of its own
