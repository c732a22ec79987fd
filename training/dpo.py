"""DPO on collaborative-feedback preference pairs: retrains the weak model's LoRA adapter.

    python -m training.dpo --config training/recipes/dpo.yaml [--set key=value ...]

The dataset is a JSONL file of preference pairs in TRL's conversational format,
one object per line:

    {"prompt":   [{"role": "system", "content": ...}, {"role": "user", "content": ...}],
     "chosen":   [{"role": "assistant", "content": ...}],
     "rejected": [{"role": "assistant", "content": ...}]}

Without `init_adapter` a fresh LoRA adapter is trained and the DPO reference is
the base model. With `init_adapter` that adapter is trained further; the
reference is, by default, a frozen copy of it as loaded (`reference:
init_adapter`, the policy that wrote the drafts being judged), or the base
model with adapters disabled (`reference: base`).

Outputs in `output_dir`: the adapter, `resolved_config.yaml`, `progress.jsonl`
(followed live by the app) and, last, `metrics.json`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trl import DPOConfig

from training.common import (
    METRICS_FILE,
    JsonlProgress,
    ProjectFields,
    RecipeError,
    check_messages,
    is_main_process,
    last_logged,
    library_versions,
    load_base_model,
    lora_config,
    lora_shape,
    prepare_policy,
    run_cli,
    save_adapter,
    settle_trainable_weights,
    start_run,
    torch_threads,
    train,
    trainable_snapshot,
    write_json,
)

log = logging.getLogger(__name__)

REFERENCES = ("init_adapter", "base")


@dataclass
class DPORecipe(DPOConfig, ProjectFields):
    """TRL's DPOConfig (every option of DPOTrainer and TrainingArguments) plus the project's fields.

    Defaults below are the project's where they differ from TRL's; the
    shipped recipe YAMLs state their own choices on top.
    """

    dataset: str = "training/data/example_pairs.jsonl"
    reference: str = "init_adapter"  # with init_adapter: "init_adapter" (frozen copy) or "base"
    output_dir: str = "data/training/dpo"
    learning_rate: float = 5e-5
    num_train_epochs: float = 3.0
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 2
    logging_steps: float = 1  # every step reaches progress.jsonl, which the app's dashboard follows
    report_to: None | str | list[str] = "none"  # no experiment trackers
    save_strategy: str = "no"  # only the final adapter is saved, by training.dpo
    gradient_checkpointing: bool | None = None  # TRL's default (True) slows a 135M model for no memory need
    bf16: bool | None = None  # None: bf16 autocast where bf16 runs in hardware (GPUs, AMX CPUs; ProjectFields)

    def __post_init__(self) -> None:
        self.resolve_project_fields()
        super().__post_init__()
        self.check_project_fields()
        if self.reference not in REFERENCES:
            raise RecipeError(f"reference must be one of {REFERENCES}, got {self.reference!r}")
        if self.reference == "base" and self.precompute_ref_log_probs and self.init_adapter:
            # TRL precomputes inside its constructor, before the reference can be switched to the base.
            raise RecipeError("reference: base cannot be combined with precompute_ref_log_probs")
        if self.max_length is not None and self.max_length <= 0:
            raise RecipeError(f"max_length must be positive, got {self.max_length}")
        if self.beta <= 0:
            raise RecipeError(f"beta must be positive, got {self.beta}")


# -- data ------------------------------------------------------------------
def load_pairs(path: str | Path) -> list[dict[str, list[dict[str, str]]]]:
    """Read and validate preference pairs; extra keys (ids, metadata) are dropped.

    Only prompt/chosen/rejected are kept: TRL inspects dataset columns (an
    `images` column would switch it to its vision path).
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"dataset {path} does not exist")
    pairs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(row, dict):
            raise RecipeError(f"{where}: expected an object with prompt, chosen and rejected")
        pairs.append(
            {
                "prompt": check_messages(row.get("prompt"), f"{where} prompt", assistant_only=False),
                "chosen": check_messages(row.get("chosen"), f"{where} chosen", assistant_only=True),
                "rejected": check_messages(row.get("rejected"), f"{where} rejected", assistant_only=True),
            }
        )
    if not pairs:
        raise RecipeError(f"dataset {path} holds no preference pairs")
    return pairs


