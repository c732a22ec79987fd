"""Scale: time and peak memory of one feedback-collection + DPO cycle, by pairs and by K.

    .venv/bin/python -m bench.scale [--questions-per-k 2] [--dpo-pairs 64] [--ks 2,4,8] [--pairs 64,256,1024]
                                    [--full] [--strong-default] [--threads N] [--tiny] [--out-dir bench]

Run from the repository root. A full grid (1024 questions x 9 strong answers
each, then DPO on 1024 pairs) takes days on a 2-core CPU, so by default the
script measures the unit costs and extrapolates the grid from them:

- collection: `cowest_app.loop.collect.collect` (the loop the app's job runs: K
  batched weak drafts, K strong refinements and one strong-alone answer per
  question, scored against references) on `--questions-per-k` held-out
  questions for each K; measured: seconds per question and peak RSS;
- DPO: `python -m training.dpo` with the shipped recipe in a child process, as
  the app's job runs it, on each of `--dpo-pairs`; measured: seconds (process
  start to exit, model loading included) and the child's peak RSS.

Every cell of the grid is then `pairs x (seconds per question at K)` plus the
DPO time at that pair count: measured where the pair count was run, otherwise
the per-pair cost of the largest measured run times the pairs, plus its fixed
start-up cost. One question yields at most one pair; the table assumes every
question yields one (the measured yield is printed: divide by it). DPO memory
does not grow with the pair count (one micro-batch at a time, the dataset is
small), so unmeasured cells reuse the largest measured run's peak. Cells say
whether they are measured or extrapolated.

Defaults are the `fast` profile (SmolLM2-135M in both roles, NF4 weak) with
short answers (64 tokens) and one DPO epoch; `--full` uses the app's budgets
(192-token drafts, 256-token answers) and the recipe's epochs, and
`--strong-default` the default strong model (Qwen2.5-Coder-1.5B).
Writes `scale.md` (the table) and `scale.png` (the plot) into `--out-dir`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil
import torch

from bench.dpo import RECIPE, varied_pairs
from cowest_app.loop.collect import STRONG_GREEDY, WEAK_SAMPLING, collect
from cowest_app.config import STRONG_DEFAULT, WEAK_DEFAULT
from cowest_app.domains.packs import load_pack
from cowest_app.core.evaluators import ReferenceEvaluator
from cowest_app.models.local import TransformersBackend
from cowest_app.loop.training_job import DEFAULT_EVAL_FILE, load_items
from training.common import load_recipe
from training.dpo import DPORecipe

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


class PeakRss:
    """Largest resident set size of a process seen while the block runs (sampled every 0.1 s)."""

    def __init__(self, pid: int | None = None) -> None:
        self.process = psutil.Process(pid or os.getpid())
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _sample(self) -> None:
        try:
            self.peak = max(self.peak, self.process.memory_info().rss)
        except psutil.NoSuchProcess:
            pass

    def _watch(self) -> None:
        while not self._done.wait(0.1):
            self._sample()

    def __enter__(self) -> "PeakRss":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self._sample()


@dataclass
class CollectCost:
    k: int
    questions: int
    seconds: float
    pairs: int
    peak_mib: float

    @property
    def per_question_s(self) -> float:
        return self.seconds / self.questions


@dataclass
class DpoCost:
    pairs: int
    steps: int
    seconds: float
    peak_mib: float
    metrics: dict = field(default_factory=dict)


def measure_collection(weak, strong, k: int, n: int, weak_tokens: int, strong_tokens: int) -> CollectCost:
    items = [i for i in load_items(DEFAULT_EVAL_FILE) if i.item.reference]
    questions = [items[(k + j) % len(items)].item for j in range(n)]
    evaluator = ReferenceEvaluator()
    with PeakRss() as rss:
        summary = collect(questions, weak, strong, evaluator, k=k,
                          weak_opts=replace(WEAK_SAMPLING, max_new_tokens=weak_tokens, seed=k),
                          strong_opts=replace(STRONG_GREEDY, max_new_tokens=strong_tokens),
                          prompt_sets={"general": load_pack("packs/general").prompt_set()})
    if summary.errors:
        raise RuntimeError(f"collection failed: {summary.errors[0]}")
    return CollectCost(k, n, summary.elapsed_s, summary.pairs, rss.peak / MIB)


def measure_dpo(pairs: int, epochs: float, threads: int, base_model: str, work: Path) -> DpoCost:
    """The shipped recipe in a child process, the way the app's training job runs it."""
    recipe = load_recipe(DPORecipe, RECIPE)
    steps = max(1, math.ceil(pairs * epochs / (recipe.per_device_train_batch_size * recipe.gradient_accumulation_steps)))
    data = work / f"pairs-{pairs}.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in varied_pairs(pairs)))
    out = work / f"dpo-{pairs}"
    command = [sys.executable, "-m", "training.dpo", "--config", str(RECIPE), "--set", f"dataset={data}",
               "--set", f"output_dir={out}", "--set", f"max_steps={steps}", "--set", f"torch_threads={threads}",
               "--set", f"base_model={base_model}"]
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with PeakRss(child.pid) as rss:
        stdout, stderr = child.communicate()
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"training.dpo failed ({child.returncode}): {stderr[-2000:]}")
    return DpoCost(pairs, steps, seconds, rss.peak / MIB, json.loads(stdout.strip().splitlines()[-1]))


