"""Feedback collection end to end: a tiny local weak model, a fake remote strong model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from cowest_app.loop.collect import Progress, QuestionItem, collect, collect_for_question, format_question
from cowest_app.core.evaluators import ReferenceEvaluator, Score, SelfAnsweringEvaluator, StrongJudge, WeakJudge
from cowest_app.core.feedback import write_dpo_jsonl
from cowest_app.models.base import GenerationOptions
from cowest_app.models.local import TransformersBackend
from cowest_app.models.remote import InferenceClientBackend
from cowest_app.core.store import LogStore
from tests.fakes.openai_server import serve_openai
from tests.served import served_pack

PROMPT_SETS = {name: served_pack(name).prompt_set() for name in ("general", "medicine")}

OPTIONS = ("Paris", "London")
WEAK_OPTS = GenerationOptions(max_new_tokens=8, temperature=0.8, seed=0)
STRONG_OPTS = GenerationOptions(max_new_tokens=16)
# What the fake strong model makes of the 1st, 2nd, 3rd... distinct draft it sees.
REFINED = ["Answer: A", "Answer: B", "Hmm.", "Hmm."]
JUDGE = {"Answer: A": "Score: 9/10", "Answer: B": "Score: 2/10", "I am not sure.": "Score: 5/10"}


class CountingWeak:
    """The real weak backend, with its generation calls counted."""

    def __init__(self, backend: TransformersBackend) -> None:
        self.backend = backend
        self.sample_calls: list[int] = []
        self.generate_calls = 0

    def sample(self, messages, n, **opts):
        self.sample_calls.append(n)
        return self.backend.sample(messages, n, **opts)

    def generate(self, messages, **opts):
        self.generate_calls += 1
        return self.backend.generate(messages, **opts)

    def __getattr__(self, name: str) -> Any:  # model, tokenizer, encode, describe, ...
        return getattr(self.backend, name)


class StrongModel:
    """Reply function for the fake server: refinements depend on the draft, the
    strong-alone answer is unsure, and judge replies depend on the graded answer."""

    def __init__(self) -> None:
        self.drafts: dict[str, list[str]] = {}  # question -> distinct drafts in order of arrival

    def __call__(self, messages: list[dict]) -> str:
        system, user = messages[0]["content"], messages[-1]["content"]
        if "grader" in system:
            graded = user.split("Answer to grade:\n", 1)[1].rsplit("\n\nScore:", 1)[0]
            return JUDGE.get(graded, "I cannot grade this.")
        draft = re.search(r'\n\nNotes[^\n]*:\n"""\n(.*)\n"""', user, re.DOTALL)  # the refinement prompt's notes
        if draft is None:
            return "I am not sure."
        seen = self.drafts.setdefault(user[:draft.start()], [])
        if draft.group(1) not in seen:
            seen.append(draft.group(1))
        return REFINED[min(seen.index(draft.group(1)), len(REFINED) - 1)]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> TransformersBackend:
    return TransformersBackend(str(tiny_model_dir))


@pytest.fixture
def weak(tiny: TransformersBackend) -> CountingWeak:
    return CountingWeak(tiny)


@pytest.fixture
def strong():
    with serve_openai(reply=StrongModel()) as server:
        yield InferenceClientBackend(model="strong/model", base_url=server.base_url, timeout_s=10.0), server


@pytest.fixture
def store(tmp_path: Path) -> LogStore:
    return LogStore(tmp_path / "cowest.sqlite3")


def run_one(weak, strong_backend, evaluator, **kw):
    # min_margin 0: the tiny random models' score gaps are far below the real default (defaults.MIN_MARGIN).
    settings = {"k": 4, "weak_opts": WEAK_OPTS, "strong_opts": STRONG_OPTS, "min_margin": 0.0,
                "prompt_set": PROMPT_SETS["general"], **kw}
    return collect_for_question("Capital of France?", "general", weak, strong_backend, evaluator,
                                reference=0, options=OPTIONS, **settings)


def test_batched_drafts_pair_logged_with_provenance(weak, strong, store) -> None:
    backend, server = strong
    items = [
        QuestionItem("Capital of France?", "general", reference=0, options=OPTIONS, interaction_ids=("i-1",)),
        QuestionItem("Capital of France, once more?", "medicine", reference="A", options=OPTIONS),
    ]
    seen: list[Progress] = []
    summary = collect(items, weak, backend, ReferenceEvaluator("multiple_choice"), k=4,
                      weak_opts=WEAK_OPTS, strong_opts=STRONG_OPTS, store=store, progress=seen.append,
                      prompt_sets=PROMPT_SETS)

    assert weak.sample_calls == [4, 4] and weak.generate_calls == 0  # one batched call per question
    assert len(server.requests) == 2 * (4 + 1)  # K refinements + the strong model alone
    assert [(p.done, p.total) for p in seen] == [(1, 2), (2, 2)] and seen[-1].pairs == 2
    assert summary.pairs == summary.trainable == 2 and not summary.errors and summary.pairs_per_s > 0

    first = summary.results[0]
    assert len(first.drafts) == len(set(first.drafts)) == 4
    assert first.finals == REFINED
    assert first.strong_alone == "I am not sure."
    assert first.influences == [1.0, 0.0, 0.0, 0.0]
    assert first.reason is None and first.skipped == 0

    [stored, _] = list(store.iter_pairs())
    assert stored.id == first.pair_id
    shown = format_question("Capital of France?", OPTIONS)
    assert stored.question == shown and shown.endswith("Options:\nA. Paris\nB. London")
    assert stored.prompt == served_pack("general").weak_messages(shown)
    # The refinement requests carried exactly these drafts, in this order.
    assert (stored.chosen, stored.rejected) == (first.drafts[0], first.drafts[1])
    assert (stored.chosen_score, stored.rejected_score, stored.margin) == (1.0, 0.0, 1.0)
    assert (stored.evaluator, stored.confidence, stored.trainable) == ("reference", 1.0, True)
    assert stored.interaction_ids == ("i-1",)
    assert stored.weak_model == weak.describe()["model"] and stored.adapter_version == "base"
    assert stored.strong_model == "strong/model"
    assert stored.details["influences"] == [1.0, 0.0, 0.0, 0.0]
    assert stored.details["strong_alone_score"] == 0.0 and stored.details["finals"] == REFINED
    assert store.pair_counts()["reference"] == {"total": 2, "trainable": 2}


def test_margin_threshold_drops_the_pair(weak, strong, store) -> None:
    result = run_one(weak, strong[0], ReferenceEvaluator("multiple_choice"), min_margin=1.0, store=store)
    assert result.pair is None and result.pair_id is None
    assert "margin 1.000 <= min_margin 1.000" in result.reason
    assert store.max_pair_id() == 0


def test_further_pairs_per_question_are_logged(weak, strong, store) -> None:
    backend, _ = strong
    item = QuestionItem("Capital of France?", "general", reference=0, options=OPTIONS)
    summary = collect([item], weak, backend, ReferenceEvaluator("multiple_choice"), k=4, min_margin=0.0,
                      weak_opts=WEAK_OPTS, strong_opts=STRONG_OPTS, store=store, prompt_sets=PROMPT_SETS,
                      pairs_per_question=3)
    [result] = summary.results
    assert result.influences == [1.0, 0.0, 0.0, 0.0]  # only the first draft helped: it beats each other one
    assert [(p.chosen, p.rejected) for p in result.pairs] == [(result.drafts[0], d) for d in result.drafts[1:]]
    assert result.pair == result.pairs[0] and summary.pairs == summary.trainable == 3
    assert [p.id for p in store.iter_pairs()] == list(result.pair_ids) and result.pair_id == result.pair_ids[0]
    assert [p.details["rejected_index"] for p in store.iter_pairs()] == [1, 2, 3]


def test_strong_judge_skips_unparsable_grades(weak, strong, store) -> None:
    result = run_one(weak, strong[0], StrongJudge(strong[0]), store=store)
    assert result.skipped == 2  # the two "Hmm." finals got no parsable grade
    assert result.influences == [pytest.approx(4 / 9), pytest.approx(-3 / 9), None, None]
    assert result.pair.evaluator == "strong_judge" and result.pair.margin == pytest.approx(7 / 9)
    assert result.pair.trainable and result.pair.details["skipped"] == 2


def test_weak_judge_low_confidence_pair_is_kept_untrainable(weak, strong, store) -> None:
    result = run_one(weak, strong[0], WeakJudge(weak), min_confidence=0.9, store=store)
    pair = result.pair
    assert pair is not None and pair.evaluator == "weak_judge"
    assert 0.0 <= pair.confidence < 0.9 and not pair.trainable
    assert "kept, not trained on" in result.reason
    assert store.pair_counts()["weak_judge"] == {"total": 1, "trainable": 0}
    assert list(store.iter_pairs()) == []
    assert [p.id for p in store.iter_pairs(trainable_only=False)] == [result.pair_id]


def test_sequential_baseline_generates_one_draft_per_call(weak, strong) -> None:
    result = run_one(weak, strong[0], ReferenceEvaluator("multiple_choice"), sequential=True)
    assert weak.sample_calls == [] and weak.generate_calls == 4
    assert len(set(result.drafts)) == 4  # seeds differ per call, so drafts do too
    assert result.pair is not None


def test_bad_settings_are_refused(weak, strong) -> None:
    with pytest.raises(ValueError, match="k must be"):
        run_one(weak, strong[0], ReferenceEvaluator("multiple_choice"), k=1)
    with pytest.raises(ValueError, match="temperature"):
        run_one(weak, strong[0], ReferenceEvaluator("multiple_choice"), weak_opts=GenerationOptions(max_new_tokens=4))


def test_failed_questions_are_reported_and_the_run_goes_on(weak, strong) -> None:
    items = iter([  # a generator: no total known up front
        QuestionItem("Q?", "astrology", reference=0, options=OPTIONS),
        QuestionItem("Capital of France?", "general", reference=None, options=OPTIONS),  # no reference
        QuestionItem("Capital of France?", "general", reference=0, options=OPTIONS),
    ])
    seen: list[Progress] = []
    summary = collect(items, weak, strong[0], ReferenceEvaluator("multiple_choice"),
                      weak_opts=WEAK_OPTS, strong_opts=STRONG_OPTS, progress=seen.append, prompt_sets=PROMPT_SETS)
    assert [i for i, _ in summary.errors] == [0, 1]
    assert weak.sample_calls == [4]  # bad items are refused before any generation
    assert "Unsupported domain" in summary.errors[0][1] and "reference" in summary.errors[1][1]
    assert len(summary.results) == 1 and summary.pairs == 1
    assert [(p.done, p.total) for p in seen] == [(1, None), (2, None), (3, None)]


def test_dpo_file_from_logged_pairs_loads_with_datasets(weak, strong, store, tmp_path: Path) -> None:
    from datasets import load_dataset

    run_one(weak, strong[0], ReferenceEvaluator("multiple_choice"), store=store)
    run_one(weak, strong[0], WeakJudge(weak), min_confidence=0.99, store=store)  # not trainable: left out
    path, n, digest = write_dpo_jsonl(store.iter_pairs(), tmp_path / "dpo.jsonl")
    assert n == 1 and len(digest) == 64
    ds = load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert set(ds.column_names) == {"prompt", "chosen", "rejected"} and ds.num_rows == 1
    row = ds[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert row["chosen"][0]["role"] == "assistant" and row["chosen"][0]["content"] != row["rejected"][0]["content"]


class ScoresByDraftLength(SelfAnsweringEvaluator):
    """A self-answering evaluator: it reads the conversations, the strong
    backend never generates. The longer the draft in a conversation, the higher
    the score; the strong-alone conversation (no draft) scores 0.5."""

    name = "by_draft_length"
    needs_reference = False

    def __init__(self) -> None:
        self.seen: list[list[dict]] = []

    def answer_and_score(self, conversations, reference, options):
        self.seen = list(conversations)
        drafts = [c[-1]["content"].partition("DRAFT:")[2] for c in conversations]
        scores = [Score(min(1.0, len(d) / 1000) if d else 0.5, 1.0, self.name) for d in drafts]
        return [f"len {len(d)}" for d in drafts], scores


def test_prompt_set_and_self_answering_evaluator(weak, strong) -> None:
    from cowest_app.core.prompts import PromptSet

    backend, server = strong
    prompt_set = PromptSet(
        draft=lambda q: [{"role": "user", "content": f"Draft for: {q}"}],
        refine=lambda q, d: [{"role": "user", "content": f"{q}\nDRAFT:{d}"}],
        direct=lambda q: [{"role": "user", "content": q}],
    )
    evaluator = ScoresByDraftLength()
    result = run_one(weak, backend, evaluator, prompt_set=prompt_set)

    assert server.requests == []  # the evaluator answered: no strong generation
    assert result.prompt == [{"role": "user", "content": f"Draft for: {format_question('Capital of France?', OPTIONS)}"}]
    assert len(evaluator.seen) == 5 and evaluator.seen[-1] == [{"role": "user", "content": result.question}]
    assert result.finals == [f"len {len(d)}" for d in result.drafts]
    lengths = [len(d) for d in result.drafts]
    assert result.pair is not None and result.pair.prompt == result.prompt
    assert len(result.pair.chosen) == max(lengths) and len(result.pair.rejected) == min(lengths)
    assert result.pair.evaluator == "by_draft_length"
