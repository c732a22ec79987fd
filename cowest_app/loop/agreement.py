"""Measured label quality per evaluator, and the training guard built on it.

`python -m training.labeller_study` measures, on a pack whose references give
the true preference of every pair, how often each automatic evaluator's
preference agrees with the truth, and writes `<pack>/results/labellers/agreement.json`:

    {"evaluators": {"weak_judge": {"agreement": 52.5, "ci_low": ..., "ci_high": ..., "n": 40}, ...}}

The app reads it (never the study's code: cowest_app does not import training)
to show the numbers next to the pair counts and to refuse training on labels
known to be little better than coin flips.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)

AGREEMENT_FILE = Path("results") / "labellers" / "agreement.json"  # inside a pack's directory
# Their labels are the truth the study measures against: never held back.
TRUSTED = ("reference", "human")


def load_agreement(pack_root: Path) -> dict[str, float]:
    """{evaluator: agreement in %} measured for a pack; {} when nothing was measured.

    A damaged file is logged and treated as absent: a broken measurement must
    not stop the app, it only leaves the evaluators "not measured".
    """
    path = Path(pack_root) / AGREEMENT_FILE
    if not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["evaluators"]
        return {str(name): float(row["agreement"]) for name, row in rows.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring unreadable %s (%s)", path, exc)
        return {}


def agreement_text(evaluator: str, agreement: Mapping[str, float]) -> str:
    """How the Training tab shows an evaluator's measured agreement."""
    if evaluator in TRUSTED:
        return "the truth (not an estimate)"
    return f"{agreement[evaluator]:.1f}%" if evaluator in agreement else "not measured"


def below_threshold(agreement: Mapping[str, float], minimum: float) -> dict[str, float]:
    """The measured evaluators whose agreement is under `minimum` (%)."""
    return {name: value for name, value in agreement.items() if name not in TRUSTED and value < minimum}


def guard_pairs(pairs: Sequence[Any], agreement: Mapping[str, float], minimum: float) -> tuple[list[Any], str | None]:
    """(pairs to train on, why some or all were held back).

    Pairs labelled by an evaluator measured below `minimum` are left out; an
    evaluator without a measurement is not (nothing says it is bad). When
    nothing is left, the caller does not train and shows the reason.
    """
    weak = below_threshold(agreement, minimum)
    kept = [p for p in pairs if p.evaluator not in weak]
    dropped = sorted({p.evaluator for p in pairs if p.evaluator in weak})
    if not dropped:
        return kept, None
    named = ", ".join(f"{name} (measured agreement {weak[name]:.1f}%)" for name in dropped)
    held = len(pairs) - len(kept)
    return kept, (f"{held} pairs from {named} held back: below COWEST_MIN_EVALUATOR_AGREEMENT={minimum:g}%; "
                  f"see {AGREEMENT_FILE}")
