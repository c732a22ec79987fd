"""The interaction and feedback log: an append-only SQLite database in WAL mode.

Every operation opens its own short-lived connection, so the store can be
shared freely between threads, and WAL plus `BEGIN IMMEDIATE` lets several
processes append to the same file. `synchronous=FULL` means a row whose write
returned is on disk: an acknowledged interaction or vote is never lost.

There are deliberately no update or delete methods.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from cowest_app.core.prompts import valid_unicode

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000
RATINGS = (1, -1)
BEST_CHOICES = ("weak", "collab", "strong")  # the answers a user may call best: the one list of keys
# Who labelled a preference pair: the one list, which the pairs table's CHECK constraint is built from.
PAIR_EVALUATORS = ("reference", "strong_judge", "weak_judge", "weak_teacher", "human")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS interactions (
        id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        session_id TEXT,
        domain TEXT NOT NULL,
        question TEXT NOT NULL,
        weak_draft TEXT,
        final_answer TEXT,
        weak_alone TEXT,
        strong_alone TEXT,
        weak_model TEXT,
        strong_model TEXT,
        adapter_version TEXT,
        timings TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL,
        error TEXT,
        client_id TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS interactions_created ON interactions(created_at, id)",
    """CREATE TABLE IF NOT EXISTS feedback (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        interaction_id TEXT NOT NULL REFERENCES interactions(id),
        created_at TEXT NOT NULL,
        session_id TEXT,
        rating INTEGER CHECK (rating IS NULL OR rating IN (1, -1)),
        best TEXT CHECK (best IS NULL OR best IN ('weak', 'collab', 'strong')),
        comment TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS feedback_interaction ON feedback(interaction_id)",
)

# Preference pairs for DPO, derived from collaborative or human feedback. Added
# with CREATE TABLE IF NOT EXISTS, so an existing v1 log gains the table on its
# next open and the schema version stays 1.
_PAIRS_TABLE = """CREATE TABLE IF NOT EXISTS {name} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        domain TEXT NOT NULL,
        question TEXT NOT NULL,
        prompt_json TEXT NOT NULL,
        chosen TEXT NOT NULL,
        rejected TEXT NOT NULL,
        chosen_score REAL,
        rejected_score REAL,
        margin REAL NOT NULL,
        evaluator TEXT NOT NULL CHECK (evaluator IN ({evaluators})),
        confidence REAL,
        trainable INTEGER NOT NULL CHECK (trainable IN (0, 1)),
        interaction_ids TEXT NOT NULL DEFAULT '[]',
        details_json TEXT NOT NULL DEFAULT '{{}}',
        weak_model TEXT,
        strong_model TEXT,
        adapter_version TEXT
    )"""


def _pairs_table(name: str = "pairs") -> str:
    return _PAIRS_TABLE.format(name=name, evaluators=", ".join(f"'{e}'" for e in PAIR_EVALUATORS))


_SCHEMA += (_pairs_table(),)

# Column order shared by INSERT, SELECT and the dataclass fields.
INTERACTION_COLUMNS = (
    "id", "created_at", "session_id", "domain", "question", "weak_draft", "final_answer",
    "weak_alone", "strong_alone", "weak_model", "strong_model", "adapter_version",
    "timings", "status", "error", "client_id",
)
FEEDBACK_COLUMNS = ("id", "interaction_id", "created_at", "session_id", "rating", "best", "comment")


class StoreError(ValueError):
    pass


@dataclass(frozen=True)
class Interaction:
    domain: str
    question: str
    weak_draft: str | None = None
    final_answer: str | None = None
    weak_alone: str | None = None
    strong_alone: str | None = None
    weak_model: str | None = None
    strong_model: str | None = None
    adapter_version: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    status: str = "ok"
    error: str | None = None
    session_id: str | None = None
    id: str | None = None  # set by the store when None
    created_at: str | None = None  # set by the store when None
    client_id: str | None = None  # a salted hash of the client's address, never the address itself


@dataclass(frozen=True)
class Feedback:
    interaction_id: str
    rating: int | None = None
    best: str | None = None
    comment: str | None = None
    session_id: str | None = None
    id: int | None = None  # set by the store
    created_at: str | None = None  # set by the store when None


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def storable(value: str | None) -> str | None:
    """Text as the store keeps it (`prompts.valid_unicode`); None stays None."""
    return None if value is None else valid_unicode(value)


