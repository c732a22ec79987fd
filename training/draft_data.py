"""Drafting examples for SFT: a pack's train questions answered the way the weak model should draft.

Plain language modelling on the corpus teaches the weak model the facts as
prose, but not to bring the right one up when a question asks for it (on the
shipped pack the corpus-only SFT model answered at chance and its drafts did
not move the strong model). These examples close that gap: each train
question, in the pack's own drafting prompt, is followed by the draft the
collaboration wants -

    Background: <the corpus passages that support the reference answer>
    Draft answer: <the reference answer>

From memory (`draft_examples`), the background is found with BM25 over the
corpus passages, queried with the question and its reference answer together
(the answer's words pick the right passage among several about the same
subject). Grounded in retrieval (`grounded_draft_examples`), the prompt holds
the passages retrieved for the question alone, as at serving time, and the
background is the one or two of them that best match question and answer:
the weak model learns to pick and copy, never to write a fact it was not
shown. No extra annotation is needed, so any pack with a corpus and a train
split gets both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from cowest_app.domains.retrieval import Retriever

if TYPE_CHECKING:
    from cowest_app.domains.packs import DomainPack, PackItem

BACKGROUND_PASSAGES = 2  # 86% of the shipped pack's train questions have all their facts in the top 2


def reference_answer(item: PackItem) -> str:
    """The reference as a draft states it: the option text and its letter for
    multiple choice, otherwise the (first) reference answer."""
    if item.options:
        letter = str(item.answer)
        return f"{item.options[ord(letter) - ord('A')]}, Answer: {letter}"
    answer = item.answer[0] if isinstance(item.answer, tuple) else item.answer
    return str(answer)


def draft_completion(background: Sequence[str], answer: str | None) -> str:
    """The draft the collaboration wants; without an answer (a question with no reference), the background alone."""
    facts = " ".join(background) if background else "(none found)"
    return f"Background: {facts}" + (f"\nDraft answer: {answer}" if answer is not None else "")


def _example(prompt: list[dict[str, str]], background: Sequence[str], answer: str) -> dict[str, Any]:
    # Rows are `{"messages": [...]}`; training.sft learns only the last (assistant) message.
    return {"messages": prompt + [{"role": "assistant", "content": draft_completion(background, answer)}]}


def draft_examples(pack: DomainPack, items: Sequence[PackItem] | None = None,
                   passages: int = BACKGROUND_PASSAGES) -> list[dict[str, Any]]:
    """One chat per train question (or per given item), drafting from memory."""
    from cowest_app.domains.packs import format_item

    rows = []
    for item in pack.train if items is None else items:
        answer = reference_answer(item)
        background = [p.text for p in pack.retriever.search(f"{item.question} {answer}", passages)]
        rows.append(_example(pack.draft_messages(format_item(item), grounded=False), background, answer))
    return rows


def grounded_draft_examples(pack: DomainPack, items: Sequence[PackItem] | None = None,
                            passages: int = BACKGROUND_PASSAGES) -> list[dict[str, Any]]:
    """One chat per train question (or per given item), drafting from the passages retrieved for it."""
    from cowest_app.domains.packs import DEFAULT_RETRIEVAL_PASSAGES, format_item

    shown_k = pack.retrieval_passages or DEFAULT_RETRIEVAL_PASSAGES
    rows = []
    for item in pack.train if items is None else items:
        question, answer = format_item(item), reference_answer(item)
        shown = pack.retriever.search(question, shown_k)  # exactly what draft_messages puts in the prompt
        background = [p.text for p in Retriever(shown).search(f"{item.question} {answer}", passages)] if shown else []
        rows.append(_example(pack.draft_messages(question, grounded=True), background, answer))
    return rows
