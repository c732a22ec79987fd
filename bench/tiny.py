"""Tiny random-init Llama models for smoke runs of the benchmarks (`--tiny`).

They borrow the packaged SmolLM2 tokenizer, so chat templates and token
counts are real; only the body is small. Numbers measured on them say nothing
about real models: they check that a benchmark runs end to end in seconds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from cowest_app.config import WEAK_DEFAULT
from cowest_app.models import refs


def tiny_llama(out: Path | None = None, seed: int = 0, layers: int = 2, hidden: int = 64) -> str:
    """Build and save a tiny Llama with the SmolLM2 tokenizer; returns its directory."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out or tempfile.mkdtemp(prefix="cowest-tiny-"))
    tokenizer = AutoTokenizer.from_pretrained(refs.resolve(WEAK_DEFAULT, refs.default_cache_dir()))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
