"""Score weak, strong, RAG and weak-strong collaboration systems on a domain pack's test split.

    python -m training.evaluate --pack PATH [--weak REF] [--strong REF]
        [--sft-adapter DIR] [--dpo-adapter DIR] [--grounded-dpo-adapter DIR] [--grounded]
        [--limit N] [--out DIR] [--merge-into RESULTS_JSON]

Systems (rows of the paper's table), each scored on the same test items:

1. `weak`        the un-specialised weak model alone
2. `strong`      the strong model alone
3. `strong_rag`  the strong model given the top-k BM25 corpus passages (cowest_app.domains.retrieval)
4. `collab_base` collaboration: the un-specialised weak model drafts, the strong model answers
5. `collab_sft`  the same with the SFT weak model (with --sft-adapter)
6. `collab_dpo`  the same with the SFT+DPO weak model (with --dpo-adapter)
7. `collab_retrieval_*` (with --grounded or --grounded-dpo-adapter) the same three
   weak models drafting from the passages retrieved for the question, not from
   memory; the SFT+DPO one is the adapter aligned on such drafts

Multiple-choice and label tasks generate no final answer: the answering model's
log-likelihood of each option letter (or label) after its reply opens with
"Answer:" picks the choice, batched over items. That is faster than free
generation and never fails to parse. Collaboration still generates the weak
draft (greedy, short). Short-answer tasks generate a short greedy answer and
use the pack's metric.

Outputs in --out: `results.json` (per system: accuracy, n, 95% bootstrap CI,
per-item scores, drafts and the answering model's prompt tokens), `results.md` (the table) and `results.png` (bars with CIs).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from cowest_app.core.collaboration import DRAFT, Ask, BatchAnswerer, BatchDrafter, Collaboration, Job, collaborate, relay, run
from cowest_app.files import write_atomic
from cowest_app.models.base import GenerationOptions, Message
from cowest_app.core.prompts import PromptSet
from cowest_app.core.scoring import CHOICE_TASKS, OptionLikelihood, prompt_tokens
from cowest_app.core.results import RESULTS_JSON, RESULTS_MD, RESULTS_PNG, render_chart, render_table
from cowest_app.domains.retrieval import render_context

if TYPE_CHECKING:  # keep `import training.evaluate` light for the pure helpers
    from cowest_app.models.local import TransformersBackend
    from cowest_app.domains.packs import DomainPack, PackItem

log = logging.getLogger(__name__)

SYSTEMS: dict[str, str] = {
    "weak": "Weak alone",
    # The SFT adapter answering alone, as the collaboration's specialist: what the strong model adds to it.
    "weak_sft": "Weak alone (SFT weak)",
    "strong": "Strong alone",
    "strong_rag": "Strong + RAG",
    "collab_base": "Weak + Strong (base weak)",
    "collab_sft": "Weak + Strong (SFT weak)",
    "collab_dpo": "Weak + Strong (SFT+DPO weak)",
    # Retrieval-grounded drafting: the weak model reads the retrieved passages and drafts from them.
    "collab_retrieval_base": "Retrieval-grounded Weak + Strong (base weak)",
    "collab_retrieval_sft": "Retrieval-grounded Weak + Strong (SFT weak)",
    "collab_retrieval_dpo": "Retrieval-grounded Weak + Strong (SFT+DPO weak)",
}
DRAFTS_JSON = "drafts.json"  # --drafts-only: what each weak model drafted, unscored
# An answering prompt longer than this means the context was not bounded (see cowest_app/domains/retrieval.py).
PROMPT_TOKEN_BUDGET = 1024

Progress = Callable[[int], None]  # called with the number of items just finished


# -- statistics -------------------------------------------------------------
def bootstrap_ci(values: Sequence[float], n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`.

    Fixed seed: the same scores always give the same interval, so reruns and
    systems scored on the same items are comparable.
    """
    scores = np.asarray(values, dtype=float)
    if scores.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = scores[rng.integers(0, scores.size, size=(n, scores.size))].mean(axis=1)
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


