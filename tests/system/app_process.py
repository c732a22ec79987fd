"""The real app (`python app.py`) as a child process on 127.0.0.1, for system tests and bench/load.py.

`AppProcess.start(...)` returns once the server accepts connections. `kill()` is a
SIGKILL (a crash, the out-of-memory killer), `stop()` a normal shutdown. The
server's stdout and stderr go to `log_path`, so a test can read what it logged.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240.0


def wait_for(condition, timeout: float, what: str, poll_s: float = 0.1):
    """The first truthy value of `condition()`, polled until `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def drafting_general(root: Path) -> Path:
    """A copy of the general pack whose weak model drafts on every question (`drafts: always`):
    the system tests load the whole draft-and-answer path, which the served pack skips until
    an adapter specialises it."""
    copy = root / "packs" / "general"
    if not copy.is_dir():
        shutil.copytree(ROOT / "packs" / "general", copy)
        meta = copy / "domain.yaml"
        meta.write_text(meta.read_text(encoding="utf-8").replace("drafts: specialist", "drafts: always"), encoding="utf-8")
    return copy


def tiny_model_env(model_dir: str | Path, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for the app with one model (a tiny local one in tests) in both roles and short answers."""
    env = {
        "COWEST_WEAK_MODEL": str(model_dir),
        "COWEST_STRONG_MODEL": str(model_dir),
        "COWEST_WEAK_4BIT": "0",
        "COWEST_WEAK_MAX_NEW_TOKENS": "8",
        "COWEST_STRONG_MAX_NEW_TOKENS": "8",
        "COWEST_TORCH_THREADS": "1",  # two cores, shared with the test's client threads
        "COWEST_DATA_DIR": str(data_dir),
        "COWEST_PACKS": str(drafting_general(data_dir.parent)),  # the job trains, and users ask in, the general pack
        "COWEST_TRAIN_EVERY_MINUTES": "0",
        # Simulated users ask far faster than people; the per-session limits have their own tests.
        "COWEST_ASKS_PER_MINUTE": "0",
        "COWEST_FEEDBACK_PER_MINUTE": "0",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",  # local models only: nothing may reach huggingface.co
    }
    env.update(extra)
    return env


@dataclass
class AppProcess:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @classmethod
    def start(cls, env: dict[str, str], log_path: Path, port: int | None = None,
              timeout_s: float = START_TIMEOUT_S) -> "AppProcess":
        port = port or free_port()
        full_env = {**os.environ, **env, "COWEST_HOST": "127.0.0.1", "COWEST_PORT": str(port)}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=full_env,
                                    stdout=log, stderr=subprocess.STDOUT)
        app = cls(proc, port, log_path)
        app.wait_serving(timeout_s)
        return app

    def wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.25)
        self.kill()
        raise RuntimeError(f"app did not serve within {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
