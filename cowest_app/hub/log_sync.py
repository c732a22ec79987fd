"""Append-only JSONL shards of the feedback log, mirrored to a Hub dataset repo, and read back.

Every sync writes the interactions, feedback events and preference pairs that are new
since the last one into fresh files (never rewriting an old one), so the dataset repo
only ever gains files and a `CommitScheduler` can push them as they come. A dataset
card (README.md) declares one `datasets` config per table with its column types, so
`load_dataset(repo, "pairs")` works on the mirror. On an ephemeral disk (a Space
restart) `restore_log` downloads the mirror and puts every row back, ids included.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from cowest_app.core import rows
from cowest_app.core.store import LogStore
from cowest_app.files import write_atomic

log = logging.getLogger(__name__)
WATERMARKS = ".watermarks.json"
CARD = "README.md"
# What the CommitScheduler pushes and a restore downloads: each table's shards and the card; never
# the watermarks, nor the training inputs a Hugging Face Job reads from the same repo.
MIRRORED = [f"{table}/*.jsonl" for table in rows.TABLES] + [CARD]


def write_log_shards(store: LogStore, folder: Path) -> list[Path]:
    """Write new interactions, feedback and pairs as new shard files; returns them."""
    folder.mkdir(parents=True, exist_ok=True)
    marks_path = folder / WATERMARKS
    marks = json.loads(marks_path.read_text()) if marks_path.is_file() else {}
    new = _new_rows(store, marks)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    written = []
    for table in rows.TABLES:
        if not new[table]:
            continue
        path = folder / table / f"{table}-{stamp}.jsonl"
        path.parent.mkdir(exist_ok=True)
        write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new[table]))
        marks[table] = new[table][-1]["id" if table == "pairs" else "created_at"]
        written.append(path)
    if written:
        write_atomic(marks_path, json.dumps(marks))
        write_atomic(folder / CARD, dataset_card([t for t in rows.TABLES if any((folder / t).glob("*.jsonl"))]))
    return written


def _new_rows(store: LogStore, marks: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    new: dict[str, list[dict[str, Any]]] = {table: [] for table in rows.TABLES}
    for record in store.iter_records():
        if record["created_at"] > marks.get("interactions", ""):
            new["interactions"].append(rows.interaction_row(record))
        for event in record["feedback"]:
            if event["created_at"] > marks.get("feedback", ""):
                new["feedback"].append(rows.feedback_row(record["id"], event))
    new["pairs"] = [rows.pair_row(p) for p in store.iter_pairs(after_id=int(marks.get("pairs", 0)), trainable_only=False)]
    for table in ("interactions", "feedback"):
        new[table].sort(key=lambda r: r["created_at"])
    return new


def dataset_card(tables: list[str]) -> str:
    """The mirror's README.md: a `datasets` config per table, typed, and what each holds."""
    meta = {
        "configs": [{"config_name": t, "data_files": [{"split": "train", "path": f"{t}/*.jsonl"}]} for t in tables],
        "dataset_info": [{"config_name": t, "features": rows.card_features(t)} for t in tables],
        "tags": ["cowest", "preference", "dpo", "human-feedback"],
    }
    body = (
        "# CoWeSt feedback log\n\n"
        "Mirrored by a CoWeSt app: what its users asked, how they rated the answers, and the preference\n"
        "pairs its weak model is trained on with DPO. It holds users' questions: keep the repo private.\n\n"
        "| config | one row per |\n|---|---|\n"
        "| `interactions` | question asked: weak draft, final answer, models, adapter version, timings |\n"
        "| `feedback` | rating, best-answer pick or comment, with its `interaction_id` |\n"
        "| `pairs` | preference pair in TRL's conversational format (`prompt`, `chosen`, `rejected`), "
        "with its evaluator, confidence and source interactions |\n\n"
        "```python\nfrom datasets import load_dataset\npairs = load_dataset(REPO_ID, \"pairs\", split=\"train\")\n```\n"
    )
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n{body}"


def read_shards(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Every row of every shard under `folder`, per table, oldest shard first."""
    out: dict[str, list[dict[str, Any]]] = {table: [] for table in rows.TABLES}
    for table in rows.TABLES:
        for path in sorted((folder / table).glob("*.jsonl")):
            out[table].extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return out


def restore_log(store: LogStore, folder: Path) -> dict[str, int]:
    """Put the mirror's rows (shards already under `folder`) back into `store`, and mark them
    as synced so the next `write_log_shards` does not mirror them a second time."""
    shards = read_shards(folder)
    added = store.restore(
        (rows.interaction_from_row(r) for r in shards["interactions"]),
        (rows.feedback_from_row(r) for r in shards["feedback"]),
        (rows.pair_from_row(r) for r in shards["pairs"]),
    )
    marks = {table: max(r["created_at"] for r in shards[table]) for table in ("interactions", "feedback") if shards[table]}
    if shards["pairs"]:
        marks["pairs"] = max(int(r["id"]) for r in shards["pairs"])
    write_atomic(folder / WATERMARKS, json.dumps(marks))
    return added


def download_mirror(repo_id: str, token: str | None, endpoint: str | None, folder: Path) -> bool:
    """Fetch the dataset mirror's shards into `folder`; False when the repo does not exist yet."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    api = HfApi(endpoint=endpoint, token=token, library_name="cowest")
    try:
        api.snapshot_download(repo_id, repo_type="dataset", local_dir=folder, allow_patterns=MIRRORED)
    except RepositoryNotFoundError:
        return False
    return True