# -- systems ----------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    rag_k: int = 4  # passages the strong model reads in Strong + RAG (as many as a grounded draft is written from)
    draft_tokens: int = 96  # weak drafts: one or two statements and an answer line
    answer_tokens: int = 32  # short-answer finals
    batch_size: int = 8


def shown_question(item: PackItem) -> str:
    """The question with its lettered options, as every model sees it."""
    from cowest_app.domains.packs import format_item

    return format_item(item)


def pack_asks(pack: DomainPack, items: Sequence[PackItem]) -> list[Ask]:
    """The items as the collaboration core takes them: multiple-choice options travel for scoring."""
    return [Ask(shown_question(item), item.reference, item.options if pack.task_type == "multiple_choice" else None)
            for item in items]


def pack_answerer(pack: DomainPack, backend: TransformersBackend, settings: Settings) -> Any:
    """The pack's scorer as an answerer: the likeliest option for choice tasks, else a short greedy reply."""
    if pack.task_type in CHOICE_TASKS:
        return OptionLikelihood(backend, labels=pack.labels, batch_size=settings.batch_size)
    return BatchAnswerer(backend, GenerationOptions(max_new_tokens=settings.answer_tokens, temperature=0.0),
                         settings.batch_size)


def greedy_drafter(weak: TransformersBackend, settings: Settings) -> BatchDrafter:
    return BatchDrafter(weak, GenerationOptions(max_new_tokens=settings.draft_tokens, temperature=0.0), settings.batch_size)


def run_pack(pack: DomainPack, items: Sequence[PackItem], prompt_set: PromptSet, answerer: Any,
             drafter: BatchDrafter | None = None, progress: Progress | None = None) -> list[Collaboration]:
    """The collaboration core over pack items (no drafter: the answering model alone)."""
    def count(update: Any) -> Any:
        if progress is not None and update.reply.ok:  # a finished draft or answer
            progress(1)
        return update

    return run(relay(collaborate(prompt_set, pack_asks(pack, items), drafter, answerer), count))


def run_system(
    pack: DomainPack, items: Sequence[PackItem], answerer: TransformersBackend, settings: Settings,
    prompt_set: PromptSet, drafter: TransformersBackend | None = None, label: str = "",
) -> dict[str, Any]:
    """Score one system with the pack's metric; `prompt_set` renders its conversations.

    With a `drafter`, the weak model first drafts for every item, from memory
    or from the passages retrieved for it, as the prompt set says. Each item
    records how many tokens the answering model's prompt had: what the
    system costs it.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    with tqdm(total=len(items) * (2 if drafter else 1), desc=label, unit="step", leave=False) as bar:
        done = run_pack(pack, items, prompt_set, pack_answerer(pack, answerer, settings),
                        greedy_drafter(drafter, settings) if drafter is not None else None, bar.update)
    answers = [c.answers[0].text for c in done]
    drafts = [c.drafts[0].text if c.drafts else None for c in done]
    scores = [float(pack.score(a, item)) for a, item in zip(answers, items)]
    tokens = [prompt_tokens(answerer, c.answer_prompts[0]) for c in done]
    over = sum(t > PROMPT_TOKEN_BUDGET for t in tokens)
    if over:  # e.g. retrieval units that are not bounded: every prompt then carries far more than intended
        log.warning("%s: %d of %d prompts exceed %d tokens (longest %d)", label, over, len(tokens),
                    PROMPT_TOKEN_BUDGET, max(tokens))
    rows = [{"id": item.id, "score": s, "answer": a, "draft": d, "prompt_tokens": t}
            for item, s, a, d, t in zip(items, scores, answers, drafts, tokens)]
    return summarise(scores) | {"label": label, "seconds": round(time.perf_counter() - started, 3),
                                "mean_prompt_tokens": round(float(np.mean(tokens)), 1), "items": rows}


def write_drafts(pack: DomainPack, items: Sequence[PackItem], drafter: TransformersBackend, settings: Settings,
                 grounded: bool) -> list[str]:
    """The weak model's greedy draft per item, from memory or from its retrieved passages."""
    jobs_prompt_set = pack.prompt_set(grounded)
    steps = greedy_drafter(drafter, settings).write(
        [Job(DRAFT, i, 0, jobs_prompt_set.draft(ask.text), ask) for i, ask in enumerate(pack_asks(pack, items))], 1)
    return [replies[0].text for replies in run(steps)]


