"""Shared pieces of the training entry points (`training.dpo`, `training.sft`).

A recipe is a YAML file whose keys are fields of a recipe class: TRL's
`SFTConfig` or `DPOConfig` (so every TRL and transformers training option) plus
the project's few own fields (`ProjectFields`). `--set key=value` and `--key
value` on the command line override single fields; TRL's parser converts every
value to the field's type. Every run writes, inside its output directory:

- the LoRA adapter (`adapter_config.json`, `adapter_model.safetensors`),
- `resolved_config.yaml`: the recipe after overrides, loadable as a recipe again,
- `progress.jsonl`: one JSON line per trainer log event, appended as training
  goes, so a parent process (the app's dashboard) can follow a child run,
- `metrics.json`: written last, so its presence means the run finished.

Relative paths in a recipe are relative to the working directory of the run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import enum
import json
import logging
import os
import sys
import threading
import time
import typing
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import yaml
from transformers import TrainerCallback
from trl.scripts.utils import TrlParser

from cowest_app.files import write_atomic
from cowest_app.loop.training_job import NICE_ENV, PARENT_PID_ENV  # set by the app for a training child

log = logging.getLogger(__name__)

R = TypeVar("R")

RESOLVED_CONFIG = "resolved_config.yaml"
PROGRESS_FILE = "progress.jsonl"
METRICS_FILE = "metrics.json"


class RecipeError(ValueError):
    """A recipe that cannot be used, with a message that names the file and key."""


# -- recipes ---------------------------------------------------------------
# The keys a recipe YAML, `--set key=value` and `--key value` flags may set are
# the fields of the recipe class: a TRL config (SFTConfig / DPOConfig) plus the
# project's own fields below. TRL's parser (TrlParser, a transformers
# HfArgumentParser) turns them into the dataclass, so every TRL and
# transformers training option works without a change here.
SECRET_FIELDS = ("hub_token",)  # never written into resolved_config.yaml
# Deprecated transformers aliases that mirror activation_checkpointing*: the resolved config states the real names.
ALIAS_FIELDS = ("gradient_checkpointing", "gradient_checkpointing_kwargs")
_NULLS = {"none", "null", ""}  # how a command line says "no value" for an optional path


@dataclasses.dataclass
class ProjectFields:
    """The project's fields of a recipe, shared by SFTRecipe and DPORecipe (which add their data path).

    A recipe class lists this after its TRL config among its bases, so these
    fields come first in the resolved config. TrainingArguments.__post_init__
    does not chain to other bases: a recipe calls `resolve_project_fields`
    before and `check_project_fields` after it.
    """

    base_model: str = "packaged:smollm2-135m-instruct"  # packaged:NAME, a directory or a Hub id
    load_4bit: bool = True  # QLoRA: NF4 base, LoRA in full precision
    init_adapter: str | None = None  # continue training this adapter (its own r/alpha/targets apply)
    # With init_adapter: only its LoRA weights on these modules train, the rest stay as loaded
    # (e.g. [q_proj, k_proj, v_proj, o_proj]: what the adapter recalls in its MLPs is kept); null: all.
    train_modules: list[str] | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = dataclasses.field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    compute_dtype: str | None = None  # the frozen base's dtype; null: float32 on CPU, bfloat16 on GPUs; auto: see load_base_model
    lm_head_labels_only: bool = True  # TRL's fused LM head skips prompt/padding positions on CPU too (lm_head_on_labels)
    torch_threads: int = 0  # 0: torch's default
    cache_dir: str | None = None  # model cache; None: $COWEST_CACHE_DIR or ~/.cache/cowest

    def resolve_project_fields(self) -> None:
        """Settings the TRL config needs before its own __post_init__ runs."""
        for name in ("init_adapter", "cache_dir", "compute_dtype"):
            value = getattr(self, name)
            # The parser keeps `--set init_adapter=none` as the string "none" for str fields.
            if isinstance(value, str) and value.strip().lower() in _NULLS:
                setattr(self, name, None)
        if self.bf16 is None:  # TRL's default would be bf16 autocast everywhere, slow on CPUs without AMX
            self.bf16 = native_bf16()
        # transformers refuses bf16 autocast on a machine without a bf16 GPU unless told the run is on CPU.
        self.use_cpu = self.use_cpu or not torch.cuda.is_available()

    def check_project_fields(self) -> None:
        for name in ("lora_r", "lora_alpha", "per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) <= 0:
                raise RecipeError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.target_modules:
            raise RecipeError("target_modules must name at least one module")
        if self.train_modules is not None and not (self.train_modules and self.init_adapter):
            raise RecipeError("train_modules needs init_adapter and at least one module (null: train the whole adapter)")
        check_compute_dtype(self.compute_dtype)


def native_bf16() -> bool:
    """bf16 runs in hardware here: a GPU that supports it, or (without a GPU) a CPU with AVX512-BF16 / AMX.

    On such a CPU, bf16 autocast alone made the old SFT recipe 1.5x faster (bench/README.md,
    section 7); elsewhere torch emulates bf16, slower than fp32.
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    from cowest_app.models.local import cpu_has_native_bf16

    return cpu_has_native_bf16()


