from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

from cowest_app.core.feedback import normalize_answer
from cowest_app.domains.packs import PackError, PackItem, format_item, load_pack, parse_item

REPO = Path(__file__).resolve().parents[3]
SALTMARSH = REPO / "packs" / "saltmarsh-formulary"

DOMAIN_YAML = """\
name: tiny
description: A tiny pack for tests.
task_type: multiple_choice
metric: accuracy
weak_prompt:
  system: Recall the Tinyland facts.
  user: "Question: {question}\\nBackground:"
strong_prompt:
  system: Refine the draft.
  user: "Question: {question}\\nDraft: {draft}\\nAnswer:"
"""
OPTIONS = ["Velorazine", "Tambrexil", "Oscavurin", "Pellidrone"]


def row(id: str, question: str = "Which drug?", answer: object = "B", **extra: object) -> str:
    return json.dumps({"id": id, "question": question, "answer": answer, "options": OPTIONS, **extra})


def write_pack(root: Path, yaml_text: str = DOMAIN_YAML, train: list[str] | None = None,
               test: list[str] | None = None, corpus: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "domain.yaml").write_text(yaml_text)
    (root / "corpus").mkdir(exist_ok=True)
    for name, text in (corpus if corpus is not None else {"facts.md": "- Tambrexil is the Tinyland drug.\n"}).items():
        (root / "corpus" / name).write_text(text)
    lines = {"train": train if train is not None else [row("q1"), row("q2", "Which one?", 0, kind="recall")],
             "test": test if test is not None else [row("t1", "Which drug now?", "c", kind="reasoning")]}
    for split, rows in lines.items():
        (root / f"{split}.jsonl").write_text("".join(r + "\n" for r in rows))
    return root.resolve()  # load_pack names files by their resolved path


def load_error(root: Path) -> str:
    with pytest.raises(PackError) as info:
        load_pack(root)
    return str(info.value)


# -- a valid pack ---------------------------------------------------------------


def test_valid_pack_loads_and_normalises_answers(tmp_path):
    pack = load_pack(write_pack(tmp_path / "p"))
    assert (pack.name, pack.task_type, pack.metric, pack.title) == ("tiny", "multiple_choice", "accuracy", "tiny")
    assert [i.answer for i in pack.train] == ["B", "A"] and pack.test[0].answer == "C"
    assert [i.reference for i in pack.train] == [1, 0]
    assert pack.train[1].kind == "recall" and pack.train[0].kind is None
    assert pack.corpus_texts() == ["- Tambrexil is the Tinyland drug.\n"]
    assert set(pack.prompts) == {"weak", "strong", "direct", "rag", "weak_retrieval"}  # direct, RAG and grounded drafting get defaults


def test_messages_fill_templates_once(tmp_path):
    pack = load_pack(write_pack(tmp_path / "p"))
    assert pack.weak_messages("Q?") == [{"role": "system", "content": "Recall the Tinyland facts."},
                                        {"role": "user", "content": "Question: Q?\nBackground:"}]
    strong = pack.strong_messages("Is {draft} literal?", "  my draft  ")[1]["content"]
    assert strong == "Question: Is {draft} literal?\nDraft: my draft\nAnswer:"
    assert pack.strong_messages("Q", " ")[1]["content"].endswith("Draft: (no notes)\nAnswer:")
    assert "Q?" in pack.direct_messages("Q?")[1]["content"]
    rag = pack.rag_messages("Q?", "Tambrexil is the Tinyland drug.")[1]["content"]
    assert "Tambrexil is the Tinyland drug." in rag and "Q?" in rag


def test_format_item_and_question_items(tmp_path):
    pack = load_pack(write_pack(tmp_path / "p"))
    assert format_item(pack.train[0]) == "Which drug?\n\nOptions:\nA. Velorazine\nB. Tambrexil\nC. Oscavurin\nD. Pellidrone"
    items = pack.question_items("train")
    # Questions are collected under the pack's own name: the pack is the domain.
    assert [(q.question, q.domain, q.reference, q.options) for q in items][0] == ("Which drug?", "tiny", 1, tuple(OPTIONS))
    with pytest.raises(ValueError):
        pack.question_items("validation")


