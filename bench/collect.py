"""Draft stage of feedback collection: K drafts in one batched `sample` call vs K generate calls.

    .venv/bin/python -m bench.collect [--questions 32] [--k 4] [--tokens 64] [--no-4bit] [--threads N]

Run from the repository root. Uses the packaged SmolLM2 weak model, NF4 as in
the app unless --no-4bit. Both paths run `cowest_app.loop.collect.weak_drafts`,
exactly what collection runs, on the same questions with the same sampling
settings; the sequential path (one generate call per draft) is the baseline.
Prints one markdown table.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from cowest_app.domains.packs import load_pack
from cowest_app.loop.collect import weak_drafts
from cowest_app.config import WEAK_DEFAULT
from cowest_app.defaults import DRAFT_TEMPERATURE
from cowest_app.models.base import GenerationOptions
from cowest_app.models.local import TransformersBackend

QUESTIONS = [
    ("medicine", "Which vitamin deficiency causes scurvy?"),
    ("medicine", "What is the first-line treatment for anaphylaxis?"),
    ("medicine", "Why are beta blockers used after a heart attack?"),
    ("medicine", "What does a high HbA1c value indicate?"),
    ("counterfactual", "If the Moon were twice as far away, what would happen to the tides?"),
    ("counterfactual", "If humans could photosynthesise, how would daily meals change?"),
    ("counterfactual", "If ice sank in water, what would happen to lakes in winter?"),
    ("counterfactual", "If the Earth had no axial tilt, would there be seasons?"),
    ("ethics", "Is it acceptable to read a partner's messages without asking?"),
    ("ethics", "I kept extra change a cashier gave me by mistake. Was that okay?"),
    ("ethics", "Should a doctor tell a patient a hard truth they did not ask about?"),
    ("ethics", "Is it wrong to skip a queue for a friend who is late?"),
    ("general", "Why does the sky look blue during the day?"),
    ("general", "How does a refrigerator keep food cold?"),
    ("general", "Why do we have leap years?"),
    ("general", "What makes bread rise?"),
]


@dataclass
class Tally:
    drafts: int = 0
    seconds: float = 0.0
    tokens: int = 0


def draft_once(backend: TransformersBackend, messages: list, k: int, options: GenerationOptions, sequential: bool, tally: Tally) -> None:
    started = time.perf_counter()
    drafts = weak_drafts(backend, messages, k, options, sequential=sequential)
    tally.seconds += time.perf_counter() - started
    tally.drafts += len(drafts)
    tally.tokens += sum(len(backend.tokenizer(d, add_special_tokens=False)["input_ids"]) for d in drafts)


def run(backend: TransformersBackend, questions: list[tuple[str, str]], k: int, tokens: int) -> tuple[Tally, Tally]:
    """(sequential, batched) totals. The paths alternate question by question,
    and which goes first alternates too, so background load on a shared
    machine hits both alike instead of whichever ran second."""
    sequential, batched = Tally(), Tally()
    for i, (domain, question) in enumerate(questions):
        messages = load_pack(f"packs/{domain}").weak_messages(question)
        options = GenerationOptions(max_new_tokens=tokens, temperature=DRAFT_TEMPERATURE, seed=1000 + i)
        order = [(True, sequential), (False, batched)]
        for is_sequential, tally in order if i % 2 == 0 else order[::-1]:
            draft_once(backend, messages, k, options, is_sequential, tally)
    return sequential, batched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens per draft")
    parser.add_argument("--no-4bit", action="store_true", help="full precision instead of NF4")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        # On a CPU shared with other jobs, multi-threaded kernels stall at their
        # barriers whenever a core is taken away; one thread measures the paths
        # without that noise.
        torch.set_num_threads(args.threads)

    backend = TransformersBackend(WEAK_DEFAULT, load_4bit=not args.no_4bit)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.questions)]
    weak_drafts(backend, load_pack("packs/general").weak_messages("warm up"), 2,
                GenerationOptions(max_new_tokens=4, temperature=DRAFT_TEMPERATURE))  # first-call costs out of the timing

    sequential, batched = run(backend, questions, args.k, args.tokens)
    print(f"weak model {WEAK_DEFAULT} ({backend.memory_summary()}, {torch.get_num_threads()} torch threads), "
          f"{args.questions} questions, K={args.k}, up to {args.tokens} new tokens, temperature {DRAFT_TEMPERATURE}\n")
    print("| path | drafts | seconds | drafts/s | ratio vs baseline | tokens/s |")
    print("|---|---|---|---|---|---|")
    base_rate = sequential.drafts / sequential.seconds
    for name, t in (("sequential: K generate calls (baseline)", sequential), ("batched: one sample call", batched)):
        rate = t.drafts / t.seconds
        print(f"| {name} | {t.drafts} | {t.seconds:.1f} | {rate:.2f} | {rate / base_rate:.2f}x | {t.tokens / t.seconds:.1f} |")


if __name__ == "__main__":
    main()