def draft_rows(pack: DomainPack, items: Sequence[PackItem], drafter: TransformersBackend, settings: Settings,
               label: str, grounded: bool) -> dict[str, Any]:
    """The weak model's drafts for every item, without asking the strong model anything."""
    started = time.perf_counter()
    drafts = write_drafts(pack, items, drafter, settings, grounded)
    return {"label": label, "seconds": round(time.perf_counter() - started, 3),
            "items": [{"id": item.id, "draft": d} for item, d in zip(items, drafts)]}


def summarise(scores: Sequence[float]) -> dict[str, Any]:
    low, high = bootstrap_ci(scores)
    return {"accuracy": float(np.mean(scores)), "n": len(scores), "ci_low": low, "ci_high": high}


def evaluate(
    pack: DomainPack, weak_ref: str, strong_ref: str, *, sft_adapter: str | None = None,
    dpo_adapter: str | None = None, grounded_dpo_adapter: str | None = None, grounded: bool = False,
    limit: int | None = None, out: str | Path | None = None,
    settings: Settings = Settings(), load_4bit: bool = False, device: str | None = None,
    cache_dir: str | None = None, strong_dtype: str | None = None, only: Sequence[str] | None = None,
    drafts_only: bool = False, split: str = "test", strong_backend: str = "transformers",
) -> dict[str, Any]:
    """Score every system on the test split; write the result files to `out` when given.

    `grounded` (or a `grounded_dpo_adapter`) adds the retrieval-grounded
    collaboration rows: base and SFT weak models drafting from the retrieved
    passages, and the SFT+DPO one aligned on such drafts. `only` keeps the
    named systems. `drafts_only` writes the collaboration systems' weak drafts
    (`drafts.json`, same layout without scores) and never loads the strong
    model: what a draft holds can be measured long before what it is worth.
    """
    from cowest_app.models.local import TransformersBackend

    chosen = pack.split(split)  # dev: where settings are chosen; test: read once, for the report
    items = list(chosen[:limit] if limit is not None else chosen)
    if not items:
        raise ValueError(f"pack {pack.name} has no {split} items to evaluate")
    unknown = set(only or ()) - set(SYSTEMS)
    if unknown:
        raise ValueError(f"unknown systems {sorted(unknown)}; known: {', '.join(SYSTEMS)}")
    started = time.perf_counter()
    weak = TransformersBackend(weak_ref, cache_dir=cache_dir, load_4bit=load_4bit, device=device)
    strong_model: list[Any] = []  # loaded on first use: a drafts-only run never needs it

    def strong() -> Any:
        if not strong_model:
            strong_model.append(load_strong(strong_ref, strong_backend, cache_dir=cache_dir, load_4bit=load_4bit,
                                            device=device, dtype=strong_dtype))
        return strong_model[0]

    def with_direct(direct: Callable[[str], list[Message]]) -> PromptSet:
        return PromptSet(draft=pack.weak_messages, refine=pack.strong_messages, direct=direct)

    direct = with_direct(pack.direct_messages)
    rag = with_direct(lambda q: pack.rag_messages(q, render_context(pack.retriever.search(q, settings.rag_k))))

    systems: dict[str, dict[str, Any]] = {}

    def score(key: str, answerer: Callable[[], Any], prompt_set: PromptSet | None, drafter: Any = None) -> None:
        """`prompt_set` None: the pack's own, drafting from memory or (a retrieval row) from passages."""
        if only is not None and key not in only or drafts_only and drafter is None:
            return
        grounded_key = "retrieval" in key
        if drafts_only:
            systems[key] = draft_rows(pack, items, drafter, settings, SYSTEMS[key], grounded_key)
        else:
            systems[key] = run_system(pack, items, answerer(), settings, prompt_set or pack.prompt_set(grounded_key),
                                      drafter, SYSTEMS[key])
            log.info("%s: %.3f on %d items (%.1fs)", SYSTEMS[key], systems[key]["accuracy"], len(items),
                     systems[key]["seconds"])

    grounded = grounded or grounded_dpo_adapter is not None
    score("weak", lambda: weak, direct)
    score("strong", strong, direct)
    score("strong_rag", strong, rag)
    # A `drafts: specialist` pack gets no draft from the base weak model: the strong model answers alone, as served.
    score("collab_base", strong, None, weak if pack.drafts_with(specialised=False) else None)
    if grounded:
        score("collab_retrieval_base", strong, None, weak)
    # Each adapter is built on a fresh copy of the weak base (swap_adapter), never stacked.
    adapters = [("collab_sft", sft_adapter), ("collab_retrieval_sft", sft_adapter if grounded else None),
                ("collab_dpo", dpo_adapter), ("collab_retrieval_dpo", grounded_dpo_adapter)]
    loaded = None
    for key, adapter in adapters:
        if adapter:
            if adapter != loaded:
                weak.swap_adapter(str(adapter), key)
                loaded = adapter
            if key == "collab_sft":
                score("weak_sft", lambda: weak, direct)
            score(key, strong, None, weak)

    results = {
        "pack": pack.name,
        "pack_fingerprint": pack.fingerprint(),
        "task_type": pack.task_type,
        "metric": pack.metric,
        "config": {
            "weak": weak_ref, "strong": strong_ref, "sft_adapter": sft_adapter and str(sft_adapter),
            "dpo_adapter": dpo_adapter and str(dpo_adapter),
            "grounded_dpo_adapter": grounded_dpo_adapter and str(grounded_dpo_adapter),
            "retrieval_passages": pack.retrieval_passages if grounded else None,
            "split": split, "limit": limit, "load_4bit": load_4bit, "notes": pack.notes, "drafts": pack.drafts,
            "strong_dtype": strong_dtype or "default", "strong_backend": strong_backend,
            "rag_k": settings.rag_k, "draft_tokens": settings.draft_tokens,
            "answer_tokens": settings.answer_tokens, "batch_size": settings.batch_size,
            "bootstrap": {"resamples": 1000, "seed": 0, "level": 0.95}, "only": list(only) if only else None,
        },
        "seconds": round(time.perf_counter() - started, 3),
        "systems": {key: systems[key] for key in SYSTEMS if key in systems},  # the table's order
    }
    if out is not None and drafts_only:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(out) / DRAFTS_JSON, json.dumps(results, indent=2) + "\n")
    elif out is not None:
        write_results(results, out)
    return results


