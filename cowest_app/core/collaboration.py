"""The collaboration core: the weak model drafts, the strong model answers, for every caller.

`collaborate` is the one implementation of the CoWeSt loop. Serving streams it
for one question (`pipeline.CollaborationPipeline`); feedback collection runs
it with K sampled drafts per question and the strong model alone as the
baseline (`collect.collect_for_question`); the promotion gate
(`training_job.TrainingJob.evaluate`) and the harness (`training.evaluate`)
run it over a batch of pack items with greedy drafts and score the answers
with the pack's metric. The pack's `PromptSet` renders every conversation.

It is a generator: it yields an `Update` whenever a reply grows or finishes
and returns one `Collaboration` per question; batch callers drain it with
`run`. Callers choose how drafts are written and answers produced through two
small roles, a `Drafter` and an `Answerer`; the implementations here stream
one reply at a time, sample K drafts in one call, or batch greedy replies
over many questions.

With `guard` (serving), a degenerate draft (`draft_check`: a loop, an echo of
the question, nothing) is written again once, more strictly; if that one is
degenerate too, or the weak model failed, the strong model answers alone. A
bad draft never makes the answer worse than the strong model's own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Generator, Mapping, Protocol, Sequence, TypeVar

from cowest_app.core import draft_check

from cowest_app.core import prompts
from cowest_app.models.base import Backend, BackendError, GenerationOptions, Message, WeakModel

T = TypeVar("T")
Steps = Generator["Update", None, T]  # yields progress, returns its result

# What a job produces: a draft, an answer built on a draft (or on none), the strong model alone.
DRAFT, ANSWER, ALONE = "draft", "answer", "alone"

# Notes the guard writes (the serving stage table and the log read them).
NOTE = "note"  # a short line for the stage table
DRAFT_CHECK = "draft_check"  # the first draft's problem, when it had one
REDRAFTED = "redrafted"
REDRAFT_CHECK = "redraft_check"  # the second draft's problem, when it had one too
FALLBACK = "fallback"  # on the answer: why the strong model answered alone


@dataclass(frozen=True)
class Ask:
    """One question as the models see it, with what scoring needs."""

    text: str  # options already lettered in (packs.format_item / collect.format_question)
    reference: Any = None  # an option index, a label or answer aliases
    options: tuple[str, ...] | None = None  # multiple choice: the options behind the letters


@dataclass(frozen=True)
class Reply:
    text: str = ""
    status: str = "running"  # running | done | failed
    error: str | None = None
    ms: float | None = None
    first_token_ms: float | None = None
    info: Mapping[str, Any] = field(default_factory=dict)
    score: float | None = None  # from answerers that score as they answer (P(correct option))

    @property
    def ok(self) -> bool:
        return self.status == "done"

    def noted(self, notes: Mapping[str, Any]) -> "Reply":
        return replace(self, info={**self.info, **notes}) if notes else self


@dataclass(frozen=True)
class Job:
    """One conversation to run: which step of which question it is, and its messages."""

    step: str  # DRAFT | ANSWER | ALONE
    question: int  # index in the batch of asks
    index: int  # which draft, or the answer built on draft `index`
    messages: list[Message]
    ask: Ask


@dataclass(frozen=True)
class Update:
    job: Job
    reply: Reply


@dataclass(frozen=True)
class Collaboration:
    ask: Ask
    prompt: list[Message]  # the weak model's drafting prompt: also the DPO prompt
    drafts: list[Reply]  # k drafts; none when the strong model answers alone
    answers: list[Reply]  # answers[i] is built on drafts[i]; one answer when there are no drafts
    alone: Reply | None = None  # the strong model alone, when asked for
    notes: Mapping[str, Any] = field(default_factory=dict)  # the guard's notes
    answer_prompts: list[list[Message]] = field(default_factory=list)  # the strong model's conversation per answer


class Drafter(Protocol):
    def write(self, jobs: Sequence[Job], k: int) -> Steps[list[list[Reply]]]:
        """`k` drafts per job, in job order; may yield Updates as they grow."""
        ...

    def rewrite(self, job: Job) -> Steps[Reply]:
        """A second, stricter try at one draft (the guard's)."""
        ...


class Answerer(Protocol):
    def answer(self, jobs: Sequence[Job]) -> Steps[list[Reply]]:
        """One reply per job, in job order; may yield Updates as they grow."""
        ...


def run(steps: Steps[T]) -> T:
    """Drain a generator of Updates and return its result (batch callers)."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def relay(steps: Steps[T], change: Callable[[Update], Update]) -> Steps[T]:
    """`steps` with every Update passed through `change`, and its result."""
    while True:
        try:
            update = next(steps)
        except StopIteration as stop:
            return stop.value
        yield change(update)


def collaborate(prompt_set: prompts.PromptSet, asks: Sequence[Ask], drafter: Drafter | None, answerer: Answerer,
                *, k: int = 1, alone: bool = False, guard: bool = False) -> Steps[list[Collaboration]]:
    """The collaboration on every ask: k drafts each, then the strong model's answer on each draft.

    Without a drafter the strong model answers alone (the harness's single-model
    rows run through here too). `alone` also asks the strong model without a
    draft: collaborative feedback's baseline. `guard` needs k == 1.
    """
    if guard and k != 1:
        raise ValueError("the draft guard re-drafts one draft; use k=1")
    draft_jobs = [Job(DRAFT, q, 0, prompt_set.draft(ask.text) if drafter else [], ask) for q, ask in enumerate(asks)]
    drafts: list[list[Reply]] = [[] for _ in asks]
    if drafter is not None:
        drafts = yield from drafter.write(draft_jobs, k)
    notes: list[dict[str, Any]] = [{} for _ in asks]
    if guard and drafter is not None:
        for q, job in enumerate(draft_jobs):
            drafts[q][0], notes[q] = yield from _guarded(drafter, job, drafts[q][0])

    jobs: list[Job] = []
    for q, ask in enumerate(asks):
        if not drafts[q] or FALLBACK in notes[q]:
            jobs.append(Job(ANSWER, q, 0, prompt_set.direct(ask.text), ask))
        else:
            jobs += [Job(ANSWER, q, i, prompt_set.refine(ask.text, d.text), ask) for i, d in enumerate(drafts[q])]
        if alone:
            jobs.append(Job(ALONE, q, 0, prompt_set.direct(ask.text), ask))
    fallbacks = {q: {FALLBACK: n[FALLBACK], NOTE: f"fallback: {n[FALLBACK]} (strong model alone)"}
                 for q, n in enumerate(notes) if FALLBACK in n}

    def note_fallback(update: Update) -> Update:
        extra = fallbacks.get(update.job.question) if update.job.step == ANSWER else None
        return replace(update, reply=update.reply.noted(extra)) if extra else update

    replies = yield from relay(answerer.answer(jobs), note_fallback)
    replies = [r.noted(fallbacks.get(j.question, {})) if j.step == ANSWER else r for j, r in zip(jobs, replies)]
    answers: list[list[Reply]] = [[] for _ in asks]
    answer_prompts: list[list[list[Message]]] = [[] for _ in asks]
    alone_replies: list[Reply | None] = [None] * len(asks)
    for job, reply in zip(jobs, replies, strict=True):
        if job.step == ALONE:
            alone_replies[job.question] = reply
        else:
            answers[job.question].append(reply)
            answer_prompts[job.question].append(job.messages)
    return [Collaboration(ask, job.messages, drafts[q], answers[q], alone_replies[q], notes[q], answer_prompts[q])
            for q, (ask, job) in enumerate(zip(asks, draft_jobs))]


def _guarded(drafter: Drafter, job: Job, draft: Reply) -> Steps[tuple[Reply, dict[str, Any]]]:
    """The draft, or its one re-draft, and the notes saying what happened."""
    if not draft.ok:
        return draft, {FALLBACK: "weak model failed"}
    first = draft_check.check_draft(draft.text, job.ask.text, prompts.DRAFT_LABELS)
    if not first.degenerate:
        return draft, {}
    notes: dict[str, Any] = {DRAFT_CHECK: first.reason, "draft_check_detail": first.detail, REDRAFTED: True,
                             "first_draft_ms": draft.ms, NOTE: f"{first.reason}: re-drafted"}
    second = yield from relay(drafter.rewrite(job), lambda u: replace(u, reply=u.reply.noted(notes)))
    second = second.noted(notes)
    if not second.ok:
        notes |= {FALLBACK: "weak model failed", NOTE: f"{first.reason}, then the re-draft failed: not used"}
    else:
        verdict = draft_check.check_draft(second.text, job.ask.text, prompts.DRAFT_LABELS)
        if not verdict.degenerate:
            return second, notes
        notes |= {REDRAFT_CHECK: verdict.reason, FALLBACK: verdict.reason,
                  NOTE: f"{first.reason}, then {verdict.reason} on re-draft: not used"}
    second = second.noted(notes)
    yield Update(job, second)
    return second, notes


# -- drafters and answerers ---------------------------------------------------------
def stream_reply(backend: Backend, job: Job, opts: GenerationOptions,
                 clean: Callable[[str], str] = prompts.clean_generation) -> Steps[Reply]:
    """One streamed generation: an Update per chunk; errors end it as a failed Reply, never raised."""
    started = time.perf_counter()
    reply = Reply()
    yield Update(job, reply)
    text, first = "", None
    try:
        stream = backend.generate(job.messages, **opts.as_kwargs())
        for chunk in stream:
            if first is None:
                first = (time.perf_counter() - started) * 1000
            text += chunk
            reply = replace(reply, text=text, first_token_ms=first)
            yield Update(job, reply)
        info = dict(getattr(stream, "info", None) or backend.describe())
        reply = replace(reply, text=clean(text), status="done", ms=(time.perf_counter() - started) * 1000, info=info)
    except Exception as exc:  # a failed reply is data for the UI and the log, not a crash
        message = str(exc) if isinstance(exc, BackendError) else f"Unexpected error: {type(exc).__name__}: {exc}"
        reply = replace(reply, status="failed", error=message, ms=(time.perf_counter() - started) * 1000,
                        info=backend.describe())
    yield Update(job, reply)
    return reply


@dataclass(frozen=True)
class StreamingDrafter:
    """Serving: one draft per job, streamed; the re-draft with its own (stricter) options."""

    weak: Backend
    opts: GenerationOptions
    redraft_opts: GenerationOptions

    def write(self, jobs: Sequence[Job], k: int) -> Steps[list[list[Reply]]]:
        if k != 1:
            raise ValueError("a streaming drafter writes one draft per question")
        out = []
        for job in jobs:
            out.append([(yield from stream_reply(self.weak, job, self.opts))])
        return out

    def rewrite(self, job: Job) -> Steps[Reply]:
        return (yield from stream_reply(self.weak, job, self.redraft_opts))


@dataclass(frozen=True)
class SampledDrafter:
    """Feedback collection: K sampled drafts per question in one batched `sample` call
    (or, the benchmark baseline, K separate generations, seeded apart)."""

    weak: WeakModel
    opts: GenerationOptions
    sequential: bool = False

    def write(self, jobs: Sequence[Job], k: int) -> Steps[list[list[Reply]]]:
        if self.opts.greedy:
            raise ValueError("drafts must be sampled: set a temperature > 0")
        out = []
        for job in jobs:
            started = time.perf_counter()
            texts = self._texts(job.messages, k)
            ms = (time.perf_counter() - started) * 1000
            replies = [Reply(t, "done", ms=ms) for t in texts]
            for i, reply in enumerate(replies):
                yield Update(replace(job, index=i), reply)
            out.append(replies)
        return out

    def rewrite(self, job: Job) -> Steps[Reply]:
        return (yield from stream_reply(self.weak, job, self.opts))

    def _texts(self, messages: list[Message], k: int) -> list[str]:
        if not self.sequential:
            return [prompts.clean_generation(d) for d in self.weak.sample(messages, k, **self.opts.as_kwargs())]
        texts = []
        for i in range(k):
            seed = None if self.opts.seed is None else self.opts.seed + i  # the same seed K times: K equal drafts
            opts = replace(self.opts, seed=seed)
            texts.append(prompts.clean_generation("".join(self.weak.generate(messages, **opts.as_kwargs()))))
        return texts


class BatchGenerator(Protocol):
    """A local model that decodes many conversations as left-padded batches."""

    def complete_batch(self, conversations: Sequence[list[Message]], opts: GenerationOptions,
                       batch_size: int) -> Generator[list[str], None, None]:
        ...


@dataclass(frozen=True)
class BatchDrafter:
    """The gate and the harness: one greedy draft per question, decoded in batches."""

    weak: BatchGenerator
    opts: GenerationOptions
    batch_size: int = 8

    def write(self, jobs: Sequence[Job], k: int) -> Steps[list[list[Reply]]]:
        if k != 1:
            raise ValueError("greedy drafts are one per question")
        texts = yield from _batched(self.weak, jobs, self.opts, self.batch_size, prompts.clean_generation)
        return [[Reply(t, "done")] for t in texts]

    def rewrite(self, job: Job) -> Steps[Reply]:
        texts = yield from _batched(self.weak, [job], self.opts, 1, prompts.clean_generation)
        return Reply(texts[0], "done")


@dataclass(frozen=True)
class StreamingAnswerer:
    """Serving and text-scored feedback: each answer generated in turn, streamed."""

    strong: Backend
    opts: GenerationOptions
    clean: Callable[[str], str] = prompts.clean_answer

    def answer(self, jobs: Sequence[Job]) -> Steps[list[Reply]]:
        out = []
        for job in jobs:
            out.append((yield from stream_reply(self.strong, job, self.opts, self.clean)))
        return out


@dataclass(frozen=True)
class BatchAnswerer:
    """Short-answer packs in the gate and the harness: greedy answers decoded in batches."""

    strong: BatchGenerator
    opts: GenerationOptions
    batch_size: int = 8

    def answer(self, jobs: Sequence[Job]) -> Steps[list[Reply]]:
        texts = yield from _batched(self.strong, jobs, self.opts, self.batch_size, prompts.clean_generation)
        return [Reply(t, "done") for t in texts]


def _batched(model: BatchGenerator, jobs: Sequence[Job], opts: GenerationOptions, batch_size: int,
             clean: Callable[[str], str]) -> Steps[list[str]]:
    texts: list[str] = []
    for batch in model.complete_batch([job.messages for job in jobs], opts, batch_size):
        for text in batch:
            job = jobs[len(texts)]
            texts.append(clean(text))
            yield Update(job, Reply(texts[-1], "done"))
    return texts