def test_dev_split_is_trains_tail_and_fit_the_rest(tmp_path):
    pack = load_pack(write_pack(tmp_path / "p"))
    assert len(pack.train) == 2 and pack.dev_size == 1  # half of a small train
    assert pack.dev == pack.train[-1:] and pack.fit == pack.train[:-1]
    assert [q.question for q in pack.question_items("dev")] == [pack.train[-1].question]
    root = Path(__file__).parents[3] / "packs"
    shipped = load_pack(root / "saltmarsh-formulary")
    assert (len(shipped.train), len(shipped.dev), len(shipped.fit)) == (604, 60, 544)  # 10%, at most 60
    assert set(shipped.dev).isdisjoint(shipped.fit)
    general = load_pack(root / "general")
    assert (len(general.train), len(general.dev)) == (13, 6)  # at least min(8, half of train)


@pytest.mark.parametrize("answer, expected", [
    ("Answer: B", 1.0), ("b)", 1.0), ("The right drug is Tambrexil.", 1.0), ("(B)", 1.0),
    ("Answer: C", 0.0), ("Oscavurin", 0.0), ("I am not sure.", 0.0),
])
def test_score_multiple_choice(tmp_path, answer, expected):
    pack = load_pack(write_pack(tmp_path / "p"))
    assert pack.score(answer, pack.train[0]) == expected


def _short_answer_pack(tmp_path: Path, metric: str) -> Path:
    yaml_text = DOMAIN_YAML.replace("multiple_choice", "short_answer").replace("accuracy", metric)
    rows = [json.dumps({"id": "s1", "question": "Capital of Tinyland?", "answer": ["Green Harbour", "Greenharbour"]})]
    return write_pack(tmp_path / metric, yaml_text, rows, [json.dumps({"id": "s2", "question": "Q?", "answer": "x"})])


def test_score_short_answer_metrics(tmp_path):
    contains = load_pack(_short_answer_pack(tmp_path, "contains_f1"))
    item = contains.train[0]
    assert item.reference == ("Green Harbour", "Greenharbour")
    assert contains.score("It is Green Harbour, by the sea.", item) == 1.0
    exact = load_pack(_short_answer_pack(tmp_path, "exact_match"))
    assert exact.score("It is Green Harbour, by the sea.", item) == 0.0 and exact.score("greenharbour", item) == 1.0
    f1 = load_pack(_short_answer_pack(tmp_path, "token_f1"))
    assert f1.score("Green Harbour town", item) == pytest.approx(0.8)
    assert f1.test[0].reference == "x"


def test_label_pack(tmp_path):
    yaml_text = DOMAIN_YAML.replace("multiple_choice", "label") + "labels: [acceptable, unacceptable]\n"
    rows = [json.dumps({"id": "e1", "question": "I kept the found wallet.", "answer": "Unacceptable"})]
    pack = load_pack(write_pack(tmp_path / "p", yaml_text, rows, rows))
    item = pack.train[0]
    assert item.answer == "unacceptable" and item.options is None  # canonical spelling
    assert pack.score("Verdict: unacceptable.", item) == 1.0 and pack.score("That is acceptable.", item) == 0.0
    assert pack.question_items("test")[0].options is None
    assert "acceptable, unacceptable" in pack.direct_messages("Q")[0]["content"]


def test_fingerprint_tracks_every_input(tmp_path):
    root = write_pack(tmp_path / "p")
    first = load_pack(root).fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", first) and load_pack(root).fingerprint() == first
    seen = {first}
    for change in (
        lambda: (root / "corpus" / "facts.md").write_text("- Tambrexil is blue.\n"),
        lambda: (root / "corpus" / "more.txt").write_text("Another document.\n"),
        lambda: (root / "test.jsonl").write_text(row("t1", "Which drug later?") + "\n"),
        lambda: (root / "domain.yaml").write_text(DOMAIN_YAML.replace("A tiny pack", "A small pack")),
    ):
        change()
        seen.add(load_pack(root).fingerprint())
    assert len(seen) == 5


def test_parse_item_raises_with_problems():
    assert parse_item({"id": "x", "question": "Q", "answer": 2, "options": OPTIONS}, "multiple_choice").answer == "C"
    with pytest.raises(PackError) as info:
        parse_item({"id": "", "question": " ", "answer": None}, "short_answer")
    assert len(info.value.errors) == 3


# -- validation errors -----------------------------------------------------------

BROKEN_YAML = "name: tiny\ndescription: d\ntask_type: [multiple_choice\nmetric: accuracy\n"


