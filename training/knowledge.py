"""Knowledge augmentation: several question forms for every corpus statement, written once per pack.

    python -m training.knowledge --pack packs/NAME [--strong REF] [--strong-backend llama-cpp] [--questions 3]

Drafting examples teach the weak model to bring a fact up for the train
questions, about 1.4 of them per fact on the shipped pack: too few for a 135M
model to tie a fact's value to the ways it is asked about, and a quarter of
the test questions need facts no train question touches. Here the strong
model writes, for each corpus statement (a passage of the pack's retrieval
splitter: a list item or a short paragraph), questions that the statement
answers. They are cached beside the pack in `knowledge.jsonl`, one row per
statement, appended as they are written, so an interrupted run resumes.

SFT then learns, for every question kept, `Question: ...` followed by
`Background: <the statement, verbatim>` (`knowledge_texts`). A question is kept
only when BM25 over the pack's statements ranks its own statement first
(`on_target`): the strong model sometimes asks about a neighbouring fact, and
learning that question with this statement would teach a wrong one.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from cowest_app.domains.retrieval import Passage, Retriever
from cowest_app.files import write_atomic

if TYPE_CHECKING:
    from cowest_app.domains.packs import DomainPack

log = logging.getLogger(__name__)

KNOWLEDGE_FILE = "knowledge.jsonl"
KNOWLEDGE_FORMATS = ("text", "chat")  # `Question/Background` documents, or chats in the drafting prompt
QUESTIONS_PER_STATEMENT = 3
ON_TARGET_RANK = 1  # a question is kept when BM25 finds its own statement first for it
QUESTION_TOKENS = 160
_QUESTION_LINE = re.compile(r"^\s*(?:\d+[.)]\s*)?Q\s*\d*\s*[:.)]\s*(.+?)\s*$", re.IGNORECASE)


def question_messages(passage: Passage, n: int, domain: str) -> list[dict[str, str]]:
    """The strong model's prompt: n questions the statement answers, one per `Q:` line."""
    section = f"Section: {passage.heading}\n" if passage.heading else ""
    return [
        {"role": "system", "content": f"You write exam questions about this domain: {domain}"},
        {"role": "user", "content": (
            f"{section}Statement: {passage.text}\n\n"
            f"Write {n} different questions that this statement answers, each on its own line "
            'starting with "Q: ". Vary the wording, use the names the statement uses, and do not '
            "give the answer.")},
    ]


def parse_questions(reply: str, n: int) -> list[str]:
    """The first n distinct `Q:` lines of a reply that read as questions."""
    found: list[str] = []
    for line in reply.splitlines():
        match = _QUESTION_LINE.match(line)
        question = match.group(1) if match else ""
        if question.endswith("?") and len(question) > 8 and question not in found:
            found.append(question)
    return found[:n]


def on_target(question: str, passage: Passage, retriever: Retriever, rank: int = ON_TARGET_RANK) -> bool:
    """Whether BM25, queried with the question, finds the statement it was written for among the first `rank`."""
    return passage in retriever.search(question, rank)


def kept_questions(rows: Iterable[dict[str, Any]], passages: Sequence[Passage]) -> list[tuple[str, Passage]]:
    """Every question kept (`on_target`) with its statement. Rows of statements the pack no
    longer has are skipped, so an edited corpus never teaches a stale statement."""
    by_text = {p.text: p for p in passages}
    retriever = Retriever(passages)
    kept = []
    for row in rows:
        passage = by_text.get(row["statement"])
        if passage is None:
            continue
        kept += [(q, passage) for q in row["questions"] if on_target(q, passage, retriever)]
    return kept


def knowledge_texts(rows: Iterable[dict[str, Any]], passages: Sequence[Passage]) -> list[str]:
    """SFT documents: one `Question: ...\\nBackground: <statement>` text per question kept."""
    return [f"Question: {q}\nBackground: {p.text}" for q, p in kept_questions(rows, passages)]


def knowledge_chats(rows: Iterable[dict[str, Any]], pack: DomainPack) -> list[dict[str, Any]]:
    """SFT chats: each question kept, in the pack's drafting prompt, answered `Background: <statement>`.

    The plain-text form teaches the statements, but not where a draft needs them: on the
    shipped pack the statement-drilled adapter completes 94% of the statements' numbers as
    plain text and 38% of them inside the drafting prompt. The chat puts every statement
    in that prompt."""
    from training.draft_data import draft_completion

    return [{"messages": pack.draft_messages(q, grounded=False) + [{"role": "assistant", "content": draft_completion([p.text], None)}]}
            for q, p in kept_questions(rows, pack.passages)]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The cached rows; a last line cut short by an interrupted run is dropped (it is written again)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("statement"), str) and isinstance(row.get("questions"), list):
            rows.append(row)
    return rows


