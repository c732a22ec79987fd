"""Serving: the collaboration core streamed for one question, as snapshots of the stage table.

`run` yields a `Snapshot` after every chunk so a UI can redraw all stages at
once. A failed stage is recorded in the snapshot, not raised: a strong-stage
failure still leaves the weak draft on screen and in the log.

No harm (issue 12): a collaboration must never be worse than the strong model
alone. Drafts are decoded so they cannot loop and end after their answer
line; the core's guard re-drafts a degenerate draft once, and if the second
draft is no better, or the weak model failed, the strong model answers
alone. What happened is in the stages' `info`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

from cowest_app.core import collaboration

from cowest_app.core import prompts
from cowest_app.models.base import Backend, GenerationOptions, Message

# Stage keys, in the order they run.
WEAK = "weak_draft"
COLLAB = "final_answer"
WEAK_ALONE = "weak_alone"
STRONG_ALONE = "strong_alone"

# Stage.info keys the draft guard writes (read by the UI and the log): the core's.
NOTE, DRAFT_CHECK, REDRAFTED, REDRAFT_CHECK, FALLBACK = (
    collaboration.NOTE, collaboration.DRAFT_CHECK, collaboration.REDRAFTED, collaboration.REDRAFT_CHECK,
    collaboration.FALLBACK)

# Why a domain gets no draft: its pack drafts only where the weak model is a specialist (`drafts: specialist`).
NO_SPECIALIST = "no specialist for this domain"
NO_SPECIALIST_NOTE = "no specialist adapter for this domain yet: the strong model answers alone"

# Serving drafts: small models loop, so repeats are penalised and the draft
# ends once its answer line is written. A re-draft samples, with firmer rules.
DRAFT_REPETITION_PENALTY = 1.15
DRAFT_NO_REPEAT_NGRAM = 4
REDRAFT_TEMPERATURE = 0.7
REDRAFT_REPETITION_PENALTY = 1.3
REDRAFT_NO_REPEAT_NGRAM = 3
REDRAFT_SEED = 1234  # a re-draft of the same question is reproducible


def draft_options(opts: GenerationOptions) -> GenerationOptions:
    """`opts` with the serving draft's anti-loop rules and answer-line stop (explicit settings win)."""
    return replace(
        opts,
        repetition_penalty=opts.repetition_penalty if opts.repetition_penalty != 1.0 else DRAFT_REPETITION_PENALTY,
        no_repeat_ngram_size=opts.no_repeat_ngram_size or DRAFT_NO_REPEAT_NGRAM,
        stop_after_line=opts.stop_after_line or prompts.DRAFT_ANSWER_LABEL,
    )


def redraft_options(opts: GenerationOptions) -> GenerationOptions:
    """The second try after a degenerate draft: sampled, and stricter about repeats."""
    first = draft_options(opts)
    return replace(
        first,
        temperature=max(first.temperature, REDRAFT_TEMPERATURE),
        repetition_penalty=max(first.repetition_penalty, REDRAFT_REPETITION_PENALTY),
        no_repeat_ngram_size=min(first.no_repeat_ngram_size, REDRAFT_NO_REPEAT_NGRAM),
        seed=first.seed if first.seed is not None else REDRAFT_SEED,
    )


@dataclass(frozen=True)
class Stage:
    text: str = ""
    status: str = "pending"  # pending | running | done | failed | skipped
    ms: float | None = None
    first_token_ms: float | None = None
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    stages: dict[str, Stage]
    done: bool = False

    def with_stage(self, key: str, stage: Stage, done: bool = False) -> "Snapshot":
        return Snapshot({**self.stages, key: stage}, done)

    @property
    def failed(self) -> list[str]:
        return [k for k, s in self.stages.items() if s.status == "failed"]


def as_stage(reply: collaboration.Reply) -> Stage:
    return Stage(text=reply.text, status=reply.status, ms=reply.ms, first_token_ms=reply.first_token_ms,
                 error=reply.error, info=dict(reply.info))


