"""Run the SFT or DPO stage of a recipe here, data-parallel on several processes, or as a Hugging Face Job.

    python -m training.launch dpo --config training/recipes/dpo.yaml [--set key=value ...]
    python -m training.launch dpo --config ... --backend accelerate --num-processes 4
    python -m training.launch dpo --config ... --backend hf-jobs --image IMAGE --flavor l4x4 --num-processes 4 \\
        --data-repo me/cowest-log --data-revision SHA --data-path training-inputs/run/train.jsonl \\
        --push-repo me/cowest-adapter --push-branch candidate-run

The recipe is the same whichever backend runs it. `local` runs `python -m training.<stage>`;
`accelerate` runs `accelerate launch` with training/accelerate/ddp.yaml (one process per GPU,
or, with --cpu, per CPU process); `hf-jobs` submits a Hugging Face Job that runs this command
again with the local or accelerate backend. With --data-* the stage reads its data (and with
--init-* the adapter it continues) from a Hub repo at a pinned revision; with --push-* the
trained adapter goes to a new branch of the adapter repo (cowest_app/hub/jobs.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Sequence

from cowest_app.hub import jobs

ROOT = Path(__file__).resolve().parents[1]
DDP_CONFIG = "training/accelerate/ddp.yaml"
BACKENDS = ("local", "accelerate", "hf-jobs")
MODULES = {"dpo": "training.dpo", "sft": "training.sft"}


class LaunchError(ValueError):
    """Arguments that cannot make a run, with a message that says which and why."""


# -- commands, as data ---------------------------------------------------------
def stage_args(stage: str, recipe: str, sets: Sequence[str]) -> list[str]:
    """`-m training.<stage> --config RECIPE --set K=V ...`: the part every backend shares."""
    if stage not in MODULES:
        raise LaunchError(f"stage must be one of {sorted(MODULES)}, got {stage!r}")
    for item in sets:
        if "=" not in item:
            raise LaunchError(f"--set {item!r}: expected KEY=VALUE")
    return ["-m", MODULES[stage], "--config", recipe, *[arg for item in sets for arg in ("--set", item)]]


def local_command(stage: str, recipe: str, sets: Sequence[str], python: str = sys.executable) -> list[str]:
    return [python, *stage_args(stage, recipe, sets)]


def accelerate_command(stage: str, recipe: str, sets: Sequence[str], num_processes: int,
                       python: str = sys.executable, main_process_port: int | None = None) -> list[str]:
    """`accelerate launch --config_file training/accelerate/ddp.yaml --num_processes N -m training.<stage> ...`."""
    if num_processes < 1:
        raise LaunchError(f"--num-processes must be at least 1, got {num_processes}")
    port = ["--main_process_port", str(main_process_port)] if main_process_port else []
    return [python, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", DDP_CONFIG,
            "--num_processes", str(num_processes), *port, *stage_args(stage, recipe, sets)]


def accelerate_env(cpu: bool) -> dict[str, str]:
    """What --cpu sets for `accelerate launch`.

    accelerate's own `--cpu` flag switches to its single-process launcher (N CPU processes
    need mpirun there), so the N-process launcher is kept and the GPUs are hidden instead:
    each process then trains on the CPU and they average gradients over gloo.
    """
    return {"CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true"} if cpu else {}


# -- the command line ----------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.launch", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=sorted(MODULES), help="the training stage to run")
    p.add_argument("--config", required=True, help="YAML recipe, a path inside the project")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one recipe key")
    p.add_argument("--backend", choices=BACKENDS, default="local", help="where the stage runs (default: local)")
    p.add_argument("--num-processes", type=int, default=1, help="data-parallel processes (accelerate; in a job: >1 uses accelerate)")
    p.add_argument("--cpu", action="store_true", help="accelerate: run the processes on the CPU (gloo), even with GPUs")
    p.add_argument("--main-process-port", type=int, default=None, help="accelerate: rendezvous port (default 29500)")
    hub = p.add_argument_group("Hub inputs and output (each --X-repo needs its --X-revision and --X-path)")
    for flag, what in (("data", "the training data: a file or folder"), ("init", "the adapter to continue")):
        hub.add_argument(f"--{flag}-repo", help=f"repo holding {what}")
        hub.add_argument(f"--{flag}-revision", help="commit sha (or tag) that pins it")
        hub.add_argument(f"--{flag}-path", default="", help="file or folder in the repo")
        hub.add_argument(f"--{flag}-repo-type", choices=("dataset", "model"), default="dataset")
    hub.add_argument("--push-repo", help="adapter repo the trained adapter is pushed to")
    hub.add_argument("--push-branch", help="new branch of --push-repo that receives it (never main)")
    hub.add_argument("--push-folder", default="", help="folder in that branch (default: the root)")
    job = p.add_argument_group("hf-jobs")
    job.add_argument("--image", default=os.environ.get("COWEST_JOB_IMAGE"), help="Docker image holding this project "
                     "(default: $COWEST_JOB_IMAGE), e.g. hf.co/spaces/me/cowest")
    job.add_argument("--flavor", default="a10g-small", help="job hardware (default: a10g-small)")
    job.add_argument("--timeout-minutes", type=float, default=120.0, help="cancel the job after this long (default: 120)")
    job.add_argument("--namespace", default=None, help="where the job runs (default: the push repo's owner)")
    return p


def hub_ref(ns: argparse.Namespace, flag: str) -> jobs.HubRef | None:
    repo, revision = getattr(ns, f"{flag}_repo"), getattr(ns, f"{flag}_revision")
    if repo is None:
        return None
    if not revision:
        raise LaunchError(f"--{flag}-repo needs --{flag}-revision: a pinned commit, so the run is reproducible")
    try:
        return jobs.HubRef(repo, revision, getattr(ns, f"{flag}_path"), getattr(ns, f"{flag}_repo_type"))
    except ValueError as exc:
        raise LaunchError(f"--{flag}-*: {exc}") from None


def job_plan(ns: argparse.Namespace) -> jobs.LaunchPlan:
    data = hub_ref(ns, "data")
    if data is None or not ns.push_repo or not ns.push_branch:
        raise LaunchError("--backend hf-jobs needs --data-repo/--data-revision/--data-path and --push-repo/--push-branch: "
                          "a job reads its data from the Hub and pushes its adapter there")
    try:
        return jobs.LaunchPlan(stage=ns.stage, recipe=ns.config, data=data, push_repo=ns.push_repo,
                               push_branch=ns.push_branch, push_folder=ns.push_folder, init_adapter=hub_ref(ns, "init"),
                               overrides=tuple(ns.set), num_processes=ns.num_processes)
    except ValueError as exc:
        raise LaunchError(str(exc)) from None


# -- running here ----------------------------------------------------------------
def command_for(ns: argparse.Namespace, sets: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    if ns.backend == "accelerate":
        return accelerate_command(ns.stage, ns.config, sets, ns.num_processes, main_process_port=ns.main_process_port), \
            accelerate_env(ns.cpu)
    if ns.num_processes != 1 or ns.cpu:
        raise LaunchError("--num-processes and --cpu need --backend accelerate")
    return local_command(ns.stage, ns.config, sets), {}


def run_here(ns: argparse.Namespace) -> int:
    data, init = hub_ref(ns, "data"), hub_ref(ns, "init")
    if data is None and init is None and not ns.push_repo:
        command, env = command_for(ns, ns.set)
        return subprocess.call(command, cwd=ROOT, env={**os.environ, **env})
    if bool(ns.push_repo) != bool(ns.push_branch):
        raise LaunchError("--push-repo and --push-branch go together")
    with tempfile.TemporaryDirectory(prefix="cowest-launch-") as tmp:
        return run_with_hub(ns, Path(tmp), data, init)


def run_with_hub(ns: argparse.Namespace, work: Path, data: jobs.HubRef | None, init: jobs.HubRef | None) -> int:
    """Fetch the pinned inputs, train into `work/out` (progress echoed to the log), push the adapter."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, library_name="cowest")
    out, sets = work / "out", list(ns.set)
    if data is not None:
        sets.append(f"{jobs.DATA_FIELDS[ns.stage]}={stage_data(ns.stage, jobs.download(api, data, work / 'data'))}")
    if init is not None:
        sets.append(f"init_adapter={jobs.download(api, init, work / 'init')}")
    command, env = command_for(ns, [*sets, f"output_dir={out}"])
    with echo_progress(out / "progress.jsonl"):
        code = subprocess.call(command, cwd=ROOT, env={**os.environ, **env})
    if code != 0 or not ns.push_repo:
        return code
    sha = jobs.push_candidate(api, out, ns.push_repo, ns.push_branch, ns.push_folder, f"Candidate adapter ({ns.stage})")
    print(jobs.CANDIDATE_PREFIX + json.dumps({"repo": ns.push_repo, "branch": ns.push_branch, "commit": sha}), flush=True)
    return 0


