"""Export the interaction log to JSONL or Parquet.

JSONL keeps each record exactly as `LogStore.iter_records` yields it. Parquet
needs a fixed schema, so `timings` (whose keys vary by row) becomes a JSON
string column `timings_json`, and the schema is given explicitly so a log
where no interaction has feedback still gets a typed `feedback` column.

Files are written to a temporary name in the target folder and renamed into
place, so a reader never sees half an export. Exports contain only what the
store holds, which has no secrets.

    python -m cowest_app.core.export --data-dir data --format parquet --out log.parquet
    python -m cowest_app.core.export --table pairs --out pairs.jsonl   # the DPO preference pairs

Pairs are written in TRL's conversational preference format (`prompt`, `chosen`,
`rejected` message lists) with their provenance columns (`cowest_app.core.rows`), so
`DPOTrainer` reads the file as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from cowest_app.config import env_setting
from cowest_app.files import atomic_path
from cowest_app.core.store import INTERACTION_COLUMNS, LogStore

FORMATS = ("jsonl", "parquet")
TABLES = ("interactions", "pairs")
DB_NAME = "cowest.sqlite3"


def parquet_features():  # -> datasets.Features; imported lazily, it is slow to import
    from datasets import Features, List, Value

    text = Value("string")
    columns: dict[str, Any] = {name: text for name in INTERACTION_COLUMNS if name != "timings"}
    columns["timings_json"] = text
    columns["feedback"] = List(
        {
            "id": Value("int64"),
            "created_at": text,
            "session_id": text,
            "rating": Value("int8"),
            "best": text,
            "comment": text,
        }
    )
    return Features(columns)


def _parquet_row(record: dict[str, Any]) -> dict[str, Any]:
    row = {name: record[name] for name in INTERACTION_COLUMNS if name != "timings"}
    row["timings_json"] = json.dumps(record["timings"], ensure_ascii=False, sort_keys=True)
    row["feedback"] = record["feedback"]
    return row


# json.dumps escapes \n, \r and other C0 controls, but with ensure_ascii=False it
# leaves these raw, and str.splitlines() (and some JSONL readers) break on them.
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _json_line(record: dict[str, Any]) -> str:
    """One record as one line; ensure_ascii=False keeps non-English text readable."""
    text = json.dumps(record, ensure_ascii=False)
    for raw, escaped in _LINE_BREAKS.items():
        text = text.replace(raw, escaped)
    return text + "\n"


def _write_jsonl(store: LogStore, path: Path, session_id: str | None) -> int:
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for record in store.iter_records(session_id=session_id):
            fh.write(_json_line(record))
            count += 1
    return count


def _write_parquet(store: LogStore, path: Path, session_id: str | None) -> int:
    from datasets import Dataset

    features = parquet_features()
    columns: dict[str, list[Any]] = {name: [] for name in features}
    for record in store.iter_records(session_id=session_id):
        for name, value in _parquet_row(record).items():
            columns[name].append(value)
    # from_dict rather than from_list: from_list([]) drops the features and
    # fails on an empty log, while empty columns keep the schema.
    Dataset.from_dict(columns, features=features).to_parquet(str(path))
    return len(columns["id"])


def export_records(store: LogStore, out_path: Path, fmt: str, session_id: str | None = None) -> tuple[Path, int]:
    """Like `export_log`, also returning the number of interactions written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {FORMATS}")
    out_path = Path(out_path)
    writer = _write_jsonl if fmt == "jsonl" else _write_parquet
    with atomic_path(out_path) as tmp:
        count = writer(store, tmp, session_id)
    return out_path, count


def export_pairs(store: LogStore, out_path: Path, fmt: str, trainable_only: bool = False) -> tuple[Path, int]:
    """Every preference pair (or the trainable ones) as JSONL or Parquet rows of `rows.pair_row`."""
    from cowest_app.core import rows

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {FORMATS}")
    records = [rows.pair_row(p) for p in store.iter_pairs(trainable_only=trainable_only)]
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        if fmt == "jsonl":
            with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
                fh.writelines(_json_line(r) for r in records)
        else:
            from datasets import Dataset, Features

            features = Features._from_yaml_list(rows.card_features("pairs"))
            columns = {name: [r[name] for r in records] for name in features}
            Dataset.from_dict(columns, features=features).to_parquet(str(tmp))
    return out_path, len(records)


def export_log(store: LogStore, out_path: Path, fmt: str, session_id: str | None = None) -> Path:
    """The log (with `session_id`: that session's rows only) as JSONL or Parquet at `out_path`."""
    return export_records(store, out_path, fmt, session_id)[0]


def _default_data_dir() -> Path:
    return Path(env_setting("COWEST_DATA_DIR"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cowest_app.core.export", description="Export the CoWeSt log.")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding cowest.sqlite3 (default: $COWEST_DATA_DIR or ./data)")
    parser.add_argument("--table", choices=TABLES, default="interactions",
                        help="interactions with their feedback (default), or the DPO preference pairs")
    parser.add_argument("--format", choices=FORMATS, default="jsonl")
    parser.add_argument("--out", type=Path, default=None, help="output file (default: DATA_DIR/exports/cowest-<utc time>.<format>)")
    args = parser.parse_args(argv)

    data_dir = args.data_dir or _default_data_dir()
    db_path = data_dir / DB_NAME
    # Checked before opening: LogStore would otherwise create an empty database.
    if not db_path.is_file():
        print(f"error: no log database at {db_path} (set --data-dir or COWEST_DATA_DIR)", file=sys.stderr)
        return 2
    stem = "cowest" if args.table == "interactions" else "cowest-pairs"
    out = args.out or data_dir / "exports" / f"{stem}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.{args.format}"
    export = export_records if args.table == "interactions" else export_pairs
    path, count = export(LogStore(db_path), out, args.format)
    print(f"wrote {count} {args.table} to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
