#!/usr/bin/env python3
"""Does an adapter know the statements' numbers, and can it write them where a draft needs them?

    python packs/saltmarsh-formulary/probe_values.py NAME=ADAPTER_DIR [NAME=ADAPTER_DIR ...] [--out probe.json]

For each adapter on the embedded weak model (float32, greedy), two probes:

- plain: every corpus statement with a number (after its first ten characters), cut just
  before that number; the adapter continues it. A hit when the continuation starts with the
  number. This is how the statements are drilled (`training.knowledge.statement_texts`).
- in the drafting prompt: for every needed fact with a number of every dev question, the
  pack's drafting prompt for that question, then `Background: ` and the fact cut the same
  way. This is where a draft from memory has to write it.

`base` as ADAPTER_DIR probes the model without an adapter. Prints one line per adapter and
probe and writes them all as JSON (default: probe.json in the working directory).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root: the pack loader and the packaged model
from cowest_app.config import WEAK_DEFAULT  # noqa: E402
from cowest_app.domains.packs import format_item, load_pack  # noqa: E402
from cowest_app.models.refs import default_cache_dir, resolve  # noqa: E402

FIRST_NUMBER = re.compile(r"\d[\d.,]*")
BATCH = 16


def number_cut(text: str) -> tuple[str, str] | None:
    """The text up to its first number and that number, or None when it has no number after its opening words."""
    match = FIRST_NUMBER.search(text)
    if match is None or match.start() <= 10:
        return None
    return text[:match.start()], match.group(0).rstrip(".,")


def continues_with(continuation: str, number: str) -> bool:
    """The continuation writes exactly this number (not a longer one that starts with it)."""
    text = continuation.lstrip()
    return text.startswith(number) and not text[len(number):len(number) + 1].isdigit()


def plain_prompts(pack) -> list[tuple[str, str]]:
    cuts = (number_cut(p.text) for p in pack.passages)
    return [cut for cut in cuts if cut]


def drafting_prompts(pack, tokenizer) -> list[tuple[str, str]]:
    facts = {row["id"]: row["text"] for row in map(json.loads, (HERE / "facts.jsonl").read_text().splitlines())}
    prompts = []
    for item in pack.dev:
        chat = tokenizer.apply_chat_template(pack.draft_messages(format_item(item), grounded=False),
                                             tokenize=False, add_generation_prompt=True)
        for fact_id in item.fact_ids:
            cut = number_cut(facts[fact_id])
            if cut:
                prompts.append((chat + "Background: " + cut[0], cut[1]))
    return prompts


def hits(model, tokenizer, prompts: list[tuple[str, str]]) -> int:
    import torch

    found = 0
    for start in range(0, len(prompts), BATCH):
        batch = prompts[start:start + BATCH]
        enc = tokenizer([p for p, _ in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        found += sum(continues_with(tokenizer.decode(row, skip_special_tokens=True), number)
                     for row, (_, number) in zip(new, batch))
    return found


def main(argv: list[str] | None = None) -> int:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapters", nargs="+", metavar="NAME=ADAPTER_DIR")
    parser.add_argument("--out", type=Path, default=Path("probe.json"))
    ns = parser.parse_args(argv)
    named = [a.split("=", 1) for a in ns.adapters]
    if any(len(pair) != 2 for pair in named):
        parser.error("give adapters as NAME=ADAPTER_DIR")
    pack = load_pack(HERE)
    base = resolve(WEAK_DEFAULT, default_cache_dir())
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side = "left"
    probes = {"plain": plain_prompts(pack), "drafting": drafting_prompts(pack, tokenizer)}
    report = {}
    for name, adapter in named:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        if adapter != "base":
            model = PeftModel.from_pretrained(model, adapter)
        model.eval()
        report[name] = {"adapter": adapter}
        for probe, prompts in probes.items():
            n = hits(model, tokenizer, prompts)
            report[name][probe] = {"hits": n, "of": len(prompts), "percent": round(100 * n / len(prompts), 1)}
            print(f"{name} {probe}: {n}/{len(prompts)} ({100 * n / len(prompts):.1f}%) numbers completed", flush=True)
    ns.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
