#!/usr/bin/env python3
"""Why the systems score what they score: paired differences and whether drafts carry the needed fact.

    python packs/saltmarsh-formulary/analyse.py [RESULTS_JSON | DRAFTS_JSON] [--against OTHER_RESULTS_JSON]

Reads a results.json of `training.evaluate` on this pack (or the drafts.json
of `training.evaluate --drafts-only`: fact recall only) and prints (and writes
as analysis.json, or drafts-analysis.json, next to it):

- paired bootstrap differences between systems (the same items, so the
  difference of two systems is far less noisy than either interval);
- for each collaboration system, how many drafts contain every fact the item
  needs (its `fact_ids`, verbatim from facts.jsonl), and the accuracy on those
  items and on the rest;
- how many needed facts with a number the drafts lack but begin word for word up to
  that number (the right statement, a misremembered value);
- with a feedback stage kept beside it (feedback.json, feedback/pairs.jsonl): the
  strong model's probability of the right option with and without drafts, and how
  many chosen and rejected drafts hold the needed facts;
- with the training pipeline's pipeline.json beside it: each stage's minutes and their sum;
- with --against: how many answers of a system scored in both sets changed.

Standard library only, with the repository's `training.compare` (paired intervals) and,
for the retrieved passages' recall, its cowest_app.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root: its paired statistics and the pack's retrieval
from training.compare import paired_difference  # noqa: E402
PAIRS = (("collab_dpo", "collab_sft"), ("collab_dpo", "strong"), ("collab_dpo", "weak"),
         ("collab_sft", "strong"), ("collab_sft", "weak"), ("collab_sft", "collab_base"),
         ("collab_dpo", "weak_sft"), ("collab_sft", "weak_sft"),
         ("collab_retrieval_dpo", "strong_rag"), ("collab_retrieval_dpo", "collab_retrieval_sft"),
         ("collab_retrieval_dpo", "strong"), ("collab_retrieval_sft", "strong_rag"),
         ("collab_retrieval_sft", "strong"), ("collab_retrieval_sft", "collab_retrieval_base"),
         ("collab_retrieval_dpo", "weak"), ("collab_retrieval_sft", "weak"))


def percent(scores: list[float]) -> float | None:
    """Mean score in percent, one decimal; None for no items."""
    return round(100 * sum(scores) / len(scores), 1) if scores else None


def rerun_changes(system: dict, other: dict) -> dict:
    """A system scored in two result sets (e.g. strong alone rerun beside new rows): how many of its
    answers and scores changed between the runs, which greedy decoding alone would keep equal."""
    before = {i["id"]: i for i in other["items"]}
    items = [(i, before[i["id"]]) for i in system["items"] if i["id"] in before]
    return {"items": len(items), "answers_differ": sum(a.get("answer") != b.get("answer") for a, b in items),
            "scores_differ": sum(a["score"] != b["score"] for a, b in items),
            "accuracy": percent([a["score"] for a, _ in items]), "accuracy_other": percent([b["score"] for _, b in items])}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def fact_recall(items: list[dict], needed: dict[str, list[str]]) -> dict[str, float]:
    """How many drafts hold every fact their item needs, verbatim; with scores, the accuracy on each side."""
    holds = [all(f in (i.get("draft") or "") for f in needed[i["id"]]) for i in items]
    report = {"drafts_with_facts": sum(holds), "items": len(items), "recall": round(100 * sum(holds) / len(items), 1)}
    if all("score" in i for i in items):
        report |= {"accuracy_with_facts": percent([i["score"] for i, h in zip(items, holds) if h]),
                   "accuracy_without": percent([i["score"] for i, h in zip(items, holds) if not h])}
    return report


DIGIT = re.compile(r"\d")


def wrong_numbers(items: list[dict], needed: dict[str, list[str]]) -> dict[str, int]:
    """Needed facts with a number that drafts lack, and how many of those a draft begins word for
    word up to the number: it recalled which statement answers and misremembered the value."""
    missing = begun = 0
    for item in items:
        draft = item.get("draft") or ""
        for fact in needed[item["id"]]:
            number = DIGIT.search(fact)
            if number is None or fact in draft:
                continue
            missing += 1
            begun += fact[: number.start()] in draft
    return {"missing_facts_with_a_number": missing, "begun_with_another_value": begun}


LETTER = re.compile(r"Answer:\s*\(?([A-E])\b")


def follows_draft(items: list[dict], answers: dict[str, str]) -> dict[str, int]:
    """How often the final answer is the letter the weak model's draft ended with, right or wrong."""
    report = {"drafts_with_a_letter": 0, "final_follows": 0, "wrong_draft_letters": 0, "wrong_followed": 0}
    for item in items:
        drafted, final = LETTER.findall(item.get("draft") or ""), LETTER.findall(item.get("answer") or "")
        if not drafted or not final:
            continue
        report["drafts_with_a_letter"] += 1
        report["final_follows"] += drafted[-1] == final[-1]
        if drafted[-1] != answers[item["id"]]:
            report["wrong_draft_letters"] += 1
            report["wrong_followed"] += drafted[-1] == final[-1]
    return report


