"""Shared fixtures: tiny random-init models built here, and the packaged SmolLM2.

Tiny models borrow the packaged SmolLM2 tokenizer (so chat templates are real)
with a 2-layer random Llama body: they load in well under a second.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cowest_app.models import refs

SMOLLM2 = "packaged:smollm2-135m-instruct"


def _cache_dir() -> Path:
    return Path(os.environ.get("COWEST_CACHE_DIR", Path.home() / ".cache" / "cowest"))


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return _cache_dir()


@pytest.fixture(scope="session")
def smollm2_dir(cache_dir: Path) -> Path:
    """The packaged SmolLM2, converted to safetensors once per machine."""
    return Path(refs.resolve(SMOLLM2, cache_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_lora_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random non-zero B, so each adapter changes the output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_adapters(tmp_path_factory, tiny_model_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {f"v{i}": make_lora_adapter(tiny_model_dir, root / f"v{i}", seed=i) for i in (1, 2)}