def dpo_estimate(pairs: int, measured: list[DpoCost]) -> tuple[float, float, bool]:
    """(seconds, peak MiB, measured?) of DPO on `pairs`; a linear fit through the runs otherwise."""
    for cost in measured:
        if cost.pairs == pairs:
            return cost.seconds, cost.peak_mib, True
    by_size = sorted(measured, key=lambda c: c.pairs)
    largest = by_size[-1]
    if len(by_size) >= 2:  # a line through the two largest runs
        other = by_size[-2]
        per_pair = (largest.seconds - other.seconds) / (largest.pairs - other.pairs)
        fixed = largest.seconds - per_pair * largest.pairs
    else:
        # Process start and imports are fixed; everything inside the run (loading, reference
        # precompute, training) is counted per pair, which overestimates slightly.
        fixed = largest.seconds - largest.metrics["total_seconds"]
        per_pair = largest.metrics["total_seconds"] / largest.pairs
    return fixed + per_pair * pairs, largest.peak_mib, False


def grid(collection: dict[int, CollectCost], dpo: list[DpoCost], pair_counts: list[int]) -> list[dict]:
    rows = []
    for pairs in pair_counts:
        dpo_s, dpo_mib, dpo_measured = dpo_estimate(pairs, dpo)
        for k, cost in collection.items():
            collect_s = cost.per_question_s * pairs
            rows.append({
                "pairs": pairs, "k": k, "collect_s": collect_s, "dpo_s": dpo_s, "total_s": collect_s + dpo_s,
                "collect_mib": cost.peak_mib, "dpo_mib": dpo_mib,
                "collect_measured": cost.questions >= pairs, "dpo_measured": dpo_measured,
            })
    return rows


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| pairs | K | collection | DPO | cycle total | peak RSS collection / DPO (MiB) | source |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        source = " / ".join(f"{what} {'measured' if ok else 'extrapolated'}"
                            for what, ok in (("collection", r["collect_measured"]), ("DPO", r["dpo_measured"])))
        lines.append(f"| {r['pairs']} | {r['k']} | {hours(r['collect_s'])} | {hours(r['dpo_s'])} | {hours(r['total_s'])} "
                     f"| {r['collect_mib']:.0f} / {r['dpo_mib']:.0f} | {source} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    time_ax, mem_ax = fig.subplots(1, 2)
    for k in sorted({r["k"] for r in rows}):
        mine = [r for r in rows if r["k"] == k]
        xs = [r["pairs"] for r in mine]
        time_ax.plot(xs, [r["total_s"] / 3600 for r in mine], marker="o", label=f"cycle, K={k}")
    dpo = {r["pairs"]: r for r in rows}
    time_ax.plot(list(dpo), [r["dpo_s"] / 3600 for r in dpo.values()], "k--", marker="s", label="DPO alone")
    for r in rows:  # hollow markers: extrapolated
        filled = r["collect_measured"] and r["dpo_measured"]
        time_ax.plot(r["pairs"], r["total_s"] / 3600, "o", mfc="none" if not filled else None, mec="grey", ms=11)
    time_ax.set(xscale="log", yscale="log", xlabel="preference pairs (= questions collected)", ylabel="hours",
                title="time of one cycle (grey rings: extrapolated)")
    time_ax.legend(fontsize=8)
    ks = sorted({r["k"] for r in rows})
    collect_mib = [next(r["collect_mib"] for r in rows if r["k"] == k) for k in ks]
    dpo_mib = max(r["dpo_mib"] for r in rows)
    mem_ax.bar([str(k) for k in ks], collect_mib, label="collection process (both models)")
    mem_ax.axhline(dpo_mib, color="k", linestyle="--", label="DPO child process")
    mem_ax.set(xlabel="K drafts per question", ylabel="peak RSS (MiB)", title="peak memory")
    mem_ax.legend(fontsize=8)
    fig.suptitle("\n".join(textwrap.wrap(title, 150)), fontsize=9)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="2,4,8")
    parser.add_argument("--pairs", default="64,256,1024", help="pair counts of the grid")
    parser.add_argument("--questions-per-k", type=int, default=2, help="questions collected (measured) per K")
    parser.add_argument("--dpo-pairs", default="64", help="pair counts whose DPO run is measured")
    parser.add_argument("--full", action="store_true", help="the app's token budgets and the recipe's epochs")
    parser.add_argument("--strong-default", action="store_true", help=f"strong model {STRONG_DEFAULT}")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--tiny", action="store_true", help="tiny random models: a smoke run")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = args.threads or torch.get_num_threads()
    weak_tokens, strong_tokens = (WEAK_SAMPLING.max_new_tokens, STRONG_GREEDY.max_new_tokens) if args.full else (64, 64)
    epochs = load_recipe(DPORecipe, RECIPE).num_train_epochs if args.full else 1.0
    if args.tiny:
        from bench.tiny import tiny_llama

        weak_ref = strong_ref = tiny_llama()
    else:
        weak_ref, strong_ref = WEAK_DEFAULT, STRONG_DEFAULT if args.strong_default else WEAK_DEFAULT

    weak = TransformersBackend(weak_ref, load_4bit=True)
    strong = TransformersBackend(strong_ref, dtype="auto")
    collection = {}
    for k in [int(k) for k in args.ks.split(",")]:
        collection[k] = measure_collection(weak, strong, k, args.questions_per_k, weak_tokens, strong_tokens)
        print(f"K={k}: {collection[k]}", flush=True)
    del weak, strong
    work = Path(tempfile.mkdtemp(prefix="cowest-bench-scale-"))
    dpo = []
    for pairs in [int(p) for p in args.dpo_pairs.split(",")]:
        dpo.append(measure_dpo(pairs, epochs, threads, weak_ref, work))
        print(f"DPO {pairs} pairs: {dpo[-1].seconds:.1f} s, {dpo[-1].peak_mib:.0f} MiB, "
              f"{dpo[-1].metrics['pairs_per_second']} pairs/s in training", flush=True)

    rows = grid(collection, dpo, [int(p) for p in args.pairs.split(",")])
    produced = sum(c.pairs for c in collection.values())
    asked = sum(c.questions for c in collection.values())
    header = (f"weak {weak_ref} (NF4), strong {strong_ref} ({'default' if args.strong_default else 'fast'} profile), "
              f"{threads} torch threads, drafts {weak_tokens} / answers {strong_tokens} new tokens, DPO {epochs:g} "
              f"epoch(s) of the shipped recipe; collection measured on {args.questions_per_k} questions per K, "
              f"DPO measured at {args.dpo_pairs} pairs. Measured yield: {produced} pairs from {asked} questions "
              f"(the table assumes one pair per question).")
    text = table(rows, header)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "scale.md").write_text(text + "\n")
    plot(rows, args.out_dir / "scale.png", header.split(" Measured yield")[0])
    print(text)


if __name__ == "__main__":
    main()
