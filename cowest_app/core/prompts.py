"""What every stage's prompt shares, and the text rules around it, as pure functions.

Prompts themselves come from domain packs (cowest_app/domains/packs.py: each pack's
domain.yaml holds its weak, strong, direct and RAG templates), so serving,
feedback, DPO and evaluation render them identically. The weak model writes
a draft that carries the background knowledge it was specialised on; the
strong model gets the question and that draft, as notes it may use or
ignore, and answers the user directly.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Sequence

from cowest_app.models.base import Message


@dataclass(frozen=True)
class PromptSet:
    """The three conversations of one collaboration, built from the question as shown.

    `draft` is also the DPO prompt: what the weak model is aligned on must be
    what it is asked at serving or evaluation time.
    """

    draft: Callable[[str], list[Message]]
    refine: Callable[[str, str], list[Message]]  # (question, draft)
    direct: Callable[[str], list[Message]]  # the strong model alone


class InputError(ValueError):
    """Bad user input, with a message that can be shown as is."""


def shown(value: object, limit: int = 60) -> str:
    """A short repr of user input for an error message: a megabyte of junk is not echoed back."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Control characters other than newline and tab carry no meaning in a question
# and can break tokenisers or terminals downstream.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_unicode(value: object) -> str:
    """`str(value)` with lone surrogates (e.g. from a broken browser paste), which cannot
    be encoded as UTF-8 and would make sqlite3 raise, swapped for U+FFFD; all else kept.
    The store keeps text exactly this way; `clean_text` builds on it."""
    return _SURROGATE.sub("\ufffd", str(value))


def clean_text(text: str) -> str:
    """Normalise user text: valid Unicode (lone surrogates replaced), NFC, no control chars."""
    text = unicodedata.normalize("NFC", valid_unicode(text))
    return _CONTROL.sub("", text).strip()


def validate_question(question: object, max_chars: int) -> str:
    if not isinstance(question, str):
        raise InputError("The question must be text.")
    cleaned = clean_text(question)
    if not cleaned:
        raise InputError("Please type a question first.")
    if len(cleaned) > max_chars:
        raise InputError(f"The question is {len(cleaned)} characters long; the limit is {max_chars}.")
    return cleaned


# The draft's format. The answer label also ends a serving draft: generation
# stops once the line after it is written (see pipeline.draft_options).
BACKGROUND_LABEL = "Background:"
DRAFT_ANSWER_LABEL = "Draft answer:"
DRAFT_LABELS = (BACKGROUND_LABEL, DRAFT_ANSWER_LABEL)
# What the strong model's notes say when the weak model wrote nothing.
NO_NOTES = "(no notes)"


_SPECIAL_TOKENS = re.compile(r"<\|(?:im_start|im_end|endoftext|eot_id)\|>")


def clean_generation(text: str) -> str:
    """Strip chat-template tokens a model may echo and surrounding whitespace."""
    return _SPECIAL_TOKENS.sub("", text).strip()


_EMPHASIS = r"[*_#\s]*"  # markdown bold or heading marks around a label
# Scaffolding a model may open its answer with: the label the prompt ended on
# ("Final answer:"), or a sentence about the notes / draft / "specialist"
# rather than about the question. Only the start of an answer is touched: a
# label or the word "draft" later on is the answer's own business.
_LEADING_SCAFFOLD = (
    re.compile(rf"^{_EMPHASIS}(?:the\s+)?final\s+answer(?:\s+is)?{_EMPHASIS}[:\-–]{_EMPHASIS}", re.IGNORECASE),
    re.compile(
        r"^(?:the\s+|your\s+)?(?:(?:specialist|colleague|assistant)(?:'s)?\s+)?(?:specialist|colleague|draft|notes?)"
        r"\s+(?:is|are|was|were|seems?|looks?|contains?|has|have)\b[^.!?\n]*?"
        # a judgement, so "The draft was abolished in 1973." stays
        r"\b(?:correct|incorrect|wrong|right|accurate|inaccurate|mistaken|misleading|incomplete|irrelevant"
        r"|helpful|unhelpful|useful|repetitive|partially|partly|errors?|mistakes?)\b[^.!?\n]*[.!?]\s*",
        re.IGNORECASE,
    ),
    re.compile(rf"^{_EMPHASIS}(?:the\s+)?correct\s+answer\s+is{_EMPHASIS}:{_EMPHASIS}", re.IGNORECASE),
)


def clean_answer(text: str) -> str:
    """A user-facing answer without template tokens or leaked leading scaffolding.

    Strips, repeatedly and only at the start: "Final answer:" / "The final
    answer is:" labels, "The correct answer is:" and a sentence judging the
    notes or draft ("The specialist draft is incorrect."). An answer that is
    nothing but scaffolding is kept as it was rather than emptied.
    """
    cleaned = clean_generation(text)
    while True:
        stripped = cleaned
        for pattern in _LEADING_SCAFFOLD:
            stripped = pattern.sub("", stripped, count=1).lstrip()
        if stripped == cleaned:
            break
        cleaned = stripped
    return cleaned or clean_generation(text)


def format_question(question: str, options: Sequence[str] | None = None) -> str:
    """The question with lettered options appended, as every model sees it."""
    question = clean_text(question)
    if not options:
        return question
    lines = [f"{chr(ord('A') + i)}. {clean_text(o)}" for i, o in enumerate(options)]
    return question + "\n\nOptions:\n" + "\n".join(lines)


def background_only(draft: str) -> str:
    """A draft without its answer: everything before the "Draft answer:" line (the whole
    draft when it has none), with a leading "Background:" label dropped."""
    head = draft.split(DRAFT_ANSWER_LABEL, 1)[0].strip()
    return head.removeprefix(BACKGROUND_LABEL).strip()
