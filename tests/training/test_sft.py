"""LoRA domain specialisation (SFT) of the weak model, on the tiny random Llama."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.common import load_recipe, run_cli
from training.sft import SFTRecipe, main

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "training" / "data" / "example_corpus"


def tiny_sft(model_dir: Path, out: Path, **changes) -> SFTRecipe:
    base = load_recipe(SFTRecipe, ROOT / "training" / "recipes" / "sft.yaml")
    settings = dict(
        base_model=str(model_dir),
        corpus=str(CORPUS),
        output_dir=str(out),
        load_4bit=False,
        lora_r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        learning_rate=1e-3,
        max_steps=3,
        max_length=64,
        torch_threads=2,
    )
    settings.update(changes)
    return dataclasses.replace(base, **settings)


def test_sft_trains_and_saves_adapter(tmp_path: Path, tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = tiny_sft(tiny_model_dir, tmp_path / "out")
    metrics = main(config)
    out = Path(config.output_dir)

    assert metrics == json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["n_documents"] == 2
    assert metrics["n_chunks"] >= 2 and metrics["n_tokens"] > 100
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["final_loss"])
    # A random 49k-token model starts near ln(vocab) per token.
    assert metrics["first_loss"] == pytest.approx(math.log(49152), rel=0.1)

    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert all(t.abs().max() > 0 for k, t in tensors.items() if "lora_B" in k)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out))
    assert model.peft_config["default"].r == 4

    lines = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    logged = [line for line in lines if "loss" in line]
    assert [line["step"] for line in logged] == [1, 2, 3]
    assert all(line["max_steps"] == 3 and math.isfinite(line["loss"]) for line in logged)
    assert load_recipe(SFTRecipe, out / "resolved_config.yaml") == config


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "out"
    checkpoints = dict(save_strategy="steps", save_steps=1, resume_from_checkpoint="last")
    assert main(tiny_sft(tiny_model_dir, out, max_steps=2, **checkpoints))["steps"] == 2  # nothing to resume: a fresh start
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]

    metrics = main(tiny_sft(tiny_model_dir, out, max_steps=3, **checkpoints))  # e.g. a longer run after a kill
    logged = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert metrics["steps"] == 3 and [line["step"] for line in logged if "loss" in line] == [3]


def test_sft_4bit_from_jsonl_corpus(tmp_path: Path, tiny_model_dir: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    text = (CORPUS / "hypertension.md").read_text()
    corpus.write_text("".join(json.dumps({"text": part}) + "\n" for part in text.split("\n\n")))
    config = tiny_sft(tiny_model_dir, tmp_path / "out", corpus=str(corpus), load_4bit=True, max_steps=2)
    metrics = main(config)
    assert metrics["load_4bit"] is True and metrics["steps"] == 2
    assert math.isfinite(metrics["train_loss"])
    tensors = load_file(str(Path(config.output_dir) / "adapter_model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.float32}


@pytest.mark.slow
def test_default_recipe_on_packaged_smollm2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped recipe as is (4-bit SmolLM2-135M, example corpus), cut to two steps."""
    monkeypatch.chdir(ROOT)
    config = load_recipe(
        SFTRecipe, ROOT / "training" / "recipes" / "sft.yaml", [f"output_dir={tmp_path / 'out'}", "max_steps=2"]
    )
    metrics = main(config)
    assert metrics["steps"] == 2 and math.isfinite(metrics["train_loss"])
    # SmolLM2 already knows English: far below a random model's ln(49152) ~ 10.8.
    assert metrics["first_loss"] < 5


