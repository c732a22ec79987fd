"""Is a weak draft worth showing the strong model? A pure check, no models.

Small models fail in recognisable ways: they loop (the same sentence to the
token limit), echo the question back, or write next to nothing. Any of these
in front of the strong model makes its answer worse than answering alone
(issue 12: the strong model copied a looping draft into the final answer),
so the pipeline re-drafts or drops such a draft. A false alarm costs little:
the strong model then answers alone, which is the baseline anyway.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

# Reasons, as shown in the stage table and the log.
EMPTY = "empty"
LOOP = "loop"
ECHO = "echo"

MIN_WORDS = 3  # fewer content words than this is no draft
LOOP_NGRAM = 4  # word n-grams compared for repetition
# A share of repeated 4-grams this high only comes from text going round in
# circles; a normal draft repeats a phrase or two ("vitamin C deficiency").
LOOP_REPEATED_SHARE = 0.3
LOOP_MIN_NGRAMS = 8  # below this a few repeats are too little evidence
# A loop goes round at least three times; text said twice (an answer line
# restating the background) is redundant, not degenerate.
LOOP_MIN_ROUNDS = 3
LOOP_SENTENCE_REPEATS = 3  # one sentence this many times is a loop at any length
LOOP_SENTENCE_MIN_WORDS = 3
ECHO_MIN_RUN = 4  # the question's words, in order, at least this many
ECHO_MAX_NEW_WORDS = 2  # an echo adds at most this many words the question lacks

_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"[.!?\n]+")
_PLACEHOLDER = re.compile(r"<[^<>\n]{0,60}>")  # "<your answer>": the format copied, not filled


@dataclass(frozen=True)
class DraftVerdict:
    reason: str | None = None  # None: the draft is usable; else EMPTY, LOOP or ECHO
    detail: str = ""

    @property
    def degenerate(self) -> bool:
        return self.reason is not None


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _content(draft: str, scaffold: Sequence[str]) -> str:
    """The draft without its format labels and unfilled placeholders."""
    text = _PLACEHOLDER.sub(" ", draft)
    for label in scaffold:
        text = re.sub(re.escape(label), " ", text, flags=re.IGNORECASE)
    return text


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_share(tokens: Sequence[str], n: int = LOOP_NGRAM) -> float:
    """Share of the n-grams that repeat an earlier one (0: all distinct)."""
    grams = _ngrams(tokens, n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def _goes_round(tokens: Sequence[str]) -> bool:
    grams = _ngrams(tokens, LOOP_NGRAM)
    if len(grams) < LOOP_MIN_NGRAMS:
        return False
    top = Counter(grams).most_common(1)[0][1]
    return top >= LOOP_MIN_ROUNDS and repeated_ngram_share(tokens) >= LOOP_REPEATED_SHARE


def most_repeated_sentence(text: str) -> tuple[str, int]:
    sentences = [" ".join(words(s)) for s in _SENTENCE_END.split(text)]
    counts = Counter(s for s in sentences if len(s.split()) >= LOOP_SENTENCE_MIN_WORDS)
    return counts.most_common(1)[0] if counts else ("", 0)


def _contains_run(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    size = len(needle)
    return any(list(haystack[i:i + size]) == list(needle) for i in range(len(haystack) - size + 1))


def _echoes(tokens: Sequence[str], question: Sequence[str]) -> bool:
    """The question's words in order (all of them, or a long run) and hardly anything new."""
    if not question:
        return False
    run = min(len(question), max(ECHO_MIN_RUN, len(question) // 2))
    copied = any(_contains_run(tokens, question[i:i + run]) for i in range(len(question) - run + 1))
    new_words = [w for w in tokens if w not in set(question)]
    return copied and len(new_words) <= ECHO_MAX_NEW_WORDS


def check_draft(draft: str, question: str, scaffold: Sequence[str] = ()) -> DraftVerdict:
    """Flag a draft that loops, echoes the question, or is (nearly) empty.

    `scaffold`: the format labels the draft prompt asks for ("Background:",
    "Draft answer:"); they are not content, so a draft of labels alone is empty.
    """
    content = _content(draft, scaffold)
    tokens = words(content)
    if len(tokens) < MIN_WORDS:
        return DraftVerdict(EMPTY, f"{len(tokens)} words")
    sentence, count = most_repeated_sentence(content)
    if count >= LOOP_SENTENCE_REPEATS:
        return DraftVerdict(LOOP, f"a sentence {count} times: {sentence[:60]!r}")
    if _goes_round(tokens):
        return DraftVerdict(LOOP, f"{repeated_ngram_share(tokens):.0%} of word {LOOP_NGRAM}-grams repeated")
    if _echoes(tokens, words(question)):
        return DraftVerdict(ECHO, "restates the question")
    return DraftVerdict()
