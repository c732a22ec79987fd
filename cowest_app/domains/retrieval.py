"""Retrieval over a domain corpus: bounded passages and BM25 search.

One splitter serves every reader of a corpus (Strong + RAG, the drafting
examples of SFT and retrieval-grounded drafting), so a passage is the same
thing everywhere. A passage is bounded whatever the layout: documents are cut
at blank lines and headings, blocks at their list items (a list item is one
statement), and what is still over the budget is cut into windows of
`max_tokens` with a small overlap. Each passage keeps its document name and
the heading it sits under, so a reader knows where a bare list item belongs.

Tokens here are counted without a tokenizer (words and punctuation marks,
`count_tokens`): close to, and usually above, what a BPE tokenizer gives for
English prose, so a budget in these units holds for the models' own.

Search is Okapi BM25 from `rank_bm25` over the heading and the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

DEFAULT_MAX_TOKENS = 128
DEFAULT_OVERLAP = 16

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w+")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+")


@dataclass(frozen=True)
class Passage:
    doc: str  # the document's name, e.g. its file name
    heading: str  # the nearest Markdown heading above the passage; "" if none
    text: str

    def as_context(self) -> str:
        """The passage as a prompt shows it: under its heading when the text does not start with it."""
        if not self.heading or self.text.startswith(self.heading):
            return self.text
        return f"{self.heading}: {self.text}"


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def search_terms(text: str) -> list[str]:
    return _WORD.findall(text.lower())


# -- splitting ----------------------------------------------------------------------
def _blocks(text: str) -> Iterable[tuple[str, list[str]]]:
    """(heading, lines) per block: runs of non-blank lines, a heading line closing
    the block before it and naming the blocks after it."""
    heading, lines = "", []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        match = _HEADING.match(line)
        if match or not line.strip():
            if lines:
                yield heading, lines
            lines = []
            if match:
                heading = match.group(1).strip()
            continue
        lines.append(line.rstrip())
    if lines:
        yield heading, lines


def _list_items(lines: Sequence[str]) -> list[str]:
    """A block cut before every list item; a line that is not an item stays with the one above it."""
    items: list[list[str]] = []
    for line in lines:
        if _LIST_ITEM.match(line) or not items:
            items.append([line])
        else:
            items[-1].append(line)
    return [" ".join(part.strip() for part in item) for item in items]


def _windows(text: str, max_tokens: int, overlap: int) -> list[str]:
    """`text` in windows of at most max_tokens tokens, each starting `overlap` tokens before the last ended."""
    spans = [m.span() for m in _TOKEN.finditer(text)]
    if len(spans) <= max_tokens:
        return [text]
    step = max(1, max_tokens - overlap)
    windows = []
    for start in range(0, len(spans), step):
        end = min(start + max_tokens, len(spans))
        windows.append(text[spans[start][0]:spans[end - 1][1]])
        if end == len(spans):
            break
    return windows


def split_passages(
    documents: Iterable[tuple[str, str]], max_tokens: int = DEFAULT_MAX_TOKENS, overlap: int = DEFAULT_OVERLAP,
) -> list[Passage]:
    """Bounded passages of `documents` ((name, text) pairs), in reading order."""
    if max_tokens < 1 or not 0 <= overlap < max_tokens:
        raise ValueError(f"need max_tokens >= 1 and 0 <= overlap < max_tokens, got {max_tokens}, {overlap}")
    passages = []
    for name, text in documents:
        for heading, lines in _blocks(text):
            for piece in _list_items(lines):
                for window in _windows(piece, max_tokens, overlap):
                    clean = _LIST_ITEM.sub("", window).strip()
                    if clean:
                        passages.append(Passage(name, heading, clean))
    return passages


# -- search -------------------------------------------------------------------------
class Retriever:
    """BM25 over passages; `search` returns the best k that share a term with the query."""

    def __init__(self, passages: Sequence[Passage]) -> None:
        from rank_bm25 import BM25Okapi

        self.passages = tuple(passages)
        self._terms = [search_terms(f"{p.heading} {p.text}") for p in self.passages]
        # BM25Okapi divides by the corpus size and needs at least one term overall.
        self._index = BM25Okapi(self._terms) if any(self._terms) else None

    def search(self, query: str, k: int) -> list[Passage]:
        # Unique terms in the query's order: the scores are float sums over them, and a set's
        # order changes with the hash seed, which turned near-ties around from run to run.
        terms = list(dict.fromkeys(search_terms(query)))
        if self._index is None or not terms or k <= 0:
            return []
        scores = self._index.get_scores(terms)
        wanted = set(terms)
        shares = [not wanted.isdisjoint(t) for t in self._terms]
        ranked = sorted((i for i in range(len(scores)) if shares[i]), key=lambda i: (-scores[i], i))
        return [self.passages[i] for i in ranked[:k]]


def render_context(passages: Sequence[Passage]) -> str:
    """Passages as one prompt block: one per line, as list items."""
    return "\n".join(f"- {p.as_context()}" for p in passages)