STRONG_BACKENDS = ("transformers", "llama-cpp")


def load_strong(ref: str, backend: str = "transformers", *, cache_dir: str | None = None, load_4bit: bool = False,
                device: str | None = None, dtype: str | None = None) -> Any:
    """The strong model for scoring. llama-cpp: the GGUF as llama.cpp reads it (the app's CPU
    backend), scored by the same option likelihoods with other kernels."""
    if backend not in STRONG_BACKENDS:
        raise ValueError(f"unknown strong backend {backend!r}; use one of {', '.join(STRONG_BACKENDS)}")
    if backend == "llama-cpp":
        from cowest_app.models.llama_cpp import LlamaCppBackend

        return LlamaCppBackend(ref, cache_dir=cache_dir)
    from cowest_app.models.local import TransformersBackend

    return TransformersBackend(ref, cache_dir=cache_dir, load_4bit=load_4bit, device=device, dtype=dtype)


# -- reports ------------------------------------------------------------------------
def write_results(results: dict[str, Any], out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Not sort_keys: systems keep the table's order.
    (out / RESULTS_JSON).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / RESULTS_MD).write_text(render_table(results), encoding="utf-8")
    render_chart(results, out / RESULTS_PNG)
    return out


# Settings two result sets must share for their rows to stand in one table (paired by item).
MERGE_KEYS = ("weak", "strong", "split", "limit", "load_4bit", "strong_dtype", "strong_backend", "rag_k", "draft_tokens",
              "answer_tokens", "batch_size")


