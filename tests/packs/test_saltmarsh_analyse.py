"""The shipped pack's analysis script: its counting functions on literal rows."""

import json

import pytest

from tests.packs.pack_scripts import SALTMARSH, pack_script


@pytest.fixture(scope="module")
def analyse():
    yield from pack_script("analyse.py")


@pytest.fixture(scope="module")
def train_item(analyse):
    facts = {f["id"]: f["text"] for f in analyse.read_jsonl(SALTMARSH / "facts.jsonl")}
    item = analyse.read_jsonl(SALTMARSH / "train.jsonl")[0]
    return item, {item["question"]: [facts[f] for f in item["fact_ids"]]}


def test_asked_reads_the_question_after_passages_and_before_options(analyse):
    grounded = "Passages:\n- A: x.\n\nQuestion: How much Q?\n\nOptions:\nA. 1\nB. 2\n\nWrite:\nBackground: <...>"
    assert analyse.asked(grounded) == "How much Q?"
    assert analyse.asked("How much Q?\n\nOptions:\nA. 1") == "How much Q?"


def test_pair_facts_counts_chosen_and_rejected_drafts_holding_every_needed_fact(analyse, train_item, tmp_path):
    item, needed = train_item
    prompt = [{"role": "system", "content": "s"},
              {"role": "user", "content": f"Question: {item['question']}\n\nOptions:\nA. a\n\nWrite: ..."}]
    with_facts = "Background: " + " ".join(needed[item["question"]]) + "\nDraft answer: x, Answer: A"
    rows = [{"prompt": prompt, "chosen": [{"role": "assistant", "content": with_facts}],
             "rejected": [{"role": "assistant", "content": "Background: nothing useful.\nDraft answer: y, Answer: B"}]},
            {"prompt": prompt, "chosen": [{"role": "assistant", "content": with_facts}],
             "rejected": [{"role": "assistant", "content": with_facts + " Also more."}]}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert analyse.pair_facts(path, needed) == {"pairs": 2, "chosen_hold_facts": 2, "rejected_hold_facts": 1,
                                                "neither_holds_facts": 0}


def test_feedback_summary_counts_sampled_drafts_holding_the_facts(analyse, train_item, tmp_path):
    item, needed = train_item
    facts = " ".join(needed[item["question"]])
    row = {"question": f"{item['question']}\n\nOptions:\nA. a", "drafts": [facts, "no", "no", facts + "!"],
           "final_scores": [0.5, 0.1, 0.2, 0.6], "strong_alone_score": 0.25, "pair": True}
    path = tmp_path / "feedback.json"
    path.write_text(json.dumps({"results": [row]}), encoding="utf-8")
    report = analyse.feedback_summary(path, needed)
    assert report == {"questions": 1, "questions_with_a_pair": 1, "pairs": 1, "p_correct_alone": 0.25, "p_correct_mean_draft": 0.35,
                      "p_correct_best_draft": 0.6, "drafts_with_facts": "2/4", "questions_with_a_draft_with_facts": 1,
                      "gain_with_facts": 0.3, "gain_without_facts": -0.1}
    several = {"results": [row | {"pairs": 3}, row | {"pair": False, "pairs": 0}]}  # several pairs per question
    path.write_text(json.dumps(several), encoding="utf-8")
    counts = analyse.feedback_summary(path, needed)
    assert (counts["questions_with_a_pair"], counts["pairs"]) == (1, 3)


def test_rerun_changes_counts_answers_and_scores_that_moved(analyse):
    now = {"items": [{"id": "a", "answer": "A", "score": 1.0}, {"id": "b", "answer": "B.", "score": 0.0}]}
    before = {"items": [{"id": "a", "answer": "C", "score": 0.0}, {"id": "b", "answer": "B", "score": 0.0}]}
    assert analyse.rerun_changes(now, before) == {"items": 2, "answers_differ": 2, "scores_differ": 1,
                                                  "accuracy": 50.0, "accuracy_other": 0.0}


def test_fact_recall_splits_accuracy_by_whether_the_draft_holds_the_facts(analyse):
    items = [{"id": "a", "draft": "F1 and F2", "score": 1.0}, {"id": "b", "draft": "F1", "score": 0.0},
             {"id": "c", "draft": None, "score": 1.0}]
    needed = {"a": ["F1", "F2"], "b": ["F1", "F2"], "c": ["F3"]}
    assert analyse.fact_recall(items, needed) == {"drafts_with_facts": 1, "items": 3, "recall": 33.3,
                                                  "accuracy_with_facts": 100.0, "accuracy_without": 50.0}


def test_wrong_numbers_counts_facts_begun_up_to_their_number_with_another_value(analyse):
    needed = {"a": ["Drug X dose: 10 mg daily.", "Drug X is red."], "b": ["Drug Y dose: 5 mg."], "c": ["Drug Z dose: 2 mg."]}
    items = [{"id": "a", "draft": "Background: Drug X dose: 30 mg daily."},  # the colour has no number: not counted
             {"id": "b", "draft": "Background: Drug Y dose: 5 mg."},  # held: not missing
             {"id": "c", "draft": None}]
    assert analyse.wrong_numbers(items, needed) == {"missing_facts_with_a_number": 2, "begun_with_another_value": 1}


def test_pipeline_minutes_add_up_the_stages_as_recorded(analyse, tmp_path):
    # The DPO stage ran in this invocation; SFT and feedback were recorded by an earlier one.
    stages = {"sft": {"ran": False, "seconds": 0.0, "recorded_seconds": 2400.0},
              "feedback": {"ran": False, "seconds": 0.0, "recorded_seconds": 2166.0},
              "dpo": {"ran": True, "seconds": 222.0, "recorded_seconds": 222.0}}
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps({"total_seconds": 222.0, "stages": stages}), encoding="utf-8")
    assert analyse.pipeline_minutes(path) == {"sft": 40.0, "feedback": 36.1, "dpo": 3.7, "total": 79.8}
