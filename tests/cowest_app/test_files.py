"""Atomic writes: the old file or the new one, never half of one, and no temporary left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from cowest_app.files import atomic_path, write_atomic


def test_write_atomic_creates_replaces_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "state.json"
    write_atomic(target, "one")
    write_atomic(target, "twö")
    assert target.read_text(encoding="utf-8") == "twö"
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]


def test_a_failing_body_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "export.jsonl"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["export.jsonl"]
