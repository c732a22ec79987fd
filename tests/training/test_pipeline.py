"""The resumable SFT -> feedback -> DPO -> evaluation pipeline, on a tiny pack and the tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cowest_app.domains.packs import load_pack
from tests.training.test_evaluate import CORPUS_LINES, write_pack
from training import pipeline
from training.evaluate import load_strong
from training.pipeline import STAGE_FILE, fingerprint, run_stage, split_overrides

# Small LoRA, one or two optimizer steps, short sequences: each training stage takes seconds.
TINY_TRAINING = ["load_4bit=false", "lora_r=4", "lora_alpha=8", "target_modules=q_proj,v_proj",
                 "per_device_train_batch_size=2", "gradient_accumulation_steps=1", "torch_threads=2"]
SFT_SETS = [f"sft.{s}" for s in TINY_TRAINING + ["max_steps=1", "max_length=64"]]
DPO_SETS = [f"dpo.{s}" for s in TINY_TRAINING + ["max_steps=2", "max_length=128"]]


# -- stage bookkeeping ----------------------------------------------------------------
def counting_work(calls: list[str], name: str = "out.txt"):
    def work(stage_dir: Path) -> tuple[list[str], dict[str, Any]]:
        calls.append(name)
        (stage_dir / name).write_text(f"run {len(calls)}")
        return [name], {"note": "wrote one file"}

    return work


def test_run_stage_skips_matching_reruns_changed_and_resumes(tmp_path: Path) -> None:
    calls: list[str] = []
    first = run_stage(tmp_path, "a", {"x": 1}, counting_work(calls))
    assert first["ran"] and first["fingerprint"] == fingerprint({"x": 1}) and calls == ["out.txt"]
    assert json.loads((tmp_path / "a" / STAGE_FILE).read_text())["status"] == "done"

    again = run_stage(tmp_path, "a", {"x": 1}, counting_work(calls))
    assert not again["ran"] and len(calls) == 1 and again["digest"] == first["digest"]

    changed = run_stage(tmp_path, "a", {"x": 2}, counting_work(calls))
    assert changed["ran"] and len(calls) == 2 and changed["digest"] != first["digest"]

    (tmp_path / "a" / "out.txt").unlink()  # an output gone: the stage runs again
    assert run_stage(tmp_path, "a", {"x": 2}, counting_work(calls))["ran"] and len(calls) == 3


def test_interrupted_stage_resumes_in_its_directory_only_with_the_same_inputs(tmp_path: Path) -> None:
    """A rerun of the same inputs finds what the interrupted run left (its training checkpoints);
    other inputs start from a clean directory."""
    def crash(stage_dir: Path) -> tuple[list[str], dict[str, Any]]:
        (stage_dir / "partial.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(tmp_path, "a", {"x": 1}, crash)
    assert json.loads((tmp_path / "a" / STAGE_FILE).read_text())["status"] == "running"
    calls: list[str] = []
    assert run_stage(tmp_path, "a", {"x": 1}, counting_work(calls))["ran"]
    assert (tmp_path / "a" / "partial.txt").read_text() == "half"

    with pytest.raises(KeyboardInterrupt):
        run_stage(tmp_path, "a", {"x": 2}, crash)
    assert run_stage(tmp_path, "a", {"x": 3}, counting_work(calls))["ran"]
    assert not (tmp_path / "a" / "partial.txt").exists()


def test_split_overrides() -> None:
    assert split_overrides(["sft.max_steps=1", "dpo.beta=0.2", "sft.lora_r=4"]) == (("max_steps=1", "lora_r=4"), ("beta=0.2",))
    for bad in ("max_steps=1", "eval.x=1", "sft.max_steps"):
        with pytest.raises(ValueError):
            split_overrides([bad])


def test_pack_prompt_set_is_the_pack_templates(tmp_path: Path) -> None:
    from cowest_app.domains.packs import load_pack

    pack = load_pack(write_pack(tmp_path / "pack"))
    ps = pack.prompt_set()
    assert ps.draft("Q?") == pack.weak_messages("Q?")
    assert ps.refine("Q?", "d") == pack.strong_messages("Q?", "d")
    assert ps.direct("Q?") == pack.direct_messages("Q?")


def test_feedback_evaluator_follows_task_type_and_option(tmp_path: Path) -> None:
    from cowest_app.core.evaluators import ReferenceEvaluator
    from cowest_app.domains.packs import load_pack
    from cowest_app.core.scoring import OptionLikelihood

    mc = load_pack(write_pack(tmp_path / "mc"))
    short = load_pack(write_pack(tmp_path / "short", task_type="short_answer"))
    opts = pipeline.PipelineOptions(weak="unused", strong="unused")
    assert isinstance(pipeline.feedback_evaluator(mc, opts, None), OptionLikelihood)
    assert isinstance(pipeline.feedback_evaluator(short, opts, None), ReferenceEvaluator)
    generate = pipeline.PipelineOptions(weak="unused", strong="unused", feedback_scoring="generate")
    assert isinstance(pipeline.feedback_evaluator(mc, generate, None), ReferenceEvaluator)


def test_inputs_added_later_key_stages_only_when_not_their_old_value() -> None:
    from training.dpo import DPORecipe

    # stages finished before these inputs existed had transformers, one pair per question, every LoRA module
    before = {"pack": "p", "k": 4, "config": {"reference": "init_adapter"}}
    now = before | {"strong_backend": "transformers", "pairs_per_question": 1,
                    "config": {"reference": "init_adapter", "train_modules": None}}
    assert pipeline.fingerprint(now) == pipeline.fingerprint(before)
    for changed in ({"strong_backend": "llama-cpp"}, {"pairs_per_question": 6},
                    {"config": {"reference": "init_adapter", "train_modules": ["q_proj"]}}):
        assert pipeline.fingerprint(now | changed) != pipeline.fingerprint(before)
    llama = pipeline.options_from_args(pipeline.build_parser().parse_args(
        ["--pack", "p", "--strong-backend", "llama-cpp"]))
    assert llama.strong_backend == "llama-cpp"  # the flag reaches the stages' inputs
    assert pipeline.config_inputs(DPORecipe(init_adapter="a", train_modules=["q_proj"]))["train_modules"] == ["q_proj"]
    with pytest.raises(ValueError, match="unknown strong backend"):
        load_strong("s", "vllm")


def test_dpo_is_skipped_with_a_note_when_feedback_found_no_pair(tmp_path: Path) -> None:
    from cowest_app.domains.packs import load_pack

    pack = load_pack(write_pack(tmp_path / "pack"))
    sft, _ = split_overrides(SFT_SETS)
    opts = pipeline.PipelineOptions(weak="unused", strong="unused", sft_overrides=sft)
    upstream = {"fingerprint": "f", "digest": "d"}
    record = pipeline.dpo_stage(pack, opts, tmp_path / "out", upstream, tmp_path / "out" / "sft" / "adapter",
                                upstream | {"summary": {"pairs": 0}})
    assert record["ran"] and record["outputs"] == [] and record["summary"]["trained"] is False
    assert "no trainable pairs" in record["summary"]["note"]


def test_bad_pack_or_override_fails_before_any_stage(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        pipeline.main(["--pack", str(tmp_path / "missing"), "--out", str(out)])
    pack = write_pack(tmp_path / "pack")
    for bad in ("dpo.no_such_key=1", "dpo.beta=zero", "sft.max_steps"):
        with pytest.raises(SystemExit):
            pipeline.main(["--pack", str(pack), "--out", str(out), "--set", bad])
    err = capsys.readouterr().err
    assert "not a directory" in err and "no_such_key" in err and "beta" in err
    assert not out.exists()  # nothing ran


# -- the whole pipeline ----------------------------------------------------------------
def run_cli(pack: Path, out: Path, model: Path, *extra: str) -> dict[str, Any]:
    argv = ["--pack", str(pack), "--out", str(out), "--weak", str(model), "--strong", str(model),
            "--k", "2", "--draft-tokens", "6", "--final-tokens", "4", "--answer-tokens", "4", "--device", "cpu",
            "--min-margin", "0",  # a random model's option probabilities differ only slightly between drafts
            *[arg for s in SFT_SETS + DPO_SETS for arg in ("--set", s)], *extra]
    assert pipeline.main(argv) == 0
    return json.loads((out / pipeline.PIPELINE_FILE).read_text())


def ran(report: dict[str, Any]) -> dict[str, bool]:
    return {name: stage["ran"] for name, stage in report["stages"].items()}


def test_pipeline_runs_skips_and_reruns_downstream(tmp_path: Path, tiny_model_dir: Path) -> None:
    pack, out = write_pack(tmp_path / "pack"), tmp_path / "out"

    report = run_cli(pack, out, tiny_model_dir)
    assert ran(report) == {"sft": True, "feedback": True, "dpo": True, "evaluate": True}
    for path in ("sft/adapter/adapter_model.safetensors", "feedback/pairs.jsonl", "feedback/feedback.json",
                 "dpo/adapter/adapter_model.safetensors", "evaluate/results.json", "evaluate/results.md",
                 "evaluate/results.png"):
        assert (out / path).is_file() and (out / path).stat().st_size > 0, path
    sft_rows = [json.loads(line) for line in (out / "sft" / "corpus.jsonl").read_text().splitlines()]
    assert [("text" in r, "messages" in r) for r in sft_rows] == [(True, False)] + [(False, True)] * 3  # corpus + drafts (fit split)
    assert report["stages"]["sft"]["summary"]["n_chats"] == 3 and report["options"]["sft_data"] == "corpus+drafts"
    # one pair per fit question: the last 3 of the 6 train questions are the dev split
    assert len((out / "feedback" / "pairs.jsonl").read_text().splitlines()) == 3
    pair = json.loads((out / "feedback" / "pairs.jsonl").read_text().splitlines()[0])
    rows = json.loads((out / "feedback" / "feedback.json").read_text())["results"]
    # Option likelihood: every final scored with the strong model's probability of the correct option.
    assert all(0.0 < v < 1.0 for r in rows for v in r["final_scores"] + [r["strong_alone_score"]])
    assert pair["prompt"][0]["content"] == "Recall the facts."  # drafted with the pack's weak prompt
    results = json.loads((out / "evaluate" / "results.json").read_text())
    assert list(results["systems"]) == ["weak", "weak_sft", "strong", "strong_rag", "collab_base", "collab_sft", "collab_dpo"]
    assert all(s["n"] == 4 for s in results["systems"].values())
    assert report["total_seconds"] > 0 and report["accuracy"].keys() == results["systems"].keys()
    assert report["options"]["k"] == 2 and report["options"]["min_margin"] == 0.0
    assert report["options"]["dpo_overrides"] == [s.removeprefix("dpo.") for s in DPO_SETS]
    stamps = {name: (out / name / STAGE_FILE).read_text() for name in report["stages"]}

    # Same inputs: every stage is skipped and nothing is rewritten.
    again = run_cli(pack, out, tiny_model_dir)
    assert not any(ran(again).values())
    assert {n: s["recorded_seconds"] for n, s in again["stages"].items()} == {n: s["seconds"] for n, s in report["stages"].items()}
    assert stamps == {name: (out / name / STAGE_FILE).read_text() for name in report["stages"]}

    # A change that only concerns evaluation reruns only evaluation.
    assert ran(run_cli(pack, out, tiny_model_dir, "--test-limit", "2")) == {
        "sft": False, "feedback": False, "dpo": False, "evaluate": True}
    assert json.loads((out / "evaluate" / "results.json").read_text())["systems"]["weak"]["n"] == 2

    # More pairs per question is a feedback setting: SFT stays, feedback and what follows rerun
    # (K = 2 drafts make one pair at most, so the pairs stay the same).
    assert ran(run_cli(pack, out, tiny_model_dir, "--test-limit", "2", "--pairs-per-question", "2")) == {
        "sft": False, "feedback": True, "dpo": True, "evaluate": True}
    assert len((out / "feedback" / "pairs.jsonl").read_text().splitlines()) == 3

    # A changed corpus retrains SFT, and so everything after it.
    with (pack / "corpus" / "facts.md").open("a", encoding="utf-8") as f:
        f.write("\nWard 9 stocks Cedraxin.\n")
    assert all(ran(run_cli(pack, out, tiny_model_dir, "--test-limit", "2")).values())


def test_closed_book_drafting_trains_no_grounded_chats(tmp_path: Path, tiny_model_dir: Path) -> None:
    """--drafting memory: the SFT data holds no grounded chat even where the pack retrieves,
    and --statement-repeats adds each corpus statement alone."""
    pack = write_pack(tmp_path / "pack")

    def chats(out: Path, *extra: str) -> list[str]:
        run_cli(pack, out, tiny_model_dir, "--grounded", "--stop-after", "sft", *extra)
        rows = [json.loads(line) for line in (out / "sft" / "corpus.jsonl").read_text().splitlines()]
        return [r["messages"][0]["content"] if "messages" in r else r["text"] for r in rows]

    both, memory = chats(tmp_path / "both"), chats(tmp_path / "memory", "--drafting", "memory", "--statement-repeats", "1")
    grounded_system = load_pack(pack).prompts["weak_retrieval"].system
    assert len(both) == 1 + 3 + 3 and both[1:4] == ["Recall the facts."] * 3 and both[4:] == [grounded_system] * 3
    assert memory == both[:4] + CORPUS_LINES

    curriculum = chats(tmp_path / "curriculum", "--drafting", "memory", "--statement-repeats", "1", "--curriculum")
    assert sorted(curriculum[: len(CORPUS_LINES)]) == sorted(CORPUS_LINES) and sorted(curriculum) == sorted(memory)
    sampling = json.loads((tmp_path / "curriculum" / "sft" / STAGE_FILE).read_text())["inputs"]["config"]
    assert sampling["train_sampling_strategy"] == "sequential"  # trained in the corpus file's order


def test_imported_sft_adapter_grounded_only_two_rounds(tmp_path: Path, tiny_model_dir: Path) -> None:
    """--sft-adapter starts from an adapter trained before; --drafting grounded aligns only
    drafts written from retrieved passages; round 2 drafts with round 1's adapter."""
    pack, first, out = write_pack(tmp_path / "pack"), tmp_path / "first", tmp_path / "out"
    run_cli(pack, first, tiny_model_dir, "--stop-after", "sft")
    shipped = first / "sft" / "adapter"

    grounded = ("--drafting", "grounded", "--rounds", "2", "--test-limit", "2",
                "--set", "dpo.max_length=512")  # prompts carry the retrieved passages
    report = run_cli(pack, out, tiny_model_dir, "--sft-adapter", str(shipped), *grounded)
    assert list(report["stages"]) == ["sft", "feedback-grounded", "dpo-grounded", "feedback-grounded-r2",
                                      "dpo-grounded-r2", "evaluate"]
    assert report["stages"]["sft"]["summary"] == {"imported": str(shipped)}
    assert (out / "sft" / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (shipped / "adapter_model.safetensors").read_bytes()
    # Round 2 drafted with round 1's DPO adapter and continued DPO from it.
    round1_dpo = json.loads((out / "dpo-grounded" / STAGE_FILE).read_text())
    assert json.loads((out / "feedback-grounded-r2" / STAGE_FILE).read_text())["inputs"]["policy"] == \
        pipeline.upstream(round1_dpo)
    resolved = (out / "dpo-grounded-r2" / "adapter" / "resolved_config.yaml").read_text()
    assert f"init_adapter: {out / 'dpo-grounded' / 'adapter'}" in resolved
    pair = json.loads((out / "feedback-grounded-r2" / "pairs.jsonl").read_text().splitlines()[0])
    assert "Passages:" in pair["prompt"][-1]["content"]  # drafted from retrieved passages
    results = json.loads((out / "evaluate" / "results.json").read_text())
    assert "collab_retrieval_dpo" in results["systems"] and "collab_dpo" not in results["systems"]
    assert results["config"]["grounded_dpo_adapter"] == str(out / "dpo-grounded-r2" / "adapter")

    # Another adapter to start from: every stage after it reruns.
    (tmp_path / "other").mkdir()
    for name in pipeline.ADAPTER_FILES:
        (tmp_path / "other" / name).write_bytes((shipped / name).read_bytes())
    with (tmp_path / "other" / "adapter_config.json").open("a") as f:
        f.write("\n")
    assert all(ran(run_cli(pack, out, tiny_model_dir, "--sft-adapter", str(tmp_path / "other"), *grounded)).values())


def test_sft_adapter_must_be_an_adapter_and_rounds_positive(tmp_path: Path, capsys) -> None:
    pack = write_pack(tmp_path / "pack")
    with pytest.raises(SystemExit):
        pipeline.main(["--pack", str(pack), "--out", str(tmp_path / "out"), "--rounds", "0"])
    assert "--rounds must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pipeline.main(["--pack", str(pack), "--out", str(tmp_path / "out"), "--pairs-per-question", "0"])
    assert "--pairs-per-question must be at least 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a LoRA adapter directory"):
        pipeline.imported_sft_stage(tmp_path, tmp_path / "out")


def test_curriculum_refuses_what_would_make_it_do_nothing(tmp_path: Path, capsys) -> None:
    pack, out = write_pack(tmp_path / "pack"), tmp_path / "out"
    for extra in (["--sft-adapter", str(tmp_path)], ["--set", "sft.train_sampling_strategy=random"]):
        with pytest.raises(SystemExit):
            pipeline.main(["--pack", str(pack), "--out", str(out), "--curriculum", *extra])
    err = capsys.readouterr().err
    assert "no SFT runs" in err and "sft.train_sampling_strategy=random" in err
    assert not out.exists()  # refused before any stage
    ordered = pipeline.options_from_args(pipeline.build_parser().parse_args(
        ["--pack", "p", "--curriculum", "--set", "sft.train_sampling_strategy=sequential"]))
    assert ordered.curriculum and ordered.sft_overrides == ("train_sampling_strategy=sequential",)
