"""How good are the labels that train the weak model? Agreement of each labeller with the truth.

    python -m training.labeller_study --pack packs/saltmarsh-formulary \
        --out packs/saltmarsh-formulary/results/labellers [--eval-pairs N] [--strong-pairs N] [--skip STAGE ...]

The truth: collaborative feedback with references (the pipeline's
`feedback.json`: K drafts per question, each draft's influence = the strong
model's probability of the right option after reading it, minus that
probability alone). For each question the most and least helpful drafts form a
pair, exactly as `feedback.choose_pair` forms the pairs the app trains on. The
pairs are shuffled (fixed seed) and split in two halves: the first half is
the labelled pool a teacher may learn from, the second the evaluation pairs.
Each pair is shown as (A, B) in a random order, so "always A" agrees 50%.

Labellers, each asked which of A and B is better, without the reference:

- `weak_judge`: the weak model zero-shot, A/B asked in both orders (the app's judge);
- `strong_judge`: the strong model grades each draft with the rubric (1-10); ties are 0.5;
- `weak_teacher@0`: the implicit reward of the pack's shipped (SFT) adapter against the bare
  base, no preference training: how much the adapter alone already prefers the better drafts;
- `weak_teacher@1/8`, `@1/4`, `@1/2`: the same after DPO of that adapter on 1/8, 1/4, 1/2 of the
  labelled pairs (reference: the bare base, so the reward DPO fits is the one the teacher reads).
  The subsets are nested and trained as one epoch over the first half, saving an adapter
  after 1/8 and 1/4: the cost of one run. Each part continues the previous adapter with a
  fresh optimizer at a constant learning rate, so a checkpoint is close to, not exactly, a
  separate one-epoch run on its prefix.

Every labeller is scored on evaluation pairs no teacher trained on; the strong judge, a
1.5B model generating on a CPU, on the first `--strong-pairs` of them. Agreement is
reported with a 95% bootstrap interval and by the labeller's confidence (a teacher's:
sigmoid of the reward gap; the weak judge's: its order-averaged probability; the strong
judge's: 0.5 + half the grade gap), and for the pairs at or above the app's training
threshold (COWEST_FEEDBACK_MIN_CONFIDENCE, 0.6): the pairs that labeller would train on.

Each stage writes OUT/stages/<stage>.json and is skipped when that file exists, so an
interrupted study resumes; delete a stage's file to redo it. Adapters go to
OUT/adapters/ (not kept by the repo). results.json, results.md and agreement.json
(what the app's Training tab and training guard read) are rebuilt from the stage files
on every run.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cowest_app.core.feedback import choose_pair
from cowest_app.files import write_atomic
from training.evaluate import bootstrap_ci

log = logging.getLogger(__name__)

DEFAULT_FEEDBACK = Path("results/grounded/full-draft-notes/feedback.json")  # relative to the pack
FRACTIONS = (8, 4, 2)  # teachers on 1/8, 1/4 and 1/2 of the labelled pool
BUCKETS = ((0.5, 0.6), (0.6, 0.75), (0.75, 1.0001))  # labeller confidence bands
MIN_CONFIDENCE = 0.6  # the app's default COWEST_FEEDBACK_MIN_CONFIDENCE: pairs below it are not trained on
MIN_MARGIN = 0.05  # the pipeline's influence margin the feedback was collected with
# One epoch at 3x the recipe's 5e-5 stands in for the recipe's 3 epochs, at a third of the CPU time.
LEARNING_RATE = 1.5e-4
AGREEMENT_FILE = "agreement.json"  # per evaluator, for the app (cowest_app.loop.agreement)


@dataclass(frozen=True)
class TruthPair:
    """Two drafts of one question; `a_better` is the reference-derived truth."""

    id: int
    question: str  # as the models saw it, options lettered
    a: str
    b: str
    a_better: bool
    influence_gap: float


def truth_pairs(feedback: dict[str, Any], seed: int = 0) -> list[TruthPair]:
    """One pair per question whose drafts' influences differ by more than the margin, shuffled,
    each drafts' order (A, B) drawn at random."""
    rng = random.Random(seed)
    pairs: list[TruthPair] = []
    for row in feedback["results"]:
        choice = choose_pair(row["drafts"], row["influences"], MIN_MARGIN)
        if isinstance(choice, str):
            continue
        chosen, rejected = row["drafts"][choice.chosen], row["drafts"][choice.rejected]
        a_better = rng.random() < 0.5
        a, b = (chosen, rejected) if a_better else (rejected, chosen)
        pairs.append(TruthPair(len(pairs), row["question"], a, b, a_better, choice.margin))
    rng.shuffle(pairs)
    return pairs


