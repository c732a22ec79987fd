"""Strong refinement: first token and tokens/s, plain vs assisted decoding, fp32 vs bf16.

    .venv/bin/python -m bench.strong [--questions 3] [--tokens 96] [--dtypes float32,bfloat16]
                                     [--assist off,weak,prompt-lookup] [--tiny]

Run from the repository root. The strong model answers the app's refinement
prompt (question + weak draft) greedily, through `TransformersBackend.generate`,
the streaming path the app uses. The drafts come from the weak model (NF4, as
in the app), written once and shared by every variant. Variants:

- dtype: the strong weights in fp32 or bf16;
- assist `off`: plain greedy decoding; `weak`: the weak SmolLM2 proposes tokens
  and the strong model verifies them (different tokenizers: transformers
  re-encodes text between them); `prompt-lookup`: n-grams copied from the
  prompt, which holds the draft, are proposed instead.

The baseline is fp32 with assist off, measured in the same run; each question
runs every variant of a dtype back to back, in rotating order, so background
load hits them alike. "same text" compares each answer with plain decoding in
the same dtype: assisted greedy decoding must not change a character.
`--tiny` swaps in tiny random models (a smoke run, its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

from cowest_app.domains.packs import load_pack
from cowest_app.config import STRONG_DEFAULT, WEAK_DEFAULT
from cowest_app.models.local import TransformersBackend
from cowest_app.serving.service import PROMPT_LOOKUP_TOKENS

QUESTIONS = [
    ("medicine", "Why are beta blockers used after a heart attack?"),
    ("general", "How does a refrigerator keep food cold?"),
    ("counterfactual", "If ice sank in water, what would happen to lakes in winter?"),
    ("ethics", "Should a doctor tell a patient a hard truth they did not ask about?"),
    ("general", "Why do we have leap years?"),
    ("medicine", "What does a high HbA1c value indicate?"),
]


@dataclass
class Tally:
    first_token_s: list[float] = field(default_factory=list)
    answer_s: list[float] = field(default_factory=list)
    tokens: int = 0
    decode_s: float = 0.0
    texts: list[str] = field(default_factory=list)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.decode_s if self.decode_s else 0.0


def answer(backend: TransformersBackend, messages: list, tokens: int, tally: Tally) -> None:
    started = time.perf_counter()
    first = None
    text = ""
    for chunk in backend.generate(messages, max_new_tokens=tokens):
        first = first if first is not None else time.perf_counter() - started
        text += chunk
    total = time.perf_counter() - started
    first = total if first is None else first
    n = len(backend.tokenizer(text, add_special_tokens=False)["input_ids"])
    tally.first_token_s.append(first)
    tally.answer_s.append(total)
    tally.tokens += max(n - 1, 0)  # the first token belongs to time-to-first-token
    tally.decode_s += total - first
    tally.texts.append(text)


def set_assist(backend: TransformersBackend, mode: str, weak: TransformersBackend) -> None:
    backend.assistant = weak if mode == "weak" else None
    backend.prompt_lookup_tokens = PROMPT_LOOKUP_TOKENS if mode == "prompt-lookup" else 0


def drafts(weak: TransformersBackend, questions: list[tuple[str, str]], tokens: int) -> list[list]:
    """The refinement prompts: each question with the weak model's greedy draft."""
    out = []
    for domain_key, question in questions:
        pack = load_pack(f"packs/{domain_key}")  # each preset domain is a pack named after its directory
        draft = "".join(weak.generate(pack.weak_messages(question), max_new_tokens=tokens))
        out.append(pack.strong_messages(question, draft))
    return out


def run_dtype(strong_ref: str, dtype: str, modes: list[str], weak: TransformersBackend, refine: list[list],
              tokens: int) -> tuple[TransformersBackend, dict[str, Tally]]:
    backend = TransformersBackend(strong_ref, dtype=dtype)
    tallies = {mode: Tally() for mode in modes}
    for mode in modes:  # warm-up: first-call costs (and bf16 weight repacking) out of the timing
        set_assist(backend, mode, weak)
        "".join(backend.generate(refine[0], max_new_tokens=4))
    for i, messages in enumerate(refine):
        order = modes[i % len(modes):] + modes[: i % len(modes)]
        for mode in order:
            set_assist(backend, mode, weak)
            answer(backend, messages, tokens, tallies[mode])
            t = tallies[mode]
            print(f"# {dtype} {mode} q{i}: first token {t.first_token_s[-1]:.2f} s, answer {t.answer_s[-1]:.1f} s",
                  file=sys.stderr, flush=True)
    return backend, tallies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=96, help="max new tokens of each strong answer")
    parser.add_argument("--draft-tokens", type=int, default=96, help="max new tokens of each weak draft")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--assist", default="off,weak,prompt-lookup")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--tiny", action="store_true", help="tiny random models: a smoke run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = args.assist.split(",")
    if modes[0] != "off":
        parser.error("--assist must start with off: it is the baseline")
    if args.tiny:
        from bench.tiny import tiny_llama

        weak_ref, strong_ref = tiny_llama(seed=1), tiny_llama(seed=0, layers=4, hidden=128)
    else:
        weak_ref, strong_ref = WEAK_DEFAULT, STRONG_DEFAULT

    weak = TransformersBackend(weak_ref, load_4bit=True)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.questions)]
    refine = drafts(weak, questions, args.draft_tokens)
    prompt_tokens = [weak.encode(m)["input_ids"].shape[1] for m in refine]

    print(f"strong {strong_ref}, assistant {weak_ref} ({weak.memory_summary()}), {torch.get_num_threads()} torch threads, "
          f"{args.questions} refinement prompts of ~{statistics.mean(prompt_tokens):.0f} weak-tokenizer tokens, "
          f"greedy, up to {args.tokens} new tokens", flush=True)
    results: list[tuple[str, str, str, Tally]] = []
    for dtype in args.dtypes.split(","):
        backend, tallies = run_dtype(strong_ref, dtype, modes, weak, refine, args.tokens)
        memory = backend.memory_summary()
        del backend
        results += [(dtype, mode, memory, tally) for mode, tally in tallies.items()]
        print_table(results)  # after every dtype: a run cut short still leaves its numbers


def print_table(results: list) -> None:
    print("\n| dtype | assist | memory | first token s (median) | answer s (mean) | decode tok/s | x baseline | "
          "same text as plain (same dtype) | same text as fp32 plain |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = results[0][3]
    plain = {dtype: tally for dtype, mode, _, tally in results if mode == "off"}
    for dtype, mode, memory, t in results:
        same = sum(a == b for a, b in zip(t.texts, plain[dtype].texts))
        same_fp32 = sum(a == b for a, b in zip(t.texts, base.texts))
        name = f"{mode} (baseline)" if t is base else mode
        print(f"| {dtype} | {name} | {memory.split(',')[1].strip()} | {statistics.median(t.first_token_s):.2f} | "
              f"{statistics.mean(t.answer_s):.1f} | {t.tok_s:.2f} | {t.tok_s / base.tok_s:.2f}x | "
              f"{same}/{len(t.texts)} | {same_fp32}/{len(t.texts)} |", flush=True)


if __name__ == "__main__":
    main()
