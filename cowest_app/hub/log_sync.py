"""Append-only JSONL shards of the feedback log, mirrored to a Hub dataset repo.

Every sync writes the interactions and the feedback events that are new since
the last one into fresh files (never rewriting an old one), so the dataset
repo only ever gains files and a `CommitScheduler` can push them as they come.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from cowest_app.files import write_atomic
from cowest_app.core.store import LogStore

log = logging.getLogger(__name__)
WATERMARKS = ".watermarks.json"


def write_log_shards(store: LogStore, folder: Path) -> list[Path]:
    """Write new interactions and feedback as new shard files; returns them."""
    folder.mkdir(parents=True, exist_ok=True)
    marks_path = folder / WATERMARKS
    marks = json.loads(marks_path.read_text()) if marks_path.is_file() else {}
    interactions, feedback = [], []
    for record in store.iter_records():
        if record["created_at"] > marks.get("interactions", ""):
            interactions.append({k: v for k, v in record.items() if k != "feedback"})
        for event in record["feedback"]:
            if event["created_at"] > marks.get("feedback", ""):
                feedback.append({"interaction_id": record["id"], **event})
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    written = []
    for name, rows in (("interactions", interactions), ("feedback", feedback)):
        if not rows:
            continue
        rows.sort(key=lambda r: r["created_at"])
        path = folder / name / f"{name}-{stamp}.jsonl"
        path.parent.mkdir(exist_ok=True)
        write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        marks[name] = rows[-1]["created_at"]
        written.append(path)
    if written:
        write_atomic(marks_path, json.dumps(marks))
    return written