def stage_data(stage: str, fetched: Path) -> Path:
    """DPO reads one JSONL file: a fetched folder's *.jsonl files are joined, in name order."""
    if stage != "dpo" or fetched.is_file():
        return fetched
    parts = sorted(fetched.rglob("*.jsonl"))
    if not parts:
        raise LaunchError(f"no .jsonl pairs in the fetched folder {fetched}")
    joined = fetched.parent / "pairs.jsonl"
    joined.write_text("".join(part.read_text(encoding="utf-8").rstrip("\n") + "\n" for part in parts), encoding="utf-8")
    return joined


@contextlib.contextmanager
def echo_progress(path: Path, poll_s: float = 0.5) -> Iterator[None]:
    """Print every new line of the run's progress.jsonl with PROGRESS_PREFIX while the block runs,
    so whoever reads this process's log (a job's logs API) can follow the steps."""
    done = threading.Event()
    printed = [0]

    def echo() -> None:
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        # A last line without its newline is still being written: it is printed next time.
        complete = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
        for line in complete[printed[0]:]:
            print(jobs.PROGRESS_PREFIX + line, flush=True)
        printed[0] = max(printed[0], len(complete))

    def loop() -> None:
        while not done.wait(poll_s):
            echo()

    thread = threading.Thread(target=loop, name="echo-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        echo()


# -- running as a Hugging Face Job ---------------------------------------------
def run_job(ns: argparse.Namespace) -> int:
    from huggingface_hub import HfApi, get_token

    if not ns.image:
        raise LaunchError("--backend hf-jobs needs --image (or COWEST_JOB_IMAGE): an image that holds this project")
    plan = job_plan(ns)
    endpoint = os.environ.get("HF_ENDPOINT") or None
    settings = jobs.JobSettings(image=ns.image, flavor=ns.flavor, timeout_s=ns.timeout_minutes * 60, namespace=ns.namespace)
    runner = jobs.HubJobs(HfApi(endpoint=endpoint, library_name="cowest"), settings, endpoint=endpoint)
    job_id = runner.submit(plan, get_token())
    print(f"submitted HF Job {job_id}: {' '.join(jobs.job_command(plan))}", flush=True)
    outcome = runner.follow(job_id, runner.namespace(plan), lambda line: print(line, flush=True),
                            lambda stage: None)
    print(f"HF Job {job_id} ended {outcome.stage}" + (f": {outcome.message}" if outcome.message else ""), flush=True)
    return 0 if outcome.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    ns = p.parse_args(argv)
    try:
        return run_job(ns) if ns.backend == "hf-jobs" else run_here(ns)
    except (LaunchError, jobs.HubJobError) as exc:
        p.error(str(exc))  # exits with status 2 and the message on stderr
    return 2  # unreachable: p.error exits


if __name__ == "__main__":
    sys.exit(main())
