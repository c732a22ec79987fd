"""Training on Hugging Face Jobs: the job's command as data, its inputs and output on the Hub,
and following a submitted job to its end.

The scheduled cycle (`cowest_app.loop.training_job`, `COWEST_TRAIN_BACKEND=hf-jobs`) and
`python -m training.launch --backend hf-jobs` both submit through this module; inside the
job, `python -m training.launch` uses its transfer helpers. One run:

1. the caller commits the inputs (the DPO pairs, and the parent adapter when training goes
   on from one) to the log dataset repo; that commit's sha pins them;
2. the job runs `python -m training.launch <stage> ...`, which downloads the inputs at that
   sha, trains, and pushes the adapter to a new branch of the adapter repo (a candidate,
   never `main` and never a release tag);
3. the caller follows the job's stage and logs (progress lines carry `progress.jsonl`'s
   events), cancels it past its timeout, and downloads the candidate from the branch.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

STAGES = ("dpo", "sft")
DATA_FIELDS = {"dpo": "dataset", "sft": "corpus"}  # the recipe key that names a stage's training data
TERMINAL_STAGES = ("COMPLETED", "CANCELED", "ERROR", "DELETED")
PROGRESS_PREFIX = "cowest-progress "  # a job log line carrying one progress.jsonl event
CANDIDATE_PREFIX = "cowest-candidate "  # the job's last line: where it pushed the adapter
_REF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")  # branch names we create: no slashes, no spaces
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubJobError(RuntimeError):
    """A job that could not be submitted, failed, or ran past its timeout (and was cancelled)."""


class HubJobTimeout(HubJobError):
    pass


@dataclass(frozen=True)
class HubRef:
    """A file or folder of a Hub repo at one revision (a commit sha pins it)."""

    repo_id: str
    revision: str
    path: str  # "" for the whole repo
    repo_type: str = "dataset"

    def __post_init__(self) -> None:
        if not _REPO_ID.match(self.repo_id):
            raise ValueError(f"repo id must look like 'namespace/name', got {self.repo_id!r}")
        if not self.revision:
            raise ValueError(f"{self.repo_id}: a revision is needed (a commit sha pins the inputs)")
        if self.repo_type not in ("model", "dataset"):
            raise ValueError(f"repo type must be 'model' or 'dataset', got {self.repo_type!r}")
        if ".." in PurePosixPath(self.path).parts:
            raise ValueError(f"path {self.path!r} leaves the repo")


@dataclass(frozen=True)
class LaunchPlan:
    """What one training job does: a stage of a recipe on pinned inputs, pushed to a candidate branch."""

    stage: str
    recipe: str  # path inside the project, as the job's image holds it
    data: HubRef
    push_repo: str
    push_branch: str
    push_folder: str = ""
    init_adapter: HubRef | None = None
    overrides: tuple[str, ...] = ()  # KEY=VALUE recipe overrides
    num_processes: int = 1  # more than one: `accelerate launch` with one process per GPU

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if not _REPO_ID.match(self.push_repo):
            raise ValueError(f"push repo must look like 'namespace/name', got {self.push_repo!r}")
        if not _REF_NAME.match(self.push_branch) or self.push_branch == "main":
            raise ValueError(f"push branch {self.push_branch!r}: a new branch name (letters, digits, . _ -), not main")
        if self.num_processes < 1:
            raise ValueError(f"num_processes must be at least 1, got {self.num_processes}")
        for item in self.overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not KEY=VALUE")


@dataclass(frozen=True)
class JobSettings:
    """Where and how long a job runs."""

    image: str  # must hold this project and its requirements, e.g. the Space's own image
    flavor: str = "a10g-small"
    timeout_s: float = 7200.0
    namespace: str | None = None  # None: the push repo's owner
    poll_s: float = 5.0


# -- the command, as data ------------------------------------------------------
def _ref_args(flag: str, ref: HubRef, default_type: str) -> list[str]:
    args = [f"--{flag}-repo", ref.repo_id, f"--{flag}-revision", ref.revision, f"--{flag}-path", ref.path]
    return args + ([f"--{flag}-repo-type", ref.repo_type] if ref.repo_type != default_type else [])


def launch_args(plan: LaunchPlan) -> list[str]:
    """The arguments of `python -m training.launch` that run `plan` where the job runs."""
    backend = ["--backend", "accelerate", "--num-processes", str(plan.num_processes)] if plan.num_processes > 1 \
        else ["--backend", "local"]
    args = [plan.stage, "--config", plan.recipe, *backend, *_ref_args("data", plan.data, "dataset")]
    if plan.init_adapter is not None:
        args += _ref_args("init", plan.init_adapter, "dataset")
    args += ["--push-repo", plan.push_repo, "--push-branch", plan.push_branch]
    if plan.push_folder:
        args += ["--push-folder", plan.push_folder]
    for item in plan.overrides:
        args += ["--set", item]
    return args


def job_command(plan: LaunchPlan) -> list[str]:
    return ["python", "-m", "training.launch", *launch_args(plan)]


def job_env(endpoint: str | None) -> dict[str, str]:
    # Unbuffered: the job's log lines (progress included) reach the logs API as they are printed.
    env = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    return env | ({"HF_ENDPOINT": endpoint} if endpoint else {})


def namespace_of(repo_id: str) -> str:
    return repo_id.split("/", 1)[0]


def parse_progress(line: str) -> dict[str, Any] | None:
    """The progress event a job log line carries, or None for any other line."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    try:
        event = json.loads(line[len(PROGRESS_PREFIX):])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


