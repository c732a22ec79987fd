"""Drafting examples for SFT, built from literal packs and corpora."""

from __future__ import annotations

from pathlib import Path

from cowest_app.packs import PackItem, load_pack
from tests.training.test_evaluate import write_pack
from training.draft_data import corpus_statements, draft_completion, draft_examples, reference_answer


def test_corpus_statements_drop_headings_and_list_markers() -> None:
    text = "# Formulary\n\n## Cedraxin\n\n- Cedraxin dose: 10 mg.\n* Ward 9 stocks it.\n3. Renal: halve.\nPlain line.\n\n"
    assert corpus_statements([text, "  \n- Second doc.\n"]) == [
        "Cedraxin dose: 10 mg.", "Ward 9 stocks it.", "Renal: halve.", "Plain line.", "Second doc."]


def test_reference_answer_states_option_text_and_letter() -> None:
    choice = PackItem("q1", "Max dose?", "B", ("10 mg", "20 mg", "40 mg"))
    assert reference_answer(choice) == "20 mg, Answer: B"
    assert reference_answer(PackItem("q2", "Capital?", ("Lunet", "Lunet City"))) == "Lunet"
    assert reference_answer(PackItem("q3", "Fine?", "acceptable")) == "acceptable"


def test_draft_completion_format() -> None:
    assert draft_completion(["A is 1.", "B is 2."], "1, Answer: A") == "Background: A is 1. B is 2.\nDraft answer: 1, Answer: A"
    assert draft_completion([], "x") == "Background: (none found)\nDraft answer: x"


def test_draft_examples_retrieve_the_statement_behind_the_answer(tmp_path: Path) -> None:
    root = write_pack(tmp_path / "pack")
    (root / "corpus" / "facts.md").write_text(
        "# Facts\n\n- Cedraxin maximum daily dose is 80 mg.\n- Cedraxin is stocked on ward 9.\n"
        "- Altrovane maximum daily dose is 1200 mg.\n", encoding="utf-8")
    (root / "train.jsonl").write_text(
        '{"id": "t1", "question": "What is the maximum daily dose of Cedraxin?", '
        '"options": ["1200 mg", "80 mg"], "answer": "B"}\n', encoding="utf-8")
    pack = load_pack(root)
    [row] = draft_examples(pack, statements=1)
    system, user, reply = row["messages"]
    assert (system["role"], user["role"], reply["role"]) == ("system", "user", "assistant")
    assert system["content"] == "Recall the facts." and "A. 1200 mg" in user["content"]  # the pack's own weak prompt
    assert reply["content"] == "Background: Cedraxin maximum daily dose is 80 mg.\nDraft answer: 80 mg, Answer: B"
