"""DPO training of the weak model's LoRA adapter, on the tiny random Llama.

Pairs are short (a one-word answer) so each optimizer step takes a fraction of a
second on two CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import make_lora_adapter
from training.common import RecipeError, load_recipe
from training.dpo import DPORecipe, build_trainer, load_pairs, main

ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = ROOT / "training" / "recipes" / "dpo-tiny.yaml"
LN2 = math.log(2)


def toy_pairs(n: int, chosen: str = "yes", rejected: str = "no") -> list[dict]:
    return [
        {
            "prompt": [
                {"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": f"Question {i}: is this a good idea?"},
            ],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
        for i in range(n)
    ]


def write_pairs(path: Path, pairs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


def tiny_recipe(model_dir: Path, work: Path, **changes) -> DPORecipe:
    """The shipped dpo-tiny recipe, pointed at the tiny model and a temporary output."""
    base = load_recipe(DPORecipe, TINY_RECIPE, [f"base_model={model_dir}"])
    dataset = write_pairs(work / "pairs.jsonl", toy_pairs(8))
    return dataclasses.replace(base, dataset=str(dataset), output_dir=str(work / "out"), **changes)


def adapter_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))


def read_progress(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory, tiny_model_dir: Path) -> tuple[DPORecipe, dict]:
    config = tiny_recipe(tiny_model_dir, tmp_path_factory.mktemp("dpo-fresh"))
    return config, main(config)


# -- a fresh adapter -------------------------------------------------------
def test_fresh_run_metrics(fresh_run) -> None:
    config, metrics = fresh_run
    assert metrics == json.loads((Path(config.output_dir) / "metrics.json").read_text())
    assert metrics["steps"] == config.max_steps == 3
    assert metrics["n_pairs"] == 8 and metrics["n_pairs_dropped"] == 0
    assert math.isfinite(metrics["train_loss"]) and 0 < metrics["train_loss"] < 1
    # A fresh LoRA starts as the identity (B = 0): policy == reference on step 1.
    assert metrics["first_loss"] == pytest.approx(LN2, abs=1e-4)
    assert 0.0 <= metrics["rewards/accuracies"] <= 1.0
    assert math.isfinite(metrics["rewards/margins"])
    assert metrics["seconds"] > 0 and metrics["pairs_per_second"] > 0
    assert metrics["lora"]["r"] == config.lora_r
    assert metrics["reference"] == "base" and metrics["versions"]["trl"]


def test_fresh_run_progress_log(fresh_run) -> None:
    config, _ = fresh_run
    lines = read_progress(Path(config.output_dir))
    assert lines[0]["event"] == "begin" and lines[-1]["event"] == "end"
    steps = [line for line in lines if line["event"] == "log" and "loss" in line]
    assert [line["step"] for line in steps] == [1, 2, 3]
    for line in steps:
        assert line["max_steps"] == 3
        assert math.isfinite(line["loss"]) and line["epoch"] > 0
        assert "rewards/margins" in line and 0.0 <= line["rewards/accuracies"] <= 1.0


def test_fresh_run_resolved_config(fresh_run) -> None:
    config, _ = fresh_run
    written = Path(config.output_dir) / "resolved_config.yaml"
    assert yaml.safe_load(written.read_text())["max_steps"] == 3
    assert load_recipe(DPORecipe, written) == config


def test_fresh_adapter_is_trained_and_loads(fresh_run, tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config, _ = fresh_run
    out = Path(config.output_dir)
    assert not (out / "ref").exists()  # TRL's reference copy is never saved
    tensors = adapter_tensors(out)
    lora_b = [t for k, t in tensors.items() if "lora_B" in k]
    assert len(lora_b) == 2 * 2  # q_proj and v_proj in both layers
    assert all(t.abs().max() > 0 for t in lora_b)  # LoRA B starts at zero

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, str(out))
        after = tuned(ids).logits
    assert tuned.peft_config["default"].r == config.lora_r
    assert not torch.allclose(before, after)


# -- continuing an existing adapter ----------------------------------------
@pytest.mark.parametrize("reference", ["init_adapter", "base"])
def test_continue_from_adapter(tmp_path: Path, tiny_model_dir: Path, reference: str) -> None:
    init = make_lora_adapter(tiny_model_dir, tmp_path / "init", seed=3)
    config = tiny_recipe(tiny_model_dir, tmp_path, init_adapter=str(init), reference=reference, max_steps=2)
    metrics = main(config)

    before, after = adapter_tensors(init), adapter_tensors(Path(config.output_dir))
    assert before.keys() == after.keys()
    assert all(before[k].shape == after[k].shape for k in before)  # same r, same targets
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert metrics["lora"]["r"] == 4 and metrics["reference"] == reference
    first = next(line for line in read_progress(Path(config.output_dir)) if "loss" in line)
    if reference == "init_adapter":
        # The reference is a frozen copy of the loaded adapter: identical on step 1.
        assert first["loss"] == pytest.approx(LN2, abs=1e-4)
        assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    else:
        # The reference is the bare base, which the random adapter moved away from.
        assert abs(first["rewards/margins"]) > 1e-3


def test_train_modules_keep_the_rest_of_a_continued_adapter(tmp_path: Path, tiny_model_dir: Path) -> None:
    init = make_lora_adapter(tiny_model_dir, tmp_path / "init", seed=4)  # LoRA on q_proj and v_proj
    config = tiny_recipe(tiny_model_dir, tmp_path, init_adapter=str(init), train_modules=["q_proj"], max_steps=2)
    main(config)
    before, after = adapter_tensors(init), adapter_tensors(Path(config.output_dir))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".q_proj." in k for k in changed)  # v_proj's weights stay exactly as loaded
    assert any(".v_proj." in k for k in before)
    # Neither the other modules nor TRL's frozen reference copy ("ref") train.
    trainable = [n for n, p in build_trainer(config, load_pairs(config.dataset)).model.named_parameters() if p.requires_grad]
    assert trainable and all(".q_proj." in n and ".default." in n for n in trainable)
    with pytest.raises(RecipeError, match="name no module"):
        main(tiny_recipe(tiny_model_dir, tmp_path, init_adapter=str(init), train_modules=["gate_proj"], max_steps=1))
    for bad in ({"train_modules": ["q_proj"]}, {"train_modules": [], "init_adapter": str(init)}):
        with pytest.raises(RecipeError, match="train_modules needs init_adapter"):
            tiny_recipe(tiny_model_dir, tmp_path, **bad)


# -- other paths -----------------------------------------------------------
def test_4bit_qlora(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = tiny_recipe(tiny_model_dir, tmp_path, load_4bit=True, max_steps=2)
    metrics = main(config)
    assert metrics["load_4bit"] is True and metrics["steps"] == 2
    assert math.isfinite(metrics["train_loss"])
    tensors = adapter_tensors(Path(config.output_dir))
    # The adapter trains (and is saved) in fp32, not TRL's QLoRA bf16, on CPUs and GPUs alike.
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert all(t.abs().max() > 0 for k, t in tensors.items() if "lora_B" in k)


@pytest.mark.parametrize("load_4bit", [False, True])
def test_bf16_compute_trains_a_float32_adapter(tmp_path: Path, tiny_model_dir: Path, load_4bit: bool) -> None:
    config = tiny_recipe(tiny_model_dir, tmp_path, load_4bit=load_4bit, compute_dtype="bfloat16", max_steps=2)
    metrics = main(config)
    assert metrics["steps"] == 2 and math.isfinite(metrics["train_loss"])
    tensors = adapter_tensors(Path(config.output_dir))
    assert {t.dtype for t in tensors.values()} == {torch.float32}  # only the frozen base computes in bf16
    assert all(t.abs().max() > 0 for k, t in tensors.items() if "lora_B" in k)
    with pytest.raises(RecipeError, match="compute_dtype must be one of"):
        dataclasses.replace(config, compute_dtype="float8")


def test_4bit_continue_keeps_the_adapter_exact(tmp_path: Path, tiny_model_dir: Path) -> None:
    # TRL rounds a quantised model's trainable weights to bf16; on CPU they are restored to fp32.
    init = make_lora_adapter(tiny_model_dir, tmp_path / "init", seed=5)
    config = tiny_recipe(tiny_model_dir, tmp_path, load_4bit=True, init_adapter=str(init), max_steps=2)
    metrics = main(config)
    first = next(line for line in read_progress(Path(config.output_dir)) if "loss" in line)
    assert first["rewards/margins"] == 0.0 and first["loss"] == pytest.approx(LN2, abs=1e-6)
    assert metrics["lora"]["r"] == 4


def test_precompute_ref_log_probs(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = tiny_recipe(tiny_model_dir, tmp_path, precompute_ref_log_probs=True, max_steps=2)
    metrics = main(config)
    assert metrics["first_loss"] == pytest.approx(LN2, abs=1e-4)
    assert metrics["steps"] == 2


def test_precompute_with_a_continued_adapter_uses_its_copy(tmp_path: Path, tiny_model_dir: Path) -> None:
    # The app continues the active adapter with the shipped recipe, which precomputes: the
    # precomputed reference must be the loaded adapter (loss ln 2 on step 1), not the bare base.
    init = make_lora_adapter(tiny_model_dir, tmp_path / "init", seed=4)
    config = tiny_recipe(tiny_model_dir, tmp_path, init_adapter=str(init), precompute_ref_log_probs=True, max_steps=1)
    main(config)
    first = next(line for line in read_progress(Path(config.output_dir)) if "loss" in line)
    assert first["loss"] == pytest.approx(LN2, abs=1e-4)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)


def test_learns_a_trivial_preference(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Always prefer "yes" to "no": margins must grow and the loss must fall."""
    # A random 2-layer model learns slowly at the recipe's beta: a larger beta and lr make 16 steps enough.
    # Batches of 2 halve the cost of each step, most of which goes to the 49k-token vocabulary.
    config = tiny_recipe(
        tiny_model_dir, tmp_path, max_steps=16, learning_rate=1e-2, beta=0.5, per_device_train_batch_size=2
    )
    metrics = main(config)
    logs = [line for line in read_progress(Path(config.output_dir)) if "loss" in line]
    assert len(logs) == 16
    margins = [line["rewards/margins"] for line in logs]
    losses = [line["loss"] for line in logs]
    assert margins[0] == pytest.approx(0.0, abs=1e-5)
    assert sum(margins[-5:]) / 5 > sum(margins[:5]) / 5 + 0.2
    assert losses[-1] < losses[0] - 0.15
    assert metrics["rewards/accuracies"] == 1.0 and metrics["final_loss"] < LN2