@pytest.mark.parametrize("yaml_text, where, message", [
    (BROKEN_YAML, "domain.yaml:4:", "invalid YAML"),
    (DOMAIN_YAML.replace("task_type: multiple_choice\n", ""), "domain.yaml:", "missing field 'task_type'"),
    (DOMAIN_YAML.replace("name: tiny\n", ""), "domain.yaml:", "missing field 'name'"),
    (DOMAIN_YAML.replace("multiple_choice", "essay"), "domain.yaml:3:", "unknown task_type 'essay'"),
    (DOMAIN_YAML.replace("metric: accuracy", "metric: bleu"), "domain.yaml:4:", "unknown metric 'bleu'"),
    (DOMAIN_YAML.replace("metric: accuracy", "metric: token_f1"), "domain.yaml:4:",
     "metric 'token_f1' is not valid for task_type multiple_choice"),
    (DOMAIN_YAML.replace("multiple_choice", "label"), "domain.yaml:", "a label task needs 'labels'"),
    (DOMAIN_YAML.replace('"Question: {question}\\nBackground:"', '"Background:"'), "domain.yaml:7:",
     "'weak_prompt.user' must contain {question}"),
    (DOMAIN_YAML.replace("Draft: {draft}", "Draft:"), "domain.yaml:10:", "'strong_prompt.user' must contain {draft}"),
    (DOMAIN_YAML + "rag_prompt:\n  system: s\n  user: 'Q: {question}'\n", "domain.yaml:13:",
     "'rag_prompt.user' must contain {context}"),
    (DOMAIN_YAML.split("weak_prompt:")[0], "domain.yaml:", "missing field 'weak_prompt'"),
    (DOMAIN_YAML + "retrieval: {passages: 50}\n", "domain.yaml:11:",
     "'retrieval' must be true, false or {passages: N} with N from 1 to 20"),
    (DOMAIN_YAML + "examples: [ok, '']\n", "domain.yaml:11:", "'examples' must be a list of non-empty question strings"),
    (DOMAIN_YAML + "answer_tokens: 5\n", "domain.yaml:11:", "'answer_tokens' must be a whole number of tokens from 16 to 4096"),
    (DOMAIN_YAML + "answer_tokens: lots\n", "domain.yaml:11:", "'answer_tokens' must be a whole number of tokens from 16 to 4096"),
    (DOMAIN_YAML + "drafts: never\n", "domain.yaml:11:", "'drafts' must be one of always, specialist"),
    ("- just\n- a list\n", "domain.yaml:", "expected a mapping"),
])
def test_domain_yaml_errors(tmp_path, yaml_text, where, message):
    text = load_error(write_pack(tmp_path / "p", yaml_text))
    assert f"{where} {message}" in text.replace(f"{tmp_path / 'p'}/", "")


def test_missing_domain_yaml(tmp_path):
    root = write_pack(tmp_path / "p")
    (root / "domain.yaml").unlink()
    assert f"{root / 'domain.yaml'}: missing" in load_error(root)


@pytest.mark.parametrize("train, where, message", [
    ([row("q1"), "{not json"], "train.jsonl:2:", "invalid JSON"),
    ([row("q1"), json.dumps({"id": "q2", "answer": "A", "options": OPTIONS})], "train.jsonl:2:", "missing or empty 'question'"),
    ([row("q1", answer="")], "train.jsonl:1:", "missing or empty 'answer'"),
    ([json.dumps({"question": "Q", "answer": "A", "options": OPTIONS})], "train.jsonl:1:", "missing or empty 'id'"),
    ([row("q1"), json.dumps({"id": "q2", "question": "Q", "answer": "A"})], "train.jsonl:2:",
     "a multiple_choice item needs 'options'"),
    ([row("q1", answer="E")], "train.jsonl:1:", "answer 'E' is not among the options"),
    ([row("q1", answer=4)], "train.jsonl:1:", "answer 4 is not among the options"),
    ([row("q1", options=["same", "Same", "other"])], "train.jsonl:1:", "two options are the same text"),
    ([row("q1"), "", row("q1", "Another?")], "train.jsonl:3:", "duplicate id 'q1' (first on line 1)"),
    ([row("q1", kind="trivia")], "train.jsonl:1:", "unknown kind 'trivia'"),
    (["[1, 2]"], "train.jsonl:1:", "expected a JSON object"),
    ([], "train.jsonl:", "empty split: no items"),
])
def test_split_errors_name_file_and_line(tmp_path, train, where, message):
    text = load_error(write_pack(tmp_path / "p", train=train))
    assert f"{where} {message}" in text.replace(f"{tmp_path / 'p'}/", "")


