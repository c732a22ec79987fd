"""Public datasets mapped to the domain-pack item schema.

Each mapper takes one row in its dataset's own column layout and returns a
`PackItem` (validated by `packs.parse_item`, so public data obeys the same
rules as a pack's JSONL), or None for a row without a usable answer.
`load_public` fetches rows with `datasets.load_dataset`, which needs the Hub
(or the dataset in the local `datasets` cache).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from cowest_app.domains.packs import DomainPack, PackError, PackItem, load_pack, parse_item

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
    domain: str  # the kind of domain the paper evaluates it as (counterfactual, medicine, ethics)
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


# -- public set -> pack directory ------------------------------------------------------
# Which split plays the pack's test split: the public test splits of MedMCQA hide answers.
HELD_OUT_SPLIT = {"ifqa": "dev", "medmcqa": "validation", "ethics_commonsense": "test"}

_WEAK_PROMPT = {
    "system": "You are a specialist in this domain. Write down the background facts the question depends on, then a short draft answer.",
    "user": "Question: {question}\n\nWrite:\nBackground: <the relevant facts>\nDraft answer: <one or two sentences>",
}
_STRONG_ENDING = {
    "multiple_choice": 'end with a line of the form "Answer: <letter>".',
    "label": 'end with a line of the form "Answer: <label>".',
    "short_answer": "give the short answer first, then at most two sentences.",
}


def item_row(item: PackItem) -> dict[str, Any]:
    """A pack item as a line of train.jsonl / test.jsonl (the inverse of `parse_item`)."""
    row: dict[str, Any] = {"id": item.id, "question": item.question}
    if item.options is not None:
        row["options"] = list(item.options)
    row["answer"] = list(item.answer) if isinstance(item.answer, tuple) else item.answer
    return row


def write_pack(name: str, out: str | Path, train: Sequence[PackItem], test: Sequence[PackItem], corpus: str | Path) -> DomainPack:
    """Write a public set's items as a pack directory, with the user's domain
    documents as its corpus, and load it back (so it is validated like any pack).

    The public sets ship questions, not the documents a weak model should be
    specialised on: those are the user's to bring.
    """
    source = _source(name)
    out, corpus = Path(out), Path(corpus)
    documents = sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix.lower() in (".md", ".txt")) if corpus.is_dir() else []
    if not documents:
        raise PackError(f"{corpus}: need a directory with at least one .md or .txt domain document for the corpus")
    meta = {
        "name": f"{source.name}-public", "description": f"{source.name} ({source.path}) mapped to the pack format",
        "task_type": source.task_type, "metric": source.metric,
        "weak_prompt": _WEAK_PROMPT,
        "strong_prompt": {
            "system": "Some notes on the question come with it. They may hold useful facts but can be wrong: use "
                      "only what is correct and helps, ignore them otherwise, and never mention them.",
            "user": "Question: {question}\n\nNotes (use or ignore):\n\"\"\"\n{draft}\n\"\"\"\n\nReason briefly, then "
                    + _STRONG_ENDING[source.task_type],
        },
    }
    if source.labels:
        meta["labels"] = list(source.labels)
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    (out / "domain.yaml").write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True), encoding="utf-8")
    for doc in documents:
        target = out / "corpus" / doc.relative_to(corpus)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(doc, target)
    for split, items in (("train", train), ("test", test)):
        lines = (json.dumps(item_row(i), ensure_ascii=False) + "\n" for i in items)
        (out / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
    return load_pack(out)


def main(argv: Sequence[str] | None = None) -> int:
    """python -m cowest_app.domains.pack_sources NAME --corpus DIR --out DIR [--train N] [--test N]

    Needs the Hub (or the dataset in the local `datasets` cache)."""
    parser = argparse.ArgumentParser(description="Turn a public dataset into a domain pack.")
    parser.add_argument("name", choices=sorted(SOURCES))
    parser.add_argument("--corpus", required=True, help="directory of .md/.txt domain documents for the weak model's SFT")
    parser.add_argument("--out", required=True, help="pack directory to write")
    parser.add_argument("--train", type=int, default=300, help="train questions (from the public train split)")
    parser.add_argument("--test", type=int, default=150, help=f"test questions (from the held-out split: {HELD_OUT_SPLIT})")
    ns = parser.parse_args(argv)
    train = load_public(ns.name, "train", ns.train)
    test = load_public(ns.name, HELD_OUT_SPLIT[ns.name], ns.test)
    try:
        pack = write_pack(ns.name, ns.out, train, test, ns.corpus)
    except PackError as exc:
        parser.error(str(exc))
    print(f"wrote {ns.out}: {len(pack.train)} train, {len(pack.test)} test items, {len(pack.corpus_paths)} documents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
