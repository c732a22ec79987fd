"""The collaboration service: validates input, runs the pipeline, logs everything.

The UI and tests talk only to this object. It never raises on user input:
bad input becomes an `InputError` message, model failures become failed stages,
and every finished, failed or abandoned question is logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Mapping

from cowest_app.core import prompts
from cowest_app.config import AppConfig, ConfigError
from cowest_app.core.export import export_log
from cowest_app.models.base import AdapterSlot, Backend, GenerationOptions, create_backend
from cowest_app.domains.packs import SHIPPED_ADAPTER_DIR, SHIPPED_RECORD, DomainPack, PackError, load_pack
from cowest_app.serving.pipeline import (
    COLLAB,
    DRAFT_CHECK,
    FALLBACK,
    REDRAFTED,
    STRONG_ALONE,
    WEAK,
    WEAK_ALONE,
    CollaborationPipeline,
    Snapshot,
    draft_options,
    stopped_snapshot,
)
from cowest_app.serving.ratelimit import RateLimiter, retry_text
from cowest_app.loop.registry import AdapterRegistry, RegistryError
from cowest_app.core.store import BEST_CHOICES, Feedback, Interaction, LogStore, StoreError

log = logging.getLogger(__name__)

RATINGS = {"up": 1, "down": -1}
HISTORY_LIMIT = 50  # the History tab shows this many of a session's newest questions
MAX_ID_CHARS = 64  # interaction ids are 32 hex digits; anything longer is not one
# Drafts grounded in retrieved passages copy them; only repeats this long are loops there.
GROUNDED_NO_REPEAT_NGRAM = 12


class RateLimited(prompts.InputError):
    """A session sent more questions or feedback than the per-minute limit."""


@dataclass(frozen=True)
class AskUpdate:
    snapshot: Snapshot
    interaction_id: str | None = None  # set on the last update, once logged
    stopped: bool = False  # the user pressed Stop: the run was logged as "cancelled"


class RunControl:
    """One running question: `stop` ends its live generations and tells the run to end.

    Gradio runs the Stop click in its own request while the ask generator waits
    on the model, so stopping must reach the generation thread directly: every
    stream the run opens is tracked and closed (a local stream stops at its next
    token), and the run checks `stopped` at every update.
    """

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self._streams: list[Any] = []
        self._lock = threading.Lock()

    def track(self, stream: Any) -> Any:
        with self._lock:
            self._streams.append(stream)
        if self.stopped.is_set():
            _close(stream)
        return stream

    def stop(self) -> None:
        self.stopped.set()
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            _close(stream)


def _close(stream: Any) -> None:
    close = getattr(stream, "close", None)
    if close is None:
        return
    try:
        close()
    except ValueError:  # a generator running in the ask thread: the run's own check ends it
        pass


@dataclass(frozen=True)
class StoppableBackend:
    """A backend whose generations one `RunControl` can stop (one per run, never shared)."""

    backend: Backend
    run: RunControl

    def generate(self, messages: list[Any], **opts: Any) -> Any:
        return self.run.track(self.backend.generate(messages, **opts))

    def describe(self) -> dict[str, Any]:
        return self.backend.describe()


def load_served_packs(config: AppConfig) -> dict[str, DomainPack]:
    """The packs of COWEST_PACKS by name, in order (the first is the default selection)."""
    packs: dict[str, DomainPack] = {}
    for path in config.packs:
        try:
            pack = load_pack(path)
        except PackError as exc:
            raise ConfigError(f"COWEST_PACKS: {exc}") from exc
        if pack.name in packs:
            raise ConfigError(f"COWEST_PACKS: two packs are named {pack.name!r} ({path} and {packs[pack.name].root})")
        packs[pack.name] = pack
    if not packs:
        raise ConfigError("COWEST_PACKS names no pack")
    if config.train_pack is not None and config.train_pack not in packs:
        raise ConfigError(f"COWEST_TRAIN_PACK={config.train_pack!r} is not served; served: {', '.join(packs)}")
    return packs


def install_shipped_adapter(registry: AdapterRegistry, pack: DomainPack) -> None:
    """A pack that ships the adapter its pipeline trained (`adapter/` beside domain.yaml) starts
    its lineage with it as v1, so a fresh install drafts with the specialised model."""
    shipped = pack.root / SHIPPED_ADAPTER_DIR
    if registry.versions() or not (shipped / "adapter_config.json").is_file():
        return
    record = shipped / SHIPPED_RECORD
    meta = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    version = registry.import_adapter(shipped, base_model=meta.get("base_model"), data_hash=meta.get("data_sha256"),
                                      config={"shipped_with": pack.name, "command": meta.get("command")},
                                      metrics=meta.get("results", {}))
    log.info("pack %s: installed its shipped adapter as %s", pack.name, version.version if version else None)


def adapter_slots(config: AppConfig, packs: Mapping[str, DomainPack]) -> dict[str, AdapterSlot]:
    """Each pack's active adapter (its registry's active version; COWEST_WEAK_ADAPTER for the first)."""
    slots = {}
    for index, pack in enumerate(packs.values()):
        if index == 0 and config.weak_adapter is not None:
            slots[pack.name] = AdapterSlot(config.weak_adapter, "configured")
            continue
        registry = AdapterRegistry(config.pack_adapters_dir(pack.name))
        install_shipped_adapter(registry, pack)
        active = registry.active()
        if active is None:
            continue
        try:
            slots[pack.name] = AdapterSlot(str(registry.verified_path(active.version)), active.version)
        except RegistryError as exc:  # changed on disk since registration: serve the base, say why
            log.error("pack %s: %s; serving the base model (roll back or register again)", pack.name, exc)
    return slots


def build_weak(config: AppConfig, packs: Mapping[str, DomainPack]) -> Backend:
    """The weak model with every served pack's active adapter, one slot per pack."""
    from cowest_app.models.base import AdapterError

    if config.weak_backend == "lora-server":  # the adapters are loaded on the server, by name
        weak = partial(create_backend, "lora-server", model=config.weak_model, base_url=config.weak_base_url,
                       engine=config.weak_engine, token=config.secrets.weak_api_token)
    else:
        weak = partial(create_backend, "transformers", model=config.weak_model, cache_dir=config.cache_dir,
                       load_4bit=config.weak_4bit)
    slots = adapter_slots(config, packs)
    try:
        return weak(adapters=slots)
    except AdapterError as exc:
        if config.weak_adapter is not None:  # COWEST_WEAK_ADAPTER: a configuration error, say so
            raise
        # A damaged promoted adapter must not keep the app from starting; an admin can roll back.
        usable = {}
        for name, slot in slots.items():
            try:
                weak(adapters={name: slot})
            except AdapterError as error:
                log.error("pack %s: active adapter %s cannot be loaded, serving the base model: %s", name, slot.version, error)
            else:
                usable[name] = slot
        log.error("some adapters are unusable: %s", exc)
        return weak(adapters=usable)


