"""Domain specialisation of the weak model: LoRA fine-tuning on a text corpus.

    python -m training.sft --config training/recipes/sft.yaml [--set key=value ...]

The corpus is a directory of .txt/.md files (read recursively) or a JSONL file
with, per line, either a `text` field or a `messages` chat. Each text, followed
by an end-of-sequence token, is cut into chunks of at most `max_length` tokens,
and the model learns every token (plain language modelling). A chat is rendered
with the tokenizer's chat template and the model learns only its last message
(the assistant's reply), so a prompt is never something it learns to write.

Outputs in `output_dir`: the adapter, `resolved_config.yaml`, `progress.jsonl`
and, last, `metrics.json`.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trl import SFTConfig

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

TEXT_SUFFIXES = (".txt", ".md")
MIN_CHUNK_TOKENS = 2  # a single token gives no next-token target


@dataclass
class SFTRecipe(SFTConfig, ProjectFields):
    """TRL's SFTConfig (every option of SFTTrainer and TrainingArguments) plus the project's fields.

    Defaults below are the project's where they differ from TRL's; the
    shipped recipe YAML states its own choices on top.
    """

    corpus: str = "training/data/example_corpus"  # directory of .txt/.md, or JSONL with "text" / "messages"
    output_dir: str = "data/training/sft"
    learning_rate: float = 2e-4  # LoRA learns at a higher rate than TRL's full fine-tuning default
    num_train_epochs: float = 3.0
    per_device_train_batch_size: int = 4
    max_length: int | None = 512  # tokens per chunk
    logging_steps: float = 1  # every step reaches progress.jsonl, which the app's dashboard follows
    report_to: None | str | list[str] = "none"  # no experiment trackers
    save_strategy: str = "no"  # only the final adapter is saved, by training.sft
    gradient_checkpointing: bool | None = None  # TRL's default (True) slows a 135M model for no memory need
    bf16: bool | None = None  # None: bf16 autocast where bf16 runs in hardware (GPUs, AMX CPUs; ProjectFields)

    def __post_init__(self) -> None:
        self.resolve_project_fields()
        super().__post_init__()
        self.check_project_fields()
        if self.max_length is None or self.max_length < MIN_CHUNK_TOKENS:  # texts are chunked to it
            raise RecipeError(f"max_length must be at least {MIN_CHUNK_TOKENS}, got {self.max_length}")


# -- data ------------------------------------------------------------------
# A training document: plain text, or a chat whose last (assistant) message is learned.
Document = str | list[dict[str, str]]
IGNORE_INDEX = -100  # label of a token the loss skips


def _learnable_chat(messages: Any, where: str) -> list[dict[str, str]]:
    messages = check_messages(messages, where, assistant_only=False)
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise RecipeError(f"{where}: a chat needs a prompt and then the assistant's reply, which is what the model learns")
    return messages


def _jsonl_documents(path: Path) -> list[Document]:
    documents: list[Document] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"{path}:{lineno}: not valid JSON ({exc})") from None
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            documents.append(row["text"])
        elif isinstance(row, dict) and "messages" in row:
            documents.append(_learnable_chat(row["messages"], f"{path}:{lineno}"))
        else:
            raise RecipeError(f"{path}:{lineno}: expected an object with a string `text` field or a `messages` chat")
    return documents


def load_corpus(path: str | Path) -> list[Document]:
    """The corpus documents, in a stable order, empty texts left out."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        documents: list[Document] = [p.read_text(encoding="utf-8") for p in files]
    elif path.is_file():
        documents = _jsonl_documents(path)
    else:
        raise RecipeError(f"corpus {path} does not exist")
    documents = [d for d in documents if not isinstance(d, str) or d.strip()]
    if not documents:
        raise RecipeError(f"corpus {path} holds no text (.txt/.md files or JSONL `text`/`messages` lines)")
    return documents


def chunk_documents(texts: list[str], tokenizer: Any, max_length: int) -> list[list[int]]:
    """Token-id chunks of at most max_length, each inside one document.

    Chunking token ids (not characters) makes every chunk fit exactly; the
    trainer receives them pre-tokenised and so neither re-tokenises nor truncates.
    """
    chunks = []
    for text in texts:
        ids = tokenizer(text, verbose=False)["input_ids"] + [tokenizer.eos_token_id]
        for start in range(0, len(ids), max_length):
            chunk = ids[start : start + max_length]
            if len(chunk) >= MIN_CHUNK_TOKENS:
                chunks.append(chunk)
    return chunks


def _template_ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True,
                                        return_dict=True)["input_ids"]
    return list(ids)


def chat_example(messages: list[dict[str, str]], tokenizer: Any, max_length: int) -> dict[str, list[int]] | None:
    """input_ids and labels for one chat: the prompt exactly as the app renders it
    for generation, labels only on the reply. None when the prompt leaves no room."""
    prompt = _template_ids(tokenizer, messages[:-1], add_generation_prompt=True)
    full = _template_ids(tokenizer, messages, add_generation_prompt=False)
    if full[: len(prompt)] != prompt:  # the labels would then mark the wrong tokens
        raise RecipeError("the chat template renders the prompt differently with the reply appended")
    if len(prompt) >= max_length - 1:
        return None
    full = full[:max_length]
    return {"input_ids": full, "labels": [IGNORE_INDEX] * len(prompt) + full[len(prompt):]}


