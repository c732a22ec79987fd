"""Collaborative feedback collection: questions in, preference pairs out.

For each question the weak model samples K drafts in one batched call, the
strong model refines each draft and also answers alone, an evaluator scores
the K finals and the strong-alone answer, and the drafts whose finals gained
most and least over the strong model alone become a DPO pair (with
`pairs_per_question` > 1, further pairs of drafts whose gains differ by more
than the margin follow it: `feedback.choose_pairs`). The pair's
prompt is exactly what the weak model saw when drafting, so DPO trains the
weak model to write the drafts that help the strong model.

The collaboration itself is the core's (`collaboration.collaborate`, with
K sampled drafts and the strong model alone as the baseline); this module
turns its outcome into influences and a pair. Two seams change how a
question is run: the pack's `PromptSet`, and an evaluator that answers the
conversations itself (a `SelfAnsweringEvaluator`, e.g. the strong model's
option likelihood) instead of the strong model generating finals for a
`TextEvaluator`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from collections.abc import Sized
from typing import Any, Callable, Iterable, Mapping, Sequence

from cowest_app.core import prompts
from cowest_app.core.collaboration import (
    DRAFT, Ask, Job, Reply, SampledDrafter, Steps, StreamingAnswerer, Update, collaborate, relay, run,
)
from cowest_app.defaults import DRAFT_TEMPERATURE, MIN_MARGIN
from cowest_app.core.evaluators import DraftJudge, Evaluator, PairJudge, Score, SelfAnsweringEvaluator, TextEvaluator, preference
from cowest_app.core.prompts import PromptSet, format_question  # noqa: F401 (format_question: re-exported)
from cowest_app.core.feedback import PairChoice, QuestionItem, Reference, choose_pair, choose_pairs, influences
from cowest_app.models.base import Backend, BackendError, GenerationOptions, Message, WeakModel
from cowest_app.core.store import LogStore, PreferencePair

# Drafts must differ to be compared, so the weak model samples; the strong
# model answers greedily so differences in finals come from the drafts.
WEAK_SAMPLING = GenerationOptions(max_new_tokens=192, temperature=DRAFT_TEMPERATURE, top_p=0.95)
STRONG_GREEDY = GenerationOptions(max_new_tokens=256, temperature=0.0)




@dataclass(frozen=True)
class CollectionResult:
    question: str  # as the models saw it (options appended)
    domain: str
    prompt: list[Message]  # the weak model's drafting prompt = the DPO prompt
    drafts: list[str]
    finals: list[str]  # finals[i] is the strong refinement of drafts[i]
    strong_alone: str
    final_scores: list[Score]
    strong_alone_score: Score
    influences: list[float | None]
    pairs: tuple[PreferencePair, ...]  # most against least helpful first, then any further ones asked for
    reason: str | None  # why there is no pair, or why the first pair is not trainable
    skipped: int  # answers the evaluator could not score
    timings: dict[str, float] = field(default_factory=dict)
    pair_ids: tuple[int, ...] = ()  # set when the pairs were logged

    @property
    def pair(self) -> PreferencePair | None:
        """The question's main pair (most against least helpful draft), if any."""
        return self.pairs[0] if self.pairs else None

    @property
    def pair_id(self) -> int | None:
        return self.pair_ids[0] if self.pair_ids else None


@dataclass(frozen=True)
class Progress:
    done: int
    total: int | None  # None when the question stream has no length
    pairs: int
    elapsed_s: float

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class CollectSummary:
    results: list[CollectionResult]
    errors: list[tuple[int, str]]  # (question index, message) for questions that failed
    pairs: int
    trainable: int
    elapsed_s: float

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.elapsed_s if self.elapsed_s > 0 else 0.0


def drafting_version(weak_info: Mapping[str, Any], slot: str | None) -> str | None:
    """The adapter version that wrote drafts in `slot` (a pack's name), from the weak model's description."""
    if slot is None:
        return weak_info.get("adapter_version")
    return (weak_info.get("adapters") or {}).get(slot, "base")


