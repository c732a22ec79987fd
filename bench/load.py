"""Many users against the real app: throughput, latency and refusals, with a one-user baseline.

    .venv/bin/python -m bench.load [--users 20] [--duration 30] [--max-asks 2000]
                                   [--concurrency 1] [--queue-max-size 64] [--max-new-tokens 24]
                                   [--model DIR_OR_REF] [--url http://127.0.0.1:7860/]

Without `--url` it starts `app.py` on 127.0.0.1 in a temporary data directory with
`--model` in both roles (default: the packaged SmolLM2, i.e. the `fast` profile) and
stops it afterwards. Each simulated user asks a question through gradio_client,
then rates the answer (tests/system/users.py, shared with tests/system/test_load.py).
First one user runs for the same duration (the baseline), then `--users` users; the
table gives both and their ratio. A request the queue refuses ("Queue is full") is
counted, not treated as an error; the user backs off and tries again.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from pathlib import Path

from tests.system.app_process import AppProcess, tiny_model_env
from tests.system.users import LoadResult, run_users

PACKAGED_SMOLLM2 = "packaged:smollm2-135m-instruct"


def start_app(args: argparse.Namespace, work: Path) -> AppProcess:
    env = tiny_model_env(args.model, work / "data", COWEST_CONCURRENCY=str(args.concurrency),
                         COWEST_QUEUE_MAX_SIZE=str(args.queue_max_size),
                         COWEST_WEAK_MAX_NEW_TOKENS=str(args.max_new_tokens),
                         COWEST_STRONG_MAX_NEW_TOKENS=str(args.max_new_tokens))
    env.pop("COWEST_TORCH_THREADS")  # torch's own default, as in production
    return AppProcess.start(env, work / "server.log")


def stored_ratings(db_path: Path, result: LoadResult) -> int:
    """How many of the acknowledged ratings are in the database (each token once)."""
    with sqlite3.connect(db_path) as conn:
        comments = [row[0] for row in conn.execute("SELECT comment FROM feedback")]
    tokens = {r.token for r in result.acknowledged}
    return sum(1 for c in comments if c in tokens)


def row(label: str, result: LoadResult, found: int | None) -> str:
    refused = result.refused_asks + len(result.refused_ratings)
    return (f"| {label} | {result.users} | {result.elapsed_s:.1f} | {len(result.interaction_ids)} "
            f"| {len(result.acknowledged)} | {'–' if found is None else found} | {refused} | {len(result.errors)} "
            f"| {result.throughput:.2f} | {result.percentile(0.5):.2f} | {result.percentile(0.95):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per run")
    parser.add_argument("--max-asks", type=int, default=2000, help="cap on questions per run")
    parser.add_argument("--concurrency", type=int, default=1, help="COWEST_CONCURRENCY of the started app")
    parser.add_argument("--queue-max-size", type=int, default=64, help="COWEST_QUEUE_MAX_SIZE of the started app")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="token budget of each stage")
    parser.add_argument("--model", default=PACKAGED_SMOLLM2, help="weak and strong model of the started app")
    parser.add_argument("--url", help="drive an app that is already running instead of starting one")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cowest-load-"))
    app = None if args.url else start_app(args, work)
    url = args.url or app.url
    db_path = None if args.url else work / "data" / "cowest.sqlite3"
    try:
        run_users(url, 1, min(5.0, args.duration), 20)  # warm-up: first answers load lazily
        baseline = run_users(url, 1, args.duration, args.max_asks, seed=1)
        loaded = run_users(url, args.users, args.duration, args.max_asks, seed=2)
    finally:
        if app is not None:
            app.stop()

    found = [stored_ratings(db_path, r) if db_path else None for r in (baseline, loaded)]
    setup = ("an app already running" if args.url else
             f"model {args.model} in both roles (weak in fp32), concurrency {args.concurrency}, "
             f"queue max {args.queue_max_size}, {args.max_new_tokens} new tokens a stage")
    print(f"app: {url}: {setup}. A run lasts until its last answers arrive.\n")
    print("| run | users | seconds | asks | ratings acknowledged | ratings found in SQLite | refused (queue full) "
          "| errors | cycles/s | ask p50 s | ask p95 s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(row("baseline", baseline, found[0]))
    print(row("load", loaded, found[1]))
    if baseline.throughput:
        print(f"\nratio load / baseline: throughput {loaded.throughput / baseline.throughput:.2f}x, "
              f"ask p50 {loaded.percentile(0.5) / baseline.percentile(0.5):.2f}x, "
              f"ask p95 {loaded.percentile(0.95) / baseline.percentile(0.95):.2f}x")
    for error in loaded.errors[:5]:
        print(f"error: {error}")


if __name__ == "__main__":
    main()