def project_field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ProjectFields)]


class RecipeParser(TrlParser):
    """TRL's parser, raising RecipeError where argparse would print usage and exit."""

    def error(self, message: str) -> typing.NoReturn:
        raise RecipeError(message)

    def field_names(self) -> list[str]:
        return [f.name for cls in self.dataclass_types for f in dataclasses.fields(cls) if f.init]

    def action(self, name: str) -> argparse.Action:
        return next(a for a in self._actions if a.dest == name)


def _unknown_key(key: str, parser: RecipeParser, where: str) -> RecipeError:
    cls = parser.dataclass_types[0].__name__
    close = difflib.get_close_matches(key, parser.field_names(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return RecipeError(f"{where}: unknown key {key!r} for {cls} (its TRL config's fields and the project's){hint}")


def _yaml_default(parser: RecipeParser, key: str, value: Any) -> Any:
    """A YAML value as the parser's default for `key`.

    TRL's `set_defaults_with_config` takes YAML values as argparse defaults,
    which argparse type-converts only when they are strings. Scalars are
    therefore handed over as text, so `max_steps: 1.5` fails like
    `--max_steps 1.5` would, and `5e-5` (a string to PyYAML) becomes a float.
    """
    action = parser.action(key)
    if isinstance(value, (bool, int, float)):
        return str(value)
    if isinstance(value, list) and action.nargs == "+":  # a list field: convert each item like the CLI does
        try:
            return [action.type(str(item)) for item in value]
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"key {key!r}: {exc}") from None
    return value  # None, strings, and dicts for the dict-valued TRL fields


def _override_flags(parser: RecipeParser, item: str) -> list[str]:
    """`key=value` (the --set form) as the command-line flags `--key value`."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"--set expects key=value, got {item!r}")
    if key not in parser.field_names():
        raise _unknown_key(key, parser, f"--set {key}")
    if parser.action(key).nargs == "+":  # a list field: `target_modules=q_proj,v_proj`
        return [f"--{key}", *(v.strip() for v in value.split(",") if v.strip())]
    return [f"--{key}", value]


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path} is not valid YAML: {exc}") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path} must be a mapping of key: value, got {type(raw).__name__}")
    return raw


def load_recipe(cls: type[R], path: str | Path, overrides: Sequence[str] = (), flags: Sequence[str] = ()) -> R:
    """Build the recipe `cls` from a YAML file, then `key=value` overrides, then `--key value` flags.

    Later sources win. Errors (an unknown key, a value of the wrong type, a
    check of the recipe or of TRL's config) are RecipeErrors naming the file
    and the key.
    """
    path = Path(path)
    raw = read_yaml_mapping(path)
    parser = RecipeParser(cls)
    for key in raw:
        if key not in parser.field_names():
            raise _unknown_key(key, parser, str(path))
    try:
        parser.set_defaults_with_config(**{k: _yaml_default(parser, k, v) for k, v in raw.items()})
        argv = [token for item in overrides for token in _override_flags(parser, item)] + list(flags)
        (config,) = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    except ValueError as exc:  # RecipeError, argparse's type errors, and the configs' own checks
        raise RecipeError(f"recipe {path}: {exc}") from None
    return config


def _plain(value: Any) -> Any:
    """A config value as YAML writes it: enums as their value, nested configs as dicts."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "to_dict"):  # transformers' AcceleratorConfig and similar
        return value.to_dict()
    return value


def recipe_dict(config: Any) -> dict[str, Any]:
    """The recipe as plain values, loadable as a recipe again.

    Every project field and every field the recipe class sets a default for
    (the project's choices on top of TRL's), then each other TRL field that
    differs from its default. That default comes from an instance built here,
    so values TRL resolves from the machine alike on both sides (tqdm, devices)
    are left out instead of listing all ~200 TrainingArguments fields.
    """
    cls = type(config)
    defaults = cls()
    always = set(project_field_names()) | set(cls.__dict__.get("__annotations__", {})) | {"activation_checkpointing"}
    values = {}
    for field in dataclasses.fields(config):
        if not field.init or field.name in SECRET_FIELDS + ALIAS_FIELDS:
            continue
        value = _plain(getattr(config, field.name))
        if field.name in always or value != _plain(getattr(defaults, field.name)):
            values[field.name] = value
    return values


def save_resolved_config(config: Any, out_dir: str | Path) -> Path:
    """Write the recipe as used (after overrides) beside the outputs; it loads back as a recipe."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / RESOLVED_CONFIG
    target.write_text(yaml.safe_dump(recipe_dict(config), sort_keys=False), encoding="utf-8")
    return target


def start_run(config: Any, out_dir: str | Path) -> Path:
    """Prepare the output directory of a new run and record its recipe.

    A stale metrics.json (whose presence means "finished") and progress.jsonl
    from an earlier run into the same directory are removed first, so a
    dashboard never mistakes them for this run's.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not is_main_process():  # data-parallel: rank 0 alone owns the output files
        return out
    (out / METRICS_FILE).unlink(missing_ok=True)
    (out / PROGRESS_FILE).unlink(missing_ok=True)
    save_resolved_config(config, out)
    return out


def is_main_process() -> bool:
    """Rank 0 of a data-parallel run (`accelerate launch` sets RANK), or a single-process run."""
    return int(os.environ.get("RANK", "0")) == 0


def training_device() -> str:
    """This process's device: under `accelerate launch` on GPUs, the one GPU of its local rank."""
    from cowest_app.models.local import default_device

    device = default_device()
    local_rank = os.environ.get("LOCAL_RANK")
    return f"cuda:{int(local_rank)}" if device == "cuda" and local_rank is not None else device


def write_json(path: Path, data: dict[str, Any], sort_keys: bool = True) -> None:
    # Atomic: a dashboard polling the file never reads half of it.
    write_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=str) + "\n")