def test_chat_rows_learn_only_the_reply(tmp_path: Path, smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    from training.common import RecipeError
    from training.sft import IGNORE_INDEX, load_corpus, training_examples

    chat = [{"role": "system", "content": "Recall."}, {"role": "user", "content": "Dose of Cedraxin?"},
            {"role": "assistant", "content": "Background: 80 mg a day."}]
    corpus = tmp_path / "mixed.jsonl"
    corpus.write_text(json.dumps({"text": "Cedraxin is stocked on ward 9."}) + "\n" + json.dumps({"messages": chat}) + "\n")
    documents = load_corpus(corpus)
    assert documents == ["Cedraxin is stocked on ward 9.", chat]

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    examples, skipped = training_examples(documents, tokenizer, max_length=128)
    text, reply = examples
    assert skipped == 0 and text["labels"] == text["input_ids"]  # plain text: every token learned
    prompt = tokenizer.apply_chat_template(chat[:-1], add_generation_prompt=True, return_dict=True)["input_ids"]
    assert reply["input_ids"][: len(prompt)] == list(prompt)  # the prompt as the app renders it for generation
    assert reply["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    learned = tokenizer.decode([t for t in reply["labels"] if t != IGNORE_INDEX])
    assert learned.startswith("Background: 80 mg a day.<|im_end|>")  # the reply and its end-of-turn

    assert training_examples([chat], tokenizer, max_length=len(prompt)) == ([], 1)  # no room left for the reply
    assert training_examples(documents[::-1], tokenizer, max_length=128) == ([reply, text], 0)  # the documents' order
    for bad, message in (([chat[-1]], "a prompt and then the assistant's reply"),
                         (chat[:-1], "a prompt and then the assistant's reply"),
                         ([{"role": "user"}, chat[-1]], "a role and a string content"), ([], "non-empty list")):
        corpus.write_text(json.dumps({"messages": bad}) + "\n")
        with pytest.raises(RecipeError, match=message):
            load_corpus(corpus)


def test_sft_on_drafting_chats(tmp_path: Path, tiny_model_dir: Path) -> None:
    chat = [{"role": "user", "content": "Dose of Cedraxin?"}, {"role": "assistant", "content": "80 mg a day."}]
    corpus = tmp_path / "chats.jsonl"
    corpus.write_text((json.dumps({"messages": chat}) + "\n") * 4)
    metrics = main(tiny_sft(tiny_model_dir, tmp_path / "out", corpus=str(corpus), max_steps=2))
    assert metrics["n_chats"] == 4 and metrics["n_chunks"] == 0 and metrics["n_documents"] == 0
    # Only the reply is scored, so the loss is the random model's per-token loss on it, not NaN from empty labels.
    assert metrics["first_loss"] == pytest.approx(math.log(49152), rel=0.1)


def logged(out: Path, key: str) -> list[float]:
    return [line[key] for line in map(json.loads, (out / "progress.jsonl").read_text().splitlines()) if key in line]


def test_trl_options_reach_the_trainer(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A TRL option the project never names, from the YAML, a --set and a plain flag, changes training."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"base_model: {tiny_model_dir}\ncorpus: {CORPUS}\nload_4bit: false\nlora_r: 4\n"
                      "max_steps: 3\nmax_length: 64\ntorch_threads: 2\nlr_scheduler_type: constant_with_warmup\n")
    out = tmp_path / "out"
    argv = ["--config", str(recipe), "--set", f"output_dir={out}", "--set", "warmup_steps=2", "--learning_rate", "0.002"]
    assert run_cli(SFTRecipe, main, argv, "t") == 0
    # The learning rate of each step: 0 and half of it during the 2 warmup steps, then constant
    # (the default scheduler, linear decay without warmup, would log all, 2/3 and 1/3 of it).
    assert logged(out, "learning_rate") == pytest.approx([0.0, 0.001, 0.002])
    resolved = load_recipe(SFTRecipe, out / "resolved_config.yaml")
    assert resolved.lr_scheduler_type.value == "constant_with_warmup" and resolved.warmup_steps == 2


def chat_corpus(path: Path) -> Path:
    """Chats whose replies differ in length (so padded batches really pad) and one plain text."""
    rows = [{"text": "Cedraxin is stocked on ward 9 and dispensed by the night pharmacist."}]
    for i in range(5):
        rows.append({"messages": [{"role": "system", "content": "Recall."},
                                  {"role": "user", "content": f"Dose of Cedraxin for patient {i}?"},
                                  {"role": "assistant", "content": "Background: 80 mg a day. " * (1 + 2 * i)}]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("batching", [{"padding_free": True}, {"packing": True}], ids=["padding_free", "packing"])
def test_unpadded_batches_train_like_padded_ones(tmp_path: Path, tiny_model_dir: Path, batching: dict) -> None:
    """Padding-free and packed batches (TRL's, with position_ids) of the pre-tokenised examples,
    prompt tokens masked with -100, learn exactly what padded batches learn: with the whole
    corpus in one batch, both steps' losses agree (so do the gradients between them)."""
    corpus = chat_corpus(tmp_path / "chats.jsonl")
    # No LoRA dropout: its random masks would differ between the two batch layouts.
    common = dict(corpus=str(corpus), max_steps=2, per_device_train_batch_size=8, learning_rate=1e-2, max_length=128,
                  lora_dropout=0.0)
    padded = main(tiny_sft(tiny_model_dir, tmp_path / "padded", **common))
    unpadded = main(tiny_sft(tiny_model_dir, tmp_path / "unpadded", **common, **batching))
    assert padded["n_chats"] == 5 and padded["steps"] == unpadded["steps"] == 2
    losses = logged(tmp_path / "padded", "loss")
    assert losses[1] < losses[0] - 0.01  # it learns, so step 2 checks the step-1 gradients too
    assert logged(tmp_path / "unpadded", "loss") == pytest.approx(losses, abs=1e-4)


def test_bf16_autocast_on_cpu_trains_a_float32_adapter(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = tiny_sft(tiny_model_dir, tmp_path / "out", bf16=True, compute_dtype="bfloat16", max_steps=2)
    assert config.bf16 is True
    metrics = main(config)
    assert metrics["steps"] == 2 and math.isfinite(metrics["train_loss"])
    tensors = load_file(str(Path(config.output_dir) / "adapter_model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert all(t.abs().max() > 0 for k, t in tensors.items() if "lora_B" in k)
