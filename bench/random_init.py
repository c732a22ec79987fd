"""Give a model directory random weights of its own architecture, for speed runs where the real weights can't go.

    python bench/random_init.py DIR    # DIR holds config.json (and the tokenizer); writes DIR/model.safetensors

Speed and memory depend on the architecture and dtype, not on the weight
values, so decode, drafting and DPO timings on such a copy stand for the real
model's. Its text is noise: acceptance-dependent numbers (assisted decoding)
and anything about quality need the real weights. Used for the GPU tables in
bench/README.md, whose machine could not receive the 0.5 GB SmolLM2 weights.
"""

from __future__ import annotations

import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main(path: str) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32)
    model.save_pretrained(path)
    print(f"random-init {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters saved to {path}")


if __name__ == "__main__":
    main(sys.argv[1])
