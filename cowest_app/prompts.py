"""Domain presets and the prompts of each stage, as pure functions.

The weak model writes a draft that carries the background knowledge it was
specialised on; the strong model gets the question and that draft and writes
the final answer, trusting its own reasoning where the draft is wrong.
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


def clean_text(text: str) -> str:
    """Normalise user text: valid Unicode (lone surrogates replaced), NFC, no control chars."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = unicodedata.normalize("NFC", text)
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


def weak_draft_messages(domain: Domain, question: str) -> list[Message]:
    system = (
        f"You are a domain expert assistant ({domain.label}). "
        "Write a short draft answer to the question and, first, the background knowledge it relies on. "
        f"{domain.weak_focus}"
    )
    user = f"Question: {question}\n\nWrite:\nBackground: <key facts>\nDraft answer: <your answer>"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def strong_refine_messages(domain: Domain, question: str, draft: str) -> list[Message]:
    system = (
        f"You are a strong general assistant working with a smaller {domain.label.lower()} specialist. "
        "The specialist's draft may hold useful domain knowledge but can be wrong. "
        "Use what is correct, fix what is not, and write the final answer. "
        f"{domain.strong_focus}"
    )
    user = (
        f"Question: {question}\n\n"
        f"Specialist draft:\n\"\"\"\n{draft.strip() or '(empty)'}\n\"\"\"\n\n"
        "Final answer:"
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def direct_answer_messages(domain: Domain, question: str) -> list[Message]:
    """Prompt for a model answering alone (the weak-alone and strong-alone baselines)."""
    system = f"You are a helpful assistant ({domain.label}). {domain.strong_focus}"
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


_SPECIAL_TOKENS = re.compile(r"<\|(?:im_start|im_end|endoftext|eot_id)\|>")


def clean_generation(text: str) -> str:
    """Strip chat-template tokens a model may echo and surrounding whitespace."""
    return _SPECIAL_TOKENS.sub("", text).strip()
