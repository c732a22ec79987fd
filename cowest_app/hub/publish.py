"""Publish retrained weak-model LoRA adapters to the Hugging Face Hub, and sync the feedback log.

Three pieces:

* `render_model_card(...)`: the adapter repo's README.md (YAML front matter, metrics,
  data stats, how to load a given version). Pure function.
* `HubPublisher`: pushes one adapter version as ONE commit (adapter files + README.md,
  message `Adapter {version}`) and tags that commit `{version}`, retrying transient
  failures with exponential backoff. It also keeps a persistent JSON queue drained by a
  background thread, so serving never waits on the Hub: `enqueue` returns at once.
* `start_log_sync(...)`: a `CommitScheduler` that mirrors an append-only folder of JSONL
  shards (the exported feedback log) into a dataset repo.

Secrets: the token goes to `HfApi` and nowhere else. It is never stored in the queue
file, in `status()`, in log lines or in exception messages; every message built from a
Hub error is passed through `_redact` first, in case a server echoes something back.

Timeouts: huggingface_hub 2.4's shared HTTP client (`httpx2`) has NO timeout, so a Hub
that accepts a connection and then hangs would block a push forever. Requests made by
this module get `request_timeout_s` through a request hook that only acts inside
`_request_timeout(...)` (a context variable), so other huggingface_hub users in the
process (model downloads) keep their own settings.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import httpx2
import yaml
from huggingface_hub import CommitOperationAdd, CommitScheduler, HfApi
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError
from huggingface_hub.utils import get_session

from cowest_app.files import write_atomic

logger = logging.getLogger(__name__)

QUEUE_FORMAT = 1
KEEP_DONE = 200  # finished jobs remembered in the queue file; older ones are dropped
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # a safe git tag name
_NUMBERED = re.compile(r"^(.*?)(\d+)$")  # a version tag: stem + number
WEIGHT_FILES = ("adapter_config.json", "adapter_model.safetensors")
_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{6,}")
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")


# --------------------------------------------------------------------------- model card


def render_model_card(
    *,
    repo_id: str,
    version: str,
    base_model: str,
    metrics: Mapping[str, Any],
    data_stats: Mapping[str, Any],
    parent: str | None,
    created_at: str,
    pack: str = "",
    prompt: str = "",
    datasets: Sequence[str] = (),
    eval_scores: Mapping[str, float] | None = None,
) -> str:
    """The README.md of an adapter version: front matter, description, tables, loading snippet.

    With `pack`, the version is that domain pack's: `version` is its Hub tag and the
    files live in the repo folder named after the pack. `prompt` is the drafting
    template the adapter was trained on (a draft asked for otherwise is off its
    distribution), `datasets` the feedback log it learnt from, and `eval_scores` its
    held-out results, stated as `model-index` so the Hub shows them."""
    front: dict[str, Any] = {"library_name": "peft", "pipeline_tag": "text-generation"}
    # The Hub validates `base_model` as a model id; a local path or `packaged:` ref would
    # make the whole commit fail, so such values only appear in the text.
    if _HUB_ID.match(base_model):
        front["base_model"] = base_model
    front.update({"tags": ["cowest", "dpo", "lora"] + ([pack] if pack else []), "license": "apache-2.0"})
    if datasets:
        front["datasets"] = list(datasets)
    if eval_scores:
        front["model-index"] = [{"name": repo_id, "results": [{
            "task": {"type": "text-generation"},
            "dataset": {"name": f"{pack or 'held-out'} dev split", "type": pack or "held-out", "split": "dev"},
            "metrics": [{"type": "accuracy", "name": name, "value": round(float(value), 4)}
                        for name, value in eval_scores.items()],
        }]}]
    header = yaml.safe_dump(front, sort_keys=False, default_flow_style=None, allow_unicode=True)

    about = [("domain pack", pack)] if pack else []
    about += [
        ("version", version),
        ("parent version", parent or "none (first adapter)"),
        ("base model", base_model),
        ("created", created_at),
    ]
    snippet = (
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM\n\n"
        f"base = AutoModelForCausalLM.from_pretrained({json.dumps(base_model)})\n"
        f"model = PeftModel.from_pretrained(base, {json.dumps(repo_id)}, revision={json.dumps(version)}"
        + (f", subfolder={json.dumps(pack)}" if pack else "") + ")\n"
        "```\n"
    )
    return (
        f"---\n{header}---\n\n"
        f"# {repo_id} ({version})\n\n"
        "LoRA adapter for the weak model of CoWeSt (*Synergistic Weak-Strong Collaboration by "
        "Aligning Preferences*, ACL 2025). It was retrained with DPO on preference pairs built from "
        "user feedback, so that the weak model's drafts help the strong model more. "
        f"Each version is a commit tagged with its name; load `revision=\"{version}\"` to get exactly this one.\n\n"
        f"{_table(('field', 'value'), about)}\n\n"
        f"## Metrics\n\n{_table(('metric', 'value'), sorted(metrics.items())) if metrics else '_none recorded_'}\n\n"
        f"## Training data\n\n{_table(('statistic', 'value'), sorted(data_stats.items())) if data_stats else '_none recorded_'}\n\n"
        + (f"## Drafting prompt it was trained on\n\nAsk for drafts with this template (`{{question}}` is the "
           f"question with lettered options, `{{context}}` the retrieved passages):\n\n```text\n{prompt}\n```\n\n"
           if prompt else "")
        + f"## How to load\n\n{snippet}"
    )


def _table(columns: tuple[str, str], rows: Any) -> str:
    lines = [f"| {columns[0]} | {columns[1]} |", "|---|---|"]
    lines += [f"| {_cell(name)} | {_cell(value)} |" for name, value in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    """A markdown table cell: floats rounded, pipes escaped, one line."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return " ".join(text.replace("|", "\\|").split())


