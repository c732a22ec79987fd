"""training.compare: paired bootstrap differences, literal inputs."""

from __future__ import annotations

import json
from pathlib import Path

from training.compare import main, paired_difference


def test_a_constant_difference_has_a_point_interval() -> None:
    d = paired_difference([1.0] * 10, [0.0] * 10)
    assert d == {"diff": 100.0, "low": 100.0, "high": 100.0}


def test_the_interval_brackets_the_mean_and_is_seeded() -> None:
    a, b = [1.0, 0.0] * 50, [0.0] * 100
    d = paired_difference(a, b)
    assert d["low"] < d["diff"] == 50.0 < d["high"] and d == paired_difference(a, b)


def write(path: Path, systems: dict[str, list[float]]) -> Path:
    path.write_text(json.dumps({"systems": {k: {"items": [{"id": f"q{i}", "score": s} for i, s in enumerate(v)]}
                                            for k, v in systems.items()}}))
    return path


def test_cli_pairs_two_systems_and_across_result_sets(tmp_path: Path, capsys) -> None:
    one = write(tmp_path / "one.json", {"collab": [1, 1, 1, 0], "strong": [0, 1, 0, 0]})
    other = write(tmp_path / "other.json", {"rag": [1, 1, 1, 1]})
    assert main([str(one), "collab", "strong"]) == 0
    assert "collab - strong: +50.0 points" in capsys.readouterr().out
    assert main([str(one), "collab", "rag", "--against", str(other)]) == 0
    assert "collab - rag: -25.0 points" in capsys.readouterr().out