def stream_stage(backend: Backend, messages: list[Message], opts: GenerationOptions,
                 clean: Callable[[str], str] = prompts.clean_generation) -> Iterator[Stage]:
    """Run one generation, yielding the growing Stage; errors end it as 'failed'.

    `clean` tidies the finished text (user-facing answers use `prompts.clean_answer`).
    """
    job = collaboration.Job(collaboration.ALONE, 0, 0, messages, collaboration.Ask(""))
    for update in collaboration.stream_reply(backend, job, opts, clean):
        yield as_stage(update.reply)


@dataclass(frozen=True)
class CollaborationPipeline:
    weak: Backend
    strong: Backend
    weak_opts: GenerationOptions
    strong_opts: GenerationOptions
    redraft_opts: GenerationOptions | None = None  # None: `redraft_options(weak_opts)`

    def run(self, prompt_set: prompts.PromptSet, question: str, compare: bool = False,
            adapter: str | None = None, weak_opts: GenerationOptions | None = None,
            strong_opts: GenerationOptions | None = None, draft: bool = True) -> Iterator[Snapshot]:
        """The collaboration on one question with a domain's prompts, streamed through the core
        (`collaboration.collaborate`, guarded); `adapter` is the weak model's adapter slot (the
        domain pack's name), which drafts and answers alone; `weak_opts` and `strong_opts`
        replace the pipeline's draft and answer options for this question. Without `draft` (no
        specialist for the domain) the strong model answers alone and the draft stage says why."""
        strong_opts = strong_opts or self.strong_opts
        keys = [WEAK, COLLAB] + ([WEAK_ALONE, STRONG_ALONE] if compare else [])
        snap = Snapshot({k: Stage() for k in keys})
        weak_opts = replace(weak_opts or self.weak_opts, adapter=adapter)
        redo = replace(self.redraft_opts or redraft_options(weak_opts), adapter=adapter)
        drafter = collaboration.StreamingDrafter(self.weak, weak_opts, redo) if draft else None
        if not draft:
            snap = snap.with_stage(WEAK, Stage(status="skipped", info={"model": self.weak.describe().get("model"),
                                                                       NOTE: NO_SPECIALIST_NOTE}))
        yield snap
        answerer = collaboration.StreamingAnswerer(self.strong, strong_opts, prompts.clean_answer)
        stage_of = {collaboration.DRAFT: WEAK, collaboration.ANSWER: COLLAB}
        for update in collaboration.collaborate(prompt_set, [collaboration.Ask(question)], drafter, answerer,
                                                guard=True):
            stage = as_stage(update.reply)
            if drafter is None:  # votes on this answer say nothing about a draft (see service.draft_status)
                stage = replace(stage, info={**stage.info, FALLBACK: NO_SPECIALIST})
            snap = snap.with_stage(stage_of[update.job.step], stage)
            yield snap
        if compare:  # each model alone, for the user to compare: not part of the collaboration
            alone = prompt_set.direct(question)
            # The weak model answers alone plainly: the drafting stop rules end a draft, not an answer.
            weak_alone = replace(weak_opts, stop_after_line=None)
            for key, backend, opts in ((WEAK_ALONE, self.weak, weak_alone), (STRONG_ALONE, self.strong, strong_opts)):
                for stage in stream_stage(backend, alone, opts, prompts.clean_answer):
                    snap = snap.with_stage(key, stage)
                    yield snap
        yield Snapshot(snap.stages, done=True)


# Why a stage's generation ended, as backends report it in `Stage.info` (see models.local.finish_reason).
FINISH_REASON = "finish_reason"
CUT_AT_LIMIT = "length"
CANCELLED = "cancelled"


def stopped_snapshot(snap: Snapshot) -> Snapshot:
    """The run as the user stopped it: the stage being written and those not yet started say "stopped"."""
    def stop(stage: Stage) -> Stage:
        if stage.status in ("pending", "running") or stage.info.get(FINISH_REASON) == CANCELLED:
            return replace(stage, status="stopped")
        return stage

    return Snapshot({key: stop(stage) for key, stage in snap.stages.items()}, done=True)


def truncated_at(stage: Stage) -> int | None:
    """The token limit a finished stage was cut at, or None when it ended by itself."""
    if stage.status == "done" and stage.info.get(FINISH_REASON) == CUT_AT_LIMIT:
        return stage.info.get("max_new_tokens")
    return None