# -- following a job -----------------------------------------------------------
@dataclass
class JobOutcome:
    job_id: str
    stage: str
    message: str | None
    url: str
    stopped: bool = False  # cancelled because the caller asked (admin Stop)
    log_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.stage == "COMPLETED"


class HubJobs:
    """Submit a LaunchPlan as a Hugging Face Job and follow it (stage and logs) to its end."""

    def __init__(self, api: Any, settings: JobSettings, endpoint: str | None = None) -> None:
        self.api = api  # huggingface_hub.HfApi
        self.settings = settings
        self.endpoint = endpoint  # handed to the job, so it reaches the same Hub

    def namespace(self, plan: LaunchPlan) -> str:
        return self.settings.namespace or namespace_of(plan.push_repo)

    def submit(self, plan: LaunchPlan, token: str | None) -> str:
        """Start the job; returns its id. The token goes to the job as a secret, never into its env."""
        info = self.api.run_job(
            image=self.settings.image, command=job_command(plan), env=job_env(self.endpoint),
            secrets={"HF_TOKEN": token} if token else None, flavor=self.settings.flavor,
            timeout=int(self.settings.timeout_s), namespace=self.namespace(plan),
            labels={"app": "cowest", "stage": plan.stage}, name=f"cowest-{plan.stage}-{plan.push_branch}"[:64],
        )
        return str(info.id)

    def follow(self, job_id: str, namespace: str, on_line: Callable[[str], None],
               on_stage: Callable[[str], None], stop: threading.Event | None = None) -> JobOutcome:
        """Poll the job's stage and new log lines until it ends; cancel it when `stop` is set or
        it runs past the timeout (then raise HubJobTimeout)."""
        stop = stop or threading.Event()
        deadline = time.monotonic() + self.settings.timeout_s
        seen: list[str] = []
        while True:
            info = self.api.inspect_job(job_id=job_id, namespace=namespace)
            stage = str(getattr(info.status.stage, "value", info.status.stage))
            seen += self._new_lines(job_id, namespace, len(seen), on_line)
            on_stage(stage)
            if stage in TERMINAL_STAGES:
                return JobOutcome(job_id, stage, info.status.message, info.url, log_tail=seen[-40:])
            if stop.is_set():
                self.api.cancel_job(job_id=job_id, namespace=namespace)
                return JobOutcome(job_id, "CANCELED", "stopped by admin", info.url, stopped=True, log_tail=seen[-40:])
            if time.monotonic() >= deadline:
                self.api.cancel_job(job_id=job_id, namespace=namespace)
                raise HubJobTimeout(f"HF Job {job_id} was still {stage} after {self.settings.timeout_s:.0f} s; "
                                    "cancelled it")
            stop.wait(self.settings.poll_s)

    def _new_lines(self, job_id: str, namespace: str, already: int, on_line: Callable[[str], None]) -> list[str]:
        # The logs API replays the whole log on every call; lines only ever get appended.
        lines = list(self.api.fetch_job_logs(job_id=job_id, namespace=namespace, follow=False))
        for line in lines[already:]:
            on_line(line)
        return lines[already:]


# -- inputs and output on the Hub ----------------------------------------------
def upload_inputs(api: Any, repo_id: str, folder: str, files: dict[str, Path], message: str) -> str:
    """Commit `files` (name in `folder` -> local path) to the dataset repo in one commit; returns its sha."""
    from huggingface_hub import CommitOperationAdd

    api.create_repo(repo_id, repo_type="dataset", private=True, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=f"{folder}/{name}", path_or_fileobj=str(path))
                  for name, path in sorted(files.items())]
    return str(api.create_commit(repo_id, operations, commit_message=message, repo_type="dataset").oid)


def download(api: Any, ref: HubRef, dest: Path) -> Path:
    """`ref`'s file (to dest/<its name>) or every file under its folder (to dest/, paths kept
    relative to the folder); returns the file or dest."""
    files = api.list_repo_files(ref.repo_id, revision=ref.revision, repo_type=ref.repo_type)
    if ref.path in files:
        return _fetch(api, ref, ref.path, dest / PurePosixPath(ref.path).name)
    prefix = f"{ref.path.strip('/')}/" if ref.path.strip("/") else ""
    inside = [name for name in files if name.startswith(prefix)]
    if not inside:
        raise HubJobError(f"{ref.repo_id}@{ref.revision[:12]} has no file or folder {ref.path!r}")
    for name in inside:
        _fetch(api, ref, name, dest / name[len(prefix):])
    return dest


def _fetch(api: Any, ref: HubRef, name: str, target: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="cowest-hub-") as tmp:
        got = api.hf_hub_download(ref.repo_id, name, revision=ref.revision, repo_type=ref.repo_type, local_dir=tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(got, target)
    return target


def push_candidate(api: Any, local_dir: Path, repo_id: str, branch: str, folder: str, message: str) -> str:
    """Commit the run's output folder to a new branch of the adapter repo (from main); returns the commit sha."""
    api.create_repo(repo_id, repo_type="model", private=True, exist_ok=True)
    api.create_branch(repo_id, branch=branch, repo_type="model", exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(local_dir), path_in_repo=folder or None,
                             revision=branch, commit_message=message, repo_type="model")
    return str(info.oid)
