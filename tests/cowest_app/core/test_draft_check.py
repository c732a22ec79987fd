"""The degenerate-draft check on literal drafts, including the loop seen live (issue 12)."""

from __future__ import annotations

import pytest

from cowest_app.core import prompts
from cowest_app.core.draft_check import ECHO, EMPTY, LOOP, check_draft, repeated_ngram_share

SCURVY = "Which vitamin deficiency causes scurvy, and what is the first-line treatment?"
LABELS = prompts.DRAFT_LABELS

# The shape of the live failure: the unspecialised 135M model's draft for the
# app's scurvy example went round this circle until the token limit.
LIVE_LOOP = (
    "Background: Scurvy is a bacterial infection caused by Vibrio vulnificus. Vibrio vulnificus is a "
    "Gram-negative bacterium that belongs to the family Vibrioceae. It is caused by Vibrio vulnificus, "
    "which belongs to the family Vibrioceae. It is caused by Vibrio vulnificus, which belongs to the family "
    "Vibrioceae. It is caused by Vibrio vulnificus, which belongs to the family Vibrioceae. It is caused by "
    "Vibrio vulnificus, which belongs to the family Vibrioceae. It is caused by Vibrio vulnificus, which "
    "belongs to the family"
)

GOOD = (
    "Background: Scurvy results from a lack of vitamin C (ascorbic acid), which the body needs to make "
    "collagen. Without it gums bleed, wounds heal slowly and small vessels break. Vitamin C deficiency is "
    "treated by replacing vitamin C.\n"
    "Draft answer: Vitamin C deficiency; the first-line treatment is oral vitamin C (ascorbic acid) supplements."
)


def test_the_live_loop_is_a_loop():
    verdict = check_draft(LIVE_LOOP, SCURVY, LABELS)
    assert verdict.degenerate and verdict.reason == LOOP
    assert "vibrio vulnificus" in verdict.detail  # the repeated sentence is named


def test_a_loop_without_sentence_ends_is_caught_by_its_ngrams():
    # No full stops: the repeated-sentence rule cannot fire, the n-gram share does.
    text = "Draft answer: the answer is vitamin C and " + "the cause is a lack of vitamin C and " * 6
    assert repeated_ngram_share(text.lower().split()) > 0.5
    verdict = check_draft(text, SCURVY, LABELS)
    assert verdict.reason == LOOP and "4-grams repeated" in verdict.detail


def test_echo_of_the_question():
    text = f"Background: {SCURVY}\nDraft answer: Which vitamin deficiency causes scurvy?"
    assert check_draft(text, SCURVY, LABELS).reason == ECHO


@pytest.mark.parametrize("text", [
    "",
    "   \n ",
    "Background:\nDraft answer:",
    "Background: <key facts>\nDraft answer: <your answer>",  # the format copied, never filled
    "Draft answer: C",
])
def test_empty_or_near_empty(text):
    assert check_draft(text, SCURVY, LABELS).reason == EMPTY


def test_a_good_draft_passes_even_with_repeated_key_phrases():
    verdict = check_draft(GOOD, SCURVY, LABELS)
    assert not verdict.degenerate and verdict.reason is None


def test_a_short_answer_built_from_the_question_words_is_not_an_echo():
    assert not check_draft("Draft answer: Yes, aspirin is an NSAID.", "Is aspirin an NSAID?", LABELS).degenerate


def test_repeating_one_sentence_twice_is_tolerated():
    # A draft whose answer restates its background is redundant, not a loop.
    text = "Background: Scurvy is caused by a lack of vitamin C.\nDraft answer: Scurvy is caused by a lack of vitamin C."
    assert not check_draft(text, SCURVY, LABELS).degenerate