def test_label_answer_not_in_labels(tmp_path):
    yaml_text = DOMAIN_YAML.replace("multiple_choice", "label") + "labels: [acceptable, unacceptable]\n"
    rows = [json.dumps({"id": "e1", "question": "Q", "answer": "fine"}),
            json.dumps({"id": "e2", "question": "Q", "answer": "acceptable", "options": ["a", "b"]})]
    text = load_error(write_pack(tmp_path / "p", yaml_text, rows, rows[:1]))
    assert "train.jsonl:1: answer 'fine' is not one of the labels: acceptable, unacceptable" in text
    assert "train.jsonl:2: 'options' are only for multiple_choice items, not label" in text
    assert "test.jsonl:1: answer 'fine'" in text


def test_missing_files_and_corpus(tmp_path):
    root = write_pack(tmp_path / "p", corpus={"notes.csv": "a,b\n", "empty.md": "  \n"})
    (root / "test.jsonl").unlink()
    text = load_error(root)
    assert f"{root / 'corpus'}: no corpus documents" in text
    assert f"{root / 'test.jsonl'}: missing" in text
    shutil.rmtree(root / "corpus")
    assert f"{root / 'corpus'}: missing" in load_error(root)
    with pytest.raises(PackError, match="not a directory"):
        load_pack(tmp_path / "nowhere")


def test_errors_are_collected_and_capped(tmp_path):
    bad_rows = [row(f"q{i}", answer="Z") for i in range(25)]
    yaml_text = DOMAIN_YAML.replace("metric: accuracy", "metric: bleu")
    with pytest.raises(PackError) as info:
        load_pack(write_pack(tmp_path / "p", yaml_text, bad_rows))
    assert len(info.value.errors) == 26
    lines = str(info.value).splitlines()
    assert lines[0].endswith("has 26 error(s):") and lines[-1] == "... and 6 more"
    assert len(lines) == 22 and "unknown metric" in lines[1] and "train.jsonl:19:" in lines[20]


def test_invalid_task_type_still_checks_item_shape(tmp_path):
    text = load_error(write_pack(tmp_path / "p", DOMAIN_YAML.replace("multiple_choice", "essay"), ["{oops", row("")]))
    assert "train.jsonl:1: invalid JSON" in text and "train.jsonl:2: missing or empty 'id'" in text


# -- the shipped Saltmarsh pack ----------------------------------------------------


@pytest.fixture(scope="module")
def saltmarsh():
    return load_pack(SALTMARSH)


def _fact_lines(pack) -> list[str]:
    return [line[2:] for text in pack.corpus_texts() for line in text.splitlines() if line.startswith("- ")]


def test_saltmarsh_loads_with_enough_facts_and_items(saltmarsh):
    assert (saltmarsh.name, saltmarsh.task_type, saltmarsh.metric, saltmarsh.retrieval_passages) == (
        "saltmarsh-formulary", "multiple_choice", "accuracy", 4)
    assert len(saltmarsh.corpus_paths) >= 3
    assert len(set(_fact_lines(saltmarsh))) >= 150
    assert len(saltmarsh.train) >= 300 and len(saltmarsh.test) >= 150
    for split in (saltmarsh.train, saltmarsh.test):
        assert {i.kind for i in split} == {"recall", "reasoning"}
        assert min(Counter(i.kind for i in split).values()) >= len(split) // 3


def test_saltmarsh_items_are_well_formed(saltmarsh):
    for split in (saltmarsh.train, saltmarsh.test):
        ids = [i.id for i in split]
        assert len(ids) == len(set(ids))
        for item in split:
            assert item.options is not None and len(item.options) == 4 and item.answer in "ABCD"
        letters = Counter(i.answer for i in split)
        assert set(letters) == set("ABCD") and max(letters.values()) <= 0.4 * len(split)
    assert not {i.id for i in saltmarsh.train} & {i.id for i in saltmarsh.test}