# -- training --------------------------------------------------------------
def _use_base_as_reference(trainer: Any) -> None:
    # TRL 1.16 gives a PeftModel passed without peft_config a frozen "ref" copy
    # of its adapter and uses it as the reference; without that copy it falls
    # back to the model with adapters disabled.
    if "ref" in trainer.model.peft_config:
        trainer.model.delete_adapter("ref")


def check_precompute(config: DPORecipe, device: str) -> None:
    """Refuse precomputed reference log-probs on a CPU QLoRA run.

    TRL precomputes with an inference forward pass before training starts. On
    CPU, bitsandbytes repacks NF4 weights on the first such pass and then runs
    a kernel (`gemv_4bit`) that has no backward: gradients stop flowing through
    the frozen 4-bit layers and the adapter learns far less, silently
    (bench/dpo.py found it; tests/training/test_dpo.py keeps it refused).
    """
    if config.precompute_ref_log_probs and config.load_4bit and device == "cpu":
        raise RecipeError(
            "precompute_ref_log_probs with load_4bit on CPU trains wrong (bitsandbytes' repacked NF4 kernel has "
            "no backward); set precompute_ref_log_probs: false, or load_4bit: false"
        )


def build_trainer(config: DPORecipe, pairs: list[dict[str, Any]]):
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOTrainer

    from cowest_app.models.local import default_device

    check_precompute(config, default_device())
    set_seed(config.seed)  # the trainer seeds itself only after LoRA's random init
    model, tokenizer = load_base_model(config.base_model, config.load_4bit, config.cache_dir,
                                       compute_dtype=config.compute_dtype)
    new_lora = lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.target_modules)
    model, peft_config = prepare_policy(
        model, config.load_4bit, config.init_adapter, config.activation_checkpointing, new_lora
    )
    before = trainable_snapshot(model)  # a continued adapter's exact weights (TRL rounds them to bf16)
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[JsonlProgress(config.output_dir)],
    )
    if config.init_adapter and config.reference == "base":
        _use_base_as_reference(trainer)
    settle_trainable_weights(trainer.model, before, config.train_modules)
    if len(trainer.train_dataset) == 0:
        raise RecipeError(f"every pair's prompt is longer than max_length={config.max_length}")
    return trainer


def main(config: DPORecipe) -> dict[str, Any]:
    """Train the adapter described by `config`; return the metrics also written to metrics.json."""
    with torch_threads(config.torch_threads):
        return _run(config)


def _run(config: DPORecipe) -> dict[str, Any]:
    started = time.perf_counter()
    out = start_run(config, config.output_dir)  # first: a dashboard must not read a stale run's files
    pairs = load_pairs(config.dataset)  # fail on bad data before loading any model
    trainer = build_trainer(config, pairs)
    train_started = time.perf_counter()
    result = train(trainer, config)
    seconds = time.perf_counter() - train_started
    save_adapter(trainer.model, out)

    history = trainer.state.log_history
    n_pairs = len(trainer.train_dataset)
    metrics = {
        "kind": "dpo",
        "train_loss": float(result.training_loss),
        "first_loss": last_logged(history[:1], "loss"),
        "final_loss": last_logged(history, "loss"),
        "rewards/margins": last_logged(history, "rewards/margins"),
        "rewards/accuracies": last_logged(history, "rewards/accuracies"),
        "n_pairs": n_pairs,
        "n_pairs_dropped": len(pairs) - n_pairs,
        "steps": trainer.state.global_step,
        "epochs": float(trainer.state.epoch or 0.0),
        "seconds": round(seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "pairs_per_second": round(n_pairs * float(trainer.state.epoch or 0.0) / seconds, 4) if seconds else None,
        "adapter_dir": str(out),
        "init_adapter": config.init_adapter,
        "reference": config.reference if config.init_adapter else "base",
        "lora": lora_shape(trainer.model),
        "load_4bit": config.load_4bit,
        "versions": library_versions(),
    }
    if is_main_process():  # the ranks of a data-parallel run would race on one file
        write_json(out / METRICS_FILE, metrics)
    log.info("DPO done: %d steps on %d pairs in %.1fs, adapter in %s", metrics["steps"], n_pairs, seconds, out)
    return metrics


if __name__ == "__main__":
    sys.exit(run_cli(DPORecipe, main, None, __doc__.splitlines()[0]))