def pack_knowledge(pack: DomainPack, form: str = "text") -> list[dict[str, Any]]:
    """The pack's cached knowledge as SFT rows (`text` documents or drafting `chat`s); empty
    when it has no knowledge.jsonl."""
    if form not in KNOWLEDGE_FORMATS:
        raise ValueError(f"unknown knowledge format {form!r}; use one of {', '.join(KNOWLEDGE_FORMATS)}")
    rows = read_rows(pack.root / KNOWLEDGE_FILE)
    if form == "chat":
        return knowledge_chats(rows, pack)
    return [{"text": t} for t in knowledge_texts(rows, pack.passages)]


def statement_texts(pack: DomainPack) -> list[str]:
    """Every corpus statement as its own SFT document: the words a draft from memory writes."""
    return [p.text for p in pack.passages]


DRILL_DRAFTING_CHATS = 200  # enough fit drafting chats that the draft's format stays learnt


def drill_rows(pack: DomainPack, drafting_chats: int = DRILL_DRAFTING_CHATS, seed: int = 0) -> list[dict[str, Any]]:
    """Rows to train an adapter further on the pack's knowledge, in the prompt where drafts need it:
    every knowledge question as a drafting chat, every statement as a text, and `drafting_chats`
    fit drafting chats drawn at random (the multiple-choice draft stays learnt), shuffled."""
    from training.draft_data import draft_examples

    rng = random.Random(seed)
    drafts = draft_examples(pack, pack.fit)
    rows = pack_knowledge(pack, "chat") + rng.sample(drafts, min(drafting_chats, len(drafts)))
    rows += [{"text": t} for t in statement_texts(pack)]
    rng.shuffle(rows)
    return rows


def summary(pack: DomainPack) -> dict[str, int]:
    """What the cache holds: statements, the questions written, and the questions SFT learns."""
    rows = read_rows(pack.root / KNOWLEDGE_FILE)
    return {"statements": len(rows), "questions": sum(len(r["questions"]) for r in rows),
            "questions_kept": len(knowledge_texts(rows, pack.passages))}


def generate(pack: DomainPack, strong: Any, n: int = QUESTIONS_PER_STATEMENT, path: Path | None = None) -> Path:
    """Write questions for every statement not yet in the cache; return the cache's path."""
    path = path or pack.root / KNOWLEDGE_FILE
    done = {row["statement"] for row in read_rows(path)}
    todo = [p for p in dict.fromkeys(pack.passages) if p.text not in done]
    log.info("%d statements, %d already have questions", len(todo) + len(done), len(done))
    started = time.perf_counter()
    with path.open("a", encoding="utf-8") as cache:
        for i, passage in enumerate(todo, start=1):
            reply = strong.complete(question_messages(passage, n, pack.description), max_new_tokens=QUESTION_TOKENS)
            row = {"statement": passage.text, "questions": parse_questions(reply, n)}
            cache.write(json.dumps(row, ensure_ascii=False) + "\n")
            cache.flush()  # an interrupted run keeps every finished row
            if i % 20 == 0 or i == len(todo):
                log.info("%d/%d statements, %.1f s each", i, len(todo), (time.perf_counter() - started) / i)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    from cowest_app.config import STRONG_DEFAULT
    from cowest_app.domains.packs import PackError, load_pack
    from training.evaluate import STRONG_BACKENDS, load_strong

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", required=True, help="domain pack directory")
    parser.add_argument("--strong", default=STRONG_DEFAULT, help="the model that writes the questions")
    parser.add_argument("--strong-backend", choices=STRONG_BACKENDS, default="llama-cpp")
    parser.add_argument("--questions", type=int, default=QUESTIONS_PER_STATEMENT, help="questions per statement")
    parser.add_argument("--cache-dir", help="model cache (default: $COWEST_CACHE_DIR or ~/.cache/cowest)")
    parser.add_argument("--drill-file", type=Path,
                        help="write the drill rows (knowledge chats, statements, sampled drafting chats) as JSONL here "
                             "for `training.sft --set corpus=FILE`, instead of writing questions")
    parser.add_argument("--drafting-chats", type=int, default=DRILL_DRAFTING_CHATS,
                        help="with --drill-file: fit drafting chats drawn")
    ns = parser.parse_args(argv)
    if ns.questions < 1:
        parser.error("--questions must be at least 1")
    if ns.drafting_chats < 0:
        parser.error("--drafting-chats must be 0 or more")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        pack = load_pack(ns.pack)
    except PackError as exc:
        parser.error(str(exc))
    if ns.drill_file:
        rows = drill_rows(pack, ns.drafting_chats)
        write_atomic(ns.drill_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"{ns.drill_file}: {len(rows)} rows")
        return 0
    path = generate(pack, load_strong(ns.strong, ns.strong_backend, cache_dir=ns.cache_dir), ns.questions)
    print(f"{path}: " + ", ".join(f"{k} {v}" for k, v in summary(pack).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