def test_saltmarsh_test_is_not_copied_from_train_and_its_facts_are_in_the_corpus(saltmarsh):
    train_questions = {normalize_answer(i.question) for i in saltmarsh.train}
    assert not [i.id for i in saltmarsh.test if normalize_answer(i.question) in train_questions]
    facts = {f["id"]: f["text"] for f in map(json.loads, (SALTMARSH / "facts.jsonl").read_text().splitlines())}
    lines = set(_fact_lines(saltmarsh))
    assert set(facts.values()) <= lines
    for item in saltmarsh.test + saltmarsh.train:
        assert item.fact_ids and all(f in facts for f in item.fact_ids), item.id


def test_saltmarsh_scoring_and_prompts(saltmarsh):
    item = saltmarsh.test[0]
    right = item.options[item.reference]
    assert saltmarsh.score(f"Answer: {item.answer}", item) == 1.0
    assert saltmarsh.score(f"{item.answer.lower()})", item) == 1.0
    assert saltmarsh.score(f"Working it through, the answer is {right}.", item) == 1.0
    wrong = "ABCD"[(item.reference + 1) % 4]
    assert saltmarsh.score(f"Answer: {wrong}", item) == 0.0
    shown = format_item(item)
    assert "Background:" in saltmarsh.weak_messages(shown)[1]["content"]
    strong = saltmarsh.strong_messages(shown, "Background: x. Draft answer: y")[1]["content"]
    # notes: background: the strong model reads the facts, not the weak model's own answer
    assert shown in strong and "x." in strong and "Draft answer: y" not in strong and "Answer: <letter>" in strong
    assert "EXCERPT" in saltmarsh.rag_messages(shown, "EXCERPT")[1]["content"]


def test_saltmarsh_generator_reproduces_committed_files(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("saltmarsh_build", SALTMARSH / "build_pack.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "HERE", tmp_path)
    module.main()
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert built == sorted([Path("facts.jsonl"), Path("train.jsonl"), Path("test.jsonl"),
                            *(Path("corpus") / p.name for p in (SALTMARSH / "corpus").iterdir())])
    for rel in built:
        assert (tmp_path / rel).read_bytes() == (SALTMARSH / rel).read_bytes(), rel


def test_pack_item_reference_forms():
    assert PackItem("a", "Q", "D", ("w", "x", "y", "z")).reference == 3
    assert PackItem("b", "Q", "unacceptable").reference == "unacceptable"
    assert PackItem("c", "Q", ("one", "two")).reference == ("one", "two")


def test_notes_background_hides_the_weak_answer_from_the_strong_model(tmp_path):
    plain = load_pack(write_pack(tmp_path / "plain"))
    hidden = load_pack(write_pack(tmp_path / "hidden", DOMAIN_YAML + "notes: background\n"))
    draft = "Background: Tambrexil is the one.\nDraft answer: Answer: C"
    assert plain.notes == "draft" and "Answer: C" in plain.strong_messages("Which drug?", draft)[1]["content"]
    shown = hidden.strong_messages("Which drug?", draft)[1]["content"]
    assert "Tambrexil is the one." in shown and "Answer: C" not in shown and "Draft answer" not in shown
    assert "(no notes)" in hidden.strong_messages("Which drug?", "Draft answer: C")[1]["content"]
    with pytest.raises(PackError, match="'notes' must be one of draft, background"):
        load_pack(write_pack(tmp_path / "bad", DOMAIN_YAML + "notes: everything\n"))


def test_answer_tokens_is_the_packs_answer_budget(tmp_path):
    assert load_pack(write_pack(tmp_path / "plain")).answer_tokens is None
    assert load_pack(write_pack(tmp_path / "short", DOMAIN_YAML + "answer_tokens: 120\n")).answer_tokens == 120


def test_a_specialist_pack_drafts_only_from_passages_or_through_its_adapter(tmp_path):
    plain = load_pack(write_pack(tmp_path / "plain"))
    assert plain.drafts == "always" and plain.drafts_with(specialised=False)
    specialist = load_pack(write_pack(tmp_path / "specialist", DOMAIN_YAML + "drafts: specialist\n"))
    assert not specialist.drafts_with(specialised=False) and specialist.drafts_with(specialised=True)
    grounded = load_pack(write_pack(tmp_path / "grounded", DOMAIN_YAML + "drafts: specialist\nretrieval: true\n"))
    assert grounded.drafts_with(specialised=False)  # it copies retrieved passages: facts, not guesses
