"""The weak-strong collaboration: weak draft, then strong refinement, both streamed.

`run` yields a `Snapshot` after every chunk so a UI can redraw all stages at
once. A failed stage is recorded in the snapshot, not raised: a strong-stage
failure still leaves the weak draft on screen and in the log.

No harm (issue 12): a collaboration must never be worse than the strong model
alone. Drafts are decoded so they cannot loop and end after their answer
line; a draft that is still degenerate (see `draft_check`) is re-drafted
once, and if the second draft is no better, or the weak model failed, the
strong model answers alone. What happened is in the stages' `info`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

from cowest_app import draft_check, prompts
from cowest_app.models.base import Backend, BackendError, GenerationOptions, Message

# Stage keys, in the order they run.
WEAK = "weak_draft"
COLLAB = "final_answer"
WEAK_ALONE = "weak_alone"
STRONG_ALONE = "strong_alone"

# Stage.info keys the draft check writes (read by the UI and the log).
NOTE = "note"  # a short line for the stage table
DRAFT_CHECK = "draft_check"  # the first draft's problem, when it had one
REDRAFTED = "redrafted"
REDRAFT_CHECK = "redraft_check"  # the re-draft's problem, when it had one too
FALLBACK = "fallback"  # on the final answer: why the strong model answered alone

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


def stream_stage(backend: Backend, messages: list[Message], opts: GenerationOptions,
                 clean: Callable[[str], str] = prompts.clean_generation) -> Iterator[Stage]:
    """Run one generation, yielding the growing Stage; errors end it as 'failed'.

    `clean` tidies the finished text (user-facing answers use `prompts.clean_answer`).
    """
    started = time.perf_counter()
    stage = Stage(status="running")
    yield stage
    text = ""
    first: float | None = None
    try:
        stream = backend.generate(messages, **opts.as_kwargs())
        for chunk in stream:
            if first is None:
                first = (time.perf_counter() - started) * 1000
            text += chunk
            stage = replace(stage, text=text, first_token_ms=first)
            yield stage
        info = dict(getattr(stream, "info", None) or backend.describe())
        yield replace(stage, text=clean(text), status="done",
                      ms=(time.perf_counter() - started) * 1000, info=info)
    except Exception as exc:  # a failed stage is data for the UI and the log, not a crash
        message = str(exc) if isinstance(exc, BackendError) else f"Unexpected error: {type(exc).__name__}: {exc}"
        yield replace(stage, status="failed", error=message, ms=(time.perf_counter() - started) * 1000,
                      info=backend.describe())


def _with_info(stage: Stage, info: dict[str, Any]) -> Stage:
    return replace(stage, info={**stage.info, **info}) if info else stage


@dataclass(frozen=True)
class CollaborationPipeline:
    weak: Backend
    strong: Backend
    weak_opts: GenerationOptions
    strong_opts: GenerationOptions
    redraft_opts: GenerationOptions | None = None  # None: `redraft_options(weak_opts)`

    def run(self, prompt_set: prompts.PromptSet, question: str, compare: bool = False,
            adapter: str | None = None, weak_opts: GenerationOptions | None = None) -> Iterator[Snapshot]:
        """The collaboration on one question with a domain's prompts; `adapter` is the weak model's
        adapter slot (the domain pack's name), which drafts and answers alone; `weak_opts`
        replaces the pipeline's draft options for this question."""
        keys = [WEAK, COLLAB] + ([WEAK_ALONE, STRONG_ALONE] if compare else [])
        snap = Snapshot({k: Stage() for k in keys})
        yield snap
        weak_opts = replace(weak_opts or self.weak_opts, adapter=adapter)

        snap = yield from self._draft(snap, prompt_set, question, weak_opts)
        draft = snap.stages[WEAK]
        fallback = self._fallback_reason(draft)
        if fallback is None:
            messages = prompt_set.refine(question, draft.text)
            info: dict[str, Any] = {}
        else:
            # No usable draft: the strong model answers alone, as well as it would without us.
            messages = prompt_set.direct(question)
            info = {FALLBACK: fallback, NOTE: f"fallback: {fallback} (strong model alone)"}
        snap = yield from self._stream(snap, COLLAB, self.strong, messages, self.strong_opts, info, prompts.clean_answer)

        if compare:
            alone = prompt_set.direct(question)
            # The weak model answers alone plainly: the drafting stop rules end a draft, not an answer.
            weak_alone = replace(weak_opts, stop_after_line=None)
            for key, backend, opts in ((WEAK_ALONE, self.weak, weak_alone), (STRONG_ALONE, self.strong, self.strong_opts)):
                snap = yield from self._stream(snap, key, backend, alone, opts, {}, prompts.clean_answer)
        yield Snapshot(snap.stages, done=True)

    def _stream(self, snap: Snapshot, key: str, backend: Backend, messages: list[Message], opts: GenerationOptions,
                info: dict[str, Any], clean: Callable[[str], str] = prompts.clean_generation) -> Iterator[Snapshot]:
        """Stream one stage into the snapshot, `info` merged into every update; returns the last snapshot."""
        for stage in stream_stage(backend, messages, opts, clean):
            snap = snap.with_stage(key, _with_info(stage, info))
            yield snap
        return snap

    def _draft(self, snap: Snapshot, prompt_set: prompts.PromptSet, question: str,
               weak_opts: GenerationOptions) -> Iterator[Snapshot]:
        """The weak draft, re-drafted once when the first is degenerate; returns the last snapshot."""
        messages = prompt_set.draft(question)
        snap = yield from self._stream(snap, WEAK, self.weak, messages, weak_opts, {})
        first = self._verdict(snap.stages[WEAK], question)
        if not first.degenerate:
            return snap
        redo = replace(self.redraft_opts or redraft_options(weak_opts), adapter=weak_opts.adapter)
        # The stage's timings become the re-draft's; the first try's time is kept here.
        info = {DRAFT_CHECK: first.reason, "draft_check_detail": first.detail, REDRAFTED: True,
                "first_draft_ms": snap.stages[WEAK].ms, NOTE: f"{first.reason}: re-drafted"}
        snap = yield from self._stream(snap, WEAK, self.weak, messages, redo, info)
        second = self._verdict(snap.stages[WEAK], question)
        if second.degenerate:
            note = f"{first.reason}, then {second.reason} on re-draft: not used"
            snap = snap.with_stage(WEAK, _with_info(snap.stages[WEAK], {REDRAFT_CHECK: second.reason, NOTE: note}))
            yield snap
        return snap

    @staticmethod
    def _verdict(stage: Stage, question: str) -> draft_check.DraftVerdict:
        if stage.status != "done":
            return draft_check.DraftVerdict()  # a failure is its own outcome, not a bad draft
        return draft_check.check_draft(stage.text, question, prompts.DRAFT_LABELS)

    @staticmethod
    def _fallback_reason(draft: Stage) -> str | None:
        """Why the draft cannot go to the strong model, or None when it can."""
        if draft.status != "done":
            return "weak model failed"
        return draft.info.get(REDRAFT_CHECK)