def asked(prompt: str) -> str:
    """The question of a drafting prompt or a feedback row: after any passages, before the options."""
    return prompt.rsplit("Question: ", 1)[-1].split("\n\nOptions:")[0]


def feedback_summary(path: Path, needed_by_question: dict[str, list[str]]) -> dict:
    """A feedback stage's feedback.json: the strong model's probability of the right option alone,
    after an average draft, after the best of the K drafts, the pairs it gave, and how many of the
    sampled drafts (fit questions, which SFT trained on) hold every needed fact."""
    rows = json.loads(path.read_text(encoding="utf-8"))["results"]
    holds = [[all(f in draft for f in needed_by_question[asked(r["question"])]) for draft in r["drafts"]] for r in rows]
    gains: dict[bool, list[float]] = {True: [], False: []}  # gain over strong alone, by holding the facts
    for r, h in zip(rows, holds):
        for score, held in zip(r["final_scores"], h):
            gains[held].append(score - r["strong_alone_score"])
    mean = lambda xs: round(sum(xs) / len(xs), 3)  # noqa: E731
    # rows kept before several pairs per question name only whether their question gave one
    report = {"questions": len(rows), "questions_with_a_pair": sum(r["pair"] for r in rows),
              "pairs": sum(r.get("pairs", int(r["pair"])) for r in rows),
              "p_correct_alone": mean([r["strong_alone_score"] for r in rows]),
              "p_correct_mean_draft": mean([mean(r["final_scores"]) for r in rows]),
              "p_correct_best_draft": mean([max(r["final_scores"]) for r in rows]),
              "drafts_with_facts": f"{sum(map(sum, holds))}/{sum(map(len, holds))}",
              "questions_with_a_draft_with_facts": sum(map(any, holds)),
              # how much a draft with the facts, and one without, moves that probability from strong alone
              "gain_with_facts": mean(gains[True] or [0.0]), "gain_without_facts": mean(gains[False] or [0.0])}
    print("feedback: " + ", ".join(f"{k} {v}" for k, v in report.items()))
    return report


def pair_facts(path: Path, needed_by_question: dict[str, list[str]]) -> dict[str, int]:
    """A feedback stage's pairs.jsonl: how many chosen and how many rejected drafts hold every fact
    their question needs, i.e. whether the strong model's feedback rewards bringing up the fact."""
    report = {"pairs": 0, "chosen_hold_facts": 0, "rejected_hold_facts": 0, "neither_holds_facts": 0}
    for pair in read_jsonl(path):
        facts = needed_by_question[asked(pair["prompt"][-1]["content"])]
        report["pairs"] += 1
        holds = {side: all(f in pair[side][-1]["content"] for f in facts) for side in ("chosen", "rejected")}
        for side, held in holds.items():
            report[f"{side}_hold_facts"] += held
        report["neither_holds_facts"] += not any(holds.values())
    print(f"pairs: {report['chosen_hold_facts']}/{report['pairs']} chosen and {report['rejected_hold_facts']}/"
          f"{report['pairs']} rejected drafts hold every needed fact; neither does in {report['neither_holds_facts']}")
    return report


