"""Recipe loading, overrides and data validation: no model is loaded here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from training.common import RecipeError, load_recipe, native_bf16, run_cli, save_resolved_config, torch_threads
from training.dpo import DPORecipe, load_pairs
from training.sft import SFTRecipe, chunk_documents, load_corpus

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "training" / "recipes").glob("*.yaml"))


def recipe_class(path: Path) -> type:
    return SFTRecipe if path.name.startswith("sft") else DPORecipe


def test_recipes_exist() -> None:
    names = {p.name for p in RECIPES}
    assert {"dpo.yaml", "sft.yaml", "dpo-tiny.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(path: Path) -> None:
    from trl import DPOConfig, SFTConfig

    config = load_recipe(recipe_class(path), path)
    assert isinstance(config, SFTConfig if path.name.startswith("sft") else DPOConfig)  # what the TRL trainer takes
    assert config.base_model
    assert isinstance(config.target_modules, list) and config.target_modules
    assert isinstance(config.learning_rate, float)  # `5.0e-5`-style YAML is parsed as a number
    # The project's defaults where TRL's differ: no trackers, no checkpoints, every step logged.
    assert config.report_to == [] and config.save_strategy == "no" and config.logging_steps == 1
    assert config.activation_checkpointing is False
    if not torch.cuda.is_available():
        # SFT: TRL's default (bf16 autocast) only where bf16 runs in hardware, emulated it is slower than fp32;
        # DPO: never on CPU, its small log-ratio steps round away in bf16 (bench/README.md).
        assert config.bf16 is (native_bf16() if path.name.startswith("sft") else False) and config.use_cpu


def test_trl_options_come_from_yaml_set_and_flags(tmp_path: Path) -> None:
    """Options the project never mentions reach the TRL config from every source, later sources winning."""
    path = write(tmp_path, "lr_scheduler_type: cosine\nweight_decay: 0.1\nneftune_noise_alpha: 5\nwarmup_steps: 3\n")
    config = load_recipe(SFTRecipe, path, ["weight_decay=0.2", "packing=true"], ["--adam_beta2", "0.95", "--warmup_steps", "4"])
    assert config.lr_scheduler_type.value == "cosine"
    assert config.neftune_noise_alpha == 5.0
    assert config.weight_decay == 0.2 and config.packing is True and config.adam_beta2 == 0.95
    assert config.warmup_steps == 4
    dpo = load_recipe(DPORecipe, write(tmp_path, "loss_type: [sigmoid, bco_pair]\nloss_weights: [1, 0.5]\n"),
                      ["label_smoothing=0.1"])
    assert dpo.loss_type == ["sigmoid", "bco_pair"] and dpo.loss_weights == [1.0, 0.5] and dpo.label_smoothing == 0.1


@pytest.mark.parametrize("path", [p for p in RECIPES if p.name in ("dpo.yaml", "sft.yaml")], ids=lambda p: p.name)
def test_default_recipes_point_at_shipped_data(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # recipe paths are relative to the repo root
    config = load_recipe(recipe_class(path), path)
    assert config.base_model == "packaged:smollm2-135m-instruct"
    assert config.load_4bit is True and config.lm_head_labels_only
    if isinstance(config, DPORecipe):
        assert len(load_pairs(config.dataset)) >= 5
    else:
        assert len(load_corpus(config.corpus)) == 2


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "base_model: x\nlearning_rat: 0.1\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(DPORecipe, path)
    assert "learning_rat" in str(info.value)
    assert str(path) in str(info.value)
    assert "did you mean learning_rate" in str(info.value)  # the closest known keys are suggested
    with pytest.raises(RecipeError, match="unknown key 'warmup_ratio'"):  # a TRL option transformers 5 removed
        load_recipe(SFTRecipe, write(tmp_path, "warmup_ratio: 0.1\n"))
    with pytest.raises(RecipeError, match="--warmup_ratio"):
        load_recipe(SFTRecipe, write(tmp_path, "base_model: x\n"), flags=["--warmup_ratio", "0.1"])


def test_overrides_are_parsed_to_field_types(tmp_path: Path) -> None:
    path = write(tmp_path, "base_model: x\nlearning_rate: 5e-5\ninit_adapter: /a\n")
    config = load_recipe(
        DPORecipe,
        path,
        [
            "max_steps=7",
            "beta=0.25",
            "load_4bit=false",
            "init_adapter=none",
            "target_modules=q_proj,v_proj",
            "base_model=packaged:smollm2-135m-instruct",
            "num_train_epochs=2",
        ],
    )
    assert config.max_steps == 7
    assert config.beta == 0.25
    assert config.load_4bit is False
    assert config.init_adapter is None
    assert config.target_modules == ["q_proj", "v_proj"]
    assert config.base_model == "packaged:smollm2-135m-instruct"  # only the first '=' splits
    assert config.num_train_epochs == 2.0 and isinstance(config.num_train_epochs, float)
    assert config.learning_rate == 5e-5  # PyYAML reads 5e-5 as a string


@pytest.mark.parametrize(
    "override, fragment",
    [("max_steps=abc", "max_steps"), ("load_4bit=maybe", "load_4bit"), ("nope=1", "nope"), ("max_steps", "key=value"),
     ("lr_scheduler_type=cosin", "lr_scheduler_type"), ("beta=0", "beta must be positive")],
)
def test_bad_overrides_are_clear(tmp_path: Path, override: str, fragment: str) -> None:
    path = write(tmp_path, "base_model: x\n")
    with pytest.raises(RecipeError, match=fragment):
        load_recipe(DPORecipe, path, [override])


def test_invalid_values_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="reference"):
        load_recipe(DPORecipe, write(tmp_path, "reference: nonsense\n"))
    with pytest.raises(RecipeError, match="precompute_ref_log_probs"):
        load_recipe(DPORecipe, write(tmp_path, "init_adapter: /a\nreference: base\nprecompute_ref_log_probs: true\n"))
    with pytest.raises(RecipeError, match="lora_r"):
        load_recipe(SFTRecipe, write(tmp_path, "lora_r: 0\n"))
    with pytest.raises(RecipeError, match="max_steps"):
        load_recipe(SFTRecipe, write(tmp_path, "max_steps: 1.5\n"))
    with pytest.raises(RecipeError, match="target_modules"):
        load_recipe(SFTRecipe, write(tmp_path, "target_modules: []\n"))
    with pytest.raises(RecipeError, match="max_length"):
        load_recipe(SFTRecipe, write(tmp_path, "max_length: null\n"))  # SFT chunks texts to it
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(SFTRecipe, write(tmp_path, "- a\n- b\n"))
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(SFTRecipe, tmp_path / "missing.yaml")


def test_thread_setting_is_scoped() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_resolved_config_round_trips(tmp_path: Path, path: Path) -> None:
    cls = recipe_class(path)
    config = load_recipe(cls, path, ["max_steps=3", "init_adapter=/some/adapter", "lr_scheduler_type=cosine"])
    written = save_resolved_config(config, tmp_path / "out")
    assert written.name == "resolved_config.yaml"
    assert load_recipe(cls, written) == config
    resolved = yaml.safe_load(written.read_text())
    assert resolved["lr_scheduler_type"] == "cosine" and resolved["learning_rate"] == config.learning_rate
    assert "hub_token" not in resolved and "gradient_checkpointing" not in resolved  # a secret; a deprecated alias


def test_cli_rejects_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "bogus: 1\n")
    with pytest.raises(SystemExit) as info:
        run_cli(DPORecipe, lambda config: {}, ["--config", str(path)], "test")
    assert info.value.code == 2
    assert "bogus" in capsys.readouterr().err


def test_cli_passes_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seen = []
    path = write(tmp_path, "base_model: x\n")
    argv = ["--config", str(path), "--set", "beta=0.5", "--label_smoothing", "0.3"]
    run_cli(DPORecipe, lambda config: seen.append(config) or {"ok": 1}, argv, "t")
    assert seen[0].beta == 0.5
    assert seen[0].label_smoothing == 0.3  # a TRL option given as a plain flag
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"ok": 1}


def test_cli_reports_bad_data_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.dpo import main

    out = tmp_path / "out"
    path = write(tmp_path, f"dataset: {tmp_path / 'missing.jsonl'}\noutput_dir: {out}\n")
    out.mkdir()
    (out / "progress.jsonl").write_text('{"event": "log", "step": 9}\n')  # left by an earlier run
    assert run_cli(DPORecipe, main, ["--config", str(path)], "t") == 1
    assert "missing.jsonl does not exist" in capsys.readouterr().err
    lines = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["event"] == "error" and "does not exist" in lines[0]["error"]


# -- data ------------------------------------------------------------------
def test_example_pairs_are_valid() -> None:
    pairs = load_pairs(ROOT / "training" / "data" / "example_pairs.jsonl")
    for pair in pairs:
        assert [m["role"] for m in pair["prompt"]] == ["system", "user"]
        assert pair["chosen"][0]["role"] == pair["rejected"][0]["role"] == "assistant"
        assert pair["chosen"][0]["content"] != pair["rejected"][0]["content"]


def test_bad_pair_names_the_line(tmp_path: Path) -> None:
    good = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}  # fmt: skip
    bad = dict(good, chosen=[{"role": "user", "content": "a"}])
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecipeError, match=r"pairs.jsonl:3 chosen"):
        load_pairs(path)
    path.write_text(json.dumps(dict(good, id=7, images=["x"])) + "\n")
    assert set(load_pairs(path)[0]) == {"prompt", "chosen", "rejected"}  # extra columns never reach TRL
    path.write_text("")
    with pytest.raises(RecipeError, match="no preference pairs"):
        load_pairs(path)


def test_corpus_from_jsonl_and_chunking(tmp_path: Path, smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"text": "word " * 300}) + "\n" + json.dumps({"text": "short one"}) + "\n")
    texts = load_corpus(path)
    assert len(texts) == 2
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    chunks = chunk_documents(texts, tokenizer, max_length=64)
    assert all(2 <= len(c) <= 64 for c in chunks)
    total = sum(len(tokenizer(t)["input_ids"]) + 1 for t in texts)  # +1: each document's EOS
    assert total - len(texts) <= sum(len(c) for c in chunks) <= total  # at most a 1-token tail per document dropped
    assert chunks[-1][-1] == tokenizer.eos_token_id
    with pytest.raises(RecipeError, match="text"):
        path.write_text(json.dumps({"body": "x"}) + "\n")
        load_corpus(path)


def test_training_child_lowers_its_priority_for_every_later_thread() -> None:
    # What the app's training child runs first: the niceness it asks for, inherited by threads started after.
    code = (
        "import os, threading\n"
        "from training.common import lower_priority\n"
        "seen = []\n"
        "print(lower_priority())\n"
        "t = threading.Thread(target=lambda: seen.append(os.nice(0))); t.start(); t.join()\n"
        "print(seen[0])\n"
    )
    root = Path(__file__).resolve().parents[2]
    current = os.nice(0)  # the child starts at ours; niceness is only ever raised, never lowered
    for env, expected in (({"COWEST_TRAIN_NICE": "7"}, [str(max(current, 7))] * 2), ({}, [str(current)] * 2)):
        base = {k: v for k, v in os.environ.items() if k != "COWEST_TRAIN_NICE"}
        out = subprocess.run([sys.executable, "-c", code], cwd=root, env={**base, **env}, capture_output=True,
                             text=True, check=True).stdout.split()
        assert out == expected