def training_examples(documents: list[Document], tokenizer: Any, max_length: int) -> tuple[list[dict[str, list[int]]], int]:
    """(examples in the documents' order, chats skipped because their prompt alone fills max_length).
    The order is the training order when the trainer samples sequentially (a curriculum)."""
    examples: list[dict[str, list[int]]] = []
    skipped = 0
    for document in documents:
        if isinstance(document, str):
            examples += [{"input_ids": c, "labels": list(c)} for c in chunk_documents([document], tokenizer, max_length)]
            continue
        example = chat_example(document, tokenizer, max_length)
        if example is None:
            skipped += 1
        else:
            examples.append(example)
    return examples, skipped


# -- training --------------------------------------------------------------
def trainer_args(config: SFTRecipe) -> SFTRecipe:
    """The config as SFTTrainer gets it.

    Padding-free batches without packing: TRL refuses a max_length it would
    not enforce, but every example here is already cut to max_length, so the
    trainer gets a copy without one (a shallow copy: the recipe's checks, which
    need max_length for chunking, are not run again).
    """
    if config.padding_free and not config.packing:
        args = copy.copy(config)
        args.max_length = None
        return args
    return config


def main(config: SFTRecipe) -> dict[str, Any]:
    """Train the adapter described by `config`; return the metrics also written to metrics.json."""
    with torch_threads(config.torch_threads):
        return _run(config)


def load_examples(config: SFTRecipe, documents: list[Document]) -> tuple[Any, Any, list[dict[str, list[int]]], int]:
    """(model, tokenizer, examples, chats skipped): the base model and the corpus as training examples."""
    model, tokenizer = load_base_model(config.base_model, config.load_4bit, config.cache_dir,
                                       compute_dtype=config.compute_dtype)
    examples, skipped = training_examples(documents, tokenizer, config.max_length)
    if skipped:
        log.warning("%d chats skipped: their prompt alone is max_length (%d) tokens or more", skipped, config.max_length)
    if not examples:
        raise RecipeError(f"nothing to train on: every chat's prompt is longer than max_length={config.max_length}")
    return model, tokenizer, examples, skipped


def build_trainer(config: SFTRecipe, model: Any, tokenizer: Any, examples: list[dict[str, list[int]]]):
    """The SFTTrainer for `examples` (bench/train_speed.py builds the same one)."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTTrainer

    set_seed(config.seed)  # the trainer seeds itself only after LoRA's random init
    new_lora = lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.target_modules)
    model, peft_config = prepare_policy(
        model, config.load_4bit, config.init_adapter, config.activation_checkpointing, new_lora
    )
    before = trainable_snapshot(model)  # a continued adapter's exact weights (TRL rounds them to bf16)
    trainer = SFTTrainer(
        model=model,
        args=trainer_args(config),
        # Pre-tokenised with labels: TRL trains on them as they are (-100 marks an unlearned prompt token).
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[JsonlProgress(config.output_dir)],
    )
    settle_trainable_weights(trainer.model, before, config.train_modules)
    return trainer


def _run(config: SFTRecipe) -> dict[str, Any]:
    started = time.perf_counter()
    out = start_run(config, config.output_dir)  # first: a dashboard must not read a stale run's files
    documents = load_corpus(config.corpus)  # fail on a bad corpus before loading any model
    model, tokenizer, examples, skipped = load_examples(config, documents)
    trainer = build_trainer(config, model, tokenizer, examples)

    train_started = time.perf_counter()
    result = train(trainer, config)
    seconds = time.perf_counter() - train_started
    save_adapter(trainer.model, out)

    history = trainer.state.log_history
    n_tokens = sum(len(e["input_ids"]) for e in examples)
    n_chats = sum(isinstance(d, list) for d in documents)
    epochs = float(trainer.state.epoch or 0.0)
    metrics = {
        "kind": "sft",
        "train_loss": float(result.training_loss),
        "first_loss": last_logged(history[:1], "loss"),
        "final_loss": last_logged(history, "loss"),
        "n_documents": len(documents) - n_chats,
        "n_chats": n_chats - skipped,
        "n_chats_skipped": skipped,
        "n_chunks": len(examples) - (n_chats - skipped),
        "n_tokens": n_tokens,
        "steps": trainer.state.global_step,
        "epochs": epochs,
        "seconds": round(seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "tokens_per_second": round(n_tokens * epochs / seconds, 2) if seconds else None,
        "adapter_dir": str(out),
        "init_adapter": config.init_adapter,
        "lora": lora_shape(trainer.model),
        "load_4bit": config.load_4bit,
        "versions": library_versions(),
    }
    if is_main_process():  # the ranks of a data-parallel run would race on one file
        write_json(out / METRICS_FILE, metrics)
    log.info("SFT done: %d steps on %d examples in %.1fs, adapter in %s", metrics["steps"], len(examples), seconds, out)
    return metrics


if __name__ == "__main__":
    sys.exit(run_cli(SFTRecipe, main, None, __doc__.splitlines()[0]))
