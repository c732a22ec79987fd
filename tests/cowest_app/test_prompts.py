from __future__ import annotations

import pytest

from cowest_app import prompts


def test_every_domain_builds_all_prompts():
    assert {"counterfactual", "medicine", "ethics", "general"} <= set(prompts.DOMAINS)
    for domain in prompts.DOMAINS.values():
        weak = prompts.weak_draft_messages(domain, "Q?")
        strong = prompts.strong_refine_messages(domain, "Q?", "D.")
        alone = prompts.direct_answer_messages(domain, "Q?")
        for messages in (weak, strong, alone):
            assert [m["role"] for m in messages] == ["system", "user"]
            assert domain.label.lower() in messages[0]["content"].lower()


def test_weak_prompt_asks_for_background_and_draft():
    msgs = prompts.weak_draft_messages(prompts.DOMAINS["medicine"], "Which vitamin prevents scurvy?")
    assert "Question: Which vitamin prevents scurvy?" in msgs[1]["content"]
    assert "Background:" in msgs[1]["content"] and "Draft answer:" in msgs[1]["content"]


def test_strong_prompt_carries_question_and_draft():
    msgs = prompts.strong_refine_messages(prompts.DOMAINS["general"], "Why is the sky blue?", "  Rayleigh scattering.  ")
    user = msgs[1]["content"]
    assert user.startswith("Question: Why is the sky blue?")
    assert '"""\nRayleigh scattering.\n"""' in user
    assert user.endswith("Final answer:")


def test_strong_prompt_marks_a_missing_draft():
    msgs = prompts.strong_refine_messages(prompts.DOMAINS["general"], "Q?", "")
    assert "(empty)" in msgs[1]["content"]


def test_unknown_domain_is_a_clear_error():
    with pytest.raises(prompts.InputError, match="Unsupported domain 'astrology'"):
        prompts.get_domain("astrology")


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
    assert prompts.clean_text("bad \ud800 surrogate") == "bad ? surrogate"
    assert prompts.clean_text("e\u0301") == "\u00e9"  # NFC


def test_clean_generation_drops_template_tokens():
    assert prompts.clean_generation("  Paris.<|im_end|>\n") == "Paris."
    assert prompts.clean_generation("<|im_start|>assistant answer<|endoftext|>") == "assistant answer"