def pipeline_minutes(path: Path) -> dict[str, float]:
    """A pipeline.json: each stage's minutes as recorded by the run that made its outputs, and their
    sum, so a pipeline resumed over several invocations adds up to what one run takes."""
    stages = json.loads(path.read_text(encoding="utf-8"))["stages"]
    minutes = {name: round(stage["recorded_seconds"] / 60, 1) for name, stage in stages.items()}
    return minutes | {"total": round(sum(stage["recorded_seconds"] for stage in stages.values()) / 60, 1)}


def passage_recall(needed: dict[str, list[str]]) -> float:
    """Share of test items whose every needed fact is in the passages a grounded draft is written from."""
    sys.path.insert(0, str(HERE.parents[1]))  # the repository root: the pack's own retrieval, as the app runs it
    from cowest_app.domains.packs import format_item, load_pack

    pack = load_pack(HERE)
    shown = [(item, " ".join(p.text for p in pack.retriever.search(format_item(item), pack.retrieval_passages)))
             for item in pack.test]
    return round(100 * sum(all(f in text for f in needed[item.id]) for item, text in shown) / len(shown), 1)


def knowledge_summary() -> dict:
    """The pack's knowledge.jsonl: statements, the questions the strong model wrote, and those SFT learns."""
    from cowest_app.domains.packs import load_pack
    from training.knowledge import summary

    report = summary(load_pack(HERE))
    print("knowledge: " + ", ".join(f"{k} {v}" for k, v in report.items()))
    return report


