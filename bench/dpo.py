"""DPO retraining: pairs/s of the project's training run vs a plain TRL DPOTrainer.

    .venv/bin/python -m bench.dpo [--pairs 64] [--epochs 1] [--threads N] [--variants plain,shipped,project]
                                  [--set key=value ...] [--tiny]

Run from the repository root. Every variant trains the same LoRA (the shipped
recipe's r, alpha, targets, learning rate, beta, seed, effective batch) on the
same pairs of the same base model (4-bit NF4 SmolLM2-135M, as the app runs it),
for the same number of optimizer steps, and is timed from model loading to the
end of training (reference log-probs precomputed in the trainer's constructor
are inside that time):

- `plain` (the baseline): `DPOTrainer` with TRL's default settings, the model
  prepared the usual QLoRA way (`prepare_model_for_kbit_training` defaults);
- `shipped`: `training.dpo` with the recipe as it was before this benchmark
  (batches of 2 x 2 accumulation, reference computed on the fly);
- `project`: `training.dpo` with `training/recipes/dpo.yaml` as it is now,
  plus any `--set` overrides;
- ablations of the baseline: `plain-no-checkpointing` (TRL turns activation
  checkpointing on by default) and `plain-fp32-no-checkpointing` (TRL also
  turns bf16 autocast on by default).

The 64 pairs are the shipped example pairs, varied in length (each chosen and
rejected answer is followed by 0-2 answers of other examples), so batches mix
short and long pairs the way collected drafts do. Losses: `mean loss` is the
trainer's average over all steps, `final loss` the last step's (4 pairs: noisy).
`--tiny` runs on a tiny random model: a smoke run, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from training.common import last_logged, load_base_model, load_recipe, lora_config, torch_threads
from training.dpo import DPORecipe, build_trainer, load_pairs

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "training" / "recipes" / "dpo.yaml"
EXAMPLES = ROOT / "training" / "data" / "example_pairs.jsonl"
# The recipe's speed settings before this benchmark existed (dpo.yaml at commit 12698a7).
SHIPPED = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "precompute_ref_log_probs": False}
# Ablations of the plain path: which of TRL's defaults costs what on this machine.
PLAIN_VARIANTS = {
    "plain": {},
    "plain-no-checkpointing": {"gradient_checkpointing": False},
    "plain-fp32-no-checkpointing": {"gradient_checkpointing": False, "bf16": False},
}


def varied_pairs(n: int) -> list[dict]:
    """n pairs from the example pairs, answers lengthened by 0-2 answers of other examples."""
    examples = load_pairs(EXAMPLES)
    pairs = []
    for i in range(n):
        base = examples[i % len(examples)]
        extra = [examples[(i + j) % len(examples)] for j in range(1, 1 + (i // len(examples)) % 3)]

        def answer(side: str) -> list[dict]:
            text = "\n".join([base[side][0]["content"]] + [e[side][0]["content"] for e in extra])
            return [{"role": "assistant", "content": text}]

        prompt = [dict(m) for m in base["prompt"]]
        prompt[-1]["content"] += f" (case {i})"  # distinct prompts, as distinct questions would be
        pairs.append({"prompt": prompt, "chosen": answer("chosen"), "rejected": answer("rejected")})
    return pairs


def steps_for(recipe: DPORecipe, n_pairs: int, epochs: float) -> int:
    per_step = recipe.per_device_train_batch_size * recipe.gradient_accumulation_steps
    return max(1, math.ceil(n_pairs * epochs / per_step))


def plain_trainer(recipe: DPORecipe, pairs: list[dict], steps: int, out: Path, **changes: Any):
    """TRL's DPOTrainer as its documentation sets it up, every speed setting left at TRL's default."""
    from datasets import Dataset
    from peft import prepare_model_for_kbit_training
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    set_seed(recipe.seed)
    model, tokenizer = load_base_model(recipe.base_model, recipe.load_4bit, recipe.cache_dir)
    if recipe.load_4bit:
        model = prepare_model_for_kbit_training(model)
    args = DPOConfig(
        output_dir=str(out), learning_rate=recipe.learning_rate, beta=recipe.beta, max_steps=steps,
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps, max_length=recipe.max_length,
        seed=recipe.seed, logging_steps=1, report_to=[], save_strategy="no", use_cpu=not torch.cuda.is_available(),
        **changes,
    )
    peft = lora_config(recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout, recipe.target_modules)
    return DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer,
                      peft_config=peft)


def run_variant(name: str, recipe: DPORecipe, pairs: list[dict], steps: int, work: Path) -> dict[str, Any]:
    out = work / name
    started = time.perf_counter()
    with torch_threads(recipe.torch_threads):
        if name in PLAIN_VARIANTS:
            trainer = plain_trainer(recipe, pairs, steps, out, **PLAIN_VARIANTS[name])
        else:
            trainer = build_trainer(dataclasses.replace(recipe, output_dir=str(out), max_steps=steps), pairs)
        train_started = time.perf_counter()
        result = trainer.train()
    ended = time.perf_counter()
    per_step = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
    history = trainer.state.log_history
    return {
        "name": name, "steps": trainer.state.global_step, "pairs_seen": trainer.state.global_step * per_step,
        "seconds": ended - started, "train_seconds": ended - train_started, "mean_loss": float(result.training_loss),
        "final_loss": last_logged(history, "loss"),
        "losses": [h["loss"] for h in history if "loss" in h],
        "settings": f"batch {trainer.args.per_device_train_batch_size} x {trainer.args.gradient_accumulation_steps}, "
                    f"bf16 {trainer.args.bf16}, checkpointing {trainer.args.gradient_checkpointing}, "
                    f"precompute ref {trainer.args.precompute_ref_log_probs}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=1.0, help="passes over the pairs (sets the step count)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--variants", default="plain,shipped,project")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for `project`")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    overrides = [f"torch_threads={args.threads}"]
    if args.tiny:
        from bench.tiny import tiny_llama

        overrides.append(f"base_model={tiny_llama(layers=2, hidden=64)}")
    recipe = load_recipe(DPORecipe, RECIPE, overrides)
    project = load_recipe(DPORecipe, RECIPE, overrides + args.set)
    shipped = dataclasses.replace(recipe, **SHIPPED)
    recipes = {**{name: shipped for name in PLAIN_VARIANTS}, "shipped": shipped, "project": project}
    pairs = varied_pairs(args.pairs)
    steps = steps_for(shipped, len(pairs), args.epochs)  # the same step count and effective batch for all
    assert all(steps_for(recipes[v], len(pairs), args.epochs) == steps for v in args.variants.split(",")), \
        "variants must share the effective batch size"

    work = Path(tempfile.mkdtemp(prefix="cowest-bench-dpo-"))
    results = []
    for variant in args.variants.split(","):
        results.append(run_variant(variant, recipes[variant], pairs, steps, work))
        r = results[-1]
        print(f"# {variant}: {r['seconds']:.1f} s, mean loss {r['mean_loss']:.4f}", file=sys.stderr, flush=True)

    print(f"base {recipe.base_model} ({'NF4 QLoRA' if recipe.load_4bit else 'full precision'}), {len(pairs)} pairs, "
          f"{steps} optimizer steps of {shipped.per_device_train_batch_size * shipped.gradient_accumulation_steps} pairs, "
          f"{torch.get_num_threads() if not args.threads else args.threads} torch threads\n")
    print("| variant | settings | seconds (load + setup + train) | pairs/s | x baseline | mean loss | final loss |")
    print("|---|---|---|---|---|---|---|")
    base_rate = results[0]["pairs_seen"] / results[0]["seconds"]
    for r in results:
        rate = r["pairs_seen"] / r["seconds"]
        name = f"{r['name']} (baseline)" if r is results[0] else r["name"]
        print(f"| {name} | {r['settings']} | {r['seconds']:.1f} | {rate:.3f} | {rate / base_rate:.2f}x | "
              f"{r['mean_loss']:.4f} | {r['final_loss']:.4f} |")
    if len(results) > 1:
        first = results[0]["losses"]
        for r in results[1:]:
            gap = max(abs(a - b) for a, b in zip(first, r["losses"]))
            print(f"\nlargest per-step loss gap, {r['name']} vs {results[0]['name']}: {gap:.4f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