# Prompt n-grams proposed per step with COWEST_STRONG_ASSIST=prompt-lookup.
PROMPT_LOOKUP_TOKENS = 10


def strong_backend_name(config: AppConfig) -> str:
    """COWEST_STRONG_BACKEND with `auto` resolved: llama.cpp where it is the faster path (a CPU,
    a GGUF strong model, no weak-model assistance, which only transformers can do)."""
    if config.strong_backend != "auto":
        return config.strong_backend
    from cowest_app.models import llama_cpp
    from cowest_app.models.local import default_device
    from cowest_app.models.refs import has_gguf

    if (default_device() == "cpu" and llama_cpp.available() and has_gguf(config.strong_model)
            and config.strong_assist != "weak"):
        return "llama-cpp"
    return "transformers"


def build_strong(config: AppConfig, weak: Backend | None = None) -> Backend:
    """The strong model; `weak` is the assistant when COWEST_STRONG_ASSIST=weak."""
    backend = strong_backend_name(config)
    if backend == "llama-cpp":
        return create_backend("llama-cpp", model=config.strong_model, cache_dir=config.cache_dir)
    if backend == "inference-client":
        return create_backend(
            "inference-client",
            model=config.strong_model,
            base_url=config.strong_base_url,
            token=config.secrets.strong_api_token,
            timeout_s=config.strong_timeout_s,
        )
    from cowest_app.models.local import default_device, resolve_assist, resolve_dtype

    dtype = resolve_dtype(config.strong_dtype, default_device())
    mode = resolve_assist(config.strong_assist, dtype)
    assist: dict[str, Any] = {}
    if mode == "weak" and weak is not None:
        assist["assistant"] = weak
    elif mode == "prompt-lookup":
        assist["prompt_lookup_tokens"] = PROMPT_LOOKUP_TOKENS
    return create_backend("transformers", model=config.strong_model, cache_dir=config.cache_dir, dtype=dtype, **assist)


