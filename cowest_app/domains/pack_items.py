"""Writing a multiple-choice pack's splits from items listed with their correct option first.

Hand-written packs (packs/general, medicine, ethics, counterfactual) keep their
items in a `build_pack.py` as (id, kind, question, correct, [three wrong]), so
every answer can be checked by reading it. `write_splits` shuffles each item's
options with a fixed seed, spreading the correct letters over A-D, and writes
test.jsonl and train.jsonl; a rerun reproduces them byte for byte.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

LETTERS = "ABCD"
Item = tuple[str, str, str, str, Sequence[str]]  # (id, kind, question, correct option, three wrong options)


def choice_rows(items: Sequence[Item], rng: random.Random, prefix: str) -> list[dict]:
    """Items as pack rows, the correct option placed so every letter is used about equally often."""
    slots = [i % len(LETTERS) for i in range(len(items))]
    rng.shuffle(slots)
    out = []
    for (item_id, kind, question, correct, wrong), slot in zip(items, slots):
        if len(wrong) != 3 or correct in wrong:
            raise ValueError(f"{item_id}: need three wrong options, none equal to the correct one")
        others = list(wrong)
        rng.shuffle(others)
        options = others[:slot] + [correct] + others[slot:]
        out.append({"id": f"{prefix}-{item_id}", "question": question, "options": options,
                    "answer": LETTERS[slot], "kind": kind})
    return out


def write_splits(out: Path, test: Sequence[Item], train: Sequence[Item], seed: int, prefix: str) -> None:
    ids = [item[0] for item in [*test, *train]]
    if len(ids) != len(set(ids)):
        raise ValueError("duplicate item ids")
    rng = random.Random(seed)  # one generator for both splits, test first: the committed files depend on it
    for name, items in (("test.jsonl", test), ("train.jsonl", train)):
        rows = choice_rows(items, rng, prefix)
        (out / name).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