# -- models ----------------------------------------------------------------
def set_threads(n: int | None) -> None:
    """Use n CPU threads for torch ops; 0 or None keeps torch's default."""
    if n and n > 0:
        torch.set_num_threads(n)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """set_threads for the duration of a run; an in-process caller gets its setting back."""
    previous = torch.get_num_threads()
    set_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


COMPUTE_DTYPES = ("auto", "float32", "bfloat16")


def check_messages(value: Any, where: str, assistant_only: bool) -> list[dict[str, str]]:
    """Chat messages as JSONL training data holds them; RecipeError naming `where` otherwise."""
    if not isinstance(value, list) or not value:
        raise RecipeError(f"{where}: expected a non-empty list of messages")
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or "role" not in message:
            raise RecipeError(f"{where}: each message needs a role and a string content, got {message!r}")
    if assistant_only and (len(value) != 1 or value[0]["role"] != "assistant"):
        raise RecipeError(f"{where}: expected exactly one assistant message")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def check_compute_dtype(name: str | None) -> None:
    if name is not None and name not in COMPUTE_DTYPES:
        raise RecipeError(f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)} or null, got {name!r}")


def load_base_model(ref: str, load_4bit: bool, cache_dir: str | Path | None, device: str | None = None,
                    compute_dtype: str | None = None):
    """Load (model, tokenizer) the way the app does: packaged names, directories or Hub ids.

    `compute_dtype` (None: the app's default for the device) is the dtype the
    frozen base computes in: its weights', or NF4's compute dtype; `auto` is
    bfloat16 where it runs in hardware (GPUs, CPUs with AVX512-BF16 or AMX) and
    float32 elsewhere, and for NF4 on CPU always float32: bitsandbytes' CPU
    NF4 layers trained slower in bf16 than in fp32 (bench/README.md, section 7).
    LoRA adapters stay float32 either way (peft keeps them so; see upcast_adapter).
    """
    from transformers import AutoTokenizer

    from cowest_app.models import refs
    from cowest_app.models.local import load_causal_lm, resolve_dtype

    check_compute_dtype(compute_dtype)
    cache = Path(cache_dir).expanduser() if cache_dir else refs.default_cache_dir()
    path = refs.resolve(ref, cache)
    device = device or training_device()
    if compute_dtype == "auto" and load_4bit and device == "cpu":
        compute_dtype = None  # the app's CPU default for NF4: float32
    model = load_causal_lm(path, load_4bit, device, resolve_dtype(compute_dtype, device) if compute_dtype else None)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def lora_config(r: int, alpha: int, dropout: float, target_modules: Sequence[str]):
    from peft import LoraConfig

    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), task_type="CAUSAL_LM"
    )