def test_cli_in_a_child_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    """How the app runs training: `python -m training.dpo --config ...` in a subprocess."""
    config = tiny_recipe(tiny_model_dir, tmp_path, max_steps=1)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"base_model": config.base_model, "dataset": config.dataset, "lora_r": 4}))
    out = tmp_path / "cli-out"
    cmd = [sys.executable, "-m", "training.dpo", "--config", str(recipe), "--set", f"output_dir={out}"]
    cmd += ["--set", "max_steps=1", "--set", "load_4bit=false", "--set", "torch_threads=2", "--set", "max_length=128"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               TQDM_DISABLE="1")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads(done.stdout.strip().splitlines()[-1]) == metrics
    assert metrics["steps"] == 1 and metrics["lora"]["r"] == 4
    assert (out / "adapter_model.safetensors").is_file() and (out / "progress.jsonl").is_file()
    assert load_recipe(DPORecipe, out / "resolved_config.yaml").max_steps == 1


@pytest.mark.slow
def test_default_recipe_on_packaged_smollm2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped recipe as is (4-bit SmolLM2-135M, example pairs), cut to two steps."""
    monkeypatch.chdir(ROOT)
    config = load_recipe(
        DPORecipe, ROOT / "training" / "recipes" / "dpo.yaml", [f"output_dir={tmp_path / 'out'}", "max_steps=2"]
    )
    metrics = main(config)
    assert metrics["steps"] == 2 and math.isfinite(metrics["train_loss"])
    assert metrics["n_pairs"] == 8


def step_losses(config: DPORecipe) -> list[float]:
    main(config)
    return [line["loss"] for line in read_progress(Path(config.output_dir)) if "loss" in line]


def test_fast_settings_train_like_the_plain_path(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The shipped speed setting (one pair per micro-batch, four accumulated: no padding
    between pairs of different lengths) sees the same pairs per optimizer step as one
    batch of four, on the shipped 4-bit base: the losses must agree step by step."""
    shipped = load_recipe(DPORecipe, ROOT / "training" / "recipes" / "dpo.yaml")
    assert shipped.per_device_train_batch_size == 1 and shipped.gradient_accumulation_steps == 4
    assert shipped.load_4bit and not shipped.precompute_ref_log_probs
    # Pairs of different lengths, so a batch of four really pads.
    pairs = [dict(p, chosen=[{"role": "assistant", "content": "yes " * (1 + 3 * i)}]) for i, p in enumerate(toy_pairs(8))]
    plain = dataclasses.replace(
        tiny_recipe(tiny_model_dir, tmp_path, max_steps=4, learning_rate=1e-2, load_4bit=True,
                    per_device_train_batch_size=4, gradient_accumulation_steps=1),
        dataset=str(write_pairs(tmp_path / "varied.jsonl", pairs)),
    )
    fast = dataclasses.replace(plain, output_dir=str(tmp_path / "fast"), per_device_train_batch_size=1,
                               gradient_accumulation_steps=4)
    plain_losses, fast_losses = step_losses(plain), step_losses(fast)
    assert len(plain_losses) == len(fast_losses) == 4
    assert plain_losses[-1] < plain_losses[0] - 0.01  # it trains, so later steps test the gradients too
    assert fast_losses == pytest.approx(plain_losses, abs=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for CPUs; on a GPU precompute is allowed")
def test_precompute_is_refused_for_qlora_on_cpu(tmp_path: Path, tiny_model_dir: Path) -> None:
    # It would train silently wrong: see training.dpo.check_precompute.
    config = tiny_recipe(tiny_model_dir, tmp_path, load_4bit=True, precompute_ref_log_probs=True, max_steps=1)
    with pytest.raises(RecipeError, match="precompute_ref_log_probs with load_4bit on CPU"):
        main(config)
    assert not (Path(config.output_dir) / "metrics.json").exists()