# --------------------------------------------------------------------------- errors


class HubPushError(RuntimeError):
    """A push that failed for good (permanent error, or retries used up). Message is token-free."""

    def __init__(self, message: str, *, retryable: bool, status: int | None, attempts: int) -> None:
        super().__init__(message)
        self.retryable = retryable  # True: it was transient, retrying later may work
        self.status = status  # HTTP status, when there was one
        self.attempts = attempts


class HubAuthError(HubPushError):
    """The Hub rejected the credentials (401/403). Never retried: the same token fails again."""


class TagConflict(HubPushError):
    """The version's tag already exists on the Hub with other files (a wiped disk counted
    versions from 1 again, or another app pushes to the same repo): never overwritten."""

    def __init__(self, tag: str) -> None:
        super().__init__(f"tag {tag} already exists on the Hub with other files", retryable=False, status=None,
                         attempts=1)
        self.tag = tag


@dataclass(frozen=True)
class _Failure:
    retryable: bool
    status: int | None
    message: str
    retry_after_s: float | None = None


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    version: str
    commit_id: str
    commit_url: str | None
    attempts: int
    already_existed: bool = False  # the tag was already there (an earlier push, or a lost response)


def _redact(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
    return _BEARER.sub(r"\1***", _TOKEN_LIKE.sub("hf_***", text))


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _retry_after(response: httpx2.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        try:
            return max(0.0, (parsedate_to_datetime(raw) - datetime.now(timezone.utc)).total_seconds())
        except (TypeError, ValueError):
            return None


def _describe(exc: BaseException, repo_id: str) -> _Failure:
    """Sort an exception into transient (retry) or permanent, with a human message."""
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        detail = _one_line(exc.server_message or str(exc))
        if status in (401, 403):
            return _Failure(False, status, (
                f"authentication failed (HTTP {status}) pushing to {repo_id}: the Hub rejected the token; "
                "check that HF_TOKEN is set, valid, and has write access to this repo"
            ))
        if status in (408, 429) or status >= 500:
            return _Failure(True, status, f"Hub unavailable (HTTP {status}): {detail}", _retry_after(exc.response))
        if status == 404 and isinstance(exc, RepositoryNotFoundError):
            # Right after create_repo the repo can take a moment to be visible: worth a retry.
            return _Failure(True, status, f"repo {repo_id} not found (HTTP 404): {detail}")
        return _Failure(False, status, f"the Hub refused the push (HTTP {status}): {detail}")
    if isinstance(exc, OfflineModeIsEnabled):
        return _Failure(False, None, "HF_HUB_OFFLINE is set: huggingface_hub refuses all network calls")
    if isinstance(exc, (httpx2.TimeoutException, TimeoutError)):
        return _Failure(True, None, f"timed out talking to the Hub ({type(exc).__name__})")
    if isinstance(exc, (httpx2.TransportError, ConnectionError)):
        return _Failure(True, None, f"could not reach the Hub ({type(exc).__name__}: {_one_line(str(exc))})")
    return _Failure(False, None, f"{type(exc).__name__}: {_one_line(str(exc))}")


# --------------------------------------------------------------------------- request timeouts

_TIMEOUT_S: contextvars.ContextVar[float | None] = contextvars.ContextVar("cowest_hub_timeout_s", default=None)
_HOOK_LOCK = threading.Lock()


def _apply_timeout(request: httpx2.Request) -> None:
    """httpx2 request hook: impose our timeout, but only inside `_request_timeout`."""
    seconds = _TIMEOUT_S.get()
    if seconds is not None:
        request.extensions["timeout"] = httpx2.Timeout(seconds).as_dict()


@contextmanager
def _request_timeout(seconds: float | None) -> Iterator[None]:
    """Give every Hub request made by this thread in the block a connect/read/write timeout."""
    if seconds is None:
        yield
        return
    # Installed on the live shared client each time: huggingface_hub replaces that client
    # after some connection errors, and the new one would not have the hook.
    hooks = get_session().event_hooks["request"]
    with _HOOK_LOCK:
        if _apply_timeout not in hooks:
            hooks.append(_apply_timeout)
    reset = _TIMEOUT_S.set(seconds)
    try:
        yield
    finally:
        _TIMEOUT_S.reset(reset)


# --------------------------------------------------------------------------- publisher


class _Stopped(Exception):
    """stop() was called while a queued push waited between attempts; the job stays pending."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class HubPublisher:
    """Push adapter versions to a Hub model repo, directly or through a persistent queue.

    Direct: `push_adapter(dir, "v3", card)` blocks, retries transient failures, returns a
    `PushResult` or raises `HubPushError` / `HubAuthError`.

    Queued: `enqueue(dir, "v3", card)` writes the job to `queue_path` and returns; the
    thread started by `start()` pushes it. `adapter_dir` must stay on disk until the job
    is done. One publisher per queue file: two processes sharing a file would overwrite
    each other's changes.

    `sleep(seconds)` waits between attempts (inject a recorder in tests). By default a
    direct push uses `time.sleep` and the worker waits on the event that `stop()` sets,
    so stopping does not sit out a long backoff.
    """

    def __init__(
        self,
        repo_id: str,
        token: str | None,
        endpoint: str | None = None,
        *,
        queue_path: Path,
        max_attempts: int = 5,
        base_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
        sleep: Callable[[float], object] | None = None,
        request_timeout_s: float | None = 60.0,
        private: bool | None = None,
        on_done: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not _HUB_ID.match(repo_id):
            raise ValueError(f"repo_id must look like 'namespace/name', got {repo_id!r}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.repo_id = repo_id
        self.endpoint = endpoint
        self.queue_path = Path(queue_path)
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.request_timeout_s = request_timeout_s
        self.private = private
        self.on_done = on_done  # told of every finished job (a `status()["done"]` entry), e.g. to record it
        # An explicit endpoint: HF_ENDPOINT is read once, when huggingface_hub is imported.
        self._api = HfApi(endpoint=endpoint, token=token, library_name="cowest")
        self._token = token  # only for redaction
        self._stop = threading.Event()
        self._sleep = sleep  # None: time.sleep for direct pushes, the stop event for the worker
        self._wake = threading.Event()
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._current: str | None = None  # id of the job being pushed
        self._jobs, self._done, self._last_error = self._load()

    def __repr__(self) -> str:  # the token must not leak through a repr either
        return f"HubPublisher(repo_id={self.repo_id!r}, endpoint={self.endpoint!r}, queue_path={str(self.queue_path)!r})"

    # ---- direct push ------------------------------------------------------------

    def push_adapter(self, adapter_dir: Path, version: str, card_md: str, subfolder: str = "") -> PushResult:
        """Create the repo if needed, commit files + README.md (under `subfolder`: one per pack),
        tag the commit `version`."""
        return self._push(Path(adapter_dir), version, card_md, subfolder=subfolder)

    def _push(
        self,
        adapter_dir: Path,
        version: str,
        card_md: str,
        on_failure: Callable[[int, str], None] | None = None,
        stop: threading.Event | None = None,
        subfolder: str = "",
    ) -> PushResult:
        _check_version(version)
        _check_subfolder(subfolder)
        _adapter_files(adapter_dir)  # fail fast (no retry) when the folder is not an adapter
        for attempt in range(1, self.max_attempts + 1):
            try:
                with _request_timeout(self.request_timeout_s):
                    commit_id, url, existed = self._push_once(adapter_dir, version, card_md, subfolder)
                logger.info("pushed adapter %s to %s (commit %s, attempt %d)", version, self.repo_id, commit_id, attempt)
                return PushResult(self.repo_id, version, commit_id, url, attempt, existed)
            except TagConflict:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is classified below
                failure = _describe(exc, self.repo_id)
                message = _redact(failure.message, self._token)
                if on_failure is not None:
                    on_failure(attempt, message)
                if not failure.retryable or attempt == self.max_attempts:
                    logger.error("push of adapter %s failed after %d attempt(s): %s", version, attempt, message)
                    error_type = HubAuthError if failure.status in (401, 403) else HubPushError
                    # `from None`: the chained client exception may carry request objects.
                    raise error_type(message, retryable=failure.retryable, status=failure.status, attempts=attempt) from None
                delay = self._backoff(attempt, failure.retry_after_s)
                logger.warning(
                    "push of adapter %s failed (attempt %d/%d): %s; retrying in %.1fs",
                    version, attempt, self.max_attempts, message, delay,
                )
                if self._sleep is not None:
                    self._sleep(delay)
                elif stop is not None:
                    stop.wait(delay)  # stop() cuts a long backoff short
                else:
                    time.sleep(delay)
                if stop is not None and stop.is_set():
                    raise _Stopped from None
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, retry_after_s: float | None) -> float:
        """Exponential: base, 2*base, 4*base... capped; a server's Retry-After wins if longer."""
        delay = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_delay_s))
        return delay

    def _push_once(self, adapter_dir: Path, version: str, card_md: str, subfolder: str = "") -> tuple[str, str | None, bool]:
        self._api.create_repo(self.repo_id, repo_type="model", exist_ok=True, private=self.private)
        prefix = f"{subfolder}/" if subfolder else ""
        # A tag with these very files means an earlier attempt got through (its answer was lost);
        # with other files it is someone else's version, never to be overwritten.
        if (target := self._tag_target(version)) is not None:
            if not self._same_files(adapter_dir, prefix, target):
                raise TagConflict(version)
            return target, None, True
        operations = [CommitOperationAdd(path_in_repo=prefix + rel, path_or_fileobj=str(path))
                      for rel, path in _adapter_files(adapter_dir)]
        operations.append(CommitOperationAdd(path_in_repo=prefix + "README.md", path_or_fileobj=card_md.encode("utf-8")))
        info = self._api.create_commit(self.repo_id, operations, commit_message=f"Adapter {version}", repo_type="model")
        try:
            self._api.create_tag(self.repo_id, tag=version, revision=info.oid, tag_message=f"Adapter {version}")
        except HfHubHTTPError as exc:
            # 409: the tag appeared meanwhile (a concurrent push, or our own lost response).
            if exc.response is None or exc.response.status_code != 409 or (target := self._tag_target(version)) is None:
                raise
            return target, None, target != info.oid
        return info.oid, info.commit_url, False

    def _tag_target(self, version: str) -> str | None:
        return self.remote_tags().get(version)

    def remote_tags(self) -> dict[str, str]:
        """{tag: commit} of the adapter repo; {} when the repo does not exist yet."""
        try:
            refs = self._api.list_repo_refs(self.repo_id, repo_type="model")
        except RepositoryNotFoundError:
            return {}
        return {tag.name: tag.target_commit for tag in refs.tags}

    def _same_files(self, adapter_dir: Path, prefix: str, revision: str) -> bool:
        """Do the weights and config at `revision` equal the local ones, byte for byte?"""
        with tempfile.TemporaryDirectory(prefix="cowest-hub-check-") as tmp:
            for name in WEIGHT_FILES:
                try:
                    remote = self._api.hf_hub_download(self.repo_id, prefix + name, revision=revision, local_dir=tmp)
                except EntryNotFoundError:
                    return False
                if Path(remote).read_bytes() != (adapter_dir / name).read_bytes():
                    return False
        return True

    def download_release(self, tag: str, subfolder: str, dest: Path) -> str:
        """The release files of version `tag` (in `subfolder`) into `dest`; returns its commit."""
        _check_subfolder(subfolder)
        commit = self.remote_tags().get(tag)
        if commit is None:
            raise ValueError(f"no tag {tag} in {self.repo_id}")
        prefix = f"{subfolder}/" if subfolder else ""
        present = set(self._api.list_repo_files(self.repo_id, revision=commit))
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="cowest-hub-get-") as tmp:
            for name in RELEASE_FILES:
                if prefix + name in present:
                    path = self._api.hf_hub_download(self.repo_id, prefix + name, revision=commit, local_dir=tmp)
                    shutil.copyfile(path, dest / name)
        return commit

    def _next_free(self, tag: str) -> str:
        """`pack-v7` when `pack-v3` is taken and `pack-v6` is the highest such tag on the Hub."""
        match = _NUMBERED.match(tag)
        if match is None:
            raise ValueError(f"{tag} does not end in a version number")
        stem = match.group(1)
        taken = [int(m.group(2)) for name in self.remote_tags() if (m := _NUMBERED.match(name)) and m.group(1) == stem]
        return f"{stem}{max([int(match.group(2)), *taken]) + 1}"

    def _mark_active(self, active_tag: str, target: str | None) -> str | None:
        """Move `active_tag` to the commit of tag `target` (None: remove it, the bare base is served)."""
        tags = self.remote_tags()
        commit = None
        if target is not None:
            commit = tags.get(target)
            if commit is None:
                raise HubPushError(f"{target} is not on the Hub yet, so it cannot be marked active", retryable=True,
                                   status=None, attempts=1)
        if tags.get(active_tag) == commit:
            return commit
        if active_tag in tags:
            self._api.delete_tag(self.repo_id, tag=active_tag, repo_type="model")
        if commit is not None:
            self._api.create_tag(self.repo_id, tag=active_tag, revision=commit, tag_message=f"Served: {target}")
        return commit

    # ---- queue -----------------------------------------------------------------

    def enqueue(self, adapter_dir: Path, version: str, card_md: str, subfolder: str = "") -> str:
        """Record a push for the worker and return its job id at once (no network). Should
        the tag turn out to be taken on the Hub by other files, the worker pushes the
        version under the next free number and says so in the job's `note`."""
        _check_version(version)
        _check_subfolder(subfolder)
        adapter_dir = Path(adapter_dir).resolve()
        if not adapter_dir.is_dir():
            raise ValueError(f"adapter folder not found: {adapter_dir}")
        with self._lock:
            # The same version queued twice would push twice: keep one (a failed one gets another go).
            job = next((job for job in self._jobs
                        if job.get("kind", "push") == "push" and job.get("label", job["version"]) == version), None)
            if job is not None:
                job.update(adapter_dir=str(adapter_dir), card_md=card_md, subfolder=subfolder, state="pending",
                           updated_at=_now())
            else:
                job = self._new_job(version, adapter_dir, card_md, subfolder)
                self._jobs.append(job)
            self._save()
        self._wake.set()
        return str(job["id"])

    def enqueue_active(self, active_tag: str, target: str | None) -> str:
        """Queue moving tag `active_tag` to version tag `target` (None: remove it). Runs after
        the pushes queued before it, so a version promoted and pushed together is marked once there."""
        _check_version(active_tag)
        if target is not None:
            _check_version(target)
        with self._lock:
            job = next((job for job in self._jobs if job.get("kind") == "active" and job["version"] == active_tag), None)
            if job is not None:  # only the latest choice matters; it goes behind any push it may need
                self._jobs.remove(job)
            job = {**self._new_job(active_tag, Path("."), "", ""), "kind": "active", "target": target, "adapter_dir": ""}
            self._jobs.append(job)
            self._save()
        self._wake.set()
        return str(job["id"])

    @staticmethod
    def _new_job(version: str, adapter_dir: Path, card_md: str, subfolder: str = "") -> dict[str, Any]:
        return {
            "id": uuid.uuid4().hex[:12],
            "kind": "push",
            "version": version,  # the tag pushed to: `label`, or the next free one after a conflict
            "label": version,  # the tag asked for, which names the local version
            "subfolder": subfolder,
            "adapter_dir": str(adapter_dir),
            "card_md": card_md,
            "state": "pending",
            "attempts": 0,
            "last_error": None,
            "note": None,
            "enqueued_at": _now(),
            "updated_at": _now(),
        }

    def retry_failed(self) -> int:
        """Put failed jobs back to pending; returns how many."""
        with self._lock:
            failed = [job for job in self._jobs if job["state"] == "failed"]
            for job in failed:
                job.update(state="pending", updated_at=_now())
            if failed:
                self._save()
        self._wake.set()
        return len(failed)

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot for the UI. Contains no token and no model card text."""
        with self._lock:
            def summary(job: dict[str, Any]) -> dict[str, Any]:
                return {key: value for key, value in job.items() if key != "card_md"}

            return {
                "repo_id": self.repo_id,
                "worker_running": self.is_running(),
                "current": next((job["version"] for job in self._jobs if job["id"] == self._current), None),
                "pending": [summary(job) for job in self._jobs if job["state"] == "pending"],
                "failed": [summary(job) for job in self._jobs if job["state"] == "failed"],
                "done": [dict(item) for item in self._done],
                "last_error": self._last_error,
            }

    def start(self) -> None:
        """Start the background worker (no-op if it runs)."""
        if self.is_running():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cowest-hub-publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Ask the worker to stop and wait for it; an in-flight request ends by itself or times out."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job is pending (for tests and shutdown); True if that happened."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not any(job["state"] == "pending" for job in self._jobs):
                    return True
            time.sleep(0.02)
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before looking, so an enqueue during the look is not missed
            job = self._next_pending()
            if job is None:
                self._wake.wait(5.0)
                continue
            self._process(job)

    def _next_pending(self) -> dict[str, Any] | None:
        with self._lock:
            return next((dict(job) for job in self._jobs if job["state"] == "pending"), None)

    def _process(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        self._current = job_id
        try:
            if job.get("kind") == "active":
                result = self._run_active(job)
            else:
                result = self._run_push(job)
        except _Stopped:
            return  # stays pending; the next start() resumes it
        except HubPushError as err:
            self._finish_failed(job_id, str(err))
        except Exception as exc:  # noqa: BLE001 - a bug here must not kill the worker thread
            self._finish_failed(job_id, _redact(f"{type(exc).__name__}: {_one_line(str(exc))}", self._token))
        else:
            self._finish_done(job_id, result)
        finally:
            self._current = None

    def _run_push(self, job: dict[str, Any]) -> PushResult:
        job_id, card = job["id"], job["card_md"]
        while True:
            try:
                return self._push(
                    Path(job["adapter_dir"]), job["version"], card,
                    on_failure=lambda attempt, message: self._record_failure(job_id, message), stop=self._stop,
                    subfolder=job.get("subfolder", ""),  # queues written before packs had folders: the root
                )
            except TagConflict as conflict:
                with _request_timeout(self.request_timeout_s):
                    free = self._next_free(conflict.tag)
                note = f"{conflict}; pushed as {free} instead"
                logger.warning("%s", note)
                card = _retag(card, conflict.tag, free)
                self._update_job(job_id, version=free, note=note, last_error=note)
                job = {**job, "version": free}

    def _run_active(self, job: dict[str, Any]) -> PushResult:
        target = job["target"] and self._pushed_as(job["target"])
        with _request_timeout(self.request_timeout_s):
            commit = self._mark_active(job["version"], target)
        logger.info("marked %s as %s on %s", target or "the bare base", job["version"], self.repo_id)
        return PushResult(self.repo_id, job["version"], commit or "", None, job["attempts"] + 1)

    def _pushed_as(self, label: str) -> str:
        """The tag a version was really pushed under (another after a conflict)."""
        with self._lock:
            return next((item["version"] for item in reversed(self._done) if item.get("label") == label), label)

    def _update_job(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            for job in self._jobs:
                if job["id"] == job_id:
                    job.update(changes, updated_at=_now())
            self._save()

    def _record_failure(self, job_id: str, message: str) -> None:
        """One failed attempt: visible in status() while the job is still being retried."""
        with self._lock:
            for job in self._jobs:
                if job["id"] == job_id:
                    job["attempts"] += 1
                    job.update(last_error=message, updated_at=_now())
            self._last_error = message
            self._save()

    def _finish_failed(self, job_id: str, message: str) -> None:
        with self._lock:
            for job in self._jobs:
                if job["id"] == job_id:
                    job.update(state="failed", last_error=message, updated_at=_now())
            self._last_error = message
            self._save()

    def _finish_done(self, job_id: str, result: PushResult) -> None:
        with self._lock:
            job = next(job for job in self._jobs if job["id"] == job_id)
            self._jobs.remove(job)
            self._done.append({
                "id": job_id,
                "kind": job.get("kind", "push"),
                "label": job.get("label", job["version"]),
                "subfolder": job.get("subfolder", ""),
                "target": job.get("target"),
                "note": job.get("note"),
                "version": job["version"],
                "commit_id": result.commit_id,
                "commit_url": result.commit_url,
                "already_existed": result.already_existed,
                "attempts": job["attempts"] + 1,  # the failures were counted, plus the success
                "finished_at": _now(),
            })
            self._done = self._done[-KEEP_DONE:]
            self._last_error = None
            self._save()
            entry = dict(self._done[-1])
        if self.on_done is not None:
            try:
                self.on_done(entry)
            except Exception:  # noqa: BLE001 - bookkeeping elsewhere must not stop the queue
                logger.exception("recording the finished Hub job %s failed", job_id)

    # ---- queue file ----------------------------------------------------------------

    def _load(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
        if not self.queue_path.exists():
            return [], [], None
        try:
            data = json.loads(self.queue_path.read_text(encoding="utf-8"))
            jobs, done = list(data["jobs"]), list(data["done"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Keep the unreadable file for a human, start empty rather than refuse to serve.
            aside = self.queue_path.with_name(f"{self.queue_path.name}.corrupt-{datetime.now():%Y%m%d%H%M%S}")
            os.replace(self.queue_path, aside)
            logger.error("hub queue %s was unreadable (%s); moved to %s", self.queue_path, type(exc).__name__, aside)
            return [], [], None
        return jobs, done, data.get("last_error")

    def _save(self) -> None:
        """Write the queue atomically: a reader (or a crash) never sees half a file."""
        payload = {"format": QUEUE_FORMAT, "jobs": self._jobs, "done": self._done, "last_error": self._last_error}
        write_atomic(self.queue_path, json.dumps(payload, ensure_ascii=False, indent=1))


def _check_version(version: str) -> None:
    if not _VERSION.match(version) or version == "main":
        raise ValueError(f"version must be a tag name like 'v3' (letters, digits, '.', '_', '-'), got {version!r}")


def _check_subfolder(subfolder: str) -> None:
    if subfolder and not _VERSION.match(subfolder):
        raise ValueError(f"subfolder must be a plain folder name (a pack's name), got {subfolder!r}")


def _retag(card_md: str, old: str, new: str) -> str:
    """The model card of version `old` renamed `new` (not touching `old1…` when `old` ends in 1)."""
    return re.sub(re.escape(old) + r"(?!\d)", new, card_md)


def active_tag(pack: str) -> str:
    """The moving tag on the Hub that marks the version a pack serves."""
    return f"{pack}-active"


def hub_tag(pack: str, version: str) -> str:
    """The Hub tag of a pack's adapter version: each pack keeps its own `vN` lineage in one repo."""
    return f"{pack}-{version}"


