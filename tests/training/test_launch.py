"""`python -m training.launch`: the commands it builds, a real two-process DDP run on the CPU,
its argument errors, and a job submitted to the fake Jobs API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import constants

from tests.fakes.hub_server import serve_hub
from tests.training.test_dpo import toy_pairs, write_pairs
from training import launch

ROOT = Path(__file__).resolve().parents[2]
RECIPE = "training/recipes/dpo-tiny.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- commands, as data ---------------------------------------------------------
def test_local_command_runs_the_stage_module() -> None:
    assert launch.local_command("sft", "training/recipes/sft.yaml", ["max_steps=2"], python="py") == [
        "py", "-m", "training.sft", "--config", "training/recipes/sft.yaml", "--set", "max_steps=2"]


def test_accelerate_command_launches_the_same_recipe_on_n_processes() -> None:
    assert launch.accelerate_command("dpo", RECIPE, ["seed=1", "bf16=false"], 4, python="py") == [
        "py", "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", "training/accelerate/ddp.yaml",
        "--num_processes", "4", "-m", "training.dpo", "--config", RECIPE, "--set", "seed=1", "--set", "bf16=false"]
    assert launch.accelerate_command("dpo", RECIPE, [], 2, python="py", main_process_port=29999)[6:10] == [
        "--num_processes", "2", "--main_process_port", "29999"]
    # --cpu hides the GPUs instead of passing accelerate's --cpu, which runs one process only.
    assert launch.accelerate_env(True) == {"CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true"}
    assert launch.accelerate_env(False) == {}
    assert (ROOT / launch.DDP_CONFIG).is_file()


@pytest.mark.parametrize("call, message", [
    (lambda: launch.local_command("ppo", RECIPE, []), "stage must be one of"),
    (lambda: launch.local_command("dpo", RECIPE, ["lr"]), "--set 'lr': expected KEY=VALUE"),
    (lambda: launch.accelerate_command("dpo", RECIPE, [], 0), "--num-processes must be at least 1, got 0"),
])
def test_bad_commands_are_refused(call, message) -> None:
    with pytest.raises(launch.LaunchError, match=message):
        call()


@pytest.mark.parametrize("argv, message", [
    (["dpo", "--config", RECIPE, "--num-processes", "2"], "--num-processes and --cpu need --backend accelerate"),
    (["dpo", "--config", RECIPE, "--backend", "hf-jobs", "--image", ""], "needs --image"),
    (["dpo", "--config", RECIPE, "--backend", "hf-jobs", "--image", "img"], "needs --data-repo"),
    (["dpo", "--config", RECIPE, "--backend", "hf-jobs", "--image", "img", "--data-repo", "me/log", "--data-path", "x",
      "--push-repo", "me/a", "--push-branch", "b"], "--data-repo needs --data-revision"),
    (["dpo", "--config", RECIPE, "--data-repo", "me/log", "--data-revision", "abc1234", "--push-repo", "me/a"],
     "--push-repo and --push-branch go together"),
])
def test_bad_arguments_exit_with_a_clear_message(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        launch.main(argv)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_a_fetched_folder_of_pair_shards_becomes_one_file(tmp_path: Path) -> None:
    folder = tmp_path / "pairs"
    folder.mkdir()
    (folder / "pairs-2.jsonl").write_text('{"n": 2}\n')
    (folder / "pairs-1.jsonl").write_text('{"n": 1}')  # no final newline
    joined = launch.stage_data("dpo", folder)
    assert joined.read_text() == '{"n": 1}\n{"n": 2}\n'
    assert launch.stage_data("sft", folder) == folder  # SFT reads a folder as its corpus
    (tmp_path / "empty").mkdir()
    with pytest.raises(launch.LaunchError, match="no .jsonl pairs"):
        launch.stage_data("dpo", tmp_path / "empty")


def test_progress_lines_are_echoed_as_they_complete(tmp_path: Path, capsys) -> None:
    path = tmp_path / "progress.jsonl"
    with launch.echo_progress(path, poll_s=0.05):
        path.write_text('{"step": 1}\n{"step": 2')  # the second line is still being written
        time.sleep(0.3)
        assert capsys.readouterr().out == 'cowest-progress {"step": 1}\n'
        path.write_text('{"step": 1}\n{"step": 2}\n')
    assert capsys.readouterr().out == 'cowest-progress {"step": 2}\n'


# -- real runs -------------------------------------------------------------------
def test_two_cpu_processes_train_the_tiny_recipe_data_parallel(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Each optimizer step sees both processes' batches: 2 x 4 pairs, so the 8 pairs make one epoch
    per step (one process alone takes two steps per epoch); rank 0 alone writes the outputs."""
    pairs, out = write_pairs(tmp_path / "pairs.jsonl", toy_pairs(8)), tmp_path / "out"
    argv = ["dpo", "--config", RECIPE, "--backend", "accelerate", "--num-processes", "2", "--cpu",
            "--main-process-port", str(free_port()), "--set", f"base_model={tiny_model_dir}",
            "--set", f"dataset={pairs}", "--set", f"output_dir={out}", "--set", "torch_threads=1"]
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "training.launch", *argv], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["epochs"] == 3.0 and metrics["n_pairs"] == 8
    assert (out / "adapter_model.safetensors").is_file()
    progress = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert [p["step"] for p in progress if "loss" in p] == [1, 2, 3]  # one writer, not two
    assert [p["epoch"] for p in progress if "loss" in p] == [1.0, 2.0, 3.0]
    assert run.stderr.count("Loading weights: 100%") == 2  # two processes loaded the model
    assert time.monotonic() - started < 120


def test_a_job_submitted_from_the_command_line_reports_its_failure(monkeypatch, capsys) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with serve_hub(require_token="hf_cli_token") as hub:
        hub.job_mode = "fail"
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_TOKEN", "hf_cli_token")
        code = launch.main(["dpo", "--config", RECIPE, "--backend", "hf-jobs", "--image", "hf.co/spaces/me/app",
                            "--flavor", "a100x4", "--num-processes", "4", "--data-repo", "me/log", "--data-revision",
                            "0123456789abcdef", "--data-path", "pairs", "--push-repo", "me/adapter",
                            "--push-branch", "candidate-1", "--timeout-minutes", "1"])
        job = hub.job()
    out = capsys.readouterr().out
    assert code == 1 and f"HF Job {job.id} ended ERROR: Job failed with exit code: 1" in out
    assert "CUDA out of memory" in out
    assert job.spec["flavor"] == "a100x4" and job.spec["secrets"] == {"HF_TOKEN": "hf_cli_token"}
    assert job.spec["command"][5:10] == [RECIPE, "--backend", "accelerate", "--num-processes", "4"]
    assert job.namespace == "me" and job.spec["timeoutSeconds"] == 60


def test_the_readme_shows_the_current_help(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")  # the width the README's copy was printed at
    assert launch.parser().format_help().rstrip("\n") in (ROOT / "README.md").read_text()
