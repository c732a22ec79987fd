"""The whole CoWeSt recipe on one domain pack: SFT -> collaborative feedback -> DPO -> evaluation.

    python -m training.pipeline --pack PATH [--out DIR] [--weak REF] [--strong REF]
        [--train-limit N] [--test-limit N] [--k 4] [--draft-tokens N] [--final-tokens N]
        [--sft-data corpus+drafts|corpus|corpus+drafts+knowledge|drill] [--knowledge-repeats N] [--knowledge-format text|chat] [--statement-repeats N] [--curriculum]
        [--feedback-scoring likelihood|generate] [--min-margin X]
        [--strong-dtype bfloat16] [--strong-backend transformers|llama-cpp] [--sft-adapter DIR] [--drafting memory|grounded|both] [--rounds N]
        [--set sft.key=value ...] [--set dpo.key=value ...]

Stages, each in its own directory under --out:

- `sft/`       LoRA specialisation of the weak model (training.sft) on the pack's corpus
               and, by default, on drafting examples: each fit question (train without the
               dev split) in the weak prompt, answered with the corpus statements behind its
               reference (training.draft_data); with +knowledge, also the questions the strong
               model wrote for every corpus statement (training.knowledge), as texts or with
               --knowledge-format chat as drafting chats answered by the statement; with
               --statement-repeats N, each corpus statement alone N times; and, when a
               grounded policy is aligned from it, a grounded drafting example per fit question.
               `--sft-data drill` trains on training.knowledge's drill rows instead (knowledge
               chats, every statement, a sample of fit drafting chats): the closed-book specialist in one stage.
               `--curriculum` trains in order instead of shuffled: the statement repeats first
               (each pass shuffled, like epochs), then the other rows shuffled
- `feedback/`  K weak drafts per train question (the dev split held out), each given to the strong model and
               scored against the reference (choice tasks: the strong model's
               probability of the correct option); the most and least helpful
               drafts form DPO pairs
- `dpo/`       DPO of the SFT adapter on those pairs (training.dpo); skipped with a note
               when feedback produced no trainable pair. With --rounds N, `feedback-r2/`,
               `dpo-r2/`, ... collect with the previous round's adapter and continue from it;
               `-grounded` stages do the same for drafts written from retrieved passages
- `evaluate/`  every system on the test split (training.evaluate): results.json/.md/.png

Each stage directory holds `stage.json` with a fingerprint of the stage's inputs
(pack fingerprint, resolved config, upstream fingerprints and output digests).
A stage whose fingerprint matches a finished earlier run is skipped, so an
interrupted run resumes where it stopped; changed inputs rerun the stage, and
its new outputs change the fingerprints of everything downstream.
`pipeline.json` records each stage's status and duration and the total time.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import logging
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from cowest_app.defaults import DRAFT_TEMPERATURE, MIN_MARGIN
from training.common import recipe_dict, write_json
from training.evaluate import STRONG_BACKENDS, Settings as EvalSettings, load_strong
from training.knowledge import DRILL_DRAFTING_CHATS, KNOWLEDGE_FORMATS

if TYPE_CHECKING:
    from cowest_app.domains.packs import DomainPack
    from cowest_app.core.evaluators import Evaluator

log = logging.getLogger(__name__)

RECIPES = Path(__file__).parent / "recipes"
STAGE_FILE = "stage.json"
PIPELINE_FILE = "pipeline.json"
# Recipe fields that only say where files go: the upstream fingerprints already
# cover what is in those files, and leaving them out keeps a moved --out valid.
PATH_FIELDS = ("corpus", "dataset", "output_dir", "init_adapter", "cache_dir")


@dataclass(frozen=True)
class PipelineOptions:
    weak: str
    strong: str
    train_limit: int | None = None
    test_limit: int | None = None
    k: int = 4
    draft_tokens: int = 96  # drafts carry one or two statements and an answer line; short keeps CPU runs bounded
    final_tokens: int = 96  # the strong model's finals during feedback (scored for the answer)
    temperature: float = DRAFT_TEMPERATURE  # drafts must differ to be compared
    seed: int = 0
    # corpus: language modelling on the corpus only; corpus+drafts: plus one drafting
    # example per fit question (on the shipped pack corpus-only SFT left the weak model at chance);
    # corpus+drafts+knowledge: plus the pack's knowledge.jsonl questions (training.knowledge)
    sft_data: str = "corpus+drafts"
    knowledge_repeats: int = 1  # +knowledge: each kept question this many times per epoch (they are short)
    # +knowledge as `Question/Background` texts, or as chats in the drafting prompt (training.knowledge.knowledge_chats)
    knowledge_format: str = "text"
    # Each corpus statement alone, this many times per epoch: a draft writes a statement's words
    # from memory, and a statement is a few dozen tokens, so drilling it costs little.
    statement_repeats: int = 0
    # SFT in order, not shuffled: the statement repeats first, then the rest shuffled, so the
    # values are learnt before the prompt that brings them up, as a chain of SFT runs does
    # (README section 13: on the shipped pack it cost dev recall).
    curriculum: bool = False
    # Also run the retrieval-grounded recipe: SFT on grounded drafting examples, feedback and
    # DPO on drafts written from retrieved passages, and its rows in the evaluation.
    grounded: bool = False
    sft_recipe: Path = RECIPES / "sft.yaml"
    dpo_recipe: Path = RECIPES / "dpo.yaml"
    sft_overrides: tuple[str, ...] = ()
    dpo_overrides: tuple[str, ...] = ()
    eval: EvalSettings = field(default_factory=EvalSettings)
    feedback_scoring: str = "likelihood"  # choice tasks: strong option probability; "generate": finals + metric
    min_margin: float = MIN_MARGIN  # influence gap below which a pair is noise, not preference
    # 1: each question's most against least helpful draft; more: further pairs above the margin too.
    pairs_per_question: int = 1
    # auto: bfloat16 on GPUs and CPUs with native bf16 (4.6x the float32 prefill speed of the
    # 1.5B strong model on a Xeon with AMX, option probabilities equal to about 0.01), float32
    # elsewhere (an AVX2-only EPYC emulates bf16 more than 7x slower than float32).
    strong_dtype: str | None = "auto"
    strong_backend: str = "transformers"  # llama-cpp: the app's CPU backend scores feedback and evaluation
    stop_after: str | None = None  # a stage name: run up to it and stop (e.g. sft, to measure recall first)
    # An SFT adapter to start from instead of training one (e.g. a pack's shipped adapter/).
    sft_adapter: str | None = None
    # Which drafting modes get feedback and DPO: memory, grounded or both (None: both when grounded).
    drafting: str | None = None
    # Iterative alignment: round r > 1 collects feedback with round r-1's DPO adapter and continues DPO from it.
    rounds: int = 1
    load_4bit: bool = False  # inference models (feedback, evaluation); training follows its recipe
    device: str | None = None
    cache_dir: str | None = None

    @property
    def drafting_modes(self) -> tuple[bool, ...]:
        """`grounded` values to run feedback and DPO for, closed-book first."""
        mode = self.drafting or ("both" if self.grounded else "memory")
        return DRAFTING[mode]


# -- stage bookkeeping --------------------------------------------------------
# Inputs added after pipeline runs were kept, with the value those runs had without naming it:
# a fingerprint leaves such an input out while it holds that value, so the kept runs' stages stay current.
LATER_DEFAULTS: dict[str, Any] = {"strong_backend": "transformers", "pairs_per_question": 1, "train_modules": None}


def fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(without_later_defaults(inputs), sort_keys=True, default=str).encode()).hexdigest()


def without_later_defaults(inputs: dict[str, Any]) -> dict[str, Any]:
    """`inputs` (nested recipe dicts too) less every later input at its old implicit value."""
    return {key: without_later_defaults(value) if isinstance(value, dict) else value
            for key, value in inputs.items() if not (key in LATER_DEFAULTS and value == LATER_DEFAULTS[key])}


def digest_files(root: Path, names: Sequence[str]) -> str:
    """sha256 over the named output files: what downstream stages really consumed."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    return digest.hexdigest()


