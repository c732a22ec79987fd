"""Training throughput on CPU: the SFT and DPO recipes before issue 15 vs now, in one run.

    .venv/bin/python -m bench.train_speed [--steps 16] [--rounds 1] [--sft old,new] [--dpo plain,old,new]
                                          [--json bench/results/train_speed.json] [--tiny]
    .venv/bin/python -m bench.train_speed --table bench/results/train_speed.json   # the tables again, from the file

Run from the repository root. Every variant runs in its own child process (its
peak RSS is its own, and no torch state leaks between variants), on the same
data in the same order with the same seed and the same effective batch, for
the same number of optimizer steps: one pass over `steps x batch` examples,
so every variant trains on exactly the same tokens.

SFT: the embedded SmolLM2-135M, `training/recipes/sft.yaml` with the overrides
the pipeline's memory run used (max_length 320, learning rate 3e-4, all linear
layers), on the pipeline's own SFT data for the shipped pack (corpus chunks and
one drafting chat per train question), a seeded sample. `old` is the recipe's
speed settings before issue 15 (NF4 base computing in fp32, padded batches of
4, TRL's LM head on every position), `new` the recipe as it is (the kept main
run measured a candidate on a bf16 base, now `new on a bf16 base`); the
ablations add one change at a time to `old`. Tokens are the examples' non-padding tokens
(prompt and reply; only reply tokens carry a loss).

DPO: `plain` is TRL's DPOTrainer with its defaults (bench/dpo.py's baseline:
batches of 2 x 2, bf16 autocast, activation checkpointing, the NF4 base);
`old` is `training/recipes/dpo.yaml` before issue 15, `new` as it is (= `old +
labels-only LM head`; the kept main run's `new` was a bf16-base candidate). Tokens
are each pair's prompt + chosen and prompt + rejected, without padding.

tokens/s is all tokens over the wall time of `trainer.train()` (the first,
warm-up step included); `step s` is the median step. `--tiny` runs on a tiny
random model: a smoke run, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "packs" / "saltmarsh-formulary"
SFT_RECIPE = ROOT / "training" / "recipes" / "sft.yaml"
DPO_RECIPE = ROOT / "training" / "recipes" / "dpo.yaml"
RESULTS = ROOT / "bench" / "results" / "train_speed.json"
BATCH = 4  # examples (SFT) or pairs (DPO) per optimizer step, in every variant

# The README's memory pipeline run (`--set sft.max_length=320 ...`): the SFT the ~200 tokens/s came from.
PIPELINE_SFT = ["max_length=320", "learning_rate=3e-4",
                "target_modules=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"]
# The speed settings of sft.yaml / dpo.yaml before issue 15 (commit a3d3450).
OLD_SFT = ["load_4bit=true", "compute_dtype=null", "bf16=false", "padding_free=false",
           "per_device_train_batch_size=4", "gradient_accumulation_steps=1", "lm_head_labels_only=false"]
OLD_DPO = ["load_4bit=true", "compute_dtype=null", "bf16=false", "per_device_train_batch_size=1",
           "gradient_accumulation_steps=4", "lm_head_labels_only=false"]
SFT_VARIANTS = {
    "old": OLD_SFT,
    "old + labels-only LM head": OLD_SFT + ["lm_head_labels_only=true"],
    "old + padding-free": OLD_SFT + ["padding_free=true"],
    "old + bf16 autocast": OLD_SFT + ["bf16=true"],
    "old + bf16 base": OLD_SFT + ["load_4bit=false", "compute_dtype=bfloat16"],
    "new": [],
    "new on the NF4 base": ["load_4bit=true"],  # = new since the recipe went back to NF4
    "new on a bf16 base": ["load_4bit=false", "compute_dtype=auto"],
    "new without bf16 autocast": ["bf16=false"],
    "new + micro-batch 2 x 2": ["per_device_train_batch_size=2", "gradient_accumulation_steps=2"],
    "new + micro-batch 1 x 4": ["per_device_train_batch_size=1", "gradient_accumulation_steps=4"],
    "new + torch.compile": ["torch_compile=true"],
}
DPO_VARIANTS = {
    "plain": None,  # TRL's own DPOTrainer set-up (bench.dpo.plain_trainer), not the recipe
    "old": OLD_DPO,
    "old + labels-only LM head": OLD_DPO + ["lm_head_labels_only=true"],
    "old + bf16 base": OLD_DPO + ["load_4bit=false", "compute_dtype=bfloat16"],
    "new": [],
    "new on the NF4 base": ["load_4bit=true"],  # = new since the recipe went back to NF4
    "new on a bf16 base": ["load_4bit=false", "compute_dtype=auto"],
    # The kept run's candidate DPO recipe (bf16 base, computing in bf16), without autocast:
    "new without bf16 autocast": ["load_4bit=false", "compute_dtype=auto", "bf16=false"],
    "new + torch.compile": ["torch_compile=true"],
}


# -- data ------------------------------------------------------------------
def sft_examples(tokenizer: Any, max_length: int, n: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """n examples sampled (seeded) from the pipeline's SFT data for the shipped pack."""
    from cowest_app.domains.packs import load_pack
    from training.pipeline import sft_rows
    from training.sft import training_examples

    rows = sft_rows(load_pack(PACK), "corpus+drafts")
    documents = [row["text"] if "text" in row else row["messages"] for row in rows]
    examples, _ = training_examples(documents, tokenizer, max_length)
    return random.Random(seed).sample(examples, min(n, len(examples)))


