"""Drafting examples for SFT: a pack's train questions answered the way the weak model should draft.

Plain language modelling on the corpus teaches the weak model the facts as
prose, but not to bring the right one up when a question asks for it (on the
shipped pack the corpus-only SFT model answered at chance and its drafts did
not move the strong model). These examples close that gap: each train
question, in the pack's own weak prompt, is followed by the draft the
collaboration wants -

    Background: <the corpus statements that support the reference answer>
    Draft answer: <the reference answer>

The background is found with BM25 over the corpus' statements, queried with
the question and its reference answer together (the answer's words pick the
right statement among several about the same subject). No extra annotation is
needed, so any pack with a corpus and a train split gets them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Sequence

from training.evaluate import build_bm25, top_k

if TYPE_CHECKING:
    from cowest_app.packs import DomainPack, PackItem

BACKGROUND_STATEMENTS = 2  # 86% of the shipped pack's train questions have all their facts in the top 2
_LIST_MARKER = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")


def corpus_statements(texts: Sequence[str]) -> list[str]:
    """The corpus as single statements: one per non-empty line, Markdown headings
    and list markers dropped (a list item is one fact; a heading is none)."""
    statements = []
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            statement = _LIST_MARKER.sub("", line).strip()
            if statement:
                statements.append(statement)
    return statements


def reference_answer(item: PackItem) -> str:
    """The reference as a draft states it: the option text and its letter for
    multiple choice, otherwise the (first) reference answer."""
    if item.options:
        letter = str(item.answer)
        return f"{item.options[ord(letter) - ord('A')]}, Answer: {letter}"
    answer = item.answer[0] if isinstance(item.answer, tuple) else item.answer
    return str(answer)


def draft_completion(background: Sequence[str], answer: str) -> str:
    facts = " ".join(background) if background else "(none found)"
    return f"Background: {facts}\nDraft answer: {answer}"


def draft_examples(pack: DomainPack, statements: int = BACKGROUND_STATEMENTS) -> list[dict[str, Any]]:
    """One chat per train question: the weak prompt, then the draft to learn.

    Rows are `{"messages": [...]}`; training.sft learns only the last
    (assistant) message of such rows.
    """
    from cowest_app.packs import format_item

    index = build_bm25(corpus_statements(pack.corpus_texts()))
    rows = []
    for item in pack.train:
        question = format_item(item)
        answer = reference_answer(item)
        background = top_k(index, f"{item.question} {answer}", statements)
        messages = pack.weak_messages(question) + [
            {"role": "assistant", "content": draft_completion(background, answer)}
        ]
        rows.append({"messages": messages})
    return rows