# -- agreement ------------------------------------------------------------------
def agreement_scores(truth: Sequence[bool], p_a: Sequence[float]) -> list[float]:
    """1 when the labeller prefers the better draft, 0 when the worse, 0.5 when it cannot tell."""
    return [0.5 if p == 0.5 else float((p > 0.5) == t) for t, p in zip(truth, p_a, strict=True)]


def summarise(truth: Sequence[bool], p_a: Sequence[float]) -> dict[str, Any]:
    """Agreement (%) with its bootstrap CI, by confidence bucket, and on the pairs it would train on."""
    scores = np.asarray(agreement_scores(truth, p_a))
    confidence = np.asarray([max(p, 1 - p) for p in p_a])
    low, high = bootstrap_ci(scores)
    out: dict[str, Any] = {"n": len(scores), "agreement": 100 * float(scores.mean()),
                           "ci_low": 100 * low, "ci_high": 100 * high, "buckets": []}
    for lo, hi in BUCKETS:
        inside = (confidence >= lo) & (confidence < hi)
        share = scores[inside]
        out["buckets"].append({"confidence": f"{lo:.2f}-{min(hi, 1.0):.2f}", "n": int(inside.sum()),
                               "agreement": 100 * float(share.mean()) if share.size else None})
    kept = scores[confidence >= MIN_CONFIDENCE]
    out["trainable"] = {"n": int(kept.size), "share": 100 * kept.size / len(scores),
                        "agreement": 100 * float(kept.mean()) if kept.size else None}
    return out


