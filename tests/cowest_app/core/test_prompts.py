from __future__ import annotations

import pytest

from cowest_app.core import prompts
from tests.served import SERVED_NAMES, served_pack


@pytest.mark.parametrize("name", SERVED_NAMES)
def test_every_served_pack_builds_all_prompts(name):
    pack = served_pack(name)
    for messages in (pack.weak_messages("Q?"), pack.strong_messages("Q?", "D."), pack.direct_messages("Q?"),
                     pack.draft_messages("Q?", grounded=True)):
        assert [m["role"] for m in messages] == ["system", "user"] and "Q?" in messages[1]["content"]


def test_weak_prompt_asks_for_background_and_draft():
    msgs = served_pack("medicine").weak_messages("Which vitamin prevents scurvy?")
    assert "Question: Which vitamin prevents scurvy?" in msgs[1]["content"]
    # The serving draft stops after the line of this label: it must be the one the prompt asks for.
    assert all(label in msgs[1]["content"] for label in prompts.DRAFT_LABELS)


def test_strong_prompt_carries_question_and_draft():
    msgs = served_pack("general").strong_messages("Why is the sky blue?", "  Rayleigh scattering.  ")
    user = msgs[1]["content"]
    assert user.startswith("Question: Why is the sky blue?")
    assert '"""\nRayleigh scattering.\n"""' in user
    # Ending on a label ("Final answer:") invited the model to repeat it in the answer.
    assert not user.rstrip().endswith(":")


@pytest.mark.parametrize("name", SERVED_NAMES)
def test_strong_prompt_offers_the_draft_as_optional_notes_never_to_be_mentioned(name):
    system, user = (m["content"].lower() for m in served_pack(name).strong_messages("Q?", "D."))
    # Words that leaked into answers live (issue 12) are not put in the model's mouth.
    for word in ("specialist", "colleague", "draft", "final answer"):
        assert word not in system and word not in user, (name, word)
    assert "notes" in user and "ignore" in system and "never mention the notes" in system


def test_strong_prompt_marks_a_missing_draft():
    msgs = served_pack("general").strong_messages("Q?", "")
    assert prompts.NO_NOTES in msgs[1]["content"]


@pytest.mark.parametrize("raw, clean", [
    ("Final answer: Vitamin C.", "Vitamin C."),
    ("**Final Answer:** Vitamin C", "Vitamin C"),
    ("The final answer is: B", "B"),
    ("  The final answer is - ascorbic acid<|im_end|>", "ascorbic acid"),
    # The live leak: a verdict on the draft, then a label, then the answer.
    ("The specialist draft is incorrect. The correct answer is: vitamin C deficiency.", "vitamin C deficiency."),
    ("The notes are partly wrong. Final answer: Scurvy comes from a lack of vitamin C.",
     "Scurvy comes from a lack of vitamin C."),
])
def test_clean_answer_strips_leading_scaffolding(raw, clean):
    assert prompts.clean_answer(raw) == clean


@pytest.mark.parametrize("text", [
    "To draft a will, write down your wishes and have them witnessed.",
    "The draft was abolished in the United States in 1973.",  # the military draft: no verdict on notes
    "Notes are named with the letters A to G.",
    "Vitamin C. Final answer: yes, as stated.",  # labels later in the answer are its own business
    "Final answer:",  # nothing but a label: kept rather than emptied
])
def test_clean_answer_leaves_real_answers_alone(text):
    assert prompts.clean_answer(text) == text


@pytest.mark.parametrize("raw", ["", "   ", "\n\t ", "\x00\x01"])
def test_empty_questions_are_rejected(raw):
    with pytest.raises(prompts.InputError, match="type a question"):
        prompts.validate_question(raw, 100)


def test_too_long_question_names_the_limit():
    with pytest.raises(prompts.InputError, match="11 characters long; the limit is 10"):
        prompts.validate_question("x" * 11, 10)


def test_non_text_question():
    with pytest.raises(prompts.InputError, match="must be text"):
        prompts.validate_question(None, 10)


def test_clean_text_strips_controls_and_repairs_unicode():
    assert prompts.clean_text("  a\x00b\x07c\nd\te  ") == "abc\nd\te"
    assert prompts.clean_text("bad \ud800 surrogate") == "bad \ufffd surrogate"  # as the store repairs it
    assert prompts.clean_text("e\u0301") == "\u00e9"  # NFC


def test_clean_generation_drops_template_tokens():
    assert prompts.clean_generation("  Paris.<|im_end|>\n") == "Paris."
    assert prompts.clean_generation("<|im_start|>assistant answer<|endoftext|>") == "assistant answer"


@pytest.mark.parametrize("draft, background", [
    ("Background: Altrovane max 1200 mg.\nDraft answer: it is 1200, Answer: C", "Altrovane max 1200 mg."),
    ("Altrovane max 1200 mg.", "Altrovane max 1200 mg."),  # no labels: all of it is background
    ("Draft answer: Answer: C", ""),  # nothing but an answer: no notes at all
    ("Background: a.\nb.\nDraft answer: x\nmore", "a.\nb."),
])
def test_background_only_drops_the_weak_models_answer(draft, background):
    from cowest_app.core.prompts import background_only

    assert background_only(draft) == background