# The config key naming the adapter each row of the SFT or DPO weak model used.
ADAPTER_KEY = {"weak_sft": "sft_adapter", "collab_sft": "sft_adapter", "collab_retrieval_sft": "sft_adapter",
               "collab_dpo": "dpo_adapter", "collab_retrieval_dpo": "grounded_dpo_adapter"}


def _adapters_replaced(base: dict[str, Any], extra: dict[str, Any]) -> set[str]:
    """The adapter keys `extra`'s rows drafted with, which the merged config must name; raises where
    a row kept from `base` drafted with another adapter under the same key (one table, one name each)."""
    used = {ADAPTER_KEY[k] for k in extra["systems"] if k in ADAPTER_KEY}
    for key in used:
        kept = [k for k in base["systems"] if ADAPTER_KEY.get(k) == key and k not in extra["systems"]]
        if kept and base["config"].get(key) != extra["config"].get(key):
            raise ValueError(f"{', '.join(kept)} ran with {key} {base['config'].get(key)}, the added rows with "
                             f"{extra['config'].get(key)}: rescore them together")
    return used


def merge_results(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra`'s systems added (or replaced): a later run adds rows, e.g. an
    adapter trained after the first evaluation, without rescoring the others."""
    if base["pack_fingerprint"] != extra["pack_fingerprint"]:
        raise ValueError("the result sets are of different pack versions (pack_fingerprint differs)")
    older = {"split": "test", "strong_backend": "transformers"}  # result sets written before the key existed
    differ = [k for k in MERGE_KEYS
              if base["config"].get(k, older.get(k)) != extra["config"].get(k, older.get(k))]
    if differ:
        raise ValueError(f"the result sets differ in {', '.join(differ)}: their rows are not comparable")
    config = dict(base["config"])
    replaced = _adapters_replaced(base, extra)
    for key, value in extra["config"].items():
        if key in replaced or value is not None and config.get(key) is None:
            config[key] = value  # e.g. the adapter the added rows used
    config["only"] = None if base["config"].get("only") is None else \
        sorted(set(base["config"]["only"]) | set(extra["config"].get("only") or ()))
    systems = {**base["systems"], **extra["systems"]}
    return base | {"config": config, "seconds": round(base["seconds"] + extra["seconds"], 3),
                   "systems": {key: systems[key] for key in SYSTEMS if key in systems}}


# -- command line -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from cowest_app.config import STRONG_DEFAULT, WEAK_DEFAULT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", required=True, help="domain pack directory or file")
    parser.add_argument("--weak", default=WEAK_DEFAULT, help="weak model: packaged:NAME, directory or Hub id")
    parser.add_argument("--strong", default=STRONG_DEFAULT, help="strong model: packaged:NAME, directory or Hub id")
    parser.add_argument("--sft-adapter", help="LoRA adapter of the SFT weak model")
    parser.add_argument("--dpo-adapter", help="LoRA adapter of the SFT+DPO weak model")
    parser.add_argument("--grounded-dpo-adapter", help="LoRA adapter of the SFT+DPO weak model aligned on retrieval-grounded drafts")
    parser.add_argument("--grounded", action="store_true",
                        help="add the retrieval-grounded collaboration rows (implied by --grounded-dpo-adapter)")
    parser.add_argument("--split", choices=("test", "dev"), default="test",
                        help="dev (train's held-out tail) to choose settings; test, once, for the report")
    parser.add_argument("--limit", type=int, help="score only the first N items")
    parser.add_argument("--systems", help=f"comma-separated systems to run (default: all that apply): {', '.join(SYSTEMS)}")
    parser.add_argument("--drafts-only", action="store_true",
                        help=f"write the collaboration systems' weak drafts to OUT/{DRAFTS_JSON}; no strong model, no scores")
    parser.add_argument("--out", default="data/eval", help="directory for results.json/.md/.png")
    parser.add_argument("--merge-into", type=Path,
                        help="a results.json to add this run's systems to (same pack and settings); written to --out")
    parser.add_argument("--rag-k", type=int, default=Settings.rag_k, help="passages retrieved for RAG")
    parser.add_argument("--draft-tokens", type=int, default=Settings.draft_tokens, help="max new tokens of a weak draft")
    parser.add_argument("--answer-tokens", type=int, default=Settings.answer_tokens, help="max new tokens of a short answer")
    parser.add_argument("--batch-size", type=int, default=Settings.batch_size)
    parser.add_argument("--strong-dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="strong model dtype (auto: bfloat16 where the device has it natively, else float32)")
    parser.add_argument("--strong-backend", choices=STRONG_BACKENDS, default="transformers",
                        help="llama-cpp: the strong GGUF read by llama.cpp (CPU), scored by the same option likelihoods")
    parser.add_argument("--load-4bit", action="store_true", help="load both models in NF4")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--cache-dir", help="model cache (default: $COWEST_CACHE_DIR or ~/.cache/cowest)")
    return parser


def settings_from(ns: argparse.Namespace) -> Settings:
    return Settings(rag_k=ns.rag_k, draft_tokens=ns.draft_tokens, answer_tokens=ns.answer_tokens, batch_size=ns.batch_size)


def main(argv: Sequence[str] | None = None) -> int:
    from cowest_app.domains.packs import PackError, load_pack

    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        pack = load_pack(ns.pack)
    except PackError as exc:  # every problem of the pack, located, instead of a traceback
        parser.error(str(exc))
    base = None
    if ns.merge_into is not None:  # checked before the models load, not after an hour of scoring
        try:
            base = json.loads(ns.merge_into.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            parser.error(f"--merge-into {ns.merge_into}: {exc}")
        if base.get("pack_fingerprint") != pack.fingerprint():
            parser.error(f"--merge-into {ns.merge_into}: scored on another version of pack {pack.name}")
    results = evaluate(
        pack, ns.weak, ns.strong, sft_adapter=ns.sft_adapter, dpo_adapter=ns.dpo_adapter,
        grounded_dpo_adapter=ns.grounded_dpo_adapter, grounded=ns.grounded,
        limit=ns.limit, out=ns.out, settings=settings_from(ns), load_4bit=ns.load_4bit, device=ns.device,
        cache_dir=ns.cache_dir, strong_dtype=ns.strong_dtype, strong_backend=ns.strong_backend,
        only=ns.systems.split(",") if ns.systems else None, drafts_only=ns.drafts_only, split=ns.split,
    )
    if ns.drafts_only:
        print(f"drafts in {ns.out}/{DRAFTS_JSON}")
        return 0
    if base is not None:
        try:
            results = merge_results(base, results)
        except (ValueError, KeyError) as exc:
            parser.error(f"--merge-into {ns.merge_into}: {exc}")
        write_results(results, ns.out)
    print(render_table(results))
    print(f"results in {ns.out}/ ({RESULTS_JSON}, {RESULTS_MD}, {RESULTS_PNG})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
