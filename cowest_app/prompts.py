"""Domain presets and the prompts of each stage, as pure functions.

The weak model writes a draft that carries the background knowledge it was
specialised on; the strong model gets the question and that draft, as notes
it may use or ignore, and answers the user directly, trusting its own
reasoning where the notes are wrong.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from cowest_app.models.base import Message


@dataclass(frozen=True)
class Domain:
    key: str
    label: str
    weak_focus: str
    strong_focus: str
    example: str


DOMAINS: dict[str, Domain] = {
    d.key: d
    for d in (
        Domain(
            key="counterfactual",
            label="Counterfactual reasoning",
            weak_focus="Recall the real-world facts the hypothetical premise changes, then say what follows if the premise holds.",
            strong_focus="Accept the question's hypothetical premise even when it contradicts reality and reason from it.",
            example="If water boiled at 50 °C at sea level, how long would it take to cook pasta?",
        ),
        Domain(
            key="medicine",
            label="Medicine",
            weak_focus="Recall the relevant clinical facts: mechanisms, typical findings, first-line treatments and contraindications.",
            strong_focus="Answer as a careful clinician; when options are given, pick one and justify it. This is not medical advice.",
            example="Which vitamin deficiency causes scurvy, and what is the first-line treatment?",
        ),
        Domain(
            key="ethics",
            label="Ethics",
            weak_focus="Name the moral considerations at stake, the people affected and the norms that apply.",
            strong_focus="Judge whether the described action is acceptable and explain why in plain terms.",
            example="I found a wallet with cash and kept the money but posted the ID card back. Was that okay?",
        ),
        Domain(
            key="general",
            label="General",
            weak_focus="Recall the background facts and definitions the question depends on.",
            strong_focus="Answer accurately and concisely.",
            example="Why does the sky look blue during the day?",
        ),
    )
}

DEFAULT_DOMAIN = "general"


class InputError(ValueError):
    """Bad user input, with a message that can be shown as is."""


def shown(value: object, limit: int = 60) -> str:
    """A short repr of user input for an error message: a megabyte of junk is not echoed back."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def get_domain(key: str) -> Domain:
    if not isinstance(key, str) or key not in DOMAINS:  # isinstance: a list is unhashable, a clear error still
        raise InputError(f"Unsupported domain {shown(key)}. Choose one of: {', '.join(DOMAINS)}.")
    return DOMAINS[key]


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


def weak_draft_messages(domain: Domain, question: str) -> list[Message]:
    system = (
        f"You are a domain expert assistant ({domain.label}). "
        "Write a short draft answer to the question and, first, the background knowledge it relies on. "
        f"{domain.weak_focus}"
    )
    user = f"Question: {question}\n\nWrite:\n{BACKGROUND_LABEL} <key facts>\n{DRAFT_ANSWER_LABEL} <your answer>"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# The refinement prompt's wording, in one place so it can move into domain
# packs. The draft is presented as optional notes, and the model is told to
# ignore unhelpful ones and never to mention them: a strong model told it
# works with a "specialist" judged the draft in its answer ("The specialist
# draft is incorrect...") and copied a looping draft (issue 12).
REFINE_SYSTEM = (
    "You are a careful assistant answering {label} questions. {focus} "
    "Some notes on the question come with it. They may hold useful facts, but they can be wrong, "
    "off-topic or repetitive: use only what is correct and helps, and ignore the notes entirely when they do not. "
    "Answer the user directly, in your own words. Never mention the notes, where they came from, "
    "or that anyone else was involved."
)
REFINE_USER = 'Question: {question}\n\nNotes (use or ignore):\n"""\n{notes}\n"""\n\nNow answer the question.'
NO_NOTES = "(no notes)"


def strong_refine_messages(domain: Domain, question: str, draft: str) -> list[Message]:
    system = REFINE_SYSTEM.format(label=domain.label.lower(), focus=domain.strong_focus)
    user = REFINE_USER.format(question=question, notes=draft.strip() or NO_NOTES)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def direct_answer_messages(domain: Domain, question: str) -> list[Message]:
    """Prompt for a model answering alone (the weak-alone and strong-alone baselines)."""
    system = f"You are a helpful assistant ({domain.label}). {domain.strong_focus}"
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


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