def weak_drafts(weak: WeakModel, messages: list[Message], k: int, options: GenerationOptions, sequential: bool = False) -> list[str]:
    """K sampled drafts of one prompt (the collaboration core's `SampledDrafter`): one batched
    `weak.sample` call, or (the benchmark baseline) K separate generations."""
    job = Job(DRAFT, 0, 0, messages, Ask(""))
    return [r.text for r in run(SampledDrafter(weak, options, sequential).write([job], k))[0]]


@dataclass(frozen=True)
class EvaluatorAnswerer:
    """A SelfAnsweringEvaluator as the core's Answerer: it answers and scores each question's conversations."""

    evaluator: SelfAnsweringEvaluator

    def answer(self, jobs: Sequence[Job]) -> Steps[list[Reply]]:
        replies: list[Reply] = []
        for q in dict.fromkeys(job.question for job in jobs):
            group = [job for job in jobs if job.question == q]
            ask = group[0].ask
            texts, scores = self.evaluator.answer_and_score([j.messages for j in group], ask.reference, ask.options)
            for job, text, score in zip(group, texts, scores, strict=True):
                replies.append(Reply(text, "done", score=score.value, info={"confidence": score.confidence}))
                yield Update(job, replies[-1])
        return replies


def collect_for_question(
    question: str,
    domain_key: str,
    weak: WeakModel,
    strong: Backend,
    evaluator: Evaluator,
    k: int = 4,
    reference: Reference | None = None,
    options: Sequence[str] | None = None,
    *,
    min_margin: float = MIN_MARGIN,
    min_confidence: float = 0.6,
    weak_opts: GenerationOptions = WEAK_SAMPLING,
    strong_opts: GenerationOptions = STRONG_GREEDY,
    sequential: bool = False,
    store: LogStore | None = None,
    interaction_ids: Sequence[str] = (),
    prompt_set: PromptSet,
    pairs_per_question: int = 1,
) -> CollectionResult:
    """Run the collaboration K times for one question and derive up to `pairs_per_question`
    pairs (`feedback.choose_pairs`: most against least helpful first).

    Raises BackendError when a model fails (the caller decides whether to go
    on). With `store`, the pairs are logged, trainable or not: pairs whose
    confidence is below `min_confidence` are kept for audit with trainable=0.
    """
    if k < 2:
        raise ValueError("k must be at least 2: a pair needs two drafts")
    if isinstance(evaluator, DraftJudge):
        return collect_by_draft_rewards(question, domain_key, weak, evaluator, k, options, min_confidence=min_confidence,
                                        weak_opts=weak_opts, store=store, interaction_ids=interaction_ids,
                                        prompt_set=prompt_set)
    if not isinstance(evaluator, (TextEvaluator, SelfAnsweringEvaluator)):
        raise TypeError(f"{type(evaluator).__name__} is not a TextEvaluator, SelfAnsweringEvaluator or DraftJudge")
    if reference is None and evaluator.needs_reference:
        raise ValueError(f"the {evaluator.name} evaluator needs a reference answer for this question")
    shown = format_question(question, options)
    weak_info, strong_info = weak.describe(), strong.describe()  # provenance, read before drafting
    ask = Ask(shown, reference, tuple(options) if options else None)
    answerer = EvaluatorAnswerer(evaluator) if isinstance(evaluator, SelfAnsweringEvaluator) else StreamingAnswerer(
        strong, strong_opts, prompts.clean_generation)
    drafted: list[float] = []

    def clock(update: Update) -> Update:
        if update.job.step == DRAFT:  # the last draft update ends the drafting
            drafted[:] = [time.perf_counter()]
        return update

    started = time.perf_counter()
    [done] = run(relay(collaborate(prompt_set, [ask], SampledDrafter(weak, weak_opts, sequential), answerer,
                                   k=k, alone=True), clock))
    answered = time.perf_counter()
    drafted_at = drafted[0] if drafted else answered
    timings = {"weak_s": drafted_at - started}
    failed = [r for r in done.answers + [done.alone] if r is not None and not r.ok]
    if failed:
        raise BackendError(failed[0].error or "the strong model failed")
    prompt, drafts = done.prompt, [d.text for d in done.drafts]
    replies = done.answers + [done.alone]
    answers = [r.text for r in replies]
    if isinstance(evaluator, SelfAnsweringEvaluator):  # it answered and scored in one pass: judge time
        started = drafted_at
        scores = [Score(r.score, r.info["confidence"], evaluator.name) for r in replies]
    else:
        timings["strong_s"] = answered - drafted_at
        started = time.perf_counter()
        scores = evaluator.score_answers(shown, answers, reference, options)
    finals, strong_alone = answers[:-1], answers[-1]
    final_scores, alone_score = scores[:-1], scores[-1]
    gains = influences([s.value for s in final_scores], alone_score.value)
    choices = choose_pairs(drafts, gains, min_margin, pairs_per_question)
    reason = choices if isinstance(choices, str) else None
    if alone_score.value is None:
        reason = "the strong-alone answer could not be scored"

    pairs: list[PreferencePair] = []
    for choice in [] if isinstance(choices, str) else choices:
        confidence = _pair_confidence(evaluator, shown, finals, final_scores, choice, reference, options)
        trainable = confidence >= min_confidence
        if not trainable and not pairs:
            reason = f"confidence {confidence:.3f} < min_confidence {min_confidence:.3f}: kept, not trained on"
        pairs.append(PreferencePair(
            domain=domain_key,
            question=shown,
            prompt=prompt,
            chosen=drafts[choice.chosen],
            rejected=drafts[choice.rejected],
            chosen_score=final_scores[choice.chosen].value,
            rejected_score=final_scores[choice.rejected].value,
            margin=choice.margin,
            evaluator=evaluator.name,
            confidence=confidence,
            trainable=trainable,
            interaction_ids=tuple(interaction_ids),
            details={
                "k": k,
                "chosen_index": choice.chosen,
                "rejected_index": choice.rejected,
                "final_scores": [s.value for s in final_scores],
                "final_confidences": [s.confidence for s in final_scores],
                "influences": gains,
                "strong_alone_score": alone_score.value,
                "skipped": sum(s.value is None for s in scores),
                "reference": reference,
                "finals": finals,
                "strong_alone": strong_alone,
                "weak_options": weak_opts.as_kwargs(),
                "strong_options": strong_opts.as_kwargs(),
                "min_margin": min_margin,
                "min_confidence": min_confidence,
            },
            weak_model=weak_info.get("model"),
            strong_model=strong_info.get("model") or strong_info.get("endpoint"),
            adapter_version=drafting_version(weak_info, weak_opts.adapter),
        ))
    timings["judge_s"] = time.perf_counter() - started

    pair_ids = tuple(store.log_pair(pair) for pair in pairs) if store is not None else ()
    return CollectionResult(
        question=shown, domain=domain_key, prompt=prompt, drafts=drafts, finals=finals, strong_alone=strong_alone,
        final_scores=list(final_scores), strong_alone_score=alone_score, influences=gains, pairs=tuple(pairs),
        reason=reason, skipped=sum(s.value is None for s in scores), timings=timings, pair_ids=pair_ids,
    )


