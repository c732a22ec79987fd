"""The weak-strong collaboration: weak draft, then strong refinement, both streamed.

`run` yields a `Snapshot` after every chunk so a UI can redraw all stages at
once. A failed stage is recorded in the snapshot, not raised: a strong-stage
failure still leaves the weak draft on screen and in the log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

from cowest_app import prompts
from cowest_app.models.base import Backend, BackendError, GenerationOptions, Message

# Stage keys, in the order they run.
WEAK = "weak_draft"
COLLAB = "final_answer"
WEAK_ALONE = "weak_alone"
STRONG_ALONE = "strong_alone"


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


def _opts(opts: GenerationOptions) -> dict[str, Any]:
    return {k: getattr(opts, k) for k in GenerationOptions.__dataclass_fields__}


def stream_stage(backend: Backend, messages: list[Message], opts: GenerationOptions) -> Iterator[Stage]:
    """Run one generation, yielding the growing Stage; errors end it as 'failed'."""
    started = time.perf_counter()
    stage = Stage(status="running")
    yield stage
    text = ""
    first: float | None = None
    try:
        stream = backend.generate(messages, **_opts(opts))
        for chunk in stream:
            if first is None:
                first = (time.perf_counter() - started) * 1000
            text += chunk
            stage = replace(stage, text=text, first_token_ms=first)
            yield stage
        info = dict(getattr(stream, "info", None) or backend.describe())
        yield replace(stage, text=prompts.clean_generation(text), status="done",
                      ms=(time.perf_counter() - started) * 1000, info=info)
    except Exception as exc:  # a failed stage is data for the UI and the log, not a crash
        message = str(exc) if isinstance(exc, BackendError) else f"Unexpected error: {type(exc).__name__}: {exc}"
        yield replace(stage, status="failed", error=message, ms=(time.perf_counter() - started) * 1000,
                      info=backend.describe())


@dataclass(frozen=True)
class CollaborationPipeline:
    weak: Backend
    strong: Backend
    weak_opts: GenerationOptions
    strong_opts: GenerationOptions

    def run(self, domain: prompts.Domain, question: str, compare: bool = False) -> Iterator[Snapshot]:
        keys = [WEAK, COLLAB] + ([WEAK_ALONE, STRONG_ALONE] if compare else [])
        snap = Snapshot({k: Stage() for k in keys})
        yield snap

        for stage in stream_stage(self.weak, prompts.weak_draft_messages(domain, question), self.weak_opts):
            snap = snap.with_stage(WEAK, stage)
            yield snap
        draft = snap.stages[WEAK]
        # Without a draft the strong model still answers: the user gets an
        # answer, and the log shows the weak stage failed.
        refine = prompts.strong_refine_messages(domain, question, draft.text if draft.status == "done" else "")
        for stage in stream_stage(self.strong, refine, self.strong_opts):
            snap = snap.with_stage(COLLAB, stage)
            yield snap

        if compare:
            alone = prompts.direct_answer_messages(domain, question)
            for key, backend, opts in ((WEAK_ALONE, self.weak, self.weak_opts), (STRONG_ALONE, self.strong, self.strong_opts)):
                for stage in stream_stage(backend, alone, opts):
                    snap = snap.with_stage(key, stage)
                    yield snap
        yield Snapshot(snap.stages, done=True)
