"""The self-improvement loop, run by APScheduler inside the app process.

One cycle: collect collaborative feedback into preference pairs -> if enough
new pairs, train a DPO candidate in a child process -> score candidate and
active adapter on held-out questions with the collaboration pipeline ->
promote the candidate only if it is not worse -> hot-swap it -> queue the push.

Training runs in a child process with a bounded number of torch threads, so a
crash or out-of-memory there never takes the app down and the app keeps
answering. The job's state is a plain dict the UI polls.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from functools import partial
from typing import Any, Callable

from cowest_app.core import prompts
from cowest_app.core.collaboration import Ask
from cowest_app.config import AppConfig
from cowest_app.defaults import DRAFT_TEMPERATURE
from cowest_app.models.base import BackendError, GenerationOptions, WeakModel
from cowest_app.files import write_atomic
from cowest_app.loop.registry import AdapterRegistry, AdapterVersion, RegistryError

log = logging.getLogger(__name__)
CANDIDATE_SLOT = "candidate"  # where a served weak model on a LoRA server holds the adapter under test

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_EVAL_FILE = Path(__file__).resolve().parents[1] / "data" / "heldout_general.jsonl"
# The environment the app sets for its training child (`python -m training.dpo`), read there by
# training.common.exit_with_parent / lower_priority: the child imports these names from here.
PARENT_PID_ENV = "COWEST_PARENT_PID"  # exit when that process is gone
NICE_ENV = "COWEST_TRAIN_NICE"  # run at this niceness


class JobError(RuntimeError):
    pass


class Stopped(JobError):
    pass


@dataclass(frozen=True)
class LabelledItem:
    """A question with its reference and how to score answers against it."""

    item: Any  # cowest_app.loop.collect.QuestionItem
    task_type: str = "short_answer"


@dataclass(frozen=True)
class GateItem:
    """A held-out question for the promotion gate and how to score an answer to it."""

    ask: Ask
    score: Callable[[str], float]


def load_items(path: Path) -> list[LabelledItem]:
    """Questions with references from JSONL; errors name the file and line."""
    from cowest_app.loop.collect import QuestionItem

    items = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            domain = str(row.get("domain", ""))  # a pack name, or none: the job's own pack
            question = QuestionItem(question=str(row["question"]), domain=domain, reference=row.get("reference"),
                                    options=tuple(row["options"]) if row.get("options") else None)
            items.append(LabelledItem(question, row.get("task_type", "short_answer")))
        except (ValueError, KeyError, TypeError) as exc:
            raise JobError(f"{path}:{number}: {exc}") from None
    return items


@dataclass
class JobState:
    phase: str = "idle"
    detail: str = ""
    version: str | None = None
    step: int = 0
    total_steps: int = 0
    started_at: float | None = None
    last_result: str | None = None
    last_error: str | None = None
    runs: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TrainingJob:
    config: AppConfig
    service: Any  # CollabService: its weak backend is swapped, its store holds the pairs
    registry: AdapterRegistry
    publisher: Any | None = None  # cowest_app.hub.publish.HubPublisher
    python: str = sys.executable
    job_poll_s: float = 5.0  # how often a Hugging Face Job's stage and logs are read
    state: JobState = field(default_factory=JobState)

    @property
    def pack(self) -> Any:
        """The domain pack whose adapter this job trains (cowest_app.domains.packs.DomainPack)."""
        return self.service.packs[self.config.train_pack or self.service.default_pack]

    @property
    def draft_prompts(self) -> dict[str, Any]:
        """Human votes train this job's pack only: its drafting prompt, by name."""
        return {self.pack.name: self.prompt_set.draft}

    @property
    def prompt_set(self) -> Any:
        return self.pack.prompt_set(grounded=self.pack.retrieval_passages > 0)

    def __post_init__(self) -> None:
        self._run_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._child: subprocess.Popen | None = None
        discarded = self.registry.discard_staging()
        if discarded:
            log.warning("discarded half-written candidates from an earlier run: %s", discarded)

    # -- state ---------------------------------------------------------------
    def _set(self, **changes: Any) -> None:
        with self._state_lock:
            for key, value in changes.items():
                setattr(self.state, key, value)

    def snapshot(self) -> dict[str, Any]:
        with self._state_lock:
            return self.state.as_dict()

    def progress_file(self) -> Path | None:
        version = self.state.version
        if not version:
            return None
        for candidate in (self.registry.root / f".staging-{version}", self.registry.root / version):
            if (candidate / "progress.jsonl").is_file():
                return candidate / "progress.jsonl"
        return None

    @property
    def running(self) -> bool:
        return self._run_lock.locked()

    # -- control -------------------------------------------------------------
    def stop(self) -> bool:
        """Stop the running cycle; kills the training child if there is one."""
        if not self.running:
            return False
        self._stop.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
        return True

    def registry_for(self, pack: str | None) -> AdapterRegistry:
        """A served pack's adapter registry (this job's own for its pack, or None)."""
        if pack in (None, self.pack.name):
            return self.registry
        if pack not in self.service.packs:
            raise JobError(f"unknown pack {pack!r}; served: {', '.join(self.service.packs)}")
        return AdapterRegistry(self.config.pack_adapters_dir(pack))

    def rollback(self, version: str | None, pack: str | None = None) -> str:
        """Make an earlier version of a pack (this job's by default), or the bare base (None),
        active and swap it into the pack's slot."""
        if self.running:
            raise JobError("a training run is in progress; stop it before rolling back")
        registry, slot = self.registry_for(pack), pack or self.pack.name
        target = registry.get(version) if version else None
        if target is not None and target.status == "failed":
            raise RegistryError(f"{version} failed and has no adapter")
        try:
            source = str(registry.verified_path(version)) if version else None
            self.service.weak.swap_adapter(source, version or "base", slot)
        except RegistryError as exc:  # its files changed since registration: not loaded at all
            raise JobError(f"{exc}; the active adapter is unchanged") from exc
        except BackendError as exc:  # a damaged adapter: the active one keeps serving, the pointer stays
            from cowest_app.loop.collect import drafting_version

            active = drafting_version(self.service.weak.describe(), slot)
            raise JobError(f"{exc}; the active adapter is still {active}") from exc
        registry.promote(version)
        if self.publisher is not None:  # the Hub's `<pack>-active` tag follows what is served
            from cowest_app.hub.publish import active_tag, hub_tag

            self.publisher.enqueue_active(active_tag(slot), hub_tag(slot, version) if version else None)
        return f"{slot}: active adapter is now {version or 'base'}"

    # -- the cycle -----------------------------------------------------------
    def run_cycle(self, force: bool = False) -> str:
        """One full cycle. `force` trains even below the pair threshold."""
        if not self._run_lock.acquire(blocking=False):
            return "a run is already in progress"
        self._stop.clear()
        self._set(started_at=time.time(), last_error=None, step=0, total_steps=0, version=None)
        try:
            result = self._cycle(force)
            self._set(last_result=result)
            return result
        except Stopped:
            self._set(last_result="stopped by admin", last_error="stopped by admin")
            return "stopped"
        except Exception as exc:  # the job reports, it never takes the app down
            log.exception("training cycle failed")
            self._set(last_error=f"{type(exc).__name__}: {exc}", last_result="failed")
            return f"failed: {exc}"
        finally:
            self._child = None
            self._set(phase="idle", detail="", runs=self.state.runs + 1)
            self._run_lock.release()

    def _cycle(self, force: bool) -> str:
        self._set(phase="collecting", detail="turning feedback into preference pairs")
        self.collect()
        self._check_stop()
        store = self.service.store
        window = list(store.iter_pairs(after_id=self.last_trained_pair_id(), trainable_only=True))
        pairs = self.training_pairs(window)
        held = _held_back_note(len(window), len(pairs))
        if not pairs:
            return "no new trainable pairs" + held
        pairs, distrusted = self.trusted_pairs(pairs)
        if not pairs:
            return f"not training: {distrusted}"
        held += f" ({distrusted})" if distrusted else ""
        if len(pairs) < self.config.train_min_pairs and not force:
            return f"waiting for pairs: {len(pairs)}/{self.config.train_min_pairs}{held}"

        version = self.registry.next_version(self.hub_versions())
        staging = self.registry.staging_dir(version)
        self._set(version=version)
        from cowest_app.core.feedback import write_dpo_jsonl

        dataset, n_pairs, data_hash = write_dpo_jsonl(pairs, staging / "train.jsonl")
        parent = self.registry.active()
        meta = dict(parent=parent.version if parent else None, base_model=self.config.weak_model,
                    # The whole window is consumed: pairs held back now are not offered again.
                    data_hash=data_hash, n_pairs=n_pairs, last_pair_id=max(p.id for p in window))
        try:
            self._set(phase="training", detail=f"DPO on {n_pairs} pairs")
            self.train(staging, dataset, parent)
            metrics = json.loads((staging / "metrics.json").read_text()) if (staging / "metrics.json").is_file() else {}
            config = _read_yaml(staging / "resolved_config.yaml")
            candidate = self.registry.register(staging, AdapterVersion(version=version, status="candidate",
                                                                       config=config, metrics=metrics, **meta))
        except Stopped:
            self.registry.discard_staging()
            self.registry.record_failure(version, "stopped by admin", **meta)
            raise
        except Exception as exc:
            self.registry.discard_staging()
            self.registry.record_failure(version, str(exc)[-2000:], **meta)
            raise

        self._set(phase="evaluating", detail=f"{version} vs {parent.version if parent else 'base'} on held-out questions")
        scores = self.evaluate(candidate)
        metrics = {**candidate.metrics, **scores}
        if not self.passes(scores):
            self.registry.update(version, status="rejected", metrics=metrics)
            return f"{version} rejected: {scores['candidate_score']:.3f} < active {scores['active_score']:.3f}"
        self.registry.update(version, metrics=metrics)
        self.service.weak.swap_adapter(str(self.registry.verified_path(version)), version, self.pack.name)
        self.registry.promote(version)

        if self.publisher is not None:
            self._set(phase="pushing", detail=f"queueing {version} for the Hub")
            self.push(version)
        return f"{version} promoted ({scores['candidate_score']:.3f} vs {scores['active_score']:.3f})"

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise Stopped("stopped by admin")

    def training_pairs(self, window: list[Any]) -> list[Any]:
        """The DPO set built from the new pairs (`window`, in id order).

        Human pairs count only while the votes that made them stand; human
        ratings beat automatic pairs on the same question; and no session may
        own more than `max_session_share` of the set, so one client flooding
        questions or votes cannot dominate a training run; nor may one client address
        (where the server knows it), however many sessions it opens.
        """
        from cowest_app.core.feedback import human_pairs, prefer_human
        from cowest_app.loop.feedback_guard import cap_session_share, live_human_pairs

        store = self.service.store
        if any(p.evaluator == "human" for p in window):
            live = {tuple(p.interaction_ids) for p in human_pairs(store.iter_records(), self.draft_prompts)}
            window = live_human_pairs(window, live)
        pairs = prefer_human(window)
        asked = [i for p in pairs for i in p.interaction_ids]
        pairs = cap_session_share(pairs, store.sessions_of(asked), self.config.max_session_share)
        # Again per client address: a script opening a new session per request is one client.
        return cap_session_share(pairs, store.clients_of(asked), self.config.max_session_share)

    def trusted_pairs(self, pairs: list[Any]) -> tuple[list[Any], str | None]:
        """The pairs whose evaluator's measured agreement (the trained pack's
        `results/labellers/agreement.json`) reaches `min_evaluator_agreement`, and why
        any were held back: labels that agree with the truth little more than a coin
        would train the adapter on noise, and the gate alone would be left to catch it."""
        from cowest_app.loop.agreement import guard_pairs, load_agreement

        return guard_pairs(pairs, load_agreement(self.pack.root), self.config.min_evaluator_agreement)

    def last_trained_pair_id(self) -> int:
        trained = [v.last_pair_id for v in self.registry.versions() if v.status != "failed"]
        return max(trained, default=0)

    # -- stages --------------------------------------------------------------
    def collect(self) -> int:
        """Turn new feedback into pairs; returns how many pairs were logged.

        Human votes first (they take precedence when the dataset is built),
        then collaborative feedback on new logged questions (judged without a
        reference), then on the configured file of questions with references.
        Watermarks in `job_state.json` make each question count once.
        """
        from cowest_app.loop.collect import QuestionItem, collect_for_question
        from cowest_app.core.evaluators import ReferenceEvaluator, make_evaluator
        from cowest_app.core.store import answered

        store = self.service.store
        logged = self._log_human_pairs()
        marks = self._load_marks()
        budget = self.config.collect_max_questions
        todo: list[tuple[Any, Any, Callable[[], None]]] = []
        records = [r for r in store.iter_records() if r["created_at"] > marks.get("log_after", "")]
        for record in records[:budget]:
            # Failed or custom-domain interactions only move the watermark. A
            # fallback's question is kept: its draft was the weak model's failure.
            usable = answered(record["status"]) and record["domain"] == self.pack.name
            item = QuestionItem(record["question"], record["domain"], interaction_ids=(record["id"],)) if usable else None
            todo.append((item, None, partial(marks.__setitem__, "log_after", record["created_at"])))
        if self.config.feedback_file and len(todo) < budget:
            offset = int(marks.get("file_offset", 0))
            for n, labelled in enumerate(load_items(self.config.feedback_file)[offset: offset + budget - len(todo)]):
                todo.append((labelled.item, ReferenceEvaluator(labelled.task_type, labelled.item.options),
                             partial(marks.__setitem__, "file_offset", offset + n + 1)))
        judge = None
        for n, (item, evaluator, done) in enumerate(todo, 1):
            self._check_stop()
            if item is None:
                done()
                continue
            if evaluator is None and judge is None:
                name = self.judge_name()
                judge = make_evaluator(name, self.service.weak, self.service.strong, **self.evaluator_options(name))
            self._set(detail=f"collaborative feedback on question {n}/{len(todo)}")
            try:
                result = collect_for_question(
                    item.question, self.pack.name, self.service.weak, self.service.strong, evaluator or judge,
                    self.config.feedback_k, item.reference, item.options,
                    min_margin=self.config.feedback_min_margin, min_confidence=self.config.feedback_min_confidence,
                    weak_opts=GenerationOptions(max_new_tokens=self.config.weak_max_new_tokens, temperature=DRAFT_TEMPERATURE,
                                                adapter=self.pack.name),
                    strong_opts=GenerationOptions(max_new_tokens=self.config.strong_max_new_tokens),
                    store=store, interaction_ids=item.interaction_ids, prompt_set=self.prompt_set,
                    pairs_per_question=self.config.feedback_pairs_per_question,
                )
                logged += len(result.pair_ids)
            except Exception as exc:  # one bad question must not stop the run
                log.warning("feedback collection skipped a question: %s", exc)
            done()
            self._save_marks(marks)
        return logged

    def judge_name(self) -> str:
        """The configured judge for questions without a reference. The weak teacher reads the
        pack's adapter; before the pack has one, the weak judge stands in (said in the log)."""
        from cowest_app.models.local import TransformersBackend

        name = self.config.feedback_evaluator
        weak = self.service.weak
        if name == "weak_teacher" and isinstance(weak, TransformersBackend) and self.pack.name not in weak.adapter_versions():
            log.info("pack %s has no adapter for the weak teacher to read yet: judging with weak_judge", self.pack.name)
            return "weak_judge"
        return name

    def evaluator_options(self, name: str) -> dict[str, Any]:
        """Constructor keywords an evaluator needs from this job: the weak teacher reads the
        trained pack's adapter slot against the bare base, under the pack's drafting prompt."""
        if name == "weak_teacher":
            return {"slot": self.pack.name, "draft_prompt": self.prompt_set.draft}
        return {}

    def _log_human_pairs(self) -> int:
        from cowest_app.core.feedback import human_pairs

        store = self.service.store
        known = {tuple(p.interaction_ids) for p in store.iter_pairs(trainable_only=False) if p.evaluator == "human"}
        new = [p for p in human_pairs(store.iter_records(), self.draft_prompts) if tuple(p.interaction_ids) not in known]
        for pair in new:
            store.log_pair(pair)
        return len(new)

    def _marks_path(self) -> Path:
        return self.config.data_dir / "job_state.json"

    def _load_marks(self) -> dict[str, Any]:
        path = self._marks_path()
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            log.warning("ignoring unreadable %s", path)
            return {}

    def _save_marks(self, marks: dict[str, Any]) -> None:
        write_atomic(self._marks_path(), json.dumps(marks, indent=2))

    def train(self, staging: Path, dataset: Path, parent: AdapterVersion | None) -> None:
        """Train the candidate into `staging`: here in a child process, or as a Hugging Face Job."""
        if self.config.train_backend == "hf-jobs":
            return self.train_on_hub(staging, dataset, parent)
        overrides = {
            "base_model": self.config.weak_model,
            "load_4bit": str(self.config.weak_4bit).lower(),
            "dataset": str(dataset),
            "output_dir": str(staging),
            "torch_threads": str(self.config.train_threads),
            "cache_dir": str(self.config.cache_dir),
        }
        if parent is not None:
            overrides["init_adapter"] = str(self.registry.path(parent.version))
        command = [self.python, "-m", "training.dpo", "--config", str(self.config.train_recipe)]
        for key, value in overrides.items():
            command += ["--set", f"{key}={value}"]
        self.run_child(command, staging)

    def run_child(self, command: list[str], staging: Path) -> None:
        threads = str(self.config.train_threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
               # The child exits when this process dies (training.common.exit_with_parent), even by SIGKILL.
               PARENT_PID_ENV: str(os.getpid()),
               # Lower priority, applied by the child itself (training.common.lower_priority) before its
               # torch threads exist, so they all inherit it: answers keep the CPU they need.
               NICE_ENV: str(self.config.train_nice)}
        log_path = staging / "train.log"
        with log_path.open("w") as out:
            self._child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True)
            while self._child.poll() is None:
                self._follow_progress(staging / "progress.jsonl")
                if self._stop.wait(0.5):
                    _kill(self._child)
                    raise Stopped("stopped by admin")
        self._follow_progress(staging / "progress.jsonl")
        code = self._child.returncode
        if code != 0:
            tail = log_path.read_text(errors="replace")[-1500:]
            reason = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            raise JobError(f"training process failed ({reason}):\n{tail}")

    # -- training as a Hugging Face Job ---------------------------------------
    def train_on_hub(self, staging: Path, dataset: Path, parent: AdapterVersion | None) -> None:
        """Commit the pairs (and the parent adapter) to the log dataset, run the DPO stage as a
        Hugging Face Job on that pinned commit, follow it, and download its candidate into `staging`."""
        from huggingface_hub import HfApi

        from cowest_app.hub import jobs

        api = HfApi(endpoint=self.config.hub_endpoint, token=self.config.secrets.hf_token, library_name="cowest")
        plan = self._job_plan(api, dataset, parent)
        runner = jobs.HubJobs(api, self._job_settings(), endpoint=self.config.hub_endpoint)
        job_id = runner.submit(plan, self.config.secrets.hf_token)
        self._set(detail=f"HF Job {job_id} submitted ({self.config.job_flavor})")
        with (staging / "train.log").open("w") as log_file:
            outcome = runner.follow(job_id, runner.namespace(plan), partial(self._job_line, staging, log_file),
                                    partial(self._job_stage, job_id), self._stop)
        if outcome.stopped:
            raise Stopped("stopped by admin")
        if not outcome.ok:
            tail = "\n".join(outcome.log_tail[-15:])
            raise JobError(f"HF Job {job_id} ended {outcome.stage}: {outcome.message or 'no message'}\n{tail}")
        jobs.download(api, jobs.HubRef(plan.push_repo, plan.push_branch, plan.push_folder, "model"), staging)
        write_atomic(staging / "job.json", json.dumps({"job_id": job_id, "url": outcome.url, "inputs": plan.data.revision,
                                                       "branch": plan.push_branch, "repo": plan.push_repo}, indent=2))

    def _job_plan(self, api: Any, dataset: Path, parent: AdapterVersion | None) -> Any:
        from cowest_app.hub import jobs
        from cowest_app.hub.publish import WEIGHT_FILES

        pack, version = self.pack.name, self.state.version
        run = f"{pack}-{version}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
        files = {"train.jsonl": dataset}
        if parent is not None:  # pinned with the pairs, so a push still in the queue cannot leave the job without it
            parent_dir = self.registry.verified_path(parent.version)
            files |= {f"init_adapter/{name}": parent_dir / name for name in WEIGHT_FILES}
        folder = f"training-inputs/{run}"
        sha = jobs.upload_inputs(api, self.config.hub_log_repo, folder, files, f"Training inputs of {pack} {version}")
        overrides = (f"base_model={self.config.weak_model}", f"load_4bit={str(self.config.weak_4bit).lower()}")
        return jobs.LaunchPlan(
            stage="dpo", recipe=self._recipe_in_project(), data=jobs.HubRef(self.config.hub_log_repo, sha, f"{folder}/train.jsonl"),
            init_adapter=jobs.HubRef(self.config.hub_log_repo, sha, f"{folder}/init_adapter") if parent else None,
            push_repo=self.config.hub_repo, push_branch=f"candidate-{run}", push_folder=f"candidates/{pack}-{version}",
            overrides=overrides, num_processes=self.config.job_processes)

    def _recipe_in_project(self) -> str:
        """The recipe's path as the job's image holds it: relative to the project root."""
        recipe = Path(self.config.train_recipe)
        resolved = (ROOT / recipe).resolve() if not recipe.is_absolute() else recipe.resolve()
        if not resolved.is_relative_to(ROOT):
            raise JobError(f"COWEST_TRAIN_RECIPE={recipe}: an hf-jobs run needs a recipe inside the project, "
                           "where the job's image has it")
        return resolved.relative_to(ROOT).as_posix()

    def _job_settings(self) -> Any:
        from cowest_app.hub.jobs import JobSettings

        return JobSettings(image=self.config.job_image, flavor=self.config.job_flavor,
                           timeout_s=self.config.job_timeout_minutes * 60, poll_s=self.job_poll_s)

    def _job_line(self, staging: Path, log_file: Any, line: str) -> None:
        """One job log line: a progress event goes to progress.jsonl (the Training tab follows it), the rest to train.log."""
        from cowest_app.hub.jobs import parse_progress

        event = parse_progress(line)
        if event is None:
            log_file.write(line.rstrip("\n") + "\n")
            log_file.flush()
            return
        with (staging / "progress.jsonl").open("a", encoding="utf-8") as progress:
            progress.write(json.dumps(event) + "\n")
        self._follow_progress(staging / "progress.jsonl")

    def _job_stage(self, job_id: str, stage: str) -> None:
        self._set(detail=f"HF Job {job_id}: {stage.lower()} on {self.config.job_flavor}")

    def _follow_progress(self, path: Path) -> None:
        last = _last_json_line(path)
        if last:
            self._set(step=int(last.get("step") or 0), total_steps=int(last.get("max_steps") or 0))

    def evaluate(self, candidate: AdapterVersion) -> dict[str, float]:
        """Mean collaboration score of the candidate and of what the pack serves now (the active
        adapter, or the strong model alone where the pack drafts only with a specialist) on held-out items.

        Both run through the collaboration core with the pack's prompts: greedy
        drafts, then the strong model's answers scored as the harness scores
        them (choice tasks on a local strong model: its likeliest option, by
        `scoring.OptionLikelihood`; otherwise generated text and the metric).
        """
        from cowest_app.models.local import TransformersBackend
        from cowest_app.models.lora_server import LoraServerBackend

        items = self.held_out_items()[: self.config.eval_max_items]
        if not items:
            raise JobError("no held-out questions with references to judge a candidate on")
        weak = self.service.weak
        path = str(self.registry.path(candidate.version))
        if isinstance(weak, LoraServerBackend):  # the server loads the candidate beside the served adapters
            weak.swap_adapter(path, candidate.version, CANDIDATE_SLOT)
            contender, slot = weak, CANDIDATE_SLOT
        else:  # built alone, so serving keeps its model untouched; it drafts in its default slot
            contender, slot = TransformersBackend(self.config.weak_model, cache_dir=self.config.cache_dir,
                                                  load_4bit=self.config.weak_4bit, adapter=path,
                                                  adapter_version=candidate.version,
                                                  device=getattr(weak, "device", None)), None
        served = self.served_drafter(weak)
        try:
            scores = {"candidate_score": self.gate_score(contender, slot, items, "candidate"),
                      "active_score": self.gate_score(served, self.pack.name, items,
                                                      "active adapter" if served else "strong model alone")}
        finally:
            if slot is not None:
                weak.swap_adapter(None, candidate.version, CANDIDATE_SLOT)
        return scores | {"eval_items": len(items)}

    def passes(self, scores: dict[str, float]) -> bool:
        """The gate: promote a candidate scoring at least the active adapter's score minus the tolerance."""
        return scores["candidate_score"] >= scores["active_score"] - self.config.eval_tolerance

    def served_drafter(self, weak: WeakModel) -> WeakModel | None:
        """What the pack serves now: `weak` in its active adapter, or no draft at all where the pack
        drafts only with a specialist and has none yet; a first adapter must then beat the strong model alone."""
        return weak if self.pack.drafts_with(self.service.specialised(self.pack)) else None

    def gate_score(self, weak: WeakModel | None, slot: str | None, items: list[GateItem], who: str) -> float:
        """Mean score of the collaboration with `weak` drafting (in adapter `slot`) on `items`;
        without `weak`, of the strong model alone."""
        from cowest_app.core.collaboration import BatchDrafter, StreamingAnswerer, StreamingDrafter, collaborate, relay, run
        from cowest_app.models.llama_cpp import LlamaCppBackend
        from cowest_app.models.local import TransformersBackend
        from cowest_app.models.lora_server import LoraServerBackend
        from cowest_app.core.scoring import CHOICE_TASKS, OptionLikelihood

        draft_opts = GenerationOptions(max_new_tokens=self.config.weak_max_new_tokens, temperature=0.0, adapter=slot)
        drafter: Any = None  # no weak model: the strong model answers alone
        if isinstance(weak, (TransformersBackend, LoraServerBackend)):
            drafter = BatchDrafter(weak, draft_opts)
        elif weak is not None:
            drafter = StreamingDrafter(weak, draft_opts, draft_opts)
        strong = self.service.strong
        scores_options = isinstance(strong, (TransformersBackend, LlamaCppBackend))  # both read option log-probabilities
        if scores_options and self.pack.task_type in CHOICE_TASKS and self.config.eval_file is None:
            answerer: Any = OptionLikelihood(strong, labels=self.pack.labels)
        else:
            answerer = StreamingAnswerer(strong, GenerationOptions(max_new_tokens=self.config.strong_max_new_tokens),
                                         prompts.clean_generation)
        done = [0]

        def progress(update: Any) -> Any:
            self._check_stop()
            if update.job.step == "answer" and update.reply.ok:
                done[0] += 1
                self._set(detail=f"{who}: held-out question {done[0]}/{len(items)}")
            return update

        outcomes = run(relay(collaborate(self.prompt_set, [i.ask for i in items], drafter, answerer), progress))
        return sum(i.score(c.answers[0].text) for i, c in zip(items, outcomes)) / len(items)

    def held_out_items(self) -> list[GateItem]:
        """COWEST_EVAL_FILE, or else the trained pack's dev split, scored by the pack's metric:
        a candidate is judged on its own domain, on questions feedback never trained on."""
        from cowest_app.loop.collect import format_question
        from cowest_app.core.feedback import score_with_reference

        if self.config.eval_file is not None:
            return [GateItem(Ask(format_question(i.item.question, i.item.options), i.item.reference, i.item.options),
                             partial(score_with_reference, reference=i.item.reference, task_type=i.task_type,
                                     options=i.item.options))
                    for i in load_items(self.config.eval_file) if i.item.reference is not None]
        from cowest_app.domains.packs import format_item

        pack = self.pack
        mc = pack.task_type == "multiple_choice"
        return [GateItem(Ask(format_item(item), item.reference, item.options if mc else None),
                         partial(pack.score, item=item)) for item in pack.dev]

    def push(self, version: str) -> None:
        """Queue the version for the Hub (the pack's folder in the repo, tagged `<pack>-vN`),
        then the move of the `<pack>-active` tag to it."""
        from cowest_app.hub.publish import active_tag, hub_tag

        card = adapter_card(self.config, self.service.packs[self.pack.name], self.registry, version, self.config.hub_repo)
        self.publisher.enqueue(self.registry.path(version), hub_tag(self.pack.name, version), card,
                               subfolder=self.pack.name)
        self.publisher.enqueue_active(active_tag(self.pack.name), hub_tag(self.pack.name, version))

    def hub_versions(self) -> list[str]:
        """This pack's version names already tagged on the Hub ([] without a repo, or when it
        cannot be reached: a push then still refuses to overwrite a tag with other files)."""
        if self.publisher is None:
            return []
        prefix = f"{self.pack.name}-"
        try:
            tags = self.publisher.remote_tags()
        except Exception as exc:  # noqa: BLE001 - numbering must not fail a run; the push checks again
            log.warning("could not list the Hub's tags (%s); numbering from the local registry", type(exc).__name__)
            return []
        return [tag[len(prefix):] for tag in tags if tag.startswith(prefix) and re.fullmatch(r"v\d+", tag[len(prefix):])]