def _timings_json(timings: dict[str, float]) -> str:
    # Strict: NaN/inf would make the JSONL export invalid JSON.
    out: dict[str, float] = {}
    for key, value in (timings or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise StoreError(f"timing {key!r} must be a finite number, got {value!r}")
        out[storable(str(key)) or ""] = float(value)
    return json.dumps(out, ensure_ascii=False, allow_nan=False)


def _validate_feedback(fb: Feedback) -> str | None:
    """Checks the vote and returns the comment to store (None when blank)."""
    if fb.rating is not None and (isinstance(fb.rating, bool) or fb.rating not in RATINGS):
        raise StoreError(f"rating must be 1, -1 or None, got {fb.rating!r}")
    if fb.best is not None and fb.best not in BEST_CHOICES:
        raise StoreError(f"best must be one of {BEST_CHOICES} or None, got {fb.best!r}")
    comment = storable(fb.comment)
    if comment is not None and not comment.strip():
        comment = None
    if fb.rating is None and fb.best is None and comment is None:
        raise StoreError("empty feedback: give a rating, a best answer or a comment")
    return comment


def _widen_pair_evaluators(conn: sqlite3.Connection) -> None:
    """Rebuild the pairs table when its CHECK constraint predates an evaluator in PAIR_EVALUATORS.

    SQLite cannot alter a CHECK constraint, so the table is copied into one
    with the current constraint, ids and all, inside the caller's transaction:
    a crash midway leaves the old table as it was.
    """
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'pairs'").fetchone()[0]
    if all(f"'{name}'" in sql for name in PAIR_EVALUATORS):
        return
    conn.execute("DROP TABLE IF EXISTS pairs_widened")  # never left behind by a committed run; defensive
    conn.execute(_pairs_table("pairs_widened"))
    columns = ", ".join(PAIR_COLUMNS)
    conn.execute(f"INSERT INTO pairs_widened ({columns}) SELECT {columns} FROM pairs")
    conn.execute("DROP TABLE pairs")
    conn.execute("ALTER TABLE pairs_widened RENAME TO pairs")


class LogStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._init_schema()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: we issue BEGIN ourselves, so writes take the
        # write lock up front (IMMEDIATE) instead of failing mid-transaction.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=FULL")
            conn.row_factory = sqlite3.Row
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _init_schema(self) -> None:
        self._enable_wal()
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema v{version}; this code knows up to v{SCHEMA_VERSION}")
            for statement in _SCHEMA:
                conn.execute(statement)
            # Columns added after a table first shipped: an existing log gains them, empty.
            have = {row[1] for row in conn.execute("PRAGMA table_info(interactions)")}
            if "client_id" not in have:
                conn.execute("ALTER TABLE interactions ADD COLUMN client_id TEXT")
            _widen_pair_evaluators(conn)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _enable_wal(self) -> None:
        # journal_mode is persistent in the file; set it outside a transaction.
        # Two processes creating the file at once can get SQLITE_BUSY here
        # without the busy handler being consulted, so retry up to the timeout.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                with self._connect() as conn:
                    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if mode.lower() != "wal":
            raise StoreError(f"could not enable WAL mode on {self.path} (got {mode})")

    # -- writes -------------------------------------------------------------

    def log_interaction(self, interaction: Interaction) -> str:
        row = {
            "id": interaction.id or uuid.uuid4().hex,
            "created_at": interaction.created_at or utc_now(),
            "timings": _timings_json(interaction.timings),
        }
        for name in INTERACTION_COLUMNS:
            if name not in row:
                row[name] = storable(getattr(interaction, name))
        if row["domain"] is None or row["question"] is None or row["status"] is None:
            raise StoreError("domain, question and status are required")
        placeholders = ", ".join(f":{name}" for name in INTERACTION_COLUMNS)
        try:
            with self._write() as conn:
                conn.execute(f"INSERT INTO interactions ({', '.join(INTERACTION_COLUMNS)}) VALUES ({placeholders})", row)
        except sqlite3.IntegrityError as exc:  # only a caller-chosen duplicate id gets here
            raise StoreError(f"interaction {row['id']!r} already logged") from exc
        return row["id"]

    def log_feedback(self, feedback: Feedback) -> int:
        comment = _validate_feedback(feedback)
        interaction_id = storable(feedback.interaction_id)
        values = (
            interaction_id, feedback.created_at or utc_now(),
            storable(feedback.session_id), feedback.rating, feedback.best, comment,
        )
        with self._write() as conn:
            # Checked in the same transaction as the insert, for a clear message
            # rather than a bare FOREIGN KEY error.
            if conn.execute("SELECT 1 FROM interactions WHERE id = ?", (interaction_id,)).fetchone() is None:
                raise StoreError(f"unknown interaction id {interaction_id!r}")
            cursor = conn.execute(
                "INSERT INTO feedback (interaction_id, created_at, session_id, rating, best, comment) VALUES (?, ?, ?, ?, ?, ?)",
                values,
            )
            return int(cursor.lastrowid)

    def restore(self, interactions: Iterable[Interaction], feedback: Iterable[Feedback],
                pairs: Iterable[PreferencePair]) -> dict[str, int]:
        """Put back rows read from a mirror with their ids and times, in one transaction;
        rows already here are kept as they are. Returns how many of each were added."""
        added = {"interactions": 0, "feedback": 0, "pairs": 0}
        pair_columns = ", ".join(PAIR_COLUMNS)
        with self._write() as conn:
            for item in interactions:
                row = {name: storable(getattr(item, name)) for name in INTERACTION_COLUMNS if name != "timings"}
                row["timings"] = _timings_json(item.timings)
                if not row["id"] or not row["created_at"]:
                    raise StoreError("a restored interaction needs its id and created_at")
                cursor = conn.execute(f"INSERT OR IGNORE INTO interactions ({', '.join(INTERACTION_COLUMNS)}) "
                                      f"VALUES ({', '.join(':' + c for c in INTERACTION_COLUMNS)})", row)
                added["interactions"] += cursor.rowcount
            for fb in feedback:
                comment = _validate_feedback(fb)
                if conn.execute("SELECT 1 FROM interactions WHERE id = ?", (fb.interaction_id,)).fetchone() is None:
                    continue  # its interaction never reached the mirror: nothing to attach it to
                cursor = conn.execute(
                    f"INSERT OR IGNORE INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (fb.id, storable(fb.interaction_id), fb.created_at or utc_now(), storable(fb.session_id),
                     fb.rating, fb.best, comment))
                added["feedback"] += cursor.rowcount
            for pair in pairs:
                row = {**_pair_row(pair), "id": pair.id}
                cursor = conn.execute(f"INSERT OR IGNORE INTO pairs ({pair_columns}) "
                                      f"VALUES ({', '.join(':' + c for c in PAIR_COLUMNS)})", row)
                added["pairs"] += cursor.rowcount
        return added

    # -- reads --------------------------------------------------------------

    def get_interaction(self, interaction_id: str) -> Interaction | None:
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT {', '.join(INTERACTION_COLUMNS)} FROM interactions WHERE id = ?", (interaction_id,)
            ).fetchone()
        if row is None:
            return None
        data = dict(row)
        data["timings"] = json.loads(data["timings"])
        return Interaction(**data)

    def feedback_for(self, interaction_id: str) -> list[Feedback]:
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM feedback WHERE interaction_id = ? ORDER BY created_at, id",
                (interaction_id,),
            ).fetchall()
        return [Feedback(**dict(row)) for row in rows]

    def sessions_of(self, interaction_ids: Iterable[str]) -> dict[str, str | None]:
        """The session that asked each known interaction (unknown ids are left out)."""
        return self._owners_of(interaction_ids, "session_id")

    def clients_of(self, interaction_ids: Iterable[str]) -> dict[str, str | None]:
        """The client (hashed address) that asked each known interaction."""
        return self._owners_of(interaction_ids, "client_id")

    def _owners_of(self, interaction_ids: Iterable[str], column: str) -> dict[str, str | None]:
        ids = sorted(set(interaction_ids))
        out: dict[str, str | None] = {}
        with self._connect() as conn:
            for start in range(0, len(ids), 500):  # stay under SQLite's bound-variable limit
                chunk = ids[start:start + 500]
                rows = conn.execute(
                    f"SELECT id, {column} FROM interactions WHERE id IN ({', '.join('?' * len(chunk))})", chunk
                )
                out.update((row["id"], row[column]) for row in rows)
        return out

    def counts(self) -> dict[str, int]:
        with self._connect() as conn:
            interactions = conn.execute("SELECT count(*) FROM interactions").fetchone()[0]
            feedback, up, down = conn.execute(
                "SELECT count(*), coalesce(sum(rating = 1), 0), coalesce(sum(rating = -1), 0) FROM feedback"
            ).fetchone()
        return {"interactions": interactions, "feedback": feedback, "thumbs_up": up, "thumbs_down": down}

    def iter_records(self, batch: int = 500, session_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Every interaction as a plain dict with its feedback nested, oldest first;
        with `session_id`, only that session's interactions and feedback (a visitor's own).

        One read transaction covers the whole walk, so the export is a
        consistent snapshot; in WAL mode that does not block writers.
        """
        if batch < 1:
            raise ValueError("batch must be >= 1")
        where, args = ("WHERE session_id = ?", (session_id,)) if session_id is not None else ("", ())
        with self._connect() as conn:
            conn.execute("BEGIN")
            try:
                cursor = conn.execute(
                    f"SELECT {', '.join(INTERACTION_COLUMNS)} FROM interactions {where} ORDER BY created_at, id", args
                )
                while rows := cursor.fetchmany(batch):
                    yield from self._with_feedback(conn, rows, session_id)
            finally:
                conn.execute("COMMIT")

    @staticmethod
    def _with_feedback(conn: sqlite3.Connection, rows: list[sqlite3.Row],
                       session_id: str | None = None) -> Iterator[dict[str, Any]]:
        ids = [row["id"] for row in rows]
        by_interaction: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        nested = [c for c in FEEDBACK_COLUMNS if c != "interaction_id"]
        mine, args = (" AND session_id = ?", [session_id]) if session_id is not None else ("", [])
        for fb in conn.execute(
            f"SELECT interaction_id, {', '.join(nested)} FROM feedback"
            f" WHERE interaction_id IN ({', '.join('?' * len(ids))}){mine} ORDER BY created_at, id",
            ids + args,
        ):
            by_interaction[fb["interaction_id"]].append({c: fb[c] for c in nested})
        for row in rows:
            record = dict(row)
            record["timings"] = json.loads(record["timings"])
            record["feedback"] = by_interaction[row["id"]]
            yield record

    # -- preference pairs ---------------------------------------------------

    def log_pair(self, pair: PreferencePair) -> int:
        """Append one preference pair; returns its id (ids only grow, so training
        can resume from the last id it consumed)."""
        row = _pair_row(pair)
        columns = [c for c in PAIR_COLUMNS if c != "id"]
        with self._write() as conn:
            cursor = conn.execute(
                f"INSERT INTO pairs ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})", row
            )
            return int(cursor.lastrowid)

    def iter_pairs(self, after_id: int = 0, trainable_only: bool = True, batch: int = 500) -> Iterator[PreferencePair]:
        """Pairs with id > after_id in id order, from one consistent snapshot."""
        if batch < 1:
            raise ValueError("batch must be >= 1")
        where = "id > ?" + (" AND trainable = 1" if trainable_only else "")
        with self._connect() as conn:
            conn.execute("BEGIN")
            try:
                cursor = conn.execute(f"SELECT {', '.join(PAIR_COLUMNS)} FROM pairs WHERE {where} ORDER BY id", (after_id,))
                while rows := cursor.fetchmany(batch):
                    yield from (_pair_from_row(row) for row in rows)
            finally:
                conn.execute("COMMIT")

    def pair_counts(self) -> dict[str, dict[str, int]]:
        """{evaluator: {"total": n, "trainable": m}} for every known evaluator, zeros included."""
        counts = {name: {"total": 0, "trainable": 0} for name in PAIR_EVALUATORS}
        with self._connect() as conn:
            for evaluator, total, trainable in conn.execute(
                "SELECT evaluator, count(*), coalesce(sum(trainable), 0) FROM pairs GROUP BY evaluator"
            ):
                counts[evaluator] = {"total": int(total), "trainable": int(trainable)}
        return counts

    def max_pair_id(self) -> int:
        """The newest pair id, 0 when there are none."""
        with self._connect() as conn:
            return int(conn.execute("SELECT coalesce(max(id), 0) FROM pairs").fetchone()[0])


PAIR_COLUMNS = (
    "id", "created_at", "domain", "question", "prompt_json", "chosen", "rejected", "chosen_score",
    "rejected_score", "margin", "evaluator", "confidence", "trainable", "interaction_ids", "details_json",
    "weak_model", "strong_model", "adapter_version",
)


@dataclass(frozen=True)
class PreferencePair:
    """One DPO example with its provenance.

    `prompt` is exactly what the weak model saw when drafting (system + user
    messages); `chosen` and `rejected` are two of its drafts. Scores are those
    of the final answers built on each draft; `margin` is their influence gap.
    """

    domain: str
    question: str
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    margin: float
    evaluator: str
    chosen_score: float | None = None
    rejected_score: float | None = None
    confidence: float | None = None
    trainable: bool = True
    interaction_ids: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    weak_model: str | None = None
    strong_model: str | None = None
    adapter_version: str | None = None
    id: int | None = None  # set by the store
    created_at: str | None = None  # set by the store when None


def _finite_or_none(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StoreError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _pair_row(pair: PreferencePair) -> dict[str, Any]:
    if pair.evaluator not in PAIR_EVALUATORS:
        raise StoreError(f"evaluator must be one of {PAIR_EVALUATORS}, got {pair.evaluator!r}")
    if not pair.chosen or not pair.rejected or pair.chosen == pair.rejected:
        raise StoreError("chosen and rejected must be two different, non-empty texts")
    if not pair.prompt or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in pair.prompt):
        raise StoreError("prompt must be a non-empty list of {role, content} messages")
    confidence = _finite_or_none("confidence", pair.confidence)
    if confidence is not None and not 0.0 <= confidence <= 1.0:
        raise StoreError(f"confidence must be in [0, 1], got {confidence}")
    margin = _finite_or_none("margin", pair.margin)
    if margin is None:
        raise StoreError("margin is required")
    prompt = [{str(k): storable(str(v)) for k, v in m.items()} for m in pair.prompt]
    try:  # strict JSON: NaN in details would make the DPO export and log exports invalid
        details = json.dumps(pair.details, ensure_ascii=False, allow_nan=False, default=str)
    except ValueError as exc:
        raise StoreError(f"details must be finite JSON: {exc}") from exc
    return {
        "created_at": pair.created_at or utc_now(),
        "domain": storable(pair.domain),
        "question": storable(pair.question),
        "prompt_json": json.dumps(prompt, ensure_ascii=False),
        "chosen": storable(pair.chosen),
        "rejected": storable(pair.rejected),
        "chosen_score": _finite_or_none("chosen_score", pair.chosen_score),
        "rejected_score": _finite_or_none("rejected_score", pair.rejected_score),
        "margin": margin,
        "evaluator": pair.evaluator,
        "confidence": confidence,
        "trainable": int(bool(pair.trainable)),
        "interaction_ids": json.dumps([storable(str(i)) for i in pair.interaction_ids]),
        "details_json": storable(details),
        "weak_model": storable(pair.weak_model),
        "strong_model": storable(pair.strong_model),
        "adapter_version": storable(pair.adapter_version),
    }


def _pair_from_row(row: sqlite3.Row) -> PreferencePair:
    data = dict(row)
    data["prompt"] = json.loads(data.pop("prompt_json"))
    data["details"] = json.loads(data.pop("details_json"))
    data["interaction_ids"] = tuple(json.loads(data["interaction_ids"]))
    data["trainable"] = bool(data["trainable"])
    return PreferencePair(**data)


def answered(status: str) -> bool:
    """Whether a logged run reached an answer, so its question can be asked again
    for feedback collection: "ok", and runs where the draft check intervened."""
    return status == "ok" or status.startswith(("fallback:", "redrafted:"))