def collect_by_draft_rewards(
    question: str, domain_key: str, weak: WeakModel, evaluator: DraftJudge, k: int = 4,
    options: Sequence[str] | None = None, *, min_confidence: float = 0.6,
    weak_opts: GenerationOptions = WEAK_SAMPLING, store: LogStore | None = None,
    interaction_ids: Sequence[str] = (), prompt_set: PromptSet,
) -> CollectionResult:
    """K drafts labelled by a DraftJudge's rewards (the weak teacher): the highest-rewarded
    draft is chosen over the lowest, confidence = sigmoid(reward gap). No strong model runs:
    the teacher learned from influence-labelled pairs which drafts help it.

    Any positive gap makes a pair: rewards are not influences, so `min_margin` does not
    apply; the confidence threshold decides what is trained on.
    """
    shown = format_question(question, options)
    weak_info = weak.describe()
    prompt = prompt_set.draft(shown)
    started = time.perf_counter()
    drafts = weak_drafts(weak, prompt, k, weak_opts)
    drafted = time.perf_counter()
    rewards: list[float | None] = list(evaluator.draft_rewards(prompt, drafts))
    choice = choose_pair(drafts, rewards, 0.0)
    reason = choice if isinstance(choice, str) else None
    pair: PreferencePair | None = None
    if isinstance(choice, PairChoice):
        confidence = preference(rewards[choice.chosen], rewards[choice.rejected])
        trainable = confidence >= min_confidence
        if not trainable:
            reason = f"confidence {confidence:.3f} < min_confidence {min_confidence:.3f}: kept, not trained on"
        pair = PreferencePair(
            domain=domain_key, question=shown, prompt=prompt, chosen=drafts[choice.chosen],
            rejected=drafts[choice.rejected], margin=choice.margin, evaluator=evaluator.name, confidence=confidence,
            trainable=trainable, interaction_ids=tuple(interaction_ids),
            details={"k": k, "chosen_index": choice.chosen, "rejected_index": choice.rejected, "rewards": rewards,
                     "weak_options": weak_opts.as_kwargs(), "min_confidence": min_confidence},
            weak_model=weak_info.get("model"), adapter_version=drafting_version(weak_info, weak_opts.adapter),
        )
    timings = {"weak_s": drafted - started, "judge_s": time.perf_counter() - drafted}
    pair_ids = (store.log_pair(pair),) if store is not None and pair is not None else ()
    unscored = Score(None, 0.0, evaluator.name, "a draft judge scores drafts, not finals")
    return CollectionResult(
        question=shown, domain=domain_key, prompt=prompt, drafts=drafts, finals=[], strong_alone="",
        final_scores=[], strong_alone_score=unscored, influences=rewards, pairs=() if pair is None else (pair,),
        reason=reason, skipped=0, timings=timings, pair_ids=pair_ids,
    )


