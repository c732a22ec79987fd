"""Drafting examples for SFT, built from literal packs and corpora."""

from __future__ import annotations

from pathlib import Path

from cowest_app.domains.packs import PackItem, load_pack
from tests.training.test_evaluate import write_pack
from training.draft_data import draft_completion, draft_examples, grounded_draft_examples, reference_answer


def test_reference_answer_states_option_text_and_letter() -> None:
    choice = PackItem("q1", "Max dose?", "B", ("10 mg", "20 mg", "40 mg"))
    assert reference_answer(choice) == "20 mg, Answer: B"
    assert reference_answer(PackItem("q2", "Capital?", ("Lunet", "Lunet City"))) == "Lunet"
    assert reference_answer(PackItem("q3", "Fine?", "acceptable")) == "acceptable"


def test_draft_completion_format() -> None:
    assert draft_completion(["A is 1.", "B is 2."], "1, Answer: A") == "Background: A is 1. B is 2.\nDraft answer: 1, Answer: A"
    assert draft_completion([], "x") == "Background: (none found)\nDraft answer: x"
    assert draft_completion(["A is 1."], None) == "Background: A is 1."  # no reference: the background alone


def test_draft_examples_retrieve_the_statement_behind_the_answer(tmp_path: Path) -> None:
    root = write_pack(tmp_path / "pack")
    (root / "corpus" / "facts.md").write_text(
        "# Facts\n\n- Cedraxin maximum daily dose is 80 mg.\n- Cedraxin is stocked on ward 9.\n"
        "- Altrovane maximum daily dose is 1200 mg.\n", encoding="utf-8")
    (root / "train.jsonl").write_text(
        '{"id": "t1", "question": "What is the maximum daily dose of Cedraxin?", '
        '"options": ["1200 mg", "80 mg"], "answer": "B"}\n', encoding="utf-8")
    pack = load_pack(root)
    [row] = draft_examples(pack, passages=1)
    system, user, reply = row["messages"]
    assert (system["role"], user["role"], reply["role"]) == ("system", "user", "assistant")
    assert system["content"] == "Recall the facts." and "A. 1200 mg" in user["content"]  # the pack's own weak prompt
    assert reply["content"] == "Background: Cedraxin maximum daily dose is 80 mg.\nDraft answer: 80 mg, Answer: B"


def test_grounded_examples_show_the_retrieved_passages_and_copy_the_one_behind_the_answer(tmp_path: Path) -> None:
    root = write_pack(tmp_path / "pack")
    (root / "corpus" / "facts.md").write_text(
        "# Formulary\n\n## Cedraxin\n\n- Cedraxin maximum daily dose is 80 mg.\n- Cedraxin is stocked on ward 9.\n"
        "\n## Altrovane\n\n- Altrovane maximum daily dose is 1200 mg.\n- Altrovane is given by mouth.\n", encoding="utf-8")
    (root / "train.jsonl").write_text(
        '{"id": "t1", "question": "What is the maximum daily dose of Cedraxin?", '
        '"options": ["1200 mg", "80 mg"], "answer": "B"}\n', encoding="utf-8")
    with (root / "domain.yaml").open("a", encoding="utf-8") as yaml_file:
        yaml_file.write("retrieval:\n  passages: 2\n")
    pack = load_pack(root)
    [row] = grounded_draft_examples(pack, passages=1)
    system, user, reply = row["messages"]
    # The prompt is the serving one: the two passages retrieved for the question alone (a heading the
    # text already starts with is not repeated).
    assert user["content"].startswith("Passages:\n- Cedraxin maximum daily dose is 80 mg.\n"
                                      "- Altrovane maximum daily dose is 1200 mg.\n\nQuestion: ")
    assert "Cedraxin is stocked" not in user["content"]
    assert user == pack.draft_messages("What is the maximum daily dose of Cedraxin?\n\nOptions:\nA. 1200 mg\nB. 80 mg", grounded=True)[1]
    # The draft copies the shown passage that matches question and answer.
    assert reply["content"] == "Background: Cedraxin maximum daily dose is 80 mg.\nDraft answer: 80 mg, Answer: B"
