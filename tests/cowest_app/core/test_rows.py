from __future__ import annotations

from pathlib import Path

from cowest_app.core import rows
from cowest_app.core.store import Feedback, Interaction, LogStore, PreferencePair

PAIR = PreferencePair(
    domain="medicine", question="Which vitamin prevents scurvy?",
    prompt=[{"role": "system", "content": "Write background."}, {"role": "user", "content": "Which vitamin prevents scurvy?"}],
    chosen="Background: vitamin C.", rejected="Background: vitamin D.", margin=1.0, evaluator="reference",
    chosen_score=1.0, rejected_score=0.0, confidence=None, interaction_ids=("a1", "a2"),
    details={"k": 4}, id=7, created_at="2026-12-02T10:00:00.000000+00:00",
)


def test_a_pair_row_is_trl_conversational_and_reads_back_as_the_same_pair() -> None:
    row = rows.pair_row(PAIR)
    assert row["prompt"][1] == {"role": "user", "content": "Which vitamin prevents scurvy?"}
    assert row["chosen"] == [{"role": "assistant", "content": "Background: vitamin C."}]
    assert row["rejected"] == [{"role": "assistant", "content": "Background: vitamin D."}]
    assert row["interaction_ids"] == ["a1", "a2"] and row["details_json"] == '{"k": 4}'
    assert rows.pair_from_row(row) == PAIR


def test_interaction_and_feedback_rows_read_back() -> None:
    record = {"id": "a1", "created_at": "2026-12-02T10:00:00+00:00", "session_id": "s", "domain": "general",
              "question": "q?", "weak_draft": "d", "final_answer": "f", "weak_alone": None, "strong_alone": None,
              "weak_model": "w", "strong_model": "s", "adapter_version": "v2", "timings": {"weak_s": 1.5},
              "status": "ok", "error": None, "client_id": "c1"}
    row = rows.interaction_row(record)
    assert row["timings_json"] == '{"weak_s": 1.5}' and "timings" not in row
    assert rows.interaction_from_row(row) == Interaction(**{**record, "timings": {"weak_s": 1.5}})
    # a shard written before timings became a string column
    assert rows.interaction_from_row({**row, "timings": {"x": 2.0}}).timings == {"x": 2.0}
    event = {"id": 3, "created_at": "t", "session_id": "s", "rating": 1, "best": "collab", "comment": None}
    assert rows.feedback_from_row(rows.feedback_row("a1", event)) == Feedback(interaction_id="a1", **event)


def test_card_features_match_the_column_types() -> None:
    from datasets import Features

    features = Features._from_yaml_list(rows.card_features("pairs"))
    assert list(features) == list(rows.FEATURES["pairs"])
    assert features["prompt"].feature == {"role": features["question"], "content": features["question"]}


def test_store_restore_keeps_ids_and_skips_what_it_has(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "log.sqlite3")
    interaction = Interaction(domain="general", question="q?", id="a1", created_at="2026-12-02T10:00:00+00:00")
    orphan = Feedback(interaction_id="missing", rating=1, id=5, created_at="t")
    added = store.restore([interaction], [Feedback("a1", rating=-1, id=4, created_at="t"), orphan], [PAIR])
    assert added == {"interactions": 1, "feedback": 1, "pairs": 1}
    assert [p.id for p in store.iter_pairs(trainable_only=False)] == [7]
    assert store.feedback_for("a1")[0].id == 4
    assert store.restore([interaction], [], [PAIR]) == {"interactions": 0, "feedback": 0, "pairs": 0}
    assert store.log_pair(PreferencePair(**{**PAIR.__dict__, "id": None, "created_at": None})) == 8  # ids go on