def _pair_confidence(
    evaluator: Evaluator, question: str, finals: list[str], scores: Sequence[Score], choice: PairChoice,
    reference: Reference | None, options: Sequence[str] | None,
) -> float:
    # An evaluator that can compare two answers directly (the weak judge) says
    # how sure it is of this pair; otherwise the weaker of the two pointwise
    # confidences bounds it.
    if isinstance(evaluator, PairJudge):
        return float(evaluator.pair_confidence(question, finals[choice.chosen], finals[choice.rejected], reference, options))
    return min(scores[choice.chosen].confidence, scores[choice.rejected].confidence)


def _prompt_set(prompt_sets: Mapping[str, PromptSet], domain: str) -> PromptSet:
    if domain not in prompt_sets:
        raise ValueError(f"Unsupported domain {domain!r}: no pack with that name ({', '.join(prompt_sets)})")
    return prompt_sets[domain]


def collect(
    questions: Iterable[QuestionItem],
    weak: WeakModel,
    strong: Backend,
    evaluator: Evaluator,
    *,
    k: int = 4,
    min_margin: float = MIN_MARGIN,
    min_confidence: float = 0.6,
    weak_opts: GenerationOptions = WEAK_SAMPLING,
    strong_opts: GenerationOptions = STRONG_GREEDY,
    sequential: bool = False,
    store: LogStore | None = None,
    progress: Callable[[Progress], None] | None = None,
    prompt_sets: Mapping[str, PromptSet],
    pairs_per_question: int = 1,
) -> CollectSummary:
    """Collect for many questions; a question whose models fail is reported in
    `errors` and skipped, the run goes on. `progress` gets a Progress after each."""
    total = len(questions) if isinstance(questions, Sized) else None  # a generator streams on
    results: list[CollectionResult] = []
    errors: list[tuple[int, str]] = []
    pairs = trainable = 0
    started = time.perf_counter()
    for index, item in enumerate(questions):
        try:
            result = collect_for_question(
                item.question, item.domain, weak, strong, evaluator, k, item.reference, item.options,
                min_margin=min_margin, min_confidence=min_confidence, weak_opts=weak_opts,
                strong_opts=strong_opts, sequential=sequential, store=store, interaction_ids=item.interaction_ids,
                prompt_set=_prompt_set(prompt_sets, item.domain), pairs_per_question=pairs_per_question,
            )
        except (BackendError, ValueError) as exc:  # ValueError covers bad items (unknown domain, no reference)
            errors.append((index, f"{type(exc).__name__}: {exc}"))
        else:
            results.append(result)
            pairs += len(result.pairs)
            trainable += sum(pair.trainable for pair in result.pairs)
        if progress is not None:
            progress(Progress(index + 1, total, pairs, time.perf_counter() - started))
    return CollectSummary(results, errors, pairs, trainable, time.perf_counter() - started)
