"""End-to-end answer latency of the real app, through gradio_client, per strong backend.

    .venv/bin/python -m bench.latency [--questions 20] [--backends transformers,llama-cpp]
                                      [--out bench/results/latency.json]

Run from the repository root on a quiet machine. For each strong backend this
starts `app.py` on 127.0.0.1 on the default profile (SmolLM2-135M weak in NF4
with the shipped adapter, Qwen2.5-Coder-1.5B strong), everything else as
shipped, and records:

- start: seconds from launching the process to the page answering (model
  caches already in place; `--cold` gives each app an empty cache directory, so
  a first start with its one-off conversions is measured instead);
- per question, asked one at a time with the comparison off: time to the first
  weak token, to the first token of the final answer, and to the complete answer
  (the run logged), as the browser sees them.

The questions alternate between the shipped pack's test split and the general
reference set, each in its own domain. The table gives p50 and p95 of each and
the ratio to the first backend, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from gradio_client import Client

from cowest_app.domains.packs import load_pack
from tests.system.app_process import ROOT, AppProcess

PACKS = ("saltmarsh-formulary", "general")
START_TIMEOUT_S = 900.0


def questions(count: int) -> list[tuple[str, str]]:
    """(question, pack name), alternating between the shipped pack and the general set."""
    from training.evaluate import shown_question

    splits = [[shown_question(item) for item in load_pack(ROOT / "packs" / name).split("test")] for name in PACKS]
    return [(splits[i % 2][i // 2], PACKS[i % 2]) for i in range(count)]


def page_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start_app(backend: str, data_dir: Path, log_path: Path, cache_dir: Path | None) -> tuple[AppProcess, float]:
    env = {"COWEST_STRONG_BACKEND": backend, "COWEST_DATA_DIR": str(data_dir), "COWEST_TRAIN_EVERY_MINUTES": "0",
           "COWEST_ASKS_PER_MINUTE": "0", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    if cache_dir is not None:
        env["COWEST_CACHE_DIR"] = str(cache_dir)
    started = time.perf_counter()
    app = AppProcess.start(env, log_path, timeout_s=START_TIMEOUT_S)
    while not page_answers(app.url):
        time.sleep(0.2)
    return app, time.perf_counter() - started


def timed_ask(client: Client, question: str, pack: str) -> dict[str, float | None]:
    """Seconds to the first weak token, the first final-answer token and the logged answer."""
    began = time.perf_counter()
    first_weak = first_final = None
    job = client.submit(question, pack, False, api_name="/ask")
    for weak, final, *_ in job:
        now = time.perf_counter() - began
        if first_weak is None and weak:
            first_weak = now
        if first_final is None and final:
            first_final = now
    job.result()
    return {"first_weak_s": first_weak, "first_final_s": first_final, "complete_s": time.perf_counter() - began}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for key in ("first_weak_s", "first_final_s", "complete_s"):
        values = [row[key] for row in rows if row[key] is not None]
        out[f"{key}_p50"] = round(statistics.median(values), 2)
        out[f"{key}_p95"] = round(percentile(values, 0.95), 2)
    return out


def run_backend(backend: str, asked: list[tuple[str, str]], work: Path, cold: bool) -> dict[str, Any]:
    app, start_s = start_app(backend, work / backend, work / f"{backend}.log", work / f"{backend}-cache" if cold else None)
    try:
        client = Client(app.url, verbose=False)
        timed_ask(client, "Warm-up: what is 2 + 2?", "general")  # first-request costs are not the steady state
        rows = [timed_ask(client, question, pack) | {"pack": pack} for question, pack in asked]
    finally:
        app.stop()
    return {"start_s": round(start_s, 1), "questions": rows, "summary": summarise(rows)}


def table(result: dict[str, Any]) -> str:
    """p50 / p95 per backend, over all questions and per pack (the shipped pack's drafts and answers are longer)."""
    names = list(result["backends"])
    lines = ["| strong backend | questions | start (s) | first weak token p50 / p95 (s) | first final token p50 / p95 (s) | "
             f"complete answer p50 / p95 (s) | complete p50 vs {names[0]} |", "|---|---|---:|---:|---:|---:|---:|"]
    for scope in ("all", *PACKS):
        base = None
        for name in names:
            run = result["backends"][name]
            rows = [row for row in run["questions"] if scope == "all" or row["pack"] == scope]
            s = summarise(rows)
            base = base or s
            lines.append(f"| {name} | {scope} ({len(rows)}) | {run['start_s']} | {s['first_weak_s_p50']} / {s['first_weak_s_p95']} | "
                         f"{s['first_final_s_p50']} / {s['first_final_s_p95']} | {s['complete_s_p50']} / {s['complete_s_p95']} | "
                         f"{s['complete_s_p50'] / base['complete_s_p50']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--backends", default="transformers,llama-cpp")
    parser.add_argument("--cold", action="store_true", help="empty the model cache before each start")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/latency.json")
    parser.add_argument("--table", action="store_true", help="print the table of --out and exit")
    ns = parser.parse_args(argv)
    if ns.table:
        print(table(json.loads(ns.out.read_text())))
        return 0
    asked = questions(ns.questions)
    result: dict[str, Any] = {"questions": ns.questions, "cold": ns.cold, "backends": {}}
    with tempfile.TemporaryDirectory(prefix="cowest-latency-") as tmp:
        for backend in ns.backends.split(","):
            result["backends"][backend] = run_backend(backend, asked, Path(tmp), ns.cold)
            print(backend, result["backends"][backend]["start_s"], result["backends"][backend]["summary"], flush=True)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