def main(path: Path, against: Path | None = None) -> dict:
    """`against`: another result set on the same items whose systems this one lacks are
    paired with it too (rows that do not depend on what changed between the two runs)."""
    results = json.loads(path.read_text(encoding="utf-8"))
    reruns = {}
    if against is not None:
        other = json.loads(against.read_text(encoding="utf-8"))["systems"]
        reruns = {key: rerun_changes(results["systems"][key], other[key]) for key in results["systems"] if key in other}
        results["systems"] = {**{k: v for k, v in other.items() if k not in results["systems"]}, **results["systems"]}
    facts = {f["id"]: f["text"] for f in read_jsonl(HERE / "facts.jsonl")}
    train = read_jsonl(HERE / "train.jsonl")  # dev-split sets and feedback are train questions
    pack_items = read_jsonl(HERE / "test.jsonl") + train
    needed = {item["id"]: [facts[f] for f in item["fact_ids"]] for item in pack_items}
    needed_by_question = {item["question"]: needed[item["id"]] for item in train}  # feedback names no ids
    systems = {key: {i["id"]: i for i in s["items"]} for key, s in results["systems"].items()}
    scored = {key: items for key, items in systems.items() if all("score" in i for i in items.values())}
    ids = [i for i in next(iter(systems.values()), {}) if all(i in items for items in systems.values())]  # in every set
    report = {
        "paired": {f"{a} - {b}": paired_difference([scored[a][i]["score"] for i in ids], [scored[b][i]["score"] for i in ids])
                   for a, b in PAIRS if a in scored and b in scored},
        "fact_recall": {key: fact_recall(list(items.values()), needed)
                        for key, items in systems.items() if key.startswith("collab_")},
    }
    tokens = {key: s["mean_prompt_tokens"] for key, s in results["systems"].items() if "mean_prompt_tokens" in s}
    if "strong_rag" in tokens:  # what each system costs the answering model, against Strong + RAG
        report["prompt_tokens_vs_rag"] = {key: round(100 * t / tokens["strong_rag"], 1) for key, t in tokens.items()}
    for name, d in report["paired"].items():
        print(f"{name}: {d['diff']:+.1f} points [{d['low']:+.1f}, {d['high']:+.1f}]")
    if reruns:
        report["reruns"] = reruns
    for name, d in reruns.items():
        print(f"{name}, scored in both sets: {d['answers_differ']}/{d['items']} answers and {d['scores_differ']} scores "
              f"differ, accuracy {d['accuracy']}% here vs {d['accuracy_other']}%")
    answers = {item["id"]: item["answer"] for item in pack_items}
    report["follows_draft_letter"] = {key: follows_draft(list(items.values()), answers)
                                      for key, items in scored.items() if key.startswith("collab_")}
    for name, d in report["follows_draft_letter"].items():
        print(f"{name}: the final answer is the draft's letter for {d['final_follows']}/{d['drafts_with_a_letter']} "
              f"drafts that end with one; {d['wrong_followed']}/{d['wrong_draft_letters']} wrong letters followed")
    for name, share in report.get("prompt_tokens_vs_rag", {}).items():
        print(f"{name}: mean prompt {tokens[name]} tokens, {share}% of Strong + RAG's")
    for name, d in report["fact_recall"].items():
        accuracy = (f"; accuracy {d['accuracy_with_facts']}% on those, {d['accuracy_without']}% on the rest"
                    if "accuracy_with_facts" in d else "")
        print(f"{name}: {d['drafts_with_facts']}/{d['items']} drafts ({d['recall']}%) hold every needed fact{accuracy}")
    report["wrong_numbers"] = {key: wrong_numbers(list(items.values()), needed)
                               for key, items in systems.items() if key.startswith("collab_")}
    for name, d in report["wrong_numbers"].items():
        print(f"{name}: of {d['missing_facts_with_a_number']} needed facts with a number that drafts lack, "
              f"{d['begun_with_another_value']} are written up to the number, then with another value")
    sft_stage = path.parent / "sft-stage.json"  # the pipeline's record of the SFT run, when kept beside the drafts
    if sft_stage.is_file() and json.loads(sft_stage.read_text(encoding="utf-8"))["inputs"]["sft_data"].endswith("+knowledge"):
        report["knowledge"] = knowledge_summary()
    if any("retrieval" in key for key in systems):
        report["retrieved_passages_hold_the_facts"] = passage_recall(needed)
        print(f"the retrieved passages hold every needed fact for {report['retrieved_passages_hold_the_facts']}% of items")
    sft = path.parent / "sft-metrics.json"  # the SFT run these drafts came from, when kept beside them
    if sft.is_file():
        m = json.loads(sft.read_text(encoding="utf-8"))
        report["sft"] = {k: m.get(k) for k in ("steps", "n_chats", "n_chunks", "n_tokens", "seconds", "tokens_per_second",
                                               "train_loss", "final_loss")}
        print("SFT: " + ", ".join(f"{k} {v}" for k, v in report["sft"].items()))
    if (path.parent / "feedback.json").is_file():  # the feedback that aligned the adapter, when kept beside it
        report["feedback"] = feedback_summary(path.parent / "feedback.json", needed_by_question)
    if (path.parent / "feedback" / "pairs.jsonl").is_file():
        report["pair_facts"] = pair_facts(path.parent / "feedback" / "pairs.jsonl", needed_by_question)
    if (path.parent / "feedback" / "stage.json").is_file():  # the pipeline's record of that feedback stage
        seconds = json.loads((path.parent / "feedback" / "stage.json").read_text(encoding="utf-8"))["seconds"]
        report["feedback_minutes"] = round(seconds / 60, 1)
        print(f"feedback stage: {report['feedback_minutes']} minutes")
    if (path.parent / "dpo" / "metrics.json").is_file():  # the DPO run on those pairs, when kept beside them
        m = json.loads((path.parent / "dpo" / "metrics.json").read_text(encoding="utf-8"))
        report["dpo"] = {k: m.get(k) for k in ("steps", "n_pairs", "seconds", "first_loss", "final_loss", "train_loss")}
        print("DPO: " + ", ".join(f"{k} {v}" for k, v in report["dpo"].items()))
    if (path.parent / "pipeline.json").is_file():  # the training pipeline that made the adapters, when kept beside
        report["pipeline_minutes"] = pipeline_minutes(path.parent / "pipeline.json")
        print("pipeline minutes: " + ", ".join(f"{k} {v}" for k, v in report["pipeline_minutes"].items()))
    name = "analysis.json" if path.name != "drafts.json" else "drafts-analysis.json"
    (path.parent / name).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    args = sys.argv[1:]
    other = Path(args.pop(args.index("--against") + 1)) if "--against" in args else None
    if other is not None:
        args.remove("--against")
    main(Path(args[0]) if args else HERE / "results" / "results.json", other)