def adapter_card(config: AppConfig, pack: Any, registry: AdapterRegistry, version: str, repo_id: str | None) -> str:
    """The model card of a pack's adapter version, for the Hub and for downloads."""
    from cowest_app.hub.publish import hub_tag, render_model_card
    from cowest_app.models import refs

    meta = registry.get(version)
    base = meta.base_model or config.weak_model
    if refs.is_packaged(base):  # consumers load the same weights from the Hub
        base = refs.packaged_spec(base).hub_id
    template = pack.prompts["weak_retrieval" if pack.retrieval_passages else "weak"]
    scores = {name: meta.metrics[key] for key, name in (("candidate_score", "held-out collaboration score"),
                                                          ("active_score", "previous version's score"))
              if isinstance(meta.metrics.get(key), (int, float))}
    return render_model_card(
        repo_id=repo_id or "local/cowest-adapter", version=hub_tag(pack.name, version), base_model=base,
        metrics=meta.metrics, data_stats={"pairs": meta.n_pairs, "data_sha256": meta.data_hash},
        parent=meta.parent and hub_tag(pack.name, meta.parent), created_at=meta.created_at, pack=pack.name,
        prompt=f"[system]\n{template.system}\n\n[user]\n{template.user}",
        datasets=[config.hub_log_repo] if config.hub_log_repo else [], eval_scores=scores)


def _held_back_note(offered: int, kept: int) -> str:
    dropped = offered - kept
    return f" ({dropped} of {offered} new pairs held back: stale votes, replaced by human votes or over the per-session cap)" if dropped else ""


def _kill(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()


def _last_json_line(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    lines = path.read_text(errors="replace").strip().splitlines()
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
    return None


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def start_scheduler(job: TrainingJob, every_minutes: float):
    """A BackgroundScheduler running `job.run_cycle` every N minutes (0 = manual only)."""
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(daemon=True)
    if every_minutes > 0:
        scheduler.add_job(job.run_cycle, "interval", minutes=every_minutes, id="retrain",
                          max_instances=1, coalesce=True, misfire_grace_time=None)
    scheduler.start()
    return scheduler


def trigger_now(scheduler: Any, job: TrainingJob, force: bool = True) -> str:
    """Start a cycle right away on the scheduler's thread pool (admin action)."""
    if job.running:
        return "a run is already in progress"
    scheduler.add_job(job.run_cycle, kwargs={"force": force}, id="retrain-now", replace_existing=True,
                      max_instances=1, coalesce=True)
    return "run started"
