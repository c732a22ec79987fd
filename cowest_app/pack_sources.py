"""Public datasets mapped to the domain-pack item schema.

Each mapper takes one row in its dataset's own column layout and returns a
`PackItem` (validated by `packs.parse_item`, so public data obeys the same
rules as a pack's JSONL), or None for a row without a usable answer.
`load_public` fetches rows with `datasets.load_dataset`, which needs the Hub
(or the dataset in the local `datasets` cache).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from cowest_app.packs import PackError, PackItem, parse_item

log = logging.getLogger(__name__)

ETHICS_LABELS: tuple[str, str] = ("acceptable", "unacceptable")  # ETHICS label 1 = the act is wrong


def ifqa_item(row: Mapping[str, Any], index: int = 0, split: str = "train") -> PackItem:
    """IfQA (counterfactual open-domain QA): `idx` (or `id`), `question`, `answers`
    (a list of aliases; some copies name it `answer`, or give one string)."""
    answers = row.get("answers", row.get("answer"))
    if isinstance(answers, Mapping):  # SQuAD-style {"text": [...]}
        answers = answers.get("text")
    if isinstance(answers, str):
        answers = [answers]
    raw_id = row.get("id", row.get("idx", index))
    return parse_item({"id": f"ifqa-{split}-{raw_id}", "question": row.get("question"), "answer": answers}, "short_answer")


def medmcqa_item(row: Mapping[str, Any], index: int = 0, split: str = "train") -> PackItem | None:
    """MedMCQA: `question`, options `opa`..`opd`, `cop` the 0-based correct option.

    The public test split hides answers (`cop` = -1): such rows give None.
    """
    cop = row.get("cop")
    if not isinstance(cop, int) or isinstance(cop, bool) or not 0 <= cop <= 3:
        return None
    options = [row.get(key) for key in ("opa", "opb", "opc", "opd")]
    item_id = str(row.get("id") or f"medmcqa-{split}-{index}")
    return parse_item({"id": item_id, "question": row.get("question"), "answer": cop, "options": options}, "multiple_choice")


def ethics_commonsense_item(row: Mapping[str, Any], index: int = 0, split: str = "train") -> PackItem:
    """ETHICS commonsense (hendrycks/ethics, config "commonsense"): `input` a
    first-person scenario, `label` 1 when the narrator's act is clearly wrong.
    The rows carry no id, so the id is the split and row number."""
    label = row.get("label")
    if label not in (0, 1) or isinstance(label, bool):
        raise PackError(f"ETHICS label must be 0 or 1, got {label!r}")
    row_item = {"id": f"ethics-commonsense-{split}-{index}", "question": row.get("input"), "answer": ETHICS_LABELS[label]}
    return parse_item(row_item, "label", ETHICS_LABELS)


@dataclass(frozen=True)
class PublicSource:
    """Where a public set lives and how it maps to a pack: what a domain.yaml would say."""

    name: str
    path: str  # datasets.load_dataset's first argument
    config: str | None
    task_type: str
    metric: str
    labels: tuple[str, ...]
    domain: str  # the app preset its questions belong to
    mapper: Callable[[Mapping[str, Any], int, str], PackItem | None]
    data_files: Mapping[str, str] | None = None  # for sets published as files rather than Hub repos


# IfQA is published as JSON files in the authors' repository (splits train/dev/test).
_IFQA_URL = "https://raw.githubusercontent.com/wyu97/IfQA/main/dataset/full_split/{}.json"

SOURCES: dict[str, PublicSource] = {
    s.name: s
    for s in (
        PublicSource("ifqa", "json", None, "short_answer", "contains_f1", (), "counterfactual", ifqa_item,
                     {split: _IFQA_URL.format(split) for split in ("train", "dev", "test")}),
        PublicSource("medmcqa", "openlifescienceai/medmcqa", None, "multiple_choice", "accuracy", (), "medicine", medmcqa_item),
        PublicSource("ethics_commonsense", "hendrycks/ethics", "commonsense", "label", "accuracy", ETHICS_LABELS, "ethics",
                     ethics_commonsense_item),
    )
}


def map_rows(name: str, rows: Iterable[Mapping[str, Any]], split: str, limit: int | None = None) -> list[PackItem]:
    """Rows of a public set as items: unanswered rows are skipped, malformed ones
    skipped with one warning that counts them (public sets have a few)."""
    source = _source(name)
    items: list[PackItem] = []
    malformed = 0
    for index, row in enumerate(rows):
        if limit is not None and len(items) >= limit:
            break
        try:
            item = source.mapper(row, index, split)
        except PackError:
            malformed += 1
            continue
        if item is not None:
            items.append(item)
    if malformed:
        log.warning("%s/%s: skipped %d malformed rows", name, split, malformed)
    return items


def load_public(name: str, split: str = "train", limit: int | None = None) -> list[PackItem]:
    """Up to `limit` items of a public set's split, via `datasets.load_dataset`.

    With a limit the split is streamed, so a few items do not download it all.
    """
    import datasets  # heavy; only this function needs it

    source = _source(name)
    kwargs: dict[str, Any] = {"split": split, "streaming": limit is not None}
    if source.data_files is not None:
        if split not in source.data_files:
            raise ValueError(f"{name} has splits {', '.join(source.data_files)}, not {split!r}")
        kwargs["data_files"] = {split: source.data_files[split]}
    args = (source.path,) if source.config is None else (source.path, source.config)
    return map_rows(name, datasets.load_dataset(*args, **kwargs), split, limit)


def _source(name: str) -> PublicSource:
    if name not in SOURCES:
        raise ValueError(f"unknown public dataset {name!r}; use one of {', '.join(SOURCES)}")
    return SOURCES[name]
