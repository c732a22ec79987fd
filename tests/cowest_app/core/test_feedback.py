"""Pure feedback functions, on literal inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cowest_app.core.feedback import (
    PairChoice,
    choose_pair,
    choose_pairs,
    contains_answer,
    draft_vote,
    dpo_record,
    exact_match,
    extract_choice,
    extract_label,
    human_pairs,
    influences,
    judge_messages,
    normalize_answer,
    parse_judge_score,
    prefer_human,
    score_with_reference,
    token_f1,
    write_dpo_jsonl,
)
from cowest_app.core.store import PreferencePair
from tests.served import served_pack

CITIES = ["Paris", "London", "Berlin", "Rome"]


# -- metrics ------------------------------------------------------------------


def test_normalize_answer() -> None:
    assert normalize_answer("  The  Eiffel-Tower!! ") == "eiffel tower"
    assert normalize_answer("An apple, a pear") == "apple pear"
    assert normalize_answer("ＰＡＲＩＳ") == "paris"  # NFKC folds full-width letters
    assert normalize_answer("") == ""


def test_exact_match_and_f1() -> None:
    assert exact_match("The Paris.", "paris") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
    assert token_f1("Paris France", "Paris") == pytest.approx(2 / 3)
    assert token_f1("the cat sat", "a dog sat") == pytest.approx(0.5)
    assert token_f1("", "") == 1.0
    assert token_f1("", "x") == 0.0 and token_f1("x", "") == 0.0
    assert token_f1("a b", "c d") == 0.0
    assert contains_answer("It is Paris, of course.", "paris") == 1.0
    assert contains_answer("Parisian food", "Paris") == 0.0  # whole tokens only


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Answer: B", 1),
        ("answer: b", 1),
        ("The answer is (c).", 2),
        ("**Answer:** D", 3),
        ("(C)", 2),
        ("B", 1),
        ("b.", 1),
        ("**B**", 1),
        ("B. London is the capital of the UK.", 1),
        ("Well.\nC) Berlin", 2),
        ("A good question. The answer is C.", 2),  # a sentence opening with the article "A"
        ("A vitamin", None),
        ("The answer is a bit unclear, but I would say Rome.", 3),
        ("I think the answer is D", 3),
        ("The answer is B, not option C", 1),  # "answer" outranks "option"
        ("The correct option is C", 2),
        ("Answer: A ... wait, no. Answer: D", 3),  # the last answer wins
        ("Answer: E", None),  # beyond the options
        ("A or B", None),
        ("(A) is wrong and (B) is right", None),
        ("A. Paris\nB. London", None),
        ("London", 1),
        ("Answer: Paris", 0),
        ("It is London, not Paris", None),
        ("", None),
    ],
)
def test_extract_choice(text: str, expected: int | None) -> None:
    assert extract_choice(text, CITIES) == expected


def test_extract_choice_longer_option_wins_and_no_options() -> None:
    options = ["vitamin C", "vitamin C and D"]
    assert extract_choice("Give vitamin C and D daily.", options) == 1
    assert extract_choice("Give vitamin C.", options) == 0
    assert extract_choice("Answer: A", []) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Verdict: unacceptable. It would be acceptable if returned.", "unacceptable"),
        ("This is unacceptable; it would be acceptable only if ...", "unacceptable"),  # earliest mention
        ("It is acceptable.", "acceptable"),
        ("UNACCEPTABLE!", "unacceptable"),
        ("I cannot say.", None),
    ],
)
def test_extract_label(text: str, expected: str | None) -> None:
    assert extract_label(text, ["acceptable", "unacceptable"]) == expected


def test_extract_label_multiword_and_spelling() -> None:
    labels = ["Not wrong", "Wrong"]
    assert extract_label("It is not wrong at all", labels) == "Not wrong"
    assert extract_label("Clearly wrong.", labels) == "Wrong"


def test_score_with_reference() -> None:
    assert score_with_reference("Answer: B", 1, "multiple_choice", CITIES) == 1.0
    assert score_with_reference("Answer: B", "B", "multiple_choice", CITIES) == 1.0
    assert score_with_reference("It must be London.", "London", "multiple_choice", CITIES) == 1.0
    assert score_with_reference("Answer: C", 1, "multiple_choice", CITIES) == 0.0
    assert score_with_reference("no idea", 1, "multiple_choice", CITIES) == 0.0
    assert score_with_reference("Unacceptable.", "unacceptable", "label", ["acceptable", "unacceptable"]) == 1.0
    assert score_with_reference("Acceptable.", "unacceptable", "label", ["acceptable", "unacceptable"]) == 0.0
    # Short answers: a correct sentence is not punished for its length...
    assert score_with_reference("The capital of France is Paris.", "Paris", "short_answer") == 1.0
    # ...partial overlap gets F1, and aliases take the best.
    assert score_with_reference("Paris France", "Paris city", "short_answer") == pytest.approx(0.5)
    assert score_with_reference("It is NYC.", ["New York City", "NYC"], "short_answer") == 1.0
    with pytest.raises(ValueError):
        score_with_reference("x", "y", "essay")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        score_with_reference("x", 0, "multiple_choice")


# -- judge --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Score: 7/10", 6 / 9),
        ("**Score:** 8.5/10", 7.5 / 9),
        ("Score: 10/10", 1.0),
        ("Score: 1/10", 0.0),
        ("8", 7 / 9),
        ("The rating is 6.", 5 / 9),
        ("I give it 9 out of 10", 8 / 9),
        ("4/5", 7 / 9),  # rescaled to the rubric: 8/10
        ("Score: 7/10. Revised score: 9/10", 8 / 9),  # the last one counts
        ("Score: 0/10", None),  # outside the rubric: ignored it, not clamped
        ("Score: 11", None),
        ("Score: -3", None),
        ("great answer!", None),
        ("", None),
    ],
)
def test_parse_judge_score(text: str, expected: float | None) -> None:
    got = parse_judge_score(text)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_parse_judge_score_other_scale() -> None:
    assert parse_judge_score("Score: 3", lo=1, hi=5) == pytest.approx(0.5)


def test_judge_messages_fixed_rubric() -> None:
    plain = judge_messages("Q?", "A.")
    with_ref = judge_messages("Q?", "A.", reference="R.")
    assert plain[0] == with_ref[0] and "Score: N/10" in plain[0]["content"]
    assert "Reference answer:\nR." in with_ref[1]["content"] and "Reference" not in plain[1]["content"]
    assert "(empty)" in judge_messages("Q?", "  ")[1]["content"]


# -- influence and pairs ------------------------------------------------------


def test_influences() -> None:
    assert influences([1.0, 0.5, 0.0], 0.5) == [0.5, 0.0, -0.5]
    assert influences([1.0, None], 0.0) == [1.0, None]
    assert influences([1.0, 0.0], None) == [None, None]


def select_pair(drafts, influences, min_margin):
    """choose_pair as (chosen, rejected, margin), or None with its reason dropped."""
    choice = choose_pair(drafts, influences, min_margin)
    return (choice.chosen, choice.rejected, choice.margin) if isinstance(choice, PairChoice) else None


def test_select_pair_picks_extremes_and_margin() -> None:
    drafts = ["a", "b", "c", "d"]
    assert select_pair(drafts, [0.1, 0.5, -0.2, 0.0], 0.0) == (1, 2, pytest.approx(0.7))
    assert select_pair(drafts, [0.1, 0.5, -0.2, 0.0], 0.7) is None  # margin must exceed the threshold
    assert select_pair(drafts, [0.3, 0.3, 0.3, 0.3], 0.0) is None  # a tie is no preference
    assert select_pair(drafts, [1.0, 1.0, 0.0, 0.0], 0.0) == (0, 2, 1.0)  # ties: first index


def test_select_pair_skips_unscored_and_identical() -> None:
    assert select_pair(["a", "b", "c"], [None, 1.0, 0.0], 0.0) == (1, 2, 1.0)
    assert select_pair(["a", "b"], [None, 1.0], 0.0) is None
    assert select_pair(["same", " same "], [1.0, 0.0], 0.0) is None  # identical text
    # An identical copy of the best is never its own rejected side.
    assert select_pair(["x", "x", "y"], [1.0, 0.0, 0.5], 0.0) == (0, 2, 0.5)
    assert "same text" in choose_pair(["x", "x"], [1.0, 0.0], 0.0)
    assert "margin" in choose_pair(["x", "y"], [0.0, 0.0], 0.0)
    with pytest.raises(ValueError):
        select_pair(["a"], [0.0, 1.0], 0.0)


def pairs_of(drafts, influences, min_margin, limit):
    choices = choose_pairs(drafts, influences, min_margin, limit)
    return [(c.chosen, c.rejected, round(c.margin, 6)) for c in choices] if isinstance(choices, list) else choices


def test_choose_pairs_adds_further_pairs_by_margin() -> None:
    drafts, gains = ["a", "b", "c", "d"], [0.4, 0.3, 0.0, -0.1]
    assert pairs_of(drafts, gains, 0.05, 1) == [(0, 3, 0.5)]  # choose_pair's pair alone
    assert pairs_of(drafts, gains, 0.05, 6) == [(0, 3, 0.5), (0, 2, 0.4), (1, 3, 0.4), (1, 2, 0.3), (0, 1, 0.1), (2, 3, 0.1)]
    assert len(pairs_of(drafts, gains, 0.05, 5)) == 5
    assert pairs_of(drafts, gains, 0.05, 2) == [(0, 3, 0.5), (0, 2, 0.4)]
    assert pairs_of(drafts, gains, 0.35, 6) == [(0, 3, 0.5), (0, 2, 0.4), (1, 3, 0.4)]  # (0, 1)'s 0.1 is noise


def test_choose_pairs_keeps_each_pair_of_texts_once() -> None:
    # Drafts 1 and 2 are one text: (0, 1) and (0, 2) would train the same pair twice.
    assert pairs_of(["x", "y", " y", "z"], [0.9, 0.0, 0.0, 0.5], 0.05, 6) == [(0, 1, 0.9), (3, 1, 0.5), (0, 3, 0.4)]
    assert "margin" in choose_pairs(["x", "y"], [0.0, 0.01], 0.05, 6)  # no pair: choose_pair's reason
    with pytest.raises(ValueError, match="limit"):
        choose_pairs(["x", "y"], [1.0, 0.0], 0.0, 0)


# -- human votes --------------------------------------------------------------


@pytest.mark.parametrize(
    "rating, best, vote",
    [(1, None, 1), (1, "weak", 1), (1, "collab", 1), (1, "strong", 0),
     (-1, None, -1), (-1, "weak", 0), (-1, "collab", 0), (-1, "strong", -1),
     (None, "weak", 1), (None, "collab", 1), (None, "strong", -1), (None, None, 0)],
)
def test_draft_vote(rating, best, vote) -> None:
    assert draft_vote(rating, best) == vote


def record(id: str, draft: str, feedback: list[dict], question: str = "Why is the sky blue?", domain: str = "general", **kw) -> dict:
    return {"id": id, "domain": domain, "question": question, "weak_draft": draft, "status": "ok",
            "weak_model": "weak", "strong_model": "strong", "adapter_version": kw.pop("adapter_version", "v1"),
            "feedback": feedback, **kw}


def test_human_pairs() -> None:
    records = [
        record("up", "Rayleigh scattering.", [{"rating": 1}]),
        # Same question, differently typed: still the same group.
        record("down", "Because of the ocean.", [{"rating": -1}], question="why is the SKY blue", adapter_version="v2"),
        # A changed vote: the latest (down) counts.
        record("changed", "Clouds.", [{"rating": 1}, {"rating": -1}]),
        record("conflict", "Mixed.", [{"rating": -1, "best": "collab"}]),  # no signal
        record("other-q", "Other.", [{"rating": -1}], question="Another question?"),
        record("failed", "Broken.", [{"rating": -1}], status="error"),
        record("unknown-domain", "Code.", [{"rating": -1}], domain="code"),
        record("no-draft", "", [{"rating": -1}]),
    ]
    pairs = human_pairs(records, {"general": served_pack("general").weak_messages})
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("Rayleigh scattering.", "Because of the ocean."),
        ("Rayleigh scattering.", "Clouds."),
    ]
    first = pairs[0]
    assert first.evaluator == "human" and first.confidence == 1.0 and first.trainable
    assert first.interaction_ids == ("up", "down")
    assert first.prompt == served_pack("general").weak_messages("Why is the sky blue?")
    assert first.adapter_version == "v1" and first.details["rejected_adapter_version"] == "v2"


def test_human_pairs_dedupe_and_identical() -> None:
    records = [
        record("u1", "Same.", [{"best": "weak"}]),
        record("u2", "Same.", [{"rating": 1}]),
        record("d1", "Other.", [{"best": "strong"}]),
        record("d2", "Same.", [{"rating": -1}]),
    ]
    pairs = human_pairs(records, {"general": served_pack("general").weak_messages})
    assert [(p.chosen, p.rejected, p.interaction_ids) for p in pairs] == [("Same.", "Other.", ("u1", "d1"))]


def make_pair(evaluator: str, question: str = "Why is the sky blue?", chosen: str = "good") -> PreferencePair:
    return PreferencePair(domain="general", question=question,
                          prompt=served_pack("general").weak_messages(question),
                          chosen=chosen, rejected="bad", margin=1.0, evaluator=evaluator)


def test_prefer_human_drops_automatic_pairs_for_rated_questions() -> None:
    auto_same = make_pair("reference", question="why is the sky BLUE")
    auto_other = make_pair("weak_judge", question="Other?")
    human = make_pair("human")
    assert prefer_human([auto_same, auto_other, human]) == [auto_other, human]


def test_write_dpo_jsonl(tmp_path: Path) -> None:
    pairs = [make_pair("reference"), make_pair("human", chosen="line\u2028break ünïcode")]
    path, n, digest = write_dpo_jsonl(pairs, tmp_path / "sub" / "pairs.jsonl")
    assert n == 2 and len(digest) == 64
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2  # U+2028 escaped: one pair per line for every reader
    rows = [json.loads(line) for line in lines]
    assert rows[0] == dpo_record(pairs[0])
    assert set(rows[1]) == {"prompt", "chosen", "rejected"}
    assert [m["role"] for m in rows[1]["prompt"]] == ["system", "user"]
    assert rows[1]["chosen"] == [{"role": "assistant", "content": "line\u2028break ünïcode"}]
    assert rows[1]["rejected"] == [{"role": "assistant", "content": "bad"}]
    # Same pairs, same bytes, same hash: the hash identifies a training set.
    assert write_dpo_jsonl(pairs, tmp_path / "again.jsonl")[2] == digest
    assert write_dpo_jsonl([], tmp_path / "empty.jsonl")[1] == 0