def prepare_policy(model: Any, load_4bit: bool, init_adapter: str | None, gradient_checkpointing: bool, new_lora: Any):
    """Return (model, peft_config) ready for a TRL trainer.

    A fresh adapter is left to the trainer (it receives `new_lora`); an existing
    one is loaded trainable here, and the trainer must then get no peft_config.
    LoRA layers are injected before the model's first forward pass (see the
    bitsandbytes CPU note in cowest_app.models.local).
    """
    if load_4bit:
        from peft import prepare_model_for_kbit_training

        # Freezes the NF4 base and upcasts norms/embeddings to fp32 for stable gradients.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if init_adapter is None:
        return model, new_lora
    from peft import PeftModel

    if not Path(init_adapter, "adapter_config.json").is_file():
        raise RecipeError(f"init_adapter {init_adapter} has no adapter_config.json")
    return PeftModel.from_pretrained(model, init_adapter, is_trainable=True), None


def freeze_lora_outside(model: Any, modules: Sequence[str]) -> None:
    """Freeze the trainable weights of every module not named in `modules` (a recipe's train_modules).

    Called on the trainer's model, after the trainer is built (TRL's DPOTrainer adds its frozen
    reference adapter then, and PEFT marks the active adapter trainable again) and before it
    creates the optimizer.
    """
    trained = 0
    for name, param in model.named_parameters():
        if param.requires_grad:
            keep = any(f".{module}." in name for module in modules)
            param.requires_grad = keep
            trained += keep
    if trained == 0:
        raise RecipeError(f"train_modules {list(modules)} name no module the adapter has")


def settle_trainable_weights(model: Any, snapshot: dict[str, torch.Tensor], train_modules: Sequence[str] | None) -> None:
    """What every recipe does to the trainer's model once it is built, before the optimizer exists:
    the adapter back in fp32 (`upcast_adapter`), and with `train_modules` only their LoRA weights training."""
    upcast_adapter(model, snapshot)
    if train_modules is not None:
        freeze_lora_outside(model, train_modules)


