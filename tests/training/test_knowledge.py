"""Knowledge augmentation: parsing the strong model's questions, keeping the on-target ones, the resumable cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cowest_app.domains.packs import load_pack
from cowest_app.domains.retrieval import Passage, Retriever
from tests.fakes.scripted_backend import ScriptedBackend
from tests.training.test_evaluate import CORPUS_LINES, write_pack
from training import knowledge
from training.pipeline import curriculum_order, sft_rows

DOSE = Passage("f.md", "Cedraxin", "Cedraxin maximum daily dose: 80 mg in 24 hours.")
ROUTE = Passage("f.md", "Cedraxin", "Cedraxin is given by the inhaled route.")
CODE = Passage("p.md", "Code Whimbrel", "Under Code Whimbrel, a senior review must happen within 120 minutes.")


class _Completing(ScriptedBackend):
    """The scripted backend with the whole-reply call the generator uses."""

    def complete(self, messages, **opts) -> str:
        return "".join(self.generate(messages, **opts))


def test_parse_questions_keeps_distinct_question_lines() -> None:
    reply = ("Here are the questions:\nQ: What is the maximum daily dose of Cedraxin?\n"
             "Q2: What is the maximum daily dose of Cedraxin?\n1. Q: How much Cedraxin may be given in a day?\n"
             "Q: Cedraxin dose\nq) Which is the daily limit for Cedraxin?\nQ: Why?\nQ: One too many?")
    assert knowledge.parse_questions(reply, 3) == [
        "What is the maximum daily dose of Cedraxin?",
        "How much Cedraxin may be given in a day?",
        "Which is the daily limit for Cedraxin?",
    ]
    assert knowledge.parse_questions("no questions here", 3) == []


def test_on_target_needs_the_statement_among_the_first() -> None:
    retriever = Retriever([DOSE, ROUTE, CODE])
    assert knowledge.on_target("What is the maximum daily dose of Cedraxin?", DOSE, retriever, rank=1)
    assert not knowledge.on_target("By which route is Cedraxin given?", DOSE, retriever, rank=1)
    assert not knowledge.on_target("What colour is the sky?", DOSE, retriever)  # shares no term


def test_knowledge_texts_pair_kept_questions_with_the_statement() -> None:
    rows = [
        {"statement": DOSE.text, "questions": ["What is the maximum daily dose of Cedraxin?", "Who leads Code Whimbrel?"]},
        {"statement": "A statement the corpus no longer has.", "questions": ["What does it say?"]},
        {"statement": CODE.text, "questions": []},
    ]
    texts = knowledge.knowledge_texts(rows, [DOSE, ROUTE, CODE])
    assert texts == ["Question: What is the maximum daily dose of Cedraxin?\n"
                     "Background: Cedraxin maximum daily dose: 80 mg in 24 hours."]


def test_knowledge_chats_put_each_kept_question_in_the_drafting_prompt(tmp_path: Path) -> None:
    pack = load_pack(write_pack(tmp_path / "pack"))
    rows = [{"statement": CORPUS_LINES[0], "questions": ["What is the capital of Avaria?", "Who leads Code Whimbrel?"]}]
    chats = knowledge.knowledge_chats(rows, pack)
    assert chats == [{"messages": pack.draft_messages("What is the capital of Avaria?", grounded=False)
                      + [{"role": "assistant", "content": "Background: The capital of Avaria is Lunet."}]}]
    assert knowledge.pack_knowledge(pack, "chat") == []  # no knowledge.jsonl yet
    with pytest.raises(ValueError, match="unknown knowledge format 'chats'"):
        knowledge.pack_knowledge(pack, "chats")


def test_knowledge_format_chat_swaps_texts_for_chats(tmp_path: Path) -> None:
    pack = load_pack(write_pack(tmp_path / "pack"))
    row = {"statement": CORPUS_LINES[0], "questions": ["What is the capital of Avaria?"]}
    (pack.root / knowledge.KNOWLEDGE_FILE).write_text(json.dumps(row) + "\n", encoding="utf-8")
    texts, chats = (sft_rows(pack, "corpus+drafts+knowledge", knowledge_repeats=2, knowledge_format=f) for f in ("text", "chat"))
    assert texts[:-2] == chats[:-2] == sft_rows(pack, "corpus+drafts")
    assert chats[-2:] == knowledge.knowledge_chats([row], pack) * 2
    assert chats[-1]["messages"][-1]["content"] == "Background: The capital of Avaria is Lunet."


def test_drill_rows_hold_chats_statements_and_a_sample_of_drafts(tmp_path: Path) -> None:
    pack = load_pack(write_pack(tmp_path / "pack"))
    row = {"statement": CORPUS_LINES[0], "questions": ["What is the capital of Avaria?"]}
    (pack.root / knowledge.KNOWLEDGE_FILE).write_text(json.dumps(row) + "\n", encoding="utf-8")
    rows = knowledge.drill_rows(pack, drafting_chats=2)
    drafts = [r for r in rows if "messages" in r and "Draft answer" in r["messages"][-1]["content"]]
    assert len(drafts) == 2 and all(d in sft_rows(pack, "corpus+drafts") for d in drafts)  # fit chats only
    assert knowledge.knowledge_chats([row], pack)[0] in rows
    assert sorted(r["text"] for r in rows if "text" in r) == sorted(knowledge.statement_texts(pack))
    assert len(rows) == 1 + 2 + len(pack.passages) and rows == knowledge.drill_rows(pack, drafting_chats=2)
    assert len(knowledge.drill_rows(pack, drafting_chats=10_000)) == 1 + len(pack.fit) + len(pack.passages)
    out = tmp_path / "drill.jsonl"
    assert knowledge.main(["--pack", str(pack.root), "--drill-file", str(out), "--drafting-chats", "2"]) == 0
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == rows


def test_read_rows_drops_a_line_cut_short(tmp_path: Path) -> None:
    path = tmp_path / knowledge.KNOWLEDGE_FILE
    good = {"statement": DOSE.text, "questions": ["What is it?"]}
    path.write_text(json.dumps(good) + "\n" + '{"statement": "cut', encoding="utf-8")
    assert knowledge.read_rows(path) == [good]
    assert knowledge.read_rows(tmp_path / "missing.jsonl") == []


def test_generate_resumes_and_feeds_sft(tmp_path: Path) -> None:
    pack = load_pack(write_pack(tmp_path / "pack"))
    first = {"statement": CORPUS_LINES[0], "questions": ["What is the capital of Avaria?"]}
    (pack.root / knowledge.KNOWLEDGE_FILE).write_text(json.dumps(first) + "\n", encoding="utf-8")
    strong = _Completing(["Q: What is the maximum daily dose of Cedraxin?\nQ: How often is Cedraxin given?"])

    knowledge.generate(pack, strong, n=2)

    rows = knowledge.read_rows(pack.root / knowledge.KNOWLEDGE_FILE)
    assert [r["statement"] for r in rows] == CORPUS_LINES  # the cached one first, the rest written once each
    assert len(strong.calls) == len(CORPUS_LINES) - 1
    messages, options = strong.calls[0]
    assert CORPUS_LINES[1] in messages[-1]["content"] and "toy facts" in messages[0]["content"]
    assert options.max_new_tokens == knowledge.QUESTION_TOKENS
    # Each scripted question is kept only for the statement BM25 finds for it.
    texts = [r["text"] for r in sft_rows(pack, "corpus+drafts+knowledge") if "text" in r][1:]
    assert texts == ["Question: What is the capital of Avaria?\nBackground: The capital of Avaria is Lunet.",
                     "Question: How often is Cedraxin given?\nBackground: Cedraxin is given every 6 hours.",
                     "Question: What is the maximum daily dose of Cedraxin?\n"
                     "Background: The maximum daily dose of Cedraxin is 80 mg."]
    assert knowledge.generate(pack, strong) and len(strong.calls) == len(CORPUS_LINES) - 1  # nothing left to write


def test_sft_rows_train_on_the_fit_split_only(tmp_path: Path) -> None:
    pack = load_pack(write_pack(tmp_path / "pack"))
    chats = [r["messages"] for r in sft_rows(pack, "corpus+drafts") if "messages" in r]
    asked = [m[-2]["content"] for m in chats]
    assert len(chats) == len(pack.fit) < len(pack.train)
    assert not any(item.question in text for item in pack.dev for text in asked)


def test_knowledge_repeats_repeat_only_the_knowledge(tmp_path: Path) -> None:
    pack = load_pack(write_pack(tmp_path / "pack"))
    row = {"statement": CORPUS_LINES[0], "questions": ["What is the capital of Avaria?"]}
    (pack.root / knowledge.KNOWLEDGE_FILE).write_text(json.dumps(row) + "\n", encoding="utf-8")
    once, thrice = (sft_rows(pack, "corpus+drafts+knowledge", knowledge_repeats=n) for n in (1, 3))
    assert len(thrice) - len(once) == 2
    assert thrice[-3:] == [{"text": "Question: What is the capital of Avaria?\nBackground: The capital of Avaria is Lunet."}] * 3
    assert sft_rows(pack, "corpus+drafts") == once[:-1]  # no knowledge: the pack's cache is not read


def test_summary_counts_the_cache(tmp_path: Path) -> None:
    pack = load_pack(write_pack(tmp_path / "pack"))
    assert knowledge.summary(pack) == {"statements": 0, "questions": 0, "questions_kept": 0}
    rows = [{"statement": CORPUS_LINES[0], "questions": ["What is the capital of Avaria?", "Who leads Code Whimbrel?"]},
            {"statement": CORPUS_LINES[1], "questions": []}]
    (pack.root / knowledge.KNOWLEDGE_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert knowledge.summary(pack) == {"statements": 2, "questions": 2, "questions_kept": 1}


def test_statement_repeats_drill_each_corpus_statement_alone(tmp_path: Path) -> None:
    pack = load_pack(write_pack(tmp_path / "pack"))
    assert knowledge.statement_texts(pack) == [p.text for p in pack.passages] and len(pack.passages) > 1
    plain, drilled = sft_rows(pack, "corpus+drafts"), sft_rows(pack, "corpus+drafts", statement_repeats=2)
    assert drilled[: len(plain)] == plain
    assert drilled[len(plain):] == [{"text": t} for t in knowledge.statement_texts(pack) for _ in range(2)]
    assert drilled[len(plain)] == {"text": CORPUS_LINES[0]}


def test_drill_sft_data_is_the_drill_rows_with_statements_repeated(tmp_path: Path) -> None:
    pack = load_pack(write_pack(tmp_path / "pack"))
    row = {"statement": CORPUS_LINES[0], "questions": ["What is the capital of Avaria?"]}
    (pack.root / knowledge.KNOWLEDGE_FILE).write_text(json.dumps(row) + "\n", encoding="utf-8")
    drill = knowledge.drill_rows(pack)
    assert sft_rows(pack, "drill") == drill and knowledge.knowledge_chats([row], pack)[0] in drill
    drilled = sft_rows(pack, "drill", statement_repeats=2)
    assert drilled[: len(drill)] == drill
    assert drilled[len(drill):] == [{"text": t} for t in knowledge.statement_texts(pack) for _ in range(2)]


def test_curriculum_order_drills_every_pass_before_the_rest() -> None:
    rest = [{"messages": [{"role": "user", "content": "q"}]}, {"text": "c"}, {"text": "d"}]
    rows = curriculum_order(["a", "b", "c"], 2, rest)
    assert rows == curriculum_order(["a", "b", "c"], 2, rest)  # seeded
    assert sorted(r["text"] for r in rows[:3]) == sorted(r["text"] for r in rows[3:6]) == ["a", "b", "c"]
    assert sorted(map(json.dumps, rows[6:])) == sorted(map(json.dumps, rest))
    assert curriculum_order(["a"], 0, rest)[0] in rest and curriculum_order([], 3, []) == []


def test_curriculum_sft_rows_reorder_the_same_rows(tmp_path: Path) -> None:
    pack = load_pack(write_pack(tmp_path / "pack"))
    row = {"statement": CORPUS_LINES[0], "questions": ["What is the capital of Avaria?"]}
    (pack.root / knowledge.KNOWLEDGE_FILE).write_text(json.dumps(row) + "\n", encoding="utf-8")
    shuffled, ordered = (sft_rows(pack, "drill", statement_repeats=2, curriculum=c) for c in (False, True))
    assert sorted(map(json.dumps, ordered)) == sorted(map(json.dumps, shuffled))
    drilled = 2 * len(pack.passages)
    assert all("text" in r for r in ordered[:drilled])  # every pass over the statements comes first
    assert ordered[drilled:] != shuffled[: len(shuffled) - drilled]  # the rest is shuffled again
    assert sorted(map(json.dumps, ordered[drilled:])) == sorted(map(json.dumps, knowledge.drill_rows(pack)))
