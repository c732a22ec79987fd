"""Exports: JSONL and Parquet written from a real log, read back and compared."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from cowest_app.core.export import export_log, export_records, main
from cowest_app.core.store import Feedback, Interaction, LogStore, PreferencePair

AWKWARD = "emoji 🤖 中文 NUL\x00 line\u2028sep\x85 nl\n cr\r \ud83d lone"


@pytest.fixture
def store(tmp_path: Path) -> LogStore:
    store = LogStore(tmp_path / "data" / "cowest.sqlite3")
    a = store.log_interaction(Interaction(domain="code", question="q-a", final_answer="A",
                                          timings={"weak_ms": 800, "strong_ms": 3000}))
    store.log_feedback(Feedback(interaction_id=a, rating=1, session_id="s1"))
    store.log_feedback(Feedback(interaction_id=a, best="collab", comment=AWKWARD))
    # No feedback, different timing keys, failed status: the Parquet schema must still hold.
    store.log_interaction(Interaction(domain="math", question=AWKWARD, status="strong_failed",
                                      error="timeout", timings={"weak_ms": 12.5}))
    store.log_interaction(Interaction(domain="code", question="q-c"))
    return store


def test_jsonl_roundtrips(store: LogStore, tmp_path: Path) -> None:
    out = export_log(store, tmp_path / "out" / "log.jsonl", "jsonl")
    assert out == tmp_path / "out" / "log.jsonl"
    text = out.read_text(encoding="utf-8")
    lines = text.split("\n")
    assert lines[-1] == "" and len(lines) - 1 == 3  # one line per record, even with U+2028/NEL inside
    assert len(text.splitlines()) == 3
    assert "🤖" in text  # ensure_ascii=False: readable, not \\ud83e escapes

    records = [json.loads(line) for line in lines[:-1]]
    assert records == list(store.iter_records())
    by_q = {r["question"]: r for r in records}
    assert [f["rating"] for f in by_q["q-a"]["feedback"]] == [1, None]
    assert by_q["q-a"]["feedback"][1]["comment"] == AWKWARD.replace("\ud83d", "\ufffd")
    assert by_q["q-c"]["feedback"] == [] and by_q["q-c"]["timings"] == {}


def test_parquet_roundtrips(store: LogStore, tmp_path: Path) -> None:
    out, count = export_records(store, tmp_path / "log.parquet", "parquet")
    assert count == 3
    df = pd.read_parquet(out)
    assert len(df) == 3 and list(df["question"]) == [r["question"] for r in store.iter_records()]
    assert "timings" not in df.columns and "timings_json" in df.columns

    # pyarrow gives back exact Python values (pandas turns None into NaN).
    rows = pq.read_table(out).to_pylist()
    expected = list(store.iter_records())
    for row, record in zip(rows, expected, strict=True):
        assert json.loads(row.pop("timings_json")) == record.pop("timings")
        assert row == record  # every column, feedback nested, None kept
    assert rows[0]["feedback"][1]["comment"] == AWKWARD.replace("\ud83d", "\ufffd")


def test_parquet_with_datasets_and_no_feedback_at_all(tmp_path: Path) -> None:
    from datasets import Dataset

    store = LogStore(tmp_path / "cowest.sqlite3")
    store.log_interaction(Interaction(domain="code", question="only"))
    out = export_log(store, tmp_path / "log.parquet", "parquet")
    ds = Dataset.from_parquet(str(out), cache_dir=str(tmp_path / "hf-cache"))
    assert ds.num_rows == 1 and ds[0]["question"] == "only" and ds[0]["feedback"] == []
    assert ds.features["feedback"].feature["rating"].dtype == "int8"


def test_empty_log_exports(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "cowest.sqlite3")
    assert export_log(store, tmp_path / "e.jsonl", "jsonl").read_text() == ""
    assert len(pd.read_parquet(export_log(store, tmp_path / "e.parquet", "parquet"))) == 0


def test_unknown_format(store: LogStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="csv"):
        export_log(store, tmp_path / "x.csv", "csv")
    assert not (tmp_path / "x.csv").exists()


def test_failed_export_leaves_no_partial_file(store: LogStore, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "log.jsonl"
    out.write_text("previous export\n")

    def broken(batch: int = 500, session_id: str | None = None):
        yield {"id": "x"}
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store, "iter_records", broken)
    with pytest.raises(RuntimeError):
        export_log(store, out, "jsonl")
    assert out.read_text() == "previous export\n"  # old file untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_export_adds_no_extra_fields(store: LogStore, tmp_path: Path) -> None:
    record = json.loads(export_log(store, tmp_path / "log.jsonl", "jsonl").read_text().splitlines()[0])
    assert set(record) == {
        "id", "created_at", "session_id", "domain", "question", "weak_draft", "final_answer",
        "weak_alone", "strong_alone", "weak_model", "strong_model", "adapter_version",
        "timings", "status", "error", "client_id", "feedback",
    }


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_cli_writes_file(store: LogStore, tmp_path: Path, capsys, fmt: str) -> None:
    out = tmp_path / f"cli.{fmt}"
    assert main(["--data-dir", str(store.path.parent), "--format", fmt, "--out", str(out)]) == 0
    assert out.is_file()
    printed = capsys.readouterr().out
    assert str(out) in printed and "3 interactions" in printed


def test_cli_uses_env_data_dir_and_default_out(store: LogStore, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COWEST_DATA_DIR", str(store.path.parent))
    assert main([]) == 0
    exports = list((store.path.parent / "exports").glob("cowest-*.jsonl"))
    assert len(exports) == 1 and len(exports[0].read_text().splitlines()) == 3


def test_cli_missing_db(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere"
    assert main(["--data-dir", str(missing), "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "no log database" in err and str(missing / "cowest.sqlite3") in err
    assert not missing.exists()  # did not create an empty database


def test_cli_bad_format_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--data-dir", str(tmp_path), "--format", "csv"])
    assert exc.value.code == 2


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_pairs_export_is_what_dpo_trainer_reads(store: LogStore, tmp_path: Path, capsys, fmt: str) -> None:
    from datasets import load_dataset

    from tests.cowest_app.core.test_rows import PAIR

    store.log_pair(PreferencePair(**{**PAIR.__dict__, "id": None}))
    store.log_pair(PreferencePair(**{**PAIR.__dict__, "id": None, "trainable": False, "evaluator": "weak_judge",
                                     "confidence": 0.55}))
    out = tmp_path / f"pairs.{fmt}"
    assert main(["--data-dir", str(store.path.parent), "--table", "pairs", "--format", fmt, "--out", str(out)]) == 0
    assert "2 pairs" in capsys.readouterr().out
    pairs = load_dataset("json" if fmt == "jsonl" else "parquet", data_files=str(out), split="train")
    assert pairs["evaluator"] == ["reference", "weak_judge"] and pairs["confidence"] == [None, 0.55]
    assert pairs[0]["prompt"][-1] == {"role": "user", "content": "Which vitamin prevents scurvy?"}
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "Background: vitamin C."}]
