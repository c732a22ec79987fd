"""The strong model on llama.cpp vs transformers (bf16 + prompt lookup, the CPU path before it), same run.

    .venv/bin/python -m bench.strong_backends [--prompts 6] [--tokens 96] [--limit 100]
                                              [--out bench/results/strong_backends.json]

Run from the repository root on a quiet machine. Two parts, both backends built
exactly as the app builds them (`service.build_strong` with COWEST_STRONG_BACKEND
set), the packaged Qwen2.5-Coder-1.5B-Instruct in both:

1. Speed, each backend in its own child process so memory is its own: load time
   (model caches already in place; a first start adds the one-off conversion,
   which llama.cpp does not need), then per prompt the time to the first token
   and the decode rate, greedy, through `generate` (the app's streaming path).
   The prompts are the app's: shipped-pack refinement prompts (question + the
   shipped adapter's grounded draft, kept in results/grounded/full) and
   general questions asked directly. Tokens are counted with the model's own
   tokenizer (the two share Qwen's vocabulary). Peak memory is the child's
   maximum resident set.
2. Accuracy: `training.evaluate` on the first `--limit` test items of the
   shipped pack, strong alone and the retrieval-grounded collaboration (shipped
   adapter), once per backend; both score options by their log-likelihood after
   "Answer:", so the rows differ only by the kernels. Paired bootstrap intervals
   of llama.cpp minus transformers.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cowest_app.config import STRONG_DEFAULT, WEAK_DEFAULT, from_env
from cowest_app.domains.packs import load_pack

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "packs/saltmarsh-formulary"
KEPT_DRAFTS = PACK / "results/grounded/full/results.json"
GENERAL = ROOT / "packs/general"
BACKENDS = ("transformers", "llama-cpp")


def refinement_prompts(count: int) -> list[list[dict[str, str]]]:
    """Half shipped-pack refinements (question + kept grounded draft), half general questions."""
    pack, general = load_pack(PACK), load_pack(GENERAL)
    from training.evaluate import shown_question

    drafts = {row["id"]: row["draft"] for row in
              json.loads(KEPT_DRAFTS.read_text())["systems"]["collab_retrieval_sft"]["items"]}
    refine = [pack.strong_messages(shown_question(item), drafts[item.id])
              for item in pack.split("test") if item.id in drafts][:count - count // 2]
    direct = [general.direct_messages(shown_question(item)) for item in general.split("test")][:count // 2]
    return refine + direct


def token_count(backend: Any, text: str) -> int:
    from cowest_app.models.llama_cpp import LlamaCppBackend

    if isinstance(backend, LlamaCppBackend):
        return len(backend.tokenize(text))
    return len(backend.tokenizer.encode(text, add_special_tokens=False))


def measure_child(name: str, prompts: list[list[dict[str, str]]], tokens: int) -> dict[str, Any]:
    """In this process: load the strong model as the app does and time every prompt."""
    from cowest_app.serving.service import build_strong

    started = time.perf_counter()
    backend = build_strong(from_env({"COWEST_STRONG_BACKEND": name}))
    load_s = time.perf_counter() - started
    rows = []
    for messages in prompts:
        began = time.perf_counter()
        first = None
        text = ""
        for chunk in backend.generate(messages, max_new_tokens=tokens, temperature=0.0):
            first = first if first is not None else time.perf_counter()
            text += chunk
        ended = time.perf_counter()
        count = token_count(backend, text)
        first = first if first is not None else ended
        rows.append({"first_token_s": round(first - began, 3), "total_s": round(ended - began, 3), "tokens": count,
                     "decode_tok_s": round((count - 1) / (ended - first), 2) if count > 1 and ended > first else None,
                     "text": text})
    return {"backend": name, "describe": backend.describe(), "load_s": round(load_s, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "prompts": rows}


def speed(name: str, prompt_count: int, tokens: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.strong_backends", "--child", name, "--prompts", str(prompt_count),
                          "--tokens", str(tokens)], cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{name} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(run: dict[str, Any]) -> dict[str, Any]:
    rows = run["prompts"]
    rates = [r["decode_tok_s"] for r in rows if r["decode_tok_s"]]
    return {"load_s": run["load_s"], "peak_rss_mib": run["peak_rss_mib"],
            "first_token_s_p50": round(statistics.median(r["first_token_s"] for r in rows), 3),
            "decode_tok_s_mean": round(sum(r["tokens"] - 1 for r in rows) / sum(r["total_s"] - r["first_token_s"] for r in rows), 2),
            "decode_tok_s_p50": round(statistics.median(rates), 2) if rates else None}


def accuracy(limit: int) -> dict[str, Any]:
    from training.evaluate import evaluate

    pack = load_pack(PACK)
    runs = {}
    for name in BACKENDS:
        runs[name] = evaluate(pack, WEAK_DEFAULT, STRONG_DEFAULT, sft_adapter=str(PACK / "adapter"), grounded=True,
                              limit=limit, strong_dtype="auto", strong_backend=name,
                              only=["strong", "collab_retrieval_sft"])
    return {name: {key: {k: v for k, v in system.items() if k != "items"} | {"items": [
        {"id": row["id"], "score": row["score"]} for row in system["items"]]}
        for key, system in run["systems"].items()} for name, run in runs.items()}


def paired(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> dict[str, float]:
    from training.compare import paired_difference

    by_id = {row["id"]: row["score"] for row in second}
    a = [float(row["score"]) for row in first]
    d = paired_difference(a, [float(by_id[row["id"]]) for row in first])
    return {"difference": round(d["diff"], 1), "ci_low": round(d["low"], 1), "ci_high": round(d["high"], 1), "n": len(a)}


def table(result: dict[str, Any]) -> str:
    base, fast = (result["speed"][name]["summary"] for name in BACKENDS)
    lines = ["| | transformers bf16 + prompt lookup | llama.cpp (GGUF Q4_K_M) | ratio |", "|---|---:|---:|---:|"]
    for key, label in (("load_s", "load, caches in place (s)"), ("first_token_s_p50", "first token p50 (s)"),
                       ("decode_tok_s_mean", "decode tok/s"), ("peak_rss_mib", "peak memory (MiB)")):
        lines.append(f"| {label} | {base[key]} | {fast[key]} | {fast[key] / base[key]:.2f}x |")
    if "accuracy" in result:
        for system in ("strong", "collab_retrieval_sft"):
            a, b = (result["accuracy"][name][system] for name in BACKENDS)
            d = result["paired"][system]
            lines.append(f"| accuracy, {system} (n={d['n']}) | {100 * a['accuracy']:.1f} | {100 * b['accuracy']:.1f} | "
                         f"{d['difference']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}] |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--limit", type=int, default=60, help="test items for the accuracy part")
    parser.add_argument("--parts", default="speed,accuracy",
                        help="which parts to run; the others are kept from an existing --out")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/strong_backends.json")
    parser.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--table", action="store_true", help="print the table of --out and exit")
    ns = parser.parse_args(argv)
    if ns.child:
        print(json.dumps(measure_child(ns.child, refinement_prompts(ns.prompts), ns.tokens)))
        return 0
    if ns.table:
        print(table(json.loads(ns.out.read_text())))
        return 0
    parts = set(ns.parts.split(","))
    result: dict[str, Any] = json.loads(ns.out.read_text()) if ns.out.exists() else {}
    if "speed" in parts:
        result.update(prompts=ns.prompts, tokens=ns.tokens, speed={})
        for name in BACKENDS:
            run = speed(name, ns.prompts, ns.tokens)
            result["speed"][name] = run | {"summary": summary(run)}
            print(name, result["speed"][name]["summary"], flush=True)
    if "accuracy" in parts:
        result["limit"] = ns.limit
        result["accuracy"] = accuracy(ns.limit)
        result["paired"] = {system: paired(result["accuracy"]["llama-cpp"][system]["items"],
                                           result["accuracy"]["transformers"][system]["items"])
                            for system in ("strong", "collab_retrieval_sft")}
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
