"""Paired differences between systems of a results.json (same items, so far less noise than either CI).

    python -m training.compare RESULTS_JSON SYSTEM_A SYSTEM_B [--against OTHER_RESULTS_JSON]

Prints each system's accuracy and SYSTEM_A - SYSTEM_B in points with a 95% percentile
bootstrap interval (2000 resamples, seed 0) over the items both scored. `--against` takes
SYSTEM_B from another result set on the same items.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Sequence


def paired_difference(a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of a - b over the same items, with a 95% percentile bootstrap interval (percentage points)."""
    rng = random.Random(seed)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(resamples))
    return {"diff": 100 * sum(diffs) / len(diffs), "low": 100 * means[int(0.025 * resamples)],
            "high": 100 * means[int(0.975 * resamples)]}


def item_scores(results: dict, system: str) -> dict[str, float]:
    if system not in results["systems"]:
        raise SystemExit(f"no system {system!r}; the result set has {', '.join(results['systems'])}")
    return {item["id"]: float(item["score"]) for item in results["systems"][system]["items"]}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    other = Path(args.pop(args.index("--against") + 1)) if "--against" in args else None
    if other is not None:
        args.remove("--against")
    if len(args) != 3:
        raise SystemExit(__doc__)
    path, a, b = Path(args[0]), args[1], args[2]
    results = json.loads(path.read_text(encoding="utf-8"))
    first = item_scores(results, a)
    second = item_scores(json.loads(other.read_text(encoding="utf-8")) if other else results, b)
    ids = [i for i in first if i in second]
    for name, scores in ((a, first), (b, second)):
        print(f"{name}: {100 * sum(scores[i] for i in ids) / len(ids):.1f}% on {len(ids)} items")
    d = paired_difference([first[i] for i in ids], [second[i] for i in ids])
    print(f"{a} - {b}: {d['diff']:+.1f} points [{d['low']:+.1f}, {d['high']:+.1f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