def trainable_snapshot(model: Any) -> dict[str, torch.Tensor]:
    """Copies of a loaded adapter's trainable weights, taken before a TRL trainer touches them."""
    if not hasattr(model, "peft_config"):  # a bare base: nothing to keep (and far too much to copy)
        return {}
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def upcast_adapter(model: Any, snapshot: dict[str, torch.Tensor] | None = None) -> None:
    """Undo TRL's bf16 cast of QLoRA adapter weights: the adapter trains in fp32.

    TRL casts trainable weights of a quantised model to bf16. Adam's small
    updates then round away (bench/README.md, DPO: the plain run's loss fell
    more slowly), and on CPU, where NF4 computes in fp32 (`nf4_config`), bf16
    adapters also cost speed. fp32 adapter weights are the master copy on every
    device; on GPUs the matmuls still run in bf16 under autocast. Weights found
    in `snapshot` (a continued adapter) get their exact fp32 values back, not
    the bf16-rounded ones. Must run before the optimizer is created, i.e.
    before `trainer.train()`.
    """
    snapshot = snapshot or {}
    for name, param in model.named_parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            original = snapshot.get(name)
            param.data = original if original is not None and original.dtype == torch.float32 else param.data.float()


@contextlib.contextmanager
def lm_head_on_labels(enabled: bool = True) -> Iterator[None]:
    """While active, TRL's fused LM head projects only positions that have a label, on every device.

    TRL 1.16 (`trl.trainer.utils.add_fused_lm_head`) scores only labelled
    positions where Triton runs (CUDA, XPU) and every position elsewhere, so
    that compiled Neuron graphs keep one shape. On CPU that runs the 49k-word
    projection, its softmax statistics and their backward for every prompt and
    padding token as well: more time than the whole model body (bench/README.md,
    section 7). Unlabelled positions come out as zeros either way,
    so this changes the work, not the result
    (tests/training/test_throughput.py). TRL picks the path per forward call
    through its module's `_use_triton`, which this swaps for the duration.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if not enabled or original is None:  # a TRL without the switch: leave it alone
        if enabled:
            log.warning("this TRL has no trl.trainer.utils._use_triton; the LM head scores every position")
        yield
        return
    trl_utils._use_triton = lambda device: True  # only the "compact" choice reads this binding
    try:
        yield
    finally:
        trl_utils._use_triton = original


RESUME_LAST = "last"  # resume_from_checkpoint: the newest checkpoint in output_dir, if any


def resume_checkpoint(config: Any) -> str | None:
    """The checkpoint to resume from: TrainingArguments' `resume_from_checkpoint` as a path,
    or `last` for the newest in output_dir (a fresh start when there is none, so an
    interrupted long run and its first attempt share one command)."""
    from transformers.trainer_utils import get_last_checkpoint

    wanted = config.resume_from_checkpoint
    if wanted != RESUME_LAST:
        return wanted
    out = Path(config.output_dir)
    return get_last_checkpoint(str(out)) if out.is_dir() else None


def train(trainer: Any, config: Any) -> Any:
    """trainer.train() with the recipe's speed switches that act at run time."""
    with lm_head_on_labels(getattr(config, "lm_head_labels_only", False)):
        return trainer.train(resume_from_checkpoint=resume_checkpoint(config))


def save_adapter(model: Any, out_dir: Path) -> None:
    """Save only the trained LoRA adapter (rank 0 only: the ranks hold the same weights).

    For a continued adapter TRL adds a frozen copy named "ref" as the DPO
    reference; `selected_adapters` keeps it out of the saved directory.
    """
    if is_main_process():
        model.save_pretrained(str(out_dir), selected_adapters=["default"])


def lora_shape(model: Any) -> dict[str, Any]:
    config = model.peft_config["default"]
    return {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules)}


# -- progress and metrics --------------------------------------------------
_PROGRESS_KEYS = (
    "loss",
    "learning_rate",
    "grad_norm",
    "rewards/margins",
    "rewards/accuracies",
    "rewards/chosen",
    "rewards/rejected",
    "train_loss",
    "train_runtime",
)