def pair_tokens(dataset: Any) -> int:
    """Non-padding tokens of a tokenised DPO dataset: prompt + chosen and prompt + rejected per pair."""
    return sum(2 * len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"]) for row in dataset)


# -- one variant, in a child process ----------------------------------------
class StepClock:
    """A TrainerCallback (built lazily: transformers loads in the child) timing each optimizer step."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Clock(TrainerCallback):
            def __init__(self) -> None:
                self.seconds: list[float] = []
                self._started = 0.0

            def on_step_begin(self, args, state, control, **kwargs):
                self._started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                self.seconds.append(time.perf_counter() - self._started)

        return _Clock()


def run_sft(name: str, steps: int, base_model: str | None, out: Path) -> dict[str, Any]:
    from training.common import load_base_model, load_recipe, torch_threads, train
    from training.sft import SFTRecipe, build_trainer

    overrides = PIPELINE_SFT + SFT_VARIANTS[name] + [f"output_dir={out}", "num_train_epochs=1", "max_steps=-1"]
    config = load_recipe(SFTRecipe, SFT_RECIPE, overrides + ([f"base_model={base_model}"] if base_model else []))
    per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps
    assert per_step == BATCH, f"{name}: {per_step} examples per step, every variant must take {BATCH}"
    with torch_threads(config.torch_threads):
        started = time.perf_counter()
        model, tokenizer = load_base_model(config.base_model, config.load_4bit, config.cache_dir,
                                           compute_dtype=config.compute_dtype)
        examples = sft_examples(tokenizer, config.max_length, steps * BATCH)
        trainer = build_trainer(config, model, tokenizer, examples)
        clock = StepClock()
        trainer.add_callback(clock)
        loaded = time.perf_counter() - started
        train_started, cpu_started = time.perf_counter(), time.process_time()
        train(trainer, config)
        seconds, cpu = time.perf_counter() - train_started, time.process_time() - cpu_started
    tokens = sum(len(e["input_ids"]) for e in examples)
    labelled = sum(sum(1 for t in e["labels"] if t != -100) for e in examples)
    return summary(trainer, clock, seconds, cpu, loaded, tokens, len(examples), labelled=labelled,
                   settings=speed_settings(config))


def run_dpo(name: str, steps: int, base_model: str | None, out: Path) -> dict[str, Any]:
    import dataclasses

    from bench.dpo import SHIPPED, plain_trainer, varied_pairs
    from training.common import load_recipe, torch_threads, train
    from training.dpo import DPORecipe, build_trainer

    overrides = (DPO_VARIANTS[name] or []) + [f"output_dir={out}", f"max_steps={steps}"]
    config = load_recipe(DPORecipe, DPO_RECIPE, overrides + ([f"base_model={base_model}"] if base_model else []))
    pairs = varied_pairs(steps * BATCH)
    with torch_threads(config.torch_threads):
        started = time.perf_counter()
        if DPO_VARIANTS[name] is None:
            config = dataclasses.replace(config, **SHIPPED)  # bench/dpo.py's baseline: 2 x 2
            trainer = plain_trainer(config, pairs, steps, out)
        else:
            trainer = build_trainer(config, pairs)
        per_step = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
        assert per_step == BATCH, f"{name}: {per_step} pairs per step, every variant must take {BATCH}"
        clock = StepClock()
        trainer.add_callback(clock)
        loaded = time.perf_counter() - started
        train_started, cpu_started = time.perf_counter(), time.process_time()
        if DPO_VARIANTS[name] is None:
            trainer.train()  # plain TRL: none of the project's switches
        else:
            train(trainer, config)
        seconds, cpu = time.perf_counter() - train_started, time.process_time() - cpu_started
    # plain_trainer loads the recipe's base (NF4) itself; its TRL args know nothing of the project's fields.
    settings = speed_settings(config if DPO_VARIANTS[name] is not None else trainer.args, config.load_4bit)
    return summary(trainer, clock, seconds, cpu, loaded, pair_tokens(trainer.train_dataset), len(pairs), settings=settings)


def speed_settings(args: Any, load_4bit: bool | None = None) -> str:
    load_4bit = args.load_4bit if load_4bit is None else load_4bit
    base = "NF4" if load_4bit else (getattr(args, "compute_dtype", None) or "fp32")
    parts = [f"base {base}", f"batch {args.per_device_train_batch_size} x {args.gradient_accumulation_steps}",
             f"bf16 autocast {args.bf16}", f"checkpointing {bool(args.gradient_checkpointing)}",
             f"labels-only head {getattr(args, 'lm_head_labels_only', False)}"]
    if getattr(args, "padding_free", False):
        parts.append("padding-free")
    if args.torch_compile:
        parts.append("torch.compile")
    return ", ".join(parts)


def summary(trainer: Any, clock: Any, seconds: float, cpu: float, loaded: float, tokens: int, examples: int,
            **extra: Any) -> dict[str, Any]:
    import torch

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "steps": trainer.state.global_step, "examples": examples, "tokens": tokens,
        "train_seconds": round(seconds, 3), "load_seconds": round(loaded, 3),
        "tokens_per_second": round(tokens / seconds, 2),
        # CPU time of the process: what other jobs on a shared machine disturb least
        "cpu_seconds": round(cpu, 3), "tokens_per_cpu_second": round(tokens / cpu, 2),
        "step_seconds_median": round(statistics.median(clock.seconds), 3),
        "step_seconds": [round(s, 3) for s in clock.seconds],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "first_loss": losses[0], "last_loss": losses[-1], "mean_loss": statistics.fmean(losses), "losses": losses,
        "threads": torch.get_num_threads(), **extra,
    }


def child(kind: str, name: str, steps: int, base_model: str | None) -> None:
    import logging

    logging.disable(logging.WARNING)  # TRL's advice on batch sizes etc. would bury the result line
    with tempfile.TemporaryDirectory(prefix="cowest-train-speed-") as work:
        run = run_sft if kind == "sft" else run_dpo
        result = run(name, steps, base_model, Path(work))
    print("RESULT " + json.dumps({"kind": kind, "variant": name, **result}), flush=True)


def spawn(kind: str, name: str, steps: int, base_model: str | None) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.train_speed", "--child", kind, name, "--steps", str(steps)]
    if base_model:
        command += ["--base-model", base_model]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy())
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{kind} {name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


# -- tables ----------------------------------------------------------------
def table(results: list[dict[str, Any]], kind: str, baseline: str) -> str:
    """One markdown table per kind; ratios against the baseline of the same round."""
    rows = [r for r in results if r["kind"] == kind]
    if not rows:
        return ""
    lines = ["| round | variant | settings | tokens/s | x baseline | tokens per CPU-s | x baseline | step s (median) "
             "| load s | peak RSS MiB | first loss | last loss | mean loss | largest step loss gap |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next((b for b in rows if b["variant"] == baseline and b["round"] == r["round"]), rows[0])
        gap = max(abs(a - b) for a, b in zip(r["losses"], base["losses"]))
        name = f"{r['variant']} (baseline)" if r is base else r["variant"]
        lines.append(f"| {r['round']} | {name} | {r['settings']} | {r['tokens_per_second']:.1f} | "
                     f"{r['tokens_per_second'] / base['tokens_per_second']:.2f}x | {cpu_rate(r, base)} | "
                     f"{r['step_seconds_median']:.2f} | "
                     f"{r['load_seconds']:.1f} | {r['peak_rss_mib']} | {r['first_loss']:.4f} | {r['last_loss']:.4f} | "
                     f"{r['mean_loss']:.4f} | {gap:.4f} |")
    return "\n".join(lines)


def cpu_rate(r: dict[str, Any], base: dict[str, Any]) -> str:
    """Tokens per CPU-second and its ratio; "–" for files recorded before the bench measured CPU time."""
    if "tokens_per_cpu_second" not in r or "tokens_per_cpu_second" not in base:
        return "– | –"
    return f"{r['tokens_per_cpu_second']:.1f} | {r['tokens_per_cpu_second'] / base['tokens_per_cpu_second']:.2f}x"


def report(data: dict[str, Any]) -> str:
    results = data["results"]
    head = (f"{data['machine']}; {data['steps']} optimizer steps of {BATCH} per variant; "
            f"recorded {data['date']}")
    sft = [r for r in results if r["kind"] == "sft"]
    sft_note = (f"SFT: {sft[0]['examples']} examples, {sft[0]['tokens']} tokens "
                f"({sft[0]['labelled']} with a loss)" if sft else "")
    dpo = [r for r in results if r["kind"] == "dpo"]
    dpo_note = f"DPO: {dpo[0]['examples']} pairs, {dpo[0]['tokens']} tokens" if dpo else ""
    parts = [head, sft_note, table(results, "sft", "old"), dpo_note, table(results, "dpo", "plain")]
    return "\n\n".join(p for p in parts if p)


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="repeat all variants, alternating, this many times")
    parser.add_argument("--sft", default="old,new", help=f"SFT variants, of: {', '.join(SFT_VARIANTS)}")
    parser.add_argument("--dpo", default="plain,old,new", help=f"DPO variants, of: {', '.join(DPO_VARIANTS)}")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where the results are kept")
    parser.add_argument("--table", type=Path, help="only print the tables of this results file")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model: a smoke run")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--base-model", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        return child(*args.child, args.steps, args.base_model)
    if args.table:
        return print(report(json.loads(args.table.read_text())))
    base_model = None
    if args.tiny:
        from bench.tiny import tiny_llama

        base_model = tiny_llama(layers=2, hidden=64)
    plan = [("sft", v) for v in args.sft.split(",") if v] + [("dpo", v) for v in args.dpo.split(",") if v]
    data = {"machine": machine(), "steps": args.steps, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "tiny": args.tiny, "command": " ".join(sys.argv[1:]), "results": []}
    for round_ in range(1, args.rounds + 1):
        for kind, name in plan if round_ % 2 else reversed(plan):  # alternate the order between rounds
            result = spawn(kind, name, args.steps, base_model)
            data["results"].append({"round": round_, **result})
            data["results"].sort(key=lambda r: (r["kind"] != "sft", r["round"], plan.index((r["kind"], r["variant"]))))
            print(f"# {kind} {name}: {result['tokens_per_second']:.1f} tokens/s, "
                  f"{result['tokens_per_cpu_second']:.1f} per CPU-s, last loss {result['last_loss']:.4f}",
                  file=sys.stderr, flush=True)
            if not args.tiny:  # after every variant: a run cut short keeps what it measured
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(data, indent=1) + "\n")
    print(report(data))


if __name__ == "__main__":
    main()
