"""Answer latency of the running app while its weak model retrains, driven through gradio_client.

    .venv/bin/python -m bench.serving [--questions 20] [--nice 19,0] [--max-new-tokens 48]
                                      [--model packaged:smollm2-135m-instruct]

For each training-child niceness in `--nice` this starts `app.py` on 127.0.0.1
(`--model` in both roles, the `fast` profile; torch's default threads for the
app, `COWEST_TRAIN_THREADS=1` for the child, as shipped) with 64 seeded
preference pairs, then asks the same `--questions` questions one at a time
through gradio_client:

1. idle: no training (the baseline, measured again in each app);
2. while training: after `/admin_start` has started a DPO child and it has
   logged its first step (the recipe is the shipped one with an endless step
   budget, so the child trains for the whole probe; the bench checks it is
   still running at the end).

The table gives p50 and p95 of each and p95 against the idle p95 of the same app.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gradio_client import Client

from bench.cycle import p95, seed_pairs  # the same pairs and percentile as the in-process cycle bench
from cowest_app.core.store import LogStore
from cowest_app.loop.training_job import DEFAULT_EVAL_FILE, load_items
from tests.system.app_process import ROOT, AppProcess, tiny_model_env, wait_for

ADMIN_SECRET = "bench-serving-admin"


def endless_recipe(work: Path) -> Path:
    text = (ROOT / "training/recipes/dpo.yaml").read_text()
    assert "max_steps: -1" in text
    path = work / "dpo-endless.yaml"
    path.write_text(text.replace("max_steps: -1", "max_steps: 100000"))
    return path


def ask_all(client: Client, questions: list[str]) -> list[float]:
    seconds = []
    for question in questions:
        started = time.perf_counter()
        client.predict(question, "general", False, api_name="/ask")
        seconds.append(time.perf_counter() - started)
    return seconds


def training_steps(data_dir: Path) -> int:
    logs = list((data_dir / "adapters").glob(".staging-*/progress.jsonl"))
    return sum(len(p.read_text().splitlines()) for p in logs)


def measure(nice: int, args: argparse.Namespace, questions: list[str], work: Path) -> dict[str, list[float] | int]:
    data_dir = work / f"nice-{nice}"
    seed_pairs(LogStore(data_dir / "cowest.sqlite3"), 64)
    env = tiny_model_env(args.model, data_dir, COWEST_WEAK_MAX_NEW_TOKENS=str(args.max_new_tokens),
                         COWEST_STRONG_MAX_NEW_TOKENS=str(args.max_new_tokens), COWEST_ADMIN_SECRET=ADMIN_SECRET,
                         COWEST_TRAIN_RECIPE=str(endless_recipe(work)), COWEST_TRAIN_NICE=str(nice),
                         COWEST_TRAIN_THREADS="1", COWEST_COLLECT_MAX_QUESTIONS="1")
    for shipped_default in ("COWEST_TORCH_THREADS", "COWEST_WEAK_4BIT"):  # torch's threads, NF4 weak: as in production
        env.pop(shipped_default)
    app = AppProcess.start(env, work / f"server-nice-{nice}.log")
    try:
        client = Client(app.url, verbose=False)
        ask_all(client, questions[:1])  # warm-up
        idle = ask_all(client, questions)
        assert client.predict(ADMIN_SECRET, api_name="/admin_start") == "run started"
        wait_for(lambda: training_steps(data_dir) >= 1, 600, f"the first DPO step\n{app.log_tail()}", poll_s=0.5)
        before = training_steps(data_dir)
        training = ask_all(client, questions)
        steps = training_steps(data_dir) - before
        status = client.predict(ADMIN_SECRET, api_name="/admin_stop")
        if status != "stopping the run":
            raise RuntimeError(f"the DPO run was over before the probe ended ({status!r}): the numbers mix idle and busy")
    finally:
        app.stop()
    return {"idle": idle, "training": training, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--nice", default="19,0", help="comma-separated niceness values of the training child")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="token budget of each stage")
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct")
    args = parser.parse_args()

    questions = [i.item.question for i in load_items(DEFAULT_EVAL_FILE)]
    questions = (questions * (args.questions // len(questions) + 1))[: args.questions]
    work = Path(tempfile.mkdtemp(prefix="cowest-bench-serving-"))
    runs = {int(n): measure(int(n), args, questions, work) for n in args.nice.split(",")}

    print(f"\n{args.questions} questions, one at a time, {args.max_new_tokens} new tokens per stage, {args.model} in both roles")
    print("\n| training child | app answer p50 (s) | p95 (s) | p95 x idle | DPO steps during the probe |")
    print("|---|---|---|---|---|")
    for nice, run in runs.items():
        idle, training = run["idle"], run["training"]
        print(f"| none (idle, baseline) | {statistics.median(idle):.2f} | {p95(idle):.2f} | 1.00 | – |")
        print(f"| training, nice {nice} | {statistics.median(training):.2f} | {p95(training):.2f} "
              f"| {p95(training) / p95(idle):.2f} | {run['steps']} |")


if __name__ == "__main__":
    main()