class JsonlProgress(TrainerCallback):
    """Appends one JSON line per trainer log event to `out_dir/progress.jsonl`.

    Each line has `event` ("begin", "log" or "end"), `step`, `max_steps`,
    `epoch`, `time`, and the logged values that are present (`loss`, and for DPO
    `rewards/margins`, `rewards/accuracies`). The file is reopened for every line
    so another process can tail it while training runs.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / PROGRESS_FILE

    def _write(self, state: Any, event: str, values: dict[str, Any]) -> None:
        if not state.is_world_process_zero:
            return
        line = {"event": event, "step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch}
        line.update(values)
        line["time"] = round(time.time(), 3)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write(state, "begin", {})

    def on_log(self, args, state, control, logs=None, **kwargs):
        values = {k: float(logs[k]) for k in _PROGRESS_KEYS if logs and k in logs}
        self._write(state, "log", values)

    def on_train_end(self, args, state, control, **kwargs):
        self._write(state, "end", {})


def last_logged(history: list[dict[str, Any]], key: str) -> float | None:
    """The most recent value of `key` in a trainer's log history."""
    for entry in reversed(history):
        if key in entry:
            return float(entry[key])
    return None


def library_versions() -> dict[str, str]:
    import peft
    import transformers
    import trl

    modules = {"torch": torch, "transformers": transformers, "trl": trl, "peft": peft}
    return {name: module.__version__ for name, module in modules.items()}


# -- command line ----------------------------------------------------------
def run_cli(cls: type[R], main: Callable[[R], dict[str, Any]], argv: Sequence[str] | None, description: str) -> int:
    """`--config recipe.yaml [--set key=value ...] [--key value ...]`: run `main`, print its metrics as JSON."""
    parser = argparse.ArgumentParser(
        description=description,
        epilog=f"Any other --KEY VALUE sets a field of {cls.__name__} (its TRL config's or the project's), "
               "after the recipe and the --set overrides.",
    )
    parser.add_argument("--config", required=True, help="YAML recipe")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one recipe key")
    ns, flags = parser.parse_known_args(argv)
    lower_priority()
    exit_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_recipe(cls, ns.config, ns.set, flags)
    except RecipeError as exc:
        parser.error(str(exc))  # exits with status 2 and the message on stderr
    from cowest_app.models.refs import ModelRefError

    try:
        metrics = main(config)
    except (RecipeError, ModelRefError) as exc:  # bad data or model reference: one clear line, no traceback
        _log_failure(config, exc)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except BaseException as exc:
        _log_failure(config, exc)
        raise
    print(json.dumps(metrics, sort_keys=True), file=sys.stdout, flush=True)
    return 0


def lower_priority() -> int:
    """Started by the app with COWEST_TRAIN_NICE: run at that niceness; returns the one now in effect.

    Called before torch starts its threads, which inherit the calling thread's
    niceness on Linux; on a shared CPU the kernel then serves the app's answers
    first and training takes the time left over.
    """
    if not hasattr(os, "nice"):  # Windows
        return 0
    current = os.nice(0)
    raw = os.environ.get(NICE_ENV)
    return os.nice(max(0, int(raw) - current)) if raw else current


def exit_with_parent(poll_s: float = 0.5) -> None:
    """Started by the app (COWEST_PARENT_PID set): end this process soon after the app is gone.

    The app starts a run in its own session, so that stopping it kills the whole
    process group. That also means a crashed or SIGKILLed app would leave the run
    training on as an orphan, holding CPU and writing into the staging folder that
    the restarted app discards (and may reuse for its next run).
    """
    raw = os.environ.get(PARENT_PID_ENV)
    if not raw:
        return
    parent = int(raw)

    def watch() -> None:
        while os.getppid() == parent:  # an orphan is adopted by another process: the pid changes
            time.sleep(poll_s)
        print(f"the app (pid {parent}) is gone; stopping this training run", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _log_failure(config: Any, exc: BaseException) -> None:
    """Record the failure in progress.jsonl too, for a dashboard that only reads the file."""
    out = Path(getattr(config, "output_dir", "") or ".")
    if out.is_dir():
        line = {"event": "error", "error": f"{type(exc).__name__}: {exc}", "time": round(time.time(), 3)}
        with (out / PROGRESS_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