def read_stage(stage_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((stage_dir / STAGE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_current(record: dict[str, Any] | None, stage_dir: Path, fp: str) -> bool:
    """A finished run with the same inputs whose outputs are all still there."""
    return (
        record is not None and record.get("status") == "done" and record.get("fingerprint") == fp
        and all((stage_dir / name).is_file() for name in record.get("outputs", []))
    )


def upstream(record: dict[str, Any]) -> dict[str, str]:
    return {"fingerprint": record["fingerprint"], "digest": record["digest"]}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    # Unsorted: stages and systems keep the order they ran in.
    write_json(path, data, sort_keys=False)


# A stage's work gets its (empty) directory and returns (output files relative to it, summary).
StageWork = Callable[[Path], tuple[list[str], dict[str, Any]]]


def run_stage(out: Path, name: str, inputs: dict[str, Any], work: StageWork) -> dict[str, Any]:
    """Run `work` unless a finished run with the same input fingerprint is on disk."""
    stage_dir = out / name
    fp = fingerprint(inputs)
    record = read_stage(stage_dir)
    if is_current(record, stage_dir, fp):
        print(f"[{name}] up to date, skipped (ran in {record['seconds']:.1f}s before)", flush=True)
        return record | {"status": "done", "ran": False}
    # Our own stale outputs: start clean so none of them outlive the rerun. An interrupted run
    # of these same inputs keeps its directory: a recipe with resume_from_checkpoint=last resumes there.
    if record is not None and not (record.get("status") == "running" and record.get("fingerprint") == fp):
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    # Written first as "running": an interrupted stage is never mistaken for a finished one.
    _write_json(stage_dir / STAGE_FILE, {"stage": name, "status": "running", "fingerprint": fp, "inputs": inputs})
    started = time.perf_counter()
    outputs, summary = work(stage_dir)
    seconds = round(time.perf_counter() - started, 3)
    record = {
        "stage": name, "status": "done", "fingerprint": fp, "inputs": inputs, "outputs": sorted(outputs),
        "digest": digest_files(stage_dir, outputs), "seconds": seconds,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "summary": summary,
    }
    _write_json(stage_dir / STAGE_FILE, record)
    note = f": {summary['note']}" if summary.get("note") else ""
    print(f"[{name}] done in {seconds:.1f}s{note}", flush=True)
    return record | {"ran": True}


def _release_memory() -> None:
    # Each stage loads its own models; drop them before the next stage loads more.
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- recipes ------------------------------------------------------------------
def stage_recipe(cls: type, path: Path, overrides: Sequence[str], opts: PipelineOptions, **paths: Any) -> Any:
    """The recipe file plus --set overrides, pointed at the pipeline's model and files."""
    from training.common import load_recipe

    config = load_recipe(cls, path, overrides)
    changes = {"base_model": opts.weak, **paths}
    if opts.cache_dir:
        changes["cache_dir"] = opts.cache_dir
    return dataclasses.replace(config, **changes)


def config_inputs(config: Any) -> dict[str, Any]:
    return {k: v for k, v in recipe_dict(config).items() if k not in PATH_FIELDS}


# -- stages -------------------------------------------------------------------
def sft_stage(pack: DomainPack, opts: PipelineOptions, out: Path) -> dict[str, Any]:
    from training.sft import SFTRecipe, main as sft_main

    stage_dir = out / "sft"
    if opts.sft_adapter:
        return imported_sft_stage(Path(opts.sft_adapter), out)
    config = stage_recipe(SFTRecipe, opts.sft_recipe, opts.sft_overrides, opts,
                          corpus=str(stage_dir / "corpus.jsonl"), output_dir=str(stage_dir / "adapter"))
    if opts.curriculum:  # the corpus file's order is the training order
        config = dataclasses.replace(config, train_sampling_strategy="sequential")

    # JSONL, one document per line: training.sft reads it without caring how the pack stores its corpus.
    # Grounded drafting chats only when a grounded policy is trained from this adapter:
    # `--drafting memory` makes a closed-book specialist, every example spent on memory.
    grounded = opts.grounded and True in opts.drafting_modes
    rows = sft_rows(pack, opts.sft_data, grounded, opts.knowledge_repeats, opts.statement_repeats, opts.knowledge_format,
                    opts.curriculum)
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]

    def work(stage_dir: Path) -> tuple[list[str], dict[str, Any]]:
        (stage_dir / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        metrics = sft_main(config)
        summary = {k: metrics.get(k) for k in ("train_loss", "final_loss", "steps", "n_chunks", "n_chats", "seconds")}
        return ["corpus.jsonl", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"], summary

    # The data's digest too: SFT must rerun when the corpus or the cached knowledge changes,
    # whatever the pack fingerprint covers.
    data_sha = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    inputs = {"pack": pack.fingerprint(), "data": data_sha, "sft_data": opts.sft_data,
              "config": config_inputs(config)} | ({"grounded": True} if grounded else {})
    return run_stage(out, "sft", inputs, work)


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def imported_sft_stage(source: Path, out: Path) -> dict[str, Any]:
    """The SFT stage as a copy of an adapter trained before (`--sft-adapter`): the later
    stages then align that adapter, and its digest keys their fingerprints."""
    missing = [name for name in ADAPTER_FILES if not (source / name).is_file()]
    if missing:
        raise ValueError(f"--sft-adapter {source}: not a LoRA adapter directory (missing {', '.join(missing)})")

    def work(stage_dir: Path) -> tuple[list[str], dict[str, Any]]:
        (stage_dir / "adapter").mkdir()
        for name in ADAPTER_FILES:
            shutil.copyfile(source / name, stage_dir / "adapter" / name)
        return [f"adapter/{name}" for name in ADAPTER_FILES], {"imported": str(source)}

    return run_stage(out, "sft", {"imported_adapter": digest_files(source, ADAPTER_FILES)}, work)


SFT_DATA = ("corpus+drafts", "corpus", "corpus+drafts+knowledge", "drill")
DRAFTING = {"memory": (False,), "grounded": (True,), "both": (False, True)}
STAGES = ("sft", "feedback", "dpo", "evaluate")


def sft_rows(pack: DomainPack, sft_data: str, grounded: bool = False, knowledge_repeats: int = 1,
             statement_repeats: int = 0, knowledge_format: str = "text", curriculum: bool = False) -> list[dict[str, Any]]:
    """The SFT stage's JSONL rows: corpus texts, then (corpus+drafts) one drafting chat per fit
    question, (+knowledge) `knowledge_repeats` texts (or drafting chats) per question of the pack's knowledge.jsonl,
    `statement_repeats` copies of each corpus statement alone, and (grounded) one more chat per
    fit question drafting from its retrieved passages (`curriculum`: the statement copies first,
    see `curriculum_order`). `drill` is the short road to a closed-book
    specialist: training.knowledge's drill rows (every knowledge question as a drafting chat,
    every statement, a sample of fit drafting chats) instead of the corpus and all drafting chats.
    The dev split is never trained on: it chooses settings and gates candidates."""
    from training.draft_data import draft_examples, grounded_draft_examples
    from training.knowledge import drill_rows, pack_knowledge, statement_texts

    if sft_data not in SFT_DATA:
        raise ValueError(f"unknown sft_data {sft_data!r}; use one of {', '.join(SFT_DATA)}")
    if sft_data == "drill":
        rows = drill_rows(pack)
    else:
        rows = [{"text": t} for t in pack.corpus_texts()]
    if sft_data.startswith("corpus+drafts"):
        rows += draft_examples(pack, pack.fit)
    if sft_data.endswith("+knowledge"):
        rows += [row for row in pack_knowledge(pack, knowledge_format) for _ in range(knowledge_repeats)]
    statements = statement_texts(pack)
    grounded_rows = grounded_draft_examples(pack, pack.fit) if grounded else []
    if curriculum:
        return curriculum_order(statements, statement_repeats, rows + grounded_rows)
    return rows + [{"text": t} for t in statements for _ in range(statement_repeats)] + grounded_rows


def curriculum_order(statements: Sequence[str], repeats: int, rest: Sequence[dict[str, Any]],
                     seed: int = 0) -> list[dict[str, Any]]:
    """SFT rows in the order a sequential trainer learns them: `repeats` passes over the
    statements, each shuffled anew (as epochs are), then `rest` shuffled."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(repeats):
        order = list(statements)
        rng.shuffle(order)
        rows += [{"text": t} for t in order]
    tail = list(rest)
    rng.shuffle(tail)
    return rows + tail


def stage_name(stage: str, grounded: bool, round_: int = 1) -> str:
    """Feedback and DPO run once per drafting mode and round; the grounded runs live beside
    the others, later rounds beside the first (`dpo-grounded-r2`)."""
    return stage + ("-grounded" if grounded else "") + (f"-r{round_}" if round_ > 1 else "")


def feedback_evaluator(pack: DomainPack, opts: PipelineOptions, strong: Any) -> Evaluator:
    """How feedback scores a final answer.

    Choice tasks (by default): the strong model's probability of the correct
    option, read off one forward pass per final (`OptionLikelihood`). Otherwise,
    or with --feedback-scoring generate: the strong model writes each final and
    the pack's metric scores it against the reference.
    """
    from cowest_app.core.evaluators import ReferenceEvaluator
    from cowest_app.core.scoring import CHOICE_TASKS, OptionLikelihood

    if opts.feedback_scoring == "likelihood" and pack.task_type in CHOICE_TASKS:
        return OptionLikelihood(strong, labels=pack.labels, batch_size=opts.eval.batch_size)
    return ReferenceEvaluator(task_type=pack.task_type, options=pack.labels or None)


def feedback_stage(pack: DomainPack, opts: PipelineOptions, out: Path, policy: dict[str, Any], policy_dir: Path,
                   grounded: bool = False, round_: int = 1) -> dict[str, Any]:
    """K drafts per fit question by the policy (the SFT adapter, or the last round's DPO one)."""
    from cowest_app.models.base import GenerationOptions

    weak_opts = GenerationOptions(max_new_tokens=opts.draft_tokens, temperature=opts.temperature, seed=opts.seed)
    strong_opts = GenerationOptions(max_new_tokens=opts.final_tokens, temperature=0.0)
    inputs = {
        "pack": pack.fingerprint(), "policy": upstream(policy), "weak": opts.weak, "strong": opts.strong,
        "train_limit": opts.train_limit, "k": opts.k, "weak_options": weak_opts.as_kwargs(),
        "strong_options": strong_opts.as_kwargs(), "load_4bit": opts.load_4bit,
        "feedback_scoring": opts.feedback_scoring, "min_margin": opts.min_margin, "strong_dtype": opts.strong_dtype,
        "strong_backend": opts.strong_backend, "pairs_per_question": opts.pairs_per_question,
    } | ({"grounded": True, "passages": pack.retrieval_passages} if grounded else {})

    def work(stage_dir: Path) -> tuple[list[str], dict[str, Any]]:
        from tqdm import tqdm

        from cowest_app.loop.collect import collect
        from cowest_app.core.feedback import write_dpo_jsonl
        from cowest_app.models.local import TransformersBackend

        items = pack.question_items("fit")  # the dev split stays out: it gates and chooses settings
        items = items[:opts.train_limit] if opts.train_limit is not None else items
        # The weak model drafting here is the SFT model: DPO then trains the policy that wrote the drafts.
        weak = TransformersBackend(opts.weak, cache_dir=opts.cache_dir, load_4bit=opts.load_4bit,
                                   adapter=str(policy_dir), adapter_version=policy_dir.parent.name, device=opts.device)
        strong = load_strong(opts.strong, opts.strong_backend, cache_dir=opts.cache_dir, load_4bit=opts.load_4bit,
                             device=opts.device, dtype=opts.strong_dtype)
        evaluator = feedback_evaluator(pack, opts, strong)
        with tqdm(total=len(items), desc="feedback", unit="question", leave=False) as bar:
            def progress(p: Any) -> None:
                bar.update(p.done - bar.n)
                bar.set_postfix(pairs=p.pairs)

            result = collect(items, weak, strong, evaluator, k=opts.k, min_margin=opts.min_margin,
                             weak_opts=weak_opts, strong_opts=strong_opts, progress=progress,
                             prompt_sets={pack.name: pack.prompt_set(grounded)},
                             pairs_per_question=opts.pairs_per_question)
        pairs = [pair for r in result.results for pair in r.pairs if pair.trainable]
        _, count, sha = write_dpo_jsonl(pairs, stage_dir / "pairs.jsonl")
        report = {
            "questions": len(items), "pairs": result.pairs, "trainable": result.trainable, "pairs_sha256": sha,
            "errors": [{"index": i, "error": e} for i, e in result.errors],
            "results": [_result_row(r) for r in result.results],
        }
        _write_json(stage_dir / "feedback.json", report)
        summary = {"questions": len(items), "pairs": count, "errors": len(result.errors),
                   "seconds_collect": round(result.elapsed_s, 3), "note": f"{count} pairs from {len(items)} questions"}
        return ["pairs.jsonl", "feedback.json"], summary

    record = run_stage(out, stage_name("feedback", grounded, round_), inputs, work)
    _release_memory()
    return record


def _result_row(result: Any) -> dict[str, Any]:
    return {
        "question": result.question, "drafts": result.drafts, "finals": result.finals,
        "final_scores": [s.value for s in result.final_scores], "strong_alone_score": result.strong_alone_score.value,
        "influences": result.influences, "pair": result.pair is not None, "pairs": len(result.pairs), "reason": result.reason,
    }


def dpo_stage(pack: DomainPack, opts: PipelineOptions, out: Path, policy: dict[str, Any], policy_dir: Path,
              feedback: dict[str, Any], grounded: bool = False, round_: int = 1) -> dict[str, Any]:
    """DPO of the policy that drafted the feedback, on its pairs."""
    from training.dpo import DPORecipe, main as dpo_main

    name = stage_name("dpo", grounded, round_)
    stage_dir = out / name
    pairs = out / stage_name("feedback", grounded, round_) / "pairs.jsonl"
    config = stage_recipe(DPORecipe, opts.dpo_recipe, opts.dpo_overrides, opts,
                          dataset=str(pairs), output_dir=str(stage_dir / "adapter"), init_adapter=str(policy_dir))
    inputs = {"pack": pack.fingerprint(), "config": config_inputs(config), "policy": upstream(policy),
              "feedback": upstream(feedback)}

    def work(stage_dir: Path) -> tuple[list[str], dict[str, Any]]:
        if feedback["summary"].get("pairs", 0) == 0:
            # Nothing to learn from: evaluation then reports the SFT model without a DPO row.
            return [], {"trained": False, "note": "no trainable pairs, DPO skipped"}
        metrics = dpo_main(config)
        summary = {k: metrics.get(k) for k in ("train_loss", "final_loss", "rewards/accuracies", "steps", "n_pairs", "seconds")}
        return ["adapter/adapter_config.json", "adapter/adapter_model.safetensors"], summary | {"trained": True}

    return run_stage(out, name, inputs, work)


def evaluate_stage(pack: DomainPack, opts: PipelineOptions, out: Path, sft: dict[str, Any],
                   aligned: dict[bool, tuple[dict[str, Any], Path]]) -> dict[str, Any]:
    """Every system on the test split; `aligned[grounded]` is each drafting mode's last DPO stage and adapter."""
    from training.evaluate import RESULTS_JSON, RESULTS_MD, RESULTS_PNG, evaluate

    def adapter(grounded: bool) -> str | None:
        record, path = aligned.get(grounded, ({}, None))
        return str(path) if record.get("outputs") else None

    dpo, grounded_dpo = aligned.get(False, ({}, None))[0], aligned.get(True, ({}, None))[0]
    dpo_adapter, grounded_adapter = adapter(False), adapter(True)
    inputs = {
        "pack": pack.fingerprint(), "sft": upstream(sft), "dpo": upstream(dpo) if dpo else None, "weak": opts.weak,
        "strong": opts.strong, "test_limit": opts.test_limit, "settings": dataclasses.asdict(opts.eval),
        "load_4bit": opts.load_4bit, "strong_dtype": opts.strong_dtype, "strong_backend": opts.strong_backend,
    } | ({"grounded": True, "dpo_grounded": upstream(grounded_dpo) if grounded_dpo else None}
         if True in opts.drafting_modes else {})

    def work(stage_dir: Path) -> tuple[list[str], dict[str, Any]]:
        results = evaluate(pack, opts.weak, opts.strong, sft_adapter=str(out / "sft" / "adapter"),
                           dpo_adapter=dpo_adapter, grounded_dpo_adapter=grounded_adapter,
                           grounded=True in opts.drafting_modes,
                           limit=opts.test_limit, out=stage_dir, settings=opts.eval,
                           load_4bit=opts.load_4bit, device=opts.device, cache_dir=opts.cache_dir,
                           strong_dtype=opts.strong_dtype, strong_backend=opts.strong_backend)
        scores = {key: round(s["accuracy"], 4) for key, s in results["systems"].items()}
        return [RESULTS_JSON, RESULTS_MD, RESULTS_PNG], {"accuracy": scores}

    record = run_stage(out, "evaluate", inputs, work)
    _release_memory()
    return record


def check_recipes(opts: PipelineOptions) -> None:
    """Load both recipes with their overrides now: a typo in a dpo.* override
    should fail in a second, not after SFT and feedback have run."""
    from training.dpo import DPORecipe
    from training.sft import SFTRecipe

    stage_recipe(SFTRecipe, opts.sft_recipe, opts.sft_overrides, opts)
    stage_recipe(DPORecipe, opts.dpo_recipe, opts.dpo_overrides, opts)


# -- the pipeline -----------------------------------------------------------------
def run_pipeline(pack: DomainPack, opts: PipelineOptions, out: str | Path) -> dict[str, Any]:
    """Run (or resume) every stage; returns what is also written to OUT/pipeline.json."""
    out = Path(out)
    check_recipes(opts)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sft = sft_stage(pack, opts, out)
    _release_memory()
    stages = {"sft": sft}
    aligned: dict[bool, tuple[dict[str, Any], Path]] = {}
    for grounded in opts.drafting_modes:
        if opts.stop_after == "sft":
            break
        policy, policy_dir = sft, out / "sft" / "adapter"
        for round_ in range(1, opts.rounds + 1):
            feedback = feedback_stage(pack, opts, out, policy, policy_dir, grounded, round_)
            stages[stage_name("feedback", grounded, round_)] = feedback
            if opts.stop_after == "feedback":
                break
            dpo = stages[stage_name("dpo", grounded, round_)] = dpo_stage(
                pack, opts, out, policy, policy_dir, feedback, grounded, round_)
            _release_memory()
            aligned[grounded] = (dpo, out / stage_name("dpo", grounded, round_) / "adapter")
            if not dpo["outputs"]:  # no pairs: a later round would draft with the same policy again
                break
            policy, policy_dir = aligned[grounded]
    if opts.stop_after is None:
        stages["evaluate"] = evaluate_stage(pack, opts, out, sft, aligned)
    evaluation = stages.get("evaluate", {})
    total = round(time.perf_counter() - started, 3)
    report = {
        "pack": pack.name,
        "pack_fingerprint": pack.fingerprint(),
        "total_seconds": total,
        # Everything that decides the results, so a result set says how to reproduce it.
        "options": json.loads(json.dumps(dataclasses.asdict(opts), default=str)),
        "stages": {
            # seconds: spent in this invocation; recorded_seconds: what the run that made the outputs took.
            name: {"ran": r["ran"], "seconds": r["seconds"] if r["ran"] else 0.0, "recorded_seconds": r["seconds"],
                   "fingerprint": r["fingerprint"], "summary": r.get("summary", {})}
            for name, r in stages.items()
        },
        "accuracy": evaluation.get("summary", {}).get("accuracy", {}),
    }
    _write_json(out / PIPELINE_FILE, report)
    print(f"pipeline done in {total:.1f}s; results in {out / 'evaluate'}", flush=True)
    return report


# -- command line -------------------------------------------------------------------
def split_overrides(items: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`sft.key=value` / `dpo.key=value` into the two recipes' `key=value` overrides."""
    routed: dict[str, list[str]] = {"sft": [], "dpo": []}
    for item in items:
        stage, dot, rest = item.partition(".")
        if not dot or stage not in routed or "=" not in rest:
            raise ValueError(f"--set expects sft.key=value or dpo.key=value, got {item!r}")
        routed[stage].append(rest)
    return tuple(routed["sft"]), tuple(routed["dpo"])


def check_curriculum(sft_adapter: str | None, sft_overrides: Sequence[str]) -> None:
    """`--curriculum` only means something for an SFT this run trains, in the order it writes;
    say so rather than let the flag do nothing or overrule the user's own sampling order."""
    if sft_adapter:
        raise ValueError("--curriculum orders the SFT rows, but with --sft-adapter no SFT runs; drop one of them")
    for item in sft_overrides:
        key, _, value = item.partition("=")
        if key.strip() == "train_sampling_strategy" and value.strip() != "sequential":
            raise ValueError(f"--curriculum trains with train_sampling_strategy=sequential, "
                             f"which --set sft.{item} contradicts; drop one of them")


def build_parser() -> argparse.ArgumentParser:
    from cowest_app.config import STRONG_DEFAULT, WEAK_DEFAULT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", required=True, help="domain pack directory or file")
    parser.add_argument("--out", help="output directory (default: data/pipeline/<pack name>)")
    parser.add_argument("--weak", default=WEAK_DEFAULT, help="weak model: packaged:NAME, directory or Hub id")
    parser.add_argument("--strong", default=STRONG_DEFAULT, help="strong model: packaged:NAME, directory or Hub id")
    parser.add_argument("--train-limit", type=int, help="collect feedback on the first N train questions")
    parser.add_argument("--test-limit", type=int, help="evaluate on the first N test items")
    parser.add_argument("--k", type=int, default=PipelineOptions.k, help="weak drafts per train question")
    parser.add_argument("--draft-tokens", type=int, default=PipelineOptions.draft_tokens, help="max new tokens of a weak draft")
    parser.add_argument("--final-tokens", type=int, default=PipelineOptions.final_tokens,
                        help="max new tokens of a strong final during feedback")
    parser.add_argument("--answer-tokens", type=int, default=EvalSettings.answer_tokens,
                        help="max new tokens of a short answer during evaluation")
    parser.add_argument("--rag-k", type=int, default=EvalSettings.rag_k, help="passages retrieved for RAG")
    parser.add_argument("--batch-size", type=int, default=EvalSettings.batch_size, help="evaluation batch size")
    parser.add_argument("--seed", type=int, default=PipelineOptions.seed, help="seed of the draft sampling")
    parser.add_argument("--sft-recipe", type=Path, default=PipelineOptions.sft_recipe)
    parser.add_argument("--dpo-recipe", type=Path, default=PipelineOptions.dpo_recipe)
    parser.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="override a recipe key, e.g. sft.num_train_epochs=1 or dpo.max_steps=10")
    parser.add_argument("--sft-data", choices=SFT_DATA, default=PipelineOptions.sft_data,
                        help="what SFT trains on: the corpus plus a drafting example per fit question, the corpus only, "
                             "the first plus the pack's knowledge.jsonl (python -m training.knowledge), or "
                             f"the drill rows (knowledge chats, statements, {DRILL_DRAFTING_CHATS} fit drafting chats; "
                             "with --statement-repeats)")
    parser.add_argument("--knowledge-repeats", type=int, default=PipelineOptions.knowledge_repeats,
                        help="with --sft-data ...+knowledge: each knowledge question this many times per epoch "
                             "(short texts: memorising them costs far less than repeating every drafting chat)")
    parser.add_argument("--knowledge-format", choices=KNOWLEDGE_FORMATS, default=PipelineOptions.knowledge_format,
                        help="with --sft-data ...+knowledge: each question as a `Question/Background` text, or as a chat in "
                             "the drafting prompt answered by its statement (where a draft needs the statement)")
    parser.add_argument("--statement-repeats", type=int, default=PipelineOptions.statement_repeats,
                        help="each corpus statement alone, this many times per SFT epoch: drills the values a draft "
                             "from memory must write")
    parser.add_argument("--curriculum", action="store_true",
                        help="SFT in order: the --statement-repeats passes first, then the other rows (sequential sampling)")
    parser.add_argument("--grounded", action="store_true",
                        help="also run the retrieval-grounded recipe (on by default when the pack's domain.yaml sets retrieval)")
    parser.add_argument("--feedback-scoring", choices=("likelihood", "generate"), default=PipelineOptions.feedback_scoring,
                        help="choice tasks: score finals by the strong model's option likelihood, or generate and parse them")
    parser.add_argument("--min-margin", type=float, default=PipelineOptions.min_margin,
                        help="least influence gap between chosen and rejected draft")
    parser.add_argument("--pairs-per-question", type=int, default=PipelineOptions.pairs_per_question,
                        help="pairs per feedback question: 1 = most against least helpful draft; more adds further "
                             "pairs of drafts whose gains differ by more than --min-margin, largest gap first (at most K(K-1)/2)")
    parser.add_argument("--strong-dtype", choices=("auto", "float32", "bfloat16"), default=PipelineOptions.strong_dtype,
                        help="strong model dtype for feedback and evaluation (auto: bfloat16 where the device has it natively)")
    parser.add_argument("--strong-backend", choices=STRONG_BACKENDS, default=PipelineOptions.strong_backend,
                        help="llama-cpp: the strong GGUF read by llama.cpp (the app's CPU backend) for feedback and evaluation")
    parser.add_argument("--stop-after", choices=STAGES[:-1], help="run the stages up to this one, then stop")
    parser.add_argument("--sft-adapter", help="start from this SFT adapter (e.g. a pack's shipped adapter/) instead of training one")
    parser.add_argument("--drafting", choices=tuple(DRAFTING),
                        help="drafting modes that get feedback and DPO (default: both with --grounded, else memory)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alignment rounds: round r collects feedback with round r-1's adapter and continues DPO from it")
    parser.add_argument("--load-4bit", action="store_true", help="NF4 inference models for feedback and evaluation")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--cache-dir", help="model cache (default: $COWEST_CACHE_DIR or ~/.cache/cowest)")
    return parser


def options_from_args(ns: argparse.Namespace) -> PipelineOptions:
    if ns.rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {ns.rounds}")
    if ns.knowledge_repeats < 1:
        raise ValueError(f"--knowledge-repeats must be at least 1, got {ns.knowledge_repeats}")
    if ns.pairs_per_question < 1:
        raise ValueError(f"--pairs-per-question must be at least 1, got {ns.pairs_per_question}")
    if ns.statement_repeats < 0:
        raise ValueError(f"--statement-repeats must be 0 or more, got {ns.statement_repeats}")
    sft_overrides, dpo_overrides = split_overrides(ns.set)
    if ns.curriculum:
        check_curriculum(ns.sft_adapter, sft_overrides)
    return PipelineOptions(
        weak=ns.weak, strong=ns.strong, train_limit=ns.train_limit, test_limit=ns.test_limit, k=ns.k,
        draft_tokens=ns.draft_tokens, final_tokens=ns.final_tokens, seed=ns.seed, sft_data=ns.sft_data,
        knowledge_repeats=ns.knowledge_repeats, knowledge_format=ns.knowledge_format,
        statement_repeats=ns.statement_repeats, curriculum=ns.curriculum, grounded=ns.grounded,
        sft_recipe=ns.sft_recipe,
        dpo_recipe=ns.dpo_recipe, sft_overrides=sft_overrides, dpo_overrides=dpo_overrides,
        eval=EvalSettings(rag_k=ns.rag_k, draft_tokens=ns.draft_tokens, answer_tokens=ns.answer_tokens,
                          batch_size=ns.batch_size),
        feedback_scoring=ns.feedback_scoring, min_margin=ns.min_margin, pairs_per_question=ns.pairs_per_question,
        strong_dtype=ns.strong_dtype, strong_backend=ns.strong_backend,
        load_4bit=ns.load_4bit, device=ns.device, cache_dir=ns.cache_dir, stop_after=ns.stop_after,
        sft_adapter=ns.sft_adapter, drafting=ns.drafting, rounds=ns.rounds,
    )


def main(argv: Sequence[str] | None = None) -> int:
    from cowest_app.domains.packs import load_pack
    from training.common import RecipeError

    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        opts = options_from_args(ns)
        check_recipes(opts)
        pack = load_pack(ns.pack)
        if pack.retrieval_passages and not opts.grounded:
            opts = dataclasses.replace(opts, grounded=True)
    except (ValueError, OSError) as exc:  # RecipeError and PackError are ValueErrors too
        parser.error(str(exc))
    out = Path(ns.out) if ns.out else Path("data") / "pipeline" / pack.name
    try:
        run_pipeline(pack, opts, out)
    except RecipeError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