# -- stages -----------------------------------------------------------------------
class Study:
    """The study's stages over one pack; each stage's output is a JSON file under OUT/stages."""

    def __init__(self, pack: Any, out: Path, pairs: list[TruthPair], eval_pairs: int, teacher_pairs: int,
                 strong_pairs: int, fractions: Sequence[int], weak: str, strong: str, adapter: Path,
                 cache_dir: str | None, dpo_overrides: Sequence[str]) -> None:
        self.pack, self.out = pack, out
        # The pool is the largest training subset (1/2 of the labelled pairs); every teacher is
        # scored on pairs after it, which none trained on.
        self.n_pairs = len(pairs)
        half = len(pairs) // min(FRACTIONS)
        self.pool, self.eval = pairs[:half], pairs[half:][:eval_pairs]
        # Subsets of the evaluation pairs for the costlier labellers: always its first pairs.
        self.teacher_eval = self.eval[:teacher_pairs]
        self.strong_pairs, self.fractions = strong_pairs, tuple(fractions)
        self.weak, self.strong, self.adapter, self.cache_dir = weak, strong, adapter, cache_dir
        self.dpo_overrides = tuple(dpo_overrides)
        self.prompt_set = pack.prompt_set(grounded=pack.retrieval_passages > 0)  # as the drafts were written
        (out / "stages").mkdir(parents=True, exist_ok=True)
        self._weak_backend: Any = None

    def stage(self, name: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = self.out / "stages" / f"{name}.json"
        if path.is_file():
            print(f"[{name}] done before, skipped", flush=True)
            return json.loads(path.read_text(encoding="utf-8"))
        started = time.perf_counter()
        result = work() | {"seconds": round(time.perf_counter() - started, 1)}
        write_atomic(path, json.dumps(result, indent=1) + "\n")
        print(f"[{name}] done in {result['seconds']:.0f}s", flush=True)
        return result

    def weak_backend(self) -> Any:
        from cowest_app.models.local import TransformersBackend

        if self._weak_backend is None:
            self._weak_backend = TransformersBackend(self.weak, cache_dir=self.cache_dir)
        return self._weak_backend

    def labels(self, pairs: Sequence[TruthPair], p_a: Sequence[float], **extra: Any) -> dict[str, Any]:
        return {"ids": [p.id for p in pairs], "truth": [p.a_better for p in pairs], "p_a": list(p_a), **extra}

    # -- labellers ------------------------------------------------------------
    def weak_judge(self) -> dict[str, Any]:
        from cowest_app.core.evaluators import WeakJudge

        judge = WeakJudge(self.weak_backend())
        return self.labels(self.eval, [judge.pair_preference(p.question, p.a, p.b) for p in self.eval])

    def strong_judge(self) -> dict[str, Any]:
        from cowest_app.core.evaluators import StrongJudge
        from cowest_app.models.local import TransformersBackend

        backend = TransformersBackend(self.strong, cache_dir=self.cache_dir, dtype="auto")
        # "Score: N/10" is 6 tokens; a longer budget only lets the model ramble on a CPU.
        judge = StrongJudge(backend, max_new_tokens=8)
        pairs, p_a, grades = self.eval[:self.strong_pairs], [], []
        for pair in pairs:
            a, b = (s.value for s in judge.score_answers(pair.question, [pair.a, pair.b]))
            grades.append([a, b])
            p_a.append(0.5 if a is None or b is None else 0.5 + (a - b) / 2)
        return self.labels(pairs, p_a, grades=grades, dtype=str(backend.model.dtype))

    def reference(self) -> dict[str, Any]:
        """log π_ref of every evaluation draft (adapters disabled): the same for every teacher, computed once."""
        from cowest_app.core.evaluators import reply_logprobs

        backend = self.weak_backend()
        backend.swap_adapter(str(self.adapter), "shipped", self.pack.name)
        logprobs = reply_logprobs(backend, self.pack.name, *self.eval_batch(), reference=True)
        return {"ids": [p.id for p in self.teacher_eval], "logprobs": logprobs}

    def eval_batch(self) -> tuple[list[Any], list[list[str]]]:
        pairs = self.teacher_eval
        return [self.prompt_set.draft(p.question) for p in pairs], [[p.a, p.b] for p in pairs]

    def teacher(self, adapter: Path, reference: dict[str, Any]) -> dict[str, Any]:
        """The weak_teacher's labels with `adapter` in the pack's slot: its implicit rewards
        (the evaluator's own functions), the reference pass read from the `reference` stage."""
        from cowest_app.core.evaluators import DPO_BETA, implicit_rewards, preference, reply_logprobs

        if reference["ids"] != [p.id for p in self.teacher_eval]:
            raise ValueError("the reference stage scored other evaluation pairs: delete stages/reference.json")
        backend = self.weak_backend()
        backend.swap_adapter(str(adapter), adapter.name, self.pack.name)  # a fresh copy of the base, never stacked
        policy = reply_logprobs(backend, self.pack.name, *self.eval_batch())
        rewards = [implicit_rewards(pol, ref, DPO_BETA) for pol, ref in zip(policy, reference["logprobs"], strict=True)]
        return self.labels(self.teacher_eval, [preference(a, b) for a, b in rewards], rewards=rewards,
                           adapter=str(adapter))

    # -- DPO on the labelled pool ---------------------------------------------------------
    def train_prefix(self, start: int, stop: int, init: Path, out: Path) -> dict[str, Any]:
        """One DPO pass over pool[start:stop], continuing `init` (the reference stays the bare base)."""
        from cowest_app.core.feedback import write_dpo_jsonl
        from cowest_app.core.store import PreferencePair
        from training.common import load_recipe
        from training.dpo import DPORecipe, main as dpo_main

        rows = [PreferencePair(self.pack.name, p.question, self.prompt_set.draft(p.question),
                               p.a if p.a_better else p.b, p.b if p.a_better else p.a, p.influence_gap, "reference")
                for p in self.pool[start:stop]]
        if out.exists():  # a half-written adapter from an interrupted run
            shutil.rmtree(out)
        out.mkdir(parents=True)
        dataset, _, _ = write_dpo_jsonl(rows, out / "train.jsonl")
        config = load_recipe(DPORecipe, Path(__file__).parent / "recipes" / "dpo.yaml", [
            f"base_model={self.weak}", f"dataset={dataset}", f"output_dir={out}", f"init_adapter={init}",
            "reference=base", "load_4bit=false", "num_train_epochs=1", f"learning_rate={LEARNING_RATE}",
            # Constant: the nested checkpoints then equal separate one-epoch runs on each prefix.
            "lr_scheduler_type=constant", "warmup_steps=0", *self.dpo_overrides,
        ] + ([f"cache_dir={self.cache_dir}"] if self.cache_dir else []))
        metrics = dpo_main(config)
        return {k: metrics.get(k) for k in ("n_pairs", "steps", "final_loss", "rewards/margins",
                                            "rewards/accuracies", "seconds")} | {"pairs": [start, stop]}

    def run(self, skip: Sequence[str]) -> dict[str, dict[str, Any]]:
        stages: dict[str, dict[str, Any]] = {}
        if "weak_judge" not in skip:
            stages["weak_judge"] = self.stage("weak_judge", self.weak_judge)
        if "teacher" not in skip:
            ref = self.stage("reference", self.reference)
            stages["weak_teacher@0"] = self.stage("weak_teacher@0", lambda: self.teacher(self.adapter, ref))
            init, done = self.adapter, 0
            for fraction in self.fractions:
                stop = self.n_pairs // fraction
                path = self.out / "adapters" / f"dpo-1_{fraction}"
                start, previous = done, init
                stages[f"dpo@1/{fraction}"] = self.stage(f"dpo@1_{fraction}",
                                                         lambda: self.train_prefix(start, stop, previous, path))
                stages[f"weak_teacher@1/{fraction}"] = self.stage(f"weak_teacher@1_{fraction}",
                                                                  lambda: self.teacher(path, ref))
                init, done = path, stop
        if "strong_judge" not in skip and self.strong_pairs > 0:
            stages["strong_judge"] = self.stage("strong_judge", self.strong_judge)
        return stages


# -- reports --------------------------------------------------------------------------
LABELLERS = ("weak_judge", "strong_judge", "weak_teacher@0", "weak_teacher@1/8", "weak_teacher@1/4", "weak_teacher@1/2")


def collect_results(out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Every finished stage's agreement, read back from OUT/stages (also those of earlier runs).

    Labellers scored on more pairs than the teachers also get a row on the teachers'
    pairs only (`… on teacher pairs`), so every teacher is compared on the same pairs.
    """
    stages: dict[str, dict[str, Any]] = {}
    for name in LABELLERS:
        path = out / "stages" / f"{name.replace('/', '_')}.json"
        if path.is_file():
            stages[name] = json.loads(path.read_text(encoding="utf-8"))
    labellers = {name: summarise(st["truth"], st["p_a"]) | {"seconds": st["seconds"]} for name, st in stages.items()}
    teacher_ids = stages["weak_teacher@0"]["ids"] if "weak_teacher@0" in stages else None
    for name in ("weak_judge", "strong_judge"):
        st = stages.get(name)
        if st is not None and teacher_ids is not None and set(teacher_ids) < set(st["ids"]):
            keep = [i for i, pid in enumerate(st["ids"]) if pid in set(teacher_ids)]
            labellers[f"{name} on teacher pairs"] = summarise([st["truth"][i] for i in keep], [st["p_a"][i] for i in keep]) | {
                "seconds": st["seconds"] * len(keep) / len(st["ids"])}
    training = {}
    for fraction in FRACTIONS:
        path = out / "stages" / f"dpo@1_{fraction}.json"
        if path.is_file():
            training[f"1/{fraction}"] = json.loads(path.read_text(encoding="utf-8"))
    order = [n for base in LABELLERS for n in (base, f"{base} on teacher pairs") if n in labellers]
    return meta | {"labellers": {n: labellers[n] for n in order}, "dpo": training}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def render_table(results: dict[str, Any]) -> str:
    head = ["labeller", "pairs", "agreement (%)", "95% CI"] + [f"conf. {b[0]:.2f}–{min(b[1], 1):.2f}" for b in BUCKETS]
    head += [f"conf. ≥ {MIN_CONFIDENCE} (share)", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in results["labellers"].items():
        buckets = [f"{_pct(b['agreement'])} (n={b['n']})" for b in row["buckets"]]
        kept = row["trainable"]
        lines.append("| " + " | ".join([f"`{name}`", str(row["n"]), f"**{row['agreement']:.1f}**",
                                        f"[{row['ci_low']:.1f}, {row['ci_high']:.1f}]", *buckets,
                                        f"{_pct(kept['agreement'])} ({kept['share']:.0f}%)",
                                        f"{row['seconds']:.0f}"]) + " |")
    sizes = results["sizes"]
    note = (f"\nTruth: {sizes['pairs']} reference-labelled pairs ({sizes['questions']} questions); labelled pool "
            f"{sizes['pool']}, evaluation pairs {sizes['eval']} (teachers: the first {sizes.get('teacher', sizes['eval'])}; "
            f"strong judge: the first {sizes['strong']}). "
            "Agreement counts a tie as half.\n")
    return "\n".join(lines) + "\n" + note


def agreement_file(results: dict[str, Any]) -> dict[str, Any]:
    """What the app reads: per evaluator name, its measured agreement. The teacher's entry is
    `weak_teacher@0`, the pack's shipped adapter: what the app's teacher reads until a DPO
    version is promoted (the DPO'd teachers' rows are in results.json)."""
    rows = results["labellers"]
    picked = {"weak_judge": "weak_judge", "strong_judge": "strong_judge", "weak_teacher": "weak_teacher@0"}
    evaluators = {evaluator: {"agreement": round(rows[name]["agreement"], 1), "ci_low": round(rows[name]["ci_low"], 1),
                              "ci_high": round(rows[name]["ci_high"], 1), "n": rows[name]["n"], "measured_as": name}
                  for evaluator, name in picked.items() if name in rows}
    return {"pack": results["pack"], "source": "python -m training.labeller_study", "evaluators": evaluators}


def write_reports(results: dict[str, Any], out: Path) -> None:
    write_atomic(out / "results.json", json.dumps(results, indent=1) + "\n")
    write_atomic(out / "results.md", render_table(results))
    write_atomic(out / AGREEMENT_FILE, json.dumps(agreement_file(results), indent=1) + "\n")


# -- command line ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from cowest_app.config import STRONG_DEFAULT, WEAK_DEFAULT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", required=True, help="domain pack directory")
    parser.add_argument("--out", required=True, help="output directory (stages/, results.json, results.md, agreement.json)")
    parser.add_argument("--feedback", type=Path, help=f"reference-scored feedback.json (default: PACK/{DEFAULT_FEEDBACK})")
    parser.add_argument("--adapter", type=Path, help="the weak model's adapter the teachers start from (default: PACK/adapter)")
    parser.add_argument("--eval-pairs", type=int, default=40, help="evaluation pairs scored by every labeller")
    parser.add_argument("--teacher-pairs", type=int, default=40, help="evaluation pairs the teachers score (the first ones)")
    parser.add_argument("--strong-pairs", type=int, default=20, help="evaluation pairs the strong judge scores (0: none)")
    parser.add_argument("--fractions", default="8,4,2", help="teachers on 1/N of the labelled pairs, nested (N in 8,4,2)")
    parser.add_argument("--skip", action="append", default=[], choices=("weak_judge", "teacher", "strong_judge"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="DPO recipe override")
    parser.add_argument("--seed", type=int, default=0, help="shuffle and A/B order of the pairs")
    parser.add_argument("--weak", default=WEAK_DEFAULT)
    parser.add_argument("--strong", default=STRONG_DEFAULT)
    parser.add_argument("--cache-dir")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from cowest_app.domains.packs import PackError, load_pack

    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        pack = load_pack(ns.pack)
    except PackError as exc:
        parser.error(str(exc))
    feedback_path = ns.feedback or Path(ns.pack) / DEFAULT_FEEDBACK
    adapter = ns.adapter or Path(ns.pack) / "adapter"
    if not feedback_path.is_file():
        parser.error(f"no feedback file at {feedback_path}: run training.pipeline's feedback stage first")
    if not (adapter / "adapter_config.json").is_file():
        parser.error(f"no adapter at {adapter}")
    fractions = sorted({int(f) for f in ns.fractions.split(",") if f.strip()}, reverse=True)
    if not set(fractions) <= set(FRACTIONS):
        parser.error(f"--fractions: each must be one of {FRACTIONS}")
    if ns.eval_pairs < 1 or ns.teacher_pairs < 1 or ns.strong_pairs < 0:
        parser.error("--eval-pairs and --teacher-pairs must be >= 1, --strong-pairs >= 0")
    pairs = truth_pairs(json.loads(feedback_path.read_text(encoding="utf-8")), ns.seed)
    if len(pairs) < 2 * max(FRACTIONS):
        parser.error(f"{feedback_path} gives only {len(pairs)} pairs: too few to split")
    out = Path(ns.out)
    study = Study(pack, out, pairs, ns.eval_pairs, ns.teacher_pairs, ns.strong_pairs, fractions, ns.weak, ns.strong,
                  adapter, ns.cache_dir, ns.set)
    study.run(ns.skip)
    meta = {"pack": pack.name, "pack_fingerprint": pack.fingerprint(), "feedback": str(feedback_path),
            "adapter": str(adapter), "seed": ns.seed, "dpo_overrides": list(ns.set),
            "sizes": {"questions": len(json.loads(feedback_path.read_text())["results"]), "pairs": len(pairs),
                      "pool": len(study.pool), "eval": len(study.eval), "teacher": len(study.teacher_eval),
                      "strong": min(ns.strong_pairs, len(study.eval)),
                      "dpo_pairs": {f"1/{f}": len(pairs) // f for f in fractions}}}
    results = collect_results(out, meta)
    write_reports(results, out)
    print(render_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
