"""Retrieval units and BM25 search, on literal corpora."""

from __future__ import annotations

import pytest

from cowest_app.domains.retrieval import (
    Passage,
    Retriever,
    count_tokens,
    render_context,
    search_terms,
    split_passages,
)

BULLETS = "\n".join(f"- Rule {i}: cabinet {i} holds drug number {i} and is checked every {i + 1} days." for i in range(60))


def test_sixty_bullets_without_blank_lines_become_sixty_passages() -> None:
    passages = split_passages([("rules.md", BULLETS)])
    assert len(passages) == 60
    assert passages[7] == Passage("rules.md", "", "Rule 7: cabinet 7 holds drug number 7 and is checked every 8 days.")
    assert max(count_tokens(p.text) for p in passages) <= 128


def test_one_huge_paragraph_is_cut_into_overlapping_windows_within_budget() -> None:
    words = " ".join(f"w{i}" for i in range(300))
    passages = split_passages([("big.txt", words)], max_tokens=100, overlap=10)
    assert [count_tokens(p.text) for p in passages] == [100, 100, 100, 30]
    assert passages[0].text.split()[-10:] == passages[1].text.split()[:10]  # the overlap
    assert passages[-1].text.endswith("w299")


def test_markdown_headings_name_their_passages_and_are_not_passages() -> None:
    text = "# Formulary\n\nIntro line one.\nIntro line two.\n## Cedraxin\n- Dose: 10 mg.\n- Ward 9.\n### Notes\nPlain note."
    passages = split_passages([("f.md", text)])
    assert passages == [
        Passage("f.md", "Formulary", "Intro line one. Intro line two."),
        Passage("f.md", "Cedraxin", "Dose: 10 mg."),
        Passage("f.md", "Cedraxin", "Ward 9."),
        Passage("f.md", "Notes", "Plain note."),
    ]
    assert passages[1].as_context() == "Cedraxin: Dose: 10 mg."


def test_crlf_and_empty_files() -> None:
    assert split_passages([("win.txt", "First para\r\nstill first.\r\n\r\nSecond.\r\n")]) == [
        Passage("win.txt", "", "First para still first."), Passage("win.txt", "", "Second.")]
    assert split_passages([("empty.md", ""), ("blank.md", "\n\n  \n")]) == []


def test_a_list_item_keeps_its_continuation_lines() -> None:
    text = "1. Give 10 mg\n   with food.\n2) Stop at 20 mg.\n+ Check levels."
    assert [p.text for p in split_passages([("d", text)])] == ["Give 10 mg with food.", "Stop at 20 mg.", "Check levels."]


def test_bad_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        split_passages([("d", "x")], max_tokens=10, overlap=10)


def test_bm25_finds_the_matching_passage_and_never_unrelated_ones() -> None:
    passages = split_passages([("f.md", "## Scurvy\n- Scurvy is caused by vitamin C deficiency.\n## Blood pressure\n"
                                         "- Hypertension is persistently high blood pressure.\n"
                                         "- Thiazide diuretics are a first-line treatment for hypertension.\n")])
    retriever = Retriever(passages)
    assert retriever.search("Which vitamin deficiency causes scurvy?", 1)[0].text == "Scurvy is caused by vitamin C deficiency."
    top = retriever.search("first-line treatment for hypertension", 2)
    assert [p.text for p in top] == ["Thiazide diuretics are a first-line treatment for hypertension.",
                                     "Hypertension is persistently high blood pressure."]
    assert retriever.search("quantum chromodynamics", 3) == []
    assert Retriever([]).search("anything", 3) == []
    assert search_terms("First-line, VITAMIN C!") == ["first", "line", "vitamin", "c"]


def test_rare_terms_outweigh_common_ones() -> None:
    passages = [Passage("d", "", t) for t in ("cat dog", "cat fish", "cat bird", "cat hamster", "cat mouse")]
    assert Retriever(passages).search("cat fish", 1)[0].text == "cat fish"


def test_render_context_lists_passages_under_their_headings() -> None:
    assert render_context([Passage("d", "Cedraxin", "Dose: 10 mg."), Passage("d", "", "Ward 9.")]) == \
        "- Cedraxin: Dose: 10 mg.\n- Ward 9."


RANKINGS = """
import hashlib, json
from cowest_app.domains.packs import load_pack
from training.knowledge import KNOWLEDGE_FILE, read_rows
pack = load_pack("packs/saltmarsh-formulary")
questions = [q for row in read_rows(pack.root / KNOWLEDGE_FILE) for q in row["questions"]]
ranked = [[p.text for p in pack.retriever.search(q, 3)] for q in questions]
print(len(questions), hashlib.sha256(json.dumps(ranked).encode()).hexdigest())
"""


def test_rankings_do_not_depend_on_the_hash_seed() -> None:
    """The shipped pack's 1,271 knowledge questions rank the same passages whatever
    PYTHONHASHSEED is (under hash seed 2 a set-ordered query once kept one more question)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    outputs = {subprocess.run([sys.executable, "-c", RANKINGS], cwd=root, capture_output=True, text=True, check=True,
                              env=os.environ | {"PYTHONHASHSEED": seed, "PYTHONPATH": str(root)}).stdout
               for seed in ("0", "1", "2", "3")}
    assert len(outputs) == 1 and int(outputs.pop().split()[0]) > 1000