# What a published adapter version carries: weights, config and metrics, never the training
# data beside them in a version folder (train.jsonl holds users' questions).
RELEASE_FILES = ("adapter_config.json", "adapter_model.safetensors", "metrics.json", "cowest.json")


def _adapter_files(adapter_dir: Path) -> list[tuple[str, Path]]:
    """(path in repo, local path) for every file to upload: the `RELEASE_FILES` present."""
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(f"not a PEFT adapter folder (no adapter_config.json): {adapter_dir}")
    return [(name, adapter_dir / name) for name in RELEASE_FILES if (adapter_dir / name).is_file()]


# --------------------------------------------------------------------------- feedback log sync


class _TimedCommitScheduler(CommitScheduler):
    """CommitScheduler whose Hub requests get our timeout (they run on its own worker thread)."""

    def __init__(self, *, request_timeout_s: float | None, **kwargs: Any) -> None:
        self.request_timeout_s = request_timeout_s  # set first: the base __init__ starts pushing
        with _request_timeout(request_timeout_s):  # base __init__ calls create_repo on this thread
            super().__init__(**kwargs)

    def push_to_hub(self) -> Any:
        with _request_timeout(self.request_timeout_s):
            return super().push_to_hub()


def start_log_sync(
    folder: Path,
    repo_id: str,
    token: str | None,
    endpoint: str | None,
    every_minutes: float,
    *,
    private: bool = True,
    allow_patterns: str | list[str] | None = None,
    request_timeout_s: float | None = 60.0,
) -> CommitScheduler:
    """Mirror `folder` (append-only JSONL shards) into dataset repo `repo_id` every `every_minutes`.

    The dataset is private by default: the feedback log holds users' questions. Only
    files matching `allow_patterns` are pushed, so half-written temp files are not.
    Note that `CommitScheduler.__init__` creates the repo synchronously, so this call
    needs the Hub (and raises if it is unreachable); pushes then happen in the
    background, the first one at once. By default the shards and the dataset card are pushed. Stop it with `scheduler.stop()`; a `with` block
    also pushes once more on exit.
    """
    from cowest_app.hub.log_sync import MIRRORED

    # CommitScheduler takes no endpoint in 2.4, but it takes a ready HfApi.
    api = HfApi(endpoint=endpoint, token=token, library_name="cowest")
    return _TimedCommitScheduler(
        request_timeout_s=request_timeout_s,
        repo_id=repo_id,
        folder_path=folder,
        every=every_minutes,
        repo_type="dataset",
        private=private,
        allow_patterns=allow_patterns or MIRRORED,
        hf_api=api,
    )


__all__ = [
    "HubAuthError",
    "HubPublisher",
    "HubPushError",
    "PushResult",
    "render_model_card",
    "start_log_sync",
]