def draft_status(snap: Snapshot) -> str:
    """The log status of a finished run: "ok", or what the draft check did.

    "fallback:<reason>": the strong model answered alone, so votes on the final
    answer say nothing about the draft; "redrafted:<reason>": the first draft
    was degenerate and a second one was refined.
    """
    fallback = snap.stages[COLLAB].info.get(FALLBACK)
    if fallback:
        return f"fallback:{fallback}"
    weak_info = snap.stages[WEAK].info
    if weak_info.get(REDRAFTED):
        return f"redrafted:{weak_info.get(DRAFT_CHECK)}"
    return "ok"


class CollabService:
    def __init__(self, config: AppConfig, weak: Backend, strong: Backend, store: LogStore,
                 packs: Mapping[str, DomainPack] | None = None) -> None:
        self.config = config
        self.weak = weak
        self.strong = strong
        self.store = store
        self.packs = dict(packs) if packs is not None else load_served_packs(config)
        self.ask_limit = RateLimiter(config.asks_per_minute)
        self.feedback_limit = RateLimiter(config.feedback_per_minute)
        # Budgets across all sessions: a script opening a new session per request gets past the
        # per-session limits, not past these.
        self.global_ask_limit = RateLimiter(config.global_asks_per_minute)
        self.global_feedback_limit = RateLimiter(config.global_feedback_per_minute)
        self._runs: dict[str, RunControl] = {}  # each session's running question, for Stop
        self._runs_lock = threading.Lock()
        self.pipeline = CollaborationPipeline(
            weak,
            strong,
            draft_options(GenerationOptions(max_new_tokens=config.weak_max_new_tokens, temperature=config.temperature)),
            GenerationOptions(max_new_tokens=config.strong_max_new_tokens, temperature=config.temperature),
        )

    @classmethod
    def build(cls, config: AppConfig) -> "CollabService":
        if config.torch_threads:
            import torch

            torch.set_num_threads(config.torch_threads)
        started = time.perf_counter()
        packs = load_served_packs(config)  # a bad pack fails before any model loads
        weak = build_weak(config, packs)
        strong = build_strong(config, weak)
        log.info("models ready in %.1fs", time.perf_counter() - started)
        return cls(config, weak, strong, LogStore(config.db_path), packs)

    @property
    def default_pack(self) -> str:
        return next(iter(self.packs))

    def get_pack(self, name: Any) -> DomainPack:
        if not isinstance(name, str) or name not in self.packs:  # isinstance: a list is unhashable, a clear error still
            raise prompts.InputError(f"Unsupported domain {prompts.shown(name)}. Choose one of: {', '.join(self.packs)}.")
        return self.packs[name]

    def specialised(self, pack: DomainPack) -> bool:
        """Whether the weak model serves an adapter trained for `pack`: its registry's active
        version (read per question, so a promotion counts at once), or COWEST_WEAK_ADAPTER for
        the default pack."""
        if pack.name == self.default_pack and self.config.weak_adapter is not None:
            return True
        return AdapterRegistry(self.config.pack_adapters_dir(pack.name)).active() is not None

    def weak_options(self, pack: DomainPack) -> GenerationOptions:
        """The pipeline's draft options for `pack`. A draft grounded in passages copies them, and
        copied passages share phrases: only long repeats are loops there, and none is penalised."""
        opts = self.pipeline.weak_opts
        if pack.retrieval_passages:
            opts = replace(opts, repetition_penalty=1.0, no_repeat_ngram_size=GROUNDED_NO_REPEAT_NGRAM)
        return opts

    def strong_options(self, pack: DomainPack) -> GenerationOptions:
        """The answer options for `pack`: its answer budget where it is shorter than the app's."""
        opts = self.pipeline.strong_opts
        if pack.answer_tokens is not None and pack.answer_tokens < opts.max_new_tokens:
            opts = replace(opts, max_new_tokens=pack.answer_tokens)
        return opts

    # -- asking ----------------------------------------------------------
    def ask(self, question: Any, pack_name: str, compare: bool = False, session_id: str | None = None) -> Iterator[AskUpdate]:
        """Stream the stages for a question in one served pack's domain; raises InputError before any work for bad input."""
        pack = self.get_pack(pack_name)
        text = prompts.validate_question(question, self.config.max_question_chars)
        self._throttle(self.ask_limit, self.global_ask_limit, session_id, "questions")
        run = self._start_run(session_id)
        pipeline = replace(self.pipeline, weak=StoppableBackend(self.weak, run), strong=StoppableBackend(self.strong, run))
        snap: Snapshot | None = None
        logged = False
        steps = pipeline.run(pack.prompt_set(grounded=pack.retrieval_passages > 0), text, compare,
                             adapter=pack.name, weak_opts=self.weak_options(pack),
                             strong_opts=self.strong_options(pack), draft=pack.drafts_with(self.specialised(pack)))
        try:
            with contextlib.closing(steps):  # closing the stages' generators ends their generations
                for snap in steps:
                    if run.stopped.is_set():
                        snap = stopped_snapshot(snap)
                        interaction_id = self._log(pack.name, text, snap, session_id, "cancelled")
                        logged = True
                        log.info("question stopped by the user; logged as cancelled (%s)", interaction_id)
                        yield AskUpdate(snap, interaction_id, stopped=True)
                        return
                    if snap.done:
                        interaction_id = self._log(pack.name, text, snap, session_id, "ok")
                        logged = True
                        yield AskUpdate(snap, interaction_id)
                    else:
                        yield AskUpdate(snap)
        finally:
            self._end_run(session_id, run)
            # The user left (or something broke) mid-answer: keep what exists.
            if snap is not None and not logged:
                self._log(pack.name, text, snap, session_id, "cancelled")

    # -- stopping --------------------------------------------------------
    def _start_run(self, session_id: str | None) -> RunControl:
        run = RunControl()
        if session_id is not None:
            with self._runs_lock:
                self._runs[session_id] = run
        return run

    def _end_run(self, session_id: str | None, run: RunControl) -> None:
        with self._runs_lock:
            if session_id is not None and self._runs.get(session_id) is run:
                del self._runs[session_id]

    def stop(self, session_id: str | None) -> bool:
        """Stop the session's running question (both stages); False when nothing was running."""
        with self._runs_lock:
            run = self._runs.get(session_id) if session_id is not None else None
        if run is None:
            return False
        run.stop()
        return True

    def _log(self, domain: str, question: str, snap: Snapshot, session_id: str | None, status: str) -> str:
        stages = snap.stages
        failed = snap.failed
        if status == "ok" and failed:
            status = "+".join(f"{k}_failed" for k in failed)
        elif status == "ok":
            status = draft_status(snap)
        weak_info = stages[WEAK].info or self.weak.describe()
        strong_info = stages[COLLAB].info or self.strong.describe()
        timings = {f"{k}_ms": round(s.ms, 1) for k, s in stages.items() if s.ms is not None}
        timings.update({f"{k}_first_token_ms": round(s.first_token_ms, 1) for k, s in stages.items() if s.first_token_ms is not None})
        errors = "; ".join(f"{k}: {stages[k].error}" for k in failed) or None
        return self.store.log_interaction(
            Interaction(
                session_id=session_id,
                domain=domain,
                question=question,
                weak_draft=stages[WEAK].text,
                final_answer=stages[COLLAB].text,
                weak_alone=stages[WEAK_ALONE].text if WEAK_ALONE in stages else None,
                strong_alone=stages[STRONG_ALONE].text if STRONG_ALONE in stages else None,
                weak_model=str(weak_info.get("model")),
                strong_model=str(strong_info.get("model")),
                adapter_version=weak_info.get("adapter_version"),
                timings=timings,
                status=status,
                error=errors,
            )
        )

    # -- feedback --------------------------------------------------------
    def rate(
        self,
        interaction_id: str | None,
        rating: str | None = None,
        best: str | None = None,
        comment: str | None = None,
        session_id: str | None = None,
    ) -> int:
        """Store one feedback event; raises InputError with a user-facing message."""
        if not interaction_id:
            raise prompts.InputError("Ask a question first, then rate its answer.")
        if not isinstance(interaction_id, str) or len(interaction_id) > MAX_ID_CHARS:
            raise prompts.InputError(f"Unknown interaction id {prompts.shown(interaction_id)}: ask a question, then rate its answer.")
        # isinstance first: an unhashable value (a list from the API) must not reach the dict lookup.
        if rating is not None and (not isinstance(rating, str) or rating not in RATINGS):
            raise prompts.InputError(f"Unknown rating {prompts.shown(rating)}; use 'up' or 'down'.")
        if best is not None and (not isinstance(best, str) or best not in BEST_CHOICES):
            raise prompts.InputError(f"Unknown choice {prompts.shown(best)}; use one of {', '.join(BEST_CHOICES)}.")
        if comment is not None and not isinstance(comment, str):
            raise prompts.InputError("The comment must be text.")
        comment = prompts.clean_text(comment) if comment is not None else None
        if comment and len(comment) > self.config.max_comment_chars:
            raise prompts.InputError(f"The comment is {len(comment)} characters long; the limit is {self.config.max_comment_chars}.")
        self._throttle(self.feedback_limit, self.global_feedback_limit, session_id, "feedback events")
        try:
            return self.store.log_feedback(
                Feedback(
                    interaction_id=interaction_id,
                    session_id=session_id,
                    rating=RATINGS.get(rating) if rating else None,
                    best=best,
                    comment=comment or None,
                )
            )
        except StoreError as exc:  # its message quotes the id: keep it short
            message = str(exc)
            raise prompts.InputError(message if len(message) <= 200 else message[:199] + "…") from exc

    def _throttle(self, limiter: RateLimiter, shared: RateLimiter, session_id: str | None, what: str) -> None:
        """Refuse (before anything is logged) a session over its per-minute limit, or any
        request once all sessions together used up the `shared` budget.

        Callers without a session (scripts, benchmarks, the training job) are
        not limited: every request through the web app carries one.
        """
        if session_id is None:
            return
        wait = limiter.acquire(str(session_id))
        if wait is not None:
            raise RateLimited(f"Too many {what} from this session: at most {limiter.max_events} a minute. {retry_text(wait)}")
        # Checked second, so a session refused above never spends the budget everyone shares.
        if (wait := shared.acquire("all")) is not None:
            raise RateLimited(f"The app is receiving too many {what} from all users right now "
                              f"(at most {shared.max_events} a minute). {retry_text(wait)}")

    # -- history ---------------------------------------------------------
    def history(self, session_id: str | None, limit: int = HISTORY_LIMIT) -> list[dict[str, Any]]:
        """The session's own questions, newest first, each with its latest rating and choice."""
        if session_id is None:
            return []
        records = list(self.store.iter_records(session_id=session_id))[-limit:]
        return [_history_row(r) for r in reversed(records)]

    # -- export and facts ------------------------------------------------
    def export(self, fmt: str, session_id: str | None = None) -> Path:
        """The log as a file: one visitor's session (`session_id`), or everyone's (None: admins, the CLI)."""
        out_dir = Path(tempfile.mkdtemp(prefix="cowest-export-"))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        scope = "session" if session_id is not None else "all"
        return export_log(self.store, out_dir / f"cowest-log-{scope}-{stamp}.{fmt}", fmt, session_id)

    def models_summary(self) -> dict[str, Any]:
        return {"weak": self.weak.describe(), "strong": self.strong.describe()}



def _history_row(record: Mapping[str, Any]) -> dict[str, Any]:
    # Feedback is append-only: the newest rating and choice are the ones that stand.
    feedback = record.get("feedback") or []
    rating = next((fb["rating"] for fb in reversed(feedback) if fb.get("rating") is not None), None)
    best = next((fb["best"] for fb in reversed(feedback) if fb.get("best")), None)
    return {
        "id": record["id"], "created_at": record["created_at"], "domain": record["domain"],
        "question": record["question"], "final_answer": record.get("final_answer") or "",
        "status": record["status"], "rating": {1: "👍", -1: "👎"}.get(rating, ""), "best": best or "",
    }
