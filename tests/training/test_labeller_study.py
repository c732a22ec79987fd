"""The labeller study's bookkeeping: truth pairs from reference feedback, agreement and its report."""

from __future__ import annotations

import pytest

from training.labeller_study import (
    MIN_CONFIDENCE,
    agreement_file,
    agreement_scores,
    render_table,
    summarise,
    truth_pairs,
)


def feedback(n: int) -> dict:
    rows = [{"question": f"q{i}", "drafts": [f"good {i}", f"bad {i}", f"bad {i}"], "influences": [0.3, -0.1, None]}
            for i in range(n)]
    rows.append({"question": "tie", "drafts": ["x", "y"], "influences": [0.1, 0.1]})  # no pair: margin too small
    return {"results": rows}


def test_truth_pairs_take_the_most_and_least_helpful_drafts_in_a_random_order() -> None:
    pairs = truth_pairs(feedback(40), seed=1)
    assert len(pairs) == 40 and sorted(p.id for p in pairs) == list(range(40))
    for p in pairs:
        better, worse = (p.a, p.b) if p.a_better else (p.b, p.a)
        assert better.startswith("good") and worse.startswith("bad") and p.influence_gap == pytest.approx(0.4)
    assert 10 < sum(p.a_better for p in pairs) < 30  # "always A" is no strategy
    assert truth_pairs(feedback(40), seed=1) == pairs  # fixed seed: the same split every run


def test_agreement_counts_ties_as_half_and_buckets_by_confidence() -> None:
    truth = [True, True, False, False]
    p_a = [0.9, 0.4, 0.5, 0.2]
    assert agreement_scores(truth, p_a) == [1.0, 0.0, 0.5, 1.0]
    summary = summarise(truth, p_a)
    assert summary["agreement"] == pytest.approx(62.5) and summary["n"] == 4
    assert summary["ci_low"] <= 62.5 <= summary["ci_high"]
    assert [b["n"] for b in summary["buckets"]] == [1, 1, 2]  # 0.5 | 0.6 | 0.9 and 0.8
    assert summary["trainable"]["n"] == 3 and MIN_CONFIDENCE == 0.6
    assert summary["trainable"]["agreement"] == pytest.approx(200 / 3)


def test_the_app_reads_the_teacher_it_ships_with() -> None:
    row = summarise([True, False], [0.8, 0.3]) | {"seconds": 1.0}
    results = {"pack": "p", "labellers": {"weak_judge": row, "weak_teacher@0": row, "weak_teacher@1/4": row},
               "sizes": {"pairs": 2, "questions": 3, "pool": 1, "eval": 2, "strong": 0}}
    app = agreement_file(results)
    assert set(app["evaluators"]) == {"weak_judge", "weak_teacher"}
    assert app["evaluators"]["weak_teacher"]["measured_as"] == "weak_teacher@0"
    table = render_table(results)
    assert "| `weak_judge` | 2 | **100.0** |" in table and "evaluation pairs 2" in table


def test_the_readme_table_is_the_studys_own_output() -> None:
    """The README's labeller table is results.md as the script wrote it, not numbers typed by hand."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    results = root / "packs" / "saltmarsh-formulary" / "results" / "labellers" / "results.md"
    assert results.is_file(), "run python -m training.labeller_study (see the README)"
    table = results.read_text(encoding="utf-8").strip()
    assert table in (root / "README.md").read_text(encoding="utf-8")
