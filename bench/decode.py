"""Decode speed and memory of the embedded models, NF4 vs full precision.

    .venv/bin/python bench/decode.py [--tokens 64] [--skip-strong]

Prints one table; the fp32 weak model is the baseline measured in the same run.
On a GPU the same rows run there (NF4 computing in bf16, as the app loads it).
"""

from __future__ import annotations

import argparse
import time

from cowest_app.config import STRONG_DEFAULT, WEAK_DEFAULT
from cowest_app.models.local import TransformersBackend

PROMPT = [{"role": "user", "content": "Explain in a few sentences how vaccines train the immune system."}]


def measure(backend: TransformersBackend, tokens: int) -> dict[str, float]:
    "".join(backend.generate(PROMPT, max_new_tokens=4))  # warm-up
    inputs = backend.encode(PROMPT)
    started = time.perf_counter()
    first = None
    n_chunks = 0
    text = ""
    for chunk in backend.generate(PROMPT, max_new_tokens=tokens):
        first = first or time.perf_counter() - started
        text += chunk
        n_chunks += 1
    total = time.perf_counter() - started
    n_tokens = len(backend.tokenizer(text, add_special_tokens=False)["input_ids"])
    return {"ttft_s": first or total, "tok_s": n_tokens / (total - (first or 0)) if n_tokens > 1 else 0.0,
            "tokens": n_tokens, "mem_mib": backend.memory_bytes() / 2**20, "load_s": backend.load_seconds,
            "prompt_tokens": inputs["input_ids"].shape[1]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--skip-strong", action="store_true")
    args = parser.parse_args()
    # Loaded one at a time, so each measurement has the machine (and its memory) to itself.
    rows = [
        ("weak fp32 (baseline)", lambda: TransformersBackend(WEAK_DEFAULT, load_4bit=False, dtype="float32")),
        ("weak bf16", lambda: TransformersBackend(WEAK_DEFAULT, load_4bit=False, dtype="bfloat16")),
        ("weak NF4", lambda: TransformersBackend(WEAK_DEFAULT, load_4bit=True)),
    ]
    if not args.skip_strong:
        rows.append(("strong fp32", lambda: TransformersBackend(STRONG_DEFAULT, dtype="float32")))
    results = []
    for name, build in rows:
        backend = build()
        results.append((name, measure(backend, args.tokens)))
        del backend
    base = results[0][1]
    print(f"| model | load s | first token s | decode tok/s | x baseline | memory MiB | x baseline |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results:
        print(f"| {name} | {r['load_s']:.1f} | {r['ttft_s']:.2f} | {r['tok_s']:.1f} | {r['tok_s'] / base['tok_s']:.2f} "
              f"| {r['mem_mib']:.0f} | {r['mem_mib'] / base['mem_mib']:.2f} |")


if __name__ == "__main__":
    main()
