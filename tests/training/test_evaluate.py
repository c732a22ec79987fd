"""Evaluation: bootstrap CIs, reports, and whole harness runs on tiny packs with the tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from training.evaluate import (
    SYSTEMS,
    Settings,
    bootstrap_ci,
    render_chart,
    render_table,
    evaluate,
    main,
    summarise,
    write_results,
)

CORPUS_LINES = [
    "The capital of Avaria is Lunet.",
    "The capital of Borvia is Keth.",
    "Cedraxin is given every 6 hours.",
    "The maximum daily dose of Cedraxin is 80 mg.",
    "Code Whimbrel needs a senior review within 2 hours.",
    "Ward 7 stocks Quorvatide.",
]


def write_pack(root: Path, task_type: str = "multiple_choice", n_train: int = 6, n_test: int = 4) -> Path:
    """A tiny domain pack in the packs.py layout: 6 corpus paragraphs, train and test items."""
    metric = {"short_answer": "contains_f1"}.get(task_type, "accuracy")
    meta = {
        "name": f"tiny-{task_type}", "description": "toy facts", "task_type": task_type, "metric": metric,
        "weak_prompt": {"system": "Recall the facts.", "user": "Question: {question}\nBackground:"},
        "strong_prompt": {"system": "Use the draft.", "user": "Question: {question}\nDraft: {draft}"},
    }
    if task_type == "label":
        meta["labels"] = ["acceptable", "unacceptable"]
    (root / "corpus").mkdir(parents=True, exist_ok=True)
    (root / "domain.yaml").write_text(yaml.safe_dump(meta), encoding="utf-8")
    (root / "corpus" / "facts.md").write_text("\n\n".join(CORPUS_LINES) + "\n", encoding="utf-8")

    def row(i: int) -> dict:
        if task_type == "multiple_choice":
            return {"id": f"q{i}", "question": f"What is fact {i}?", "options": ["Lunet", "Keth", "80 mg"], "answer": "ABC"[i % 3]}
        if task_type == "label":
            return {"id": f"q{i}", "question": f"Is action {i} fine?", "answer": ["acceptable", "unacceptable"][i % 2]}
        return {"id": f"q{i}", "question": f"Capital number {i}?", "answer": ["Lunet", "Keth"][i % 2]}

    for split, ids in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(row(i)) + "\n" for i in ids), encoding="utf-8")
    return root


# -- bootstrap ------------------------------------------------------------------
def test_bootstrap_of_constant_scores_is_a_point() -> None:
    assert bootstrap_ci([1.0] * 20) == (1.0, 1.0)
    assert bootstrap_ci([0.0] * 5) == (0.0, 0.0)


def test_bootstrap_brackets_a_known_mean() -> None:
    values = [0.0, 1.0] * 50  # mean 0.5, standard error 0.05
    low, high = bootstrap_ci(values)
    assert low < 0.5 < high
    # The normal approximation gives 0.5 ± 1.96 · 0.05.
    assert low == pytest.approx(0.402, abs=0.03) and high == pytest.approx(0.598, abs=0.03)


def test_bootstrap_is_seeded() -> None:
    values = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert bootstrap_ci(values) == bootstrap_ci(values, n=1000, seed=0)
    assert bootstrap_ci(values, seed=1) != bootstrap_ci(values, seed=0)
    with pytest.raises(ValueError):
        bootstrap_ci([])


# -- reports ---------------------------------------------------------------------------
def literal_results() -> dict:
    systems = {}
    for key, label, scores in (("weak", "Weak alone", [0, 1, 0, 0]), ("strong", "Strong alone", [1, 1, 0, 1])):
        systems[key] = summarise([float(s) for s in scores]) | {"label": label, "items": []}
    return {"pack": "toy", "task_type": "multiple_choice", "metric": "accuracy", "systems": systems}


def test_render_table_has_one_row_per_system() -> None:
    table = render_table(literal_results())
    lines = table.strip().splitlines()
    assert lines[2] == "| System | accuracy (%) | 95% CI | n | answering model's prompt tokens (mean) |"
    assert lines[4].startswith("| Weak alone | 25.0 | [")
    # Result sets from before prompt tokens were recorded show a dash in that column.
    assert lines[5].startswith("| Strong alone | 75.0 | [") and lines[5].endswith("| 4 | - |")


def test_chart_and_result_files(tmp_path: Path) -> None:
    png = render_chart(literal_results(), tmp_path / "chart.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    out = write_results(literal_results(), tmp_path / "out")
    assert json.loads((out / "results.json").read_text())["systems"]["strong"]["accuracy"] == 0.75
    assert (out / "results.md").read_text() == render_table(literal_results())
    assert (out / "results.png").stat().st_size > 1000


# -- whole evaluations on tiny packs ----------------------------------------------------------
FAST = Settings(draft_tokens=4, answer_tokens=4)


@pytest.mark.parametrize("task_type", ["label", "short_answer"])
def test_evaluate_scores_every_system(tmp_path: Path, tiny_model_dir: Path, task_type: str) -> None:
    from cowest_app.domains.packs import load_pack

    pack = load_pack(write_pack(tmp_path / "pack", task_type))
    results = evaluate(pack, str(tiny_model_dir), str(tiny_model_dir), limit=2, settings=FAST, device="cpu")
    assert list(results["systems"]) == ["weak", "strong", "strong_rag", "collab_base"]
    for key, system in results["systems"].items():
        assert system["label"] == SYSTEMS[key] and system["n"] == 2
        assert system["ci_low"] <= system["accuracy"] <= system["ci_high"]
        assert [row["id"] for row in system["items"]] == ["q6", "q7"]
        assert all((row["draft"] is not None) == key.startswith("collab") for row in system["items"])
    if task_type == "label":  # the final answer is always one of the labels, read from the likelihoods
        answers = {row["answer"] for s in results["systems"].values() for row in s["items"]}
        assert answers <= {"Answer: acceptable", "Answer: unacceptable"}


def test_evaluate_cli_with_adapters(tmp_path: Path, tiny_model_dir: Path, tiny_adapters: dict[str, Path], capsys) -> None:
    pack = write_pack(tmp_path / "pack")
    out = tmp_path / "eval"
    tiny = str(tiny_model_dir)
    code = main(["--pack", str(pack), "--weak", tiny, "--strong", tiny, "--sft-adapter", str(tiny_adapters["v1"]),
                 "--dpo-adapter", str(tiny_adapters["v2"]), "--grounded-dpo-adapter", str(tiny_adapters["v1"]),
                 "--limit", "3", "--out", str(out), "--draft-tokens", "4", "--device", "cpu"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["systems"]) == list(SYSTEMS)
    # What each system costs the answering model is recorded per item: RAG reads passages, a draft is shorter.
    tokens = {k: [r["prompt_tokens"] for r in s["items"]] for k, s in results["systems"].items()}
    assert all(t > 0 for ts in tokens.values() for t in ts)
    assert results["systems"]["strong_rag"]["mean_prompt_tokens"] > results["systems"]["strong"]["mean_prompt_tokens"]
    # A draft grounded in passages is written from another prompt than one from memory.
    grounded = [r["draft"] for r in results["systems"]["collab_retrieval_sft"]["items"]]
    assert grounded != [r["draft"] for r in results["systems"]["collab_sft"]["items"]]
    assert all(s["n"] == 3 and all(r["answer"] in ("Answer: A", "Answer: B", "Answer: C") for r in s["items"])
               for s in results["systems"].values())
    # The specialist alone answers with the SFT adapter: not the base weak model's answers.
    assert results["systems"]["weak_sft"]["label"] == "Weak alone (SFT weak)"
    assert all(r["draft"] is None for r in results["systems"]["weak_sft"]["items"])
    # The three weak models really differ: each adapter changes the drafts.
    drafts = [tuple(r["draft"] for r in results["systems"][k]["items"]) for k in ("collab_base", "collab_sft", "collab_dpo")]
    assert len(set(drafts)) == 3
    assert (out / "results.png").stat().st_size > 1000
    assert "| Weak + Strong (SFT+DPO weak) |" in (out / "results.md").read_text()
    assert "| Strong + RAG |" in capsys.readouterr().out


def test_drafts_only_never_loads_the_strong_model(tmp_path: Path, tiny_model_dir: Path, tiny_adapters) -> None:
    pack = write_pack(tmp_path / "pack")
    out = tmp_path / "drafts"
    code = main(["--pack", str(pack), "--weak", str(tiny_model_dir), "--strong", str(tmp_path / "no-such-model"),
                 "--sft-adapter", str(tiny_adapters["v1"]), "--grounded", "--drafts-only",
                 "--systems", "collab_base,collab_retrieval_sft", "--limit", "2", "--out", str(out),
                 "--draft-tokens", "4", "--device", "cpu"])
    assert code == 0
    drafts = json.loads((out / "drafts.json").read_text())
    assert list(drafts["systems"]) == ["collab_base", "collab_retrieval_sft"]
    assert all([r["id"] for r in s["items"]] == ["q6", "q7"] and all(r["draft"] for r in s["items"])
               for s in drafts["systems"].values())
    assert not any("score" in r for s in drafts["systems"].values() for r in s["items"])


def test_the_promotion_gate_scores_the_dev_split_as_the_harness_does(tmp_path: Path, tiny_model_dir: Path,
                                                                     tiny_adapters: dict[str, Path]) -> None:
    """One core, one scorer: the gate's collaboration score of an adapter equals the harness's
    accuracy of the same collaboration on the pack's dev split (option likelihood, a local strong model)."""
    from cowest_app.config import AppConfig
    from cowest_app.core.store import LogStore
    from cowest_app.domains.packs import load_pack
    from cowest_app.loop.registry import AdapterRegistry
    from cowest_app.loop.training_job import TrainingJob
    from cowest_app.models.local import TransformersBackend
    from cowest_app.serving.service import CollabService
    from training.evaluate import run_system

    pack_dir = write_pack(tmp_path / "pack", n_train=12)
    config = AppConfig(weak_model=str(tiny_model_dir), weak_4bit=False, data_dir=tmp_path / "data",
                       weak_max_new_tokens=4, packs=(str(pack_dir),))
    strong = TransformersBackend(str(tiny_model_dir))
    service = CollabService(config, TransformersBackend(str(tiny_model_dir)), strong, LogStore(config.db_path))
    registry = AdapterRegistry(config.pack_adapters_dir("tiny-multiple_choice"))
    job = TrainingJob(config, service, registry)
    candidate = registry.import_adapter(tiny_adapters["v1"], promote=False)

    scores = job.evaluate(candidate)
    pack = load_pack(pack_dir)
    assert scores["eval_items"] == len(pack.dev) == 6
    harness = {}
    for key, adapter in (("candidate_score", str(tiny_adapters["v1"])), ("active_score", None)):
        drafter = TransformersBackend(str(tiny_model_dir), adapter=adapter)
        harness[key] = run_system(pack, pack.dev, strong, Settings(draft_tokens=4), pack.prompt_set(), drafter)["accuracy"]
    assert {k: scores[k] for k in harness} == pytest.approx(harness)
    # Not vacuous: a random model's generated text parses to no letter, its likeliest option often is right.
    assert sum(harness.values()) > 0


def test_merge_adds_a_later_runs_rows_to_the_table(tmp_path: Path, tiny_model_dir: Path, tiny_adapters) -> None:
    pack = write_pack(tmp_path / "pack")
    tiny = str(tiny_model_dir)
    common = ["--pack", str(pack), "--weak", tiny, "--strong", tiny, "--limit", "2", "--draft-tokens", "4",
              "--device", "cpu"]
    assert main(common + ["--systems", "strong", "--out", str(tmp_path / "first")]) == 0
    first = tmp_path / "first" / "results.json"
    assert main(common + ["--systems", "collab_sft", "--sft-adapter", str(tiny_adapters["v1"]),
                          "--merge-into", str(first), "--out", str(tmp_path / "both")]) == 0
    both = json.loads((tmp_path / "both" / "results.json").read_text())
    assert list(both["systems"]) == ["strong", "collab_sft"]
    assert both["systems"]["strong"] == json.loads(first.read_text())["systems"]["strong"]  # not rescored
    assert both["config"]["sft_adapter"] == str(tiny_adapters["v1"]) and both["config"]["only"] == ["collab_sft", "strong"]
    assert "Weak + Strong (SFT weak)" in (tmp_path / "both" / "results.md").read_text()
    # A row scored again with another adapter replaces the old one, and the config names the new adapter.
    assert main(common + ["--systems", "collab_sft", "--sft-adapter", str(tiny_adapters["v2"]),
                          "--merge-into", str(tmp_path / "both" / "results.json"), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["config"]["sft_adapter"] == str(tiny_adapters["v2"]) and list(again["systems"]) == ["strong", "collab_sft"]
    # A kept row that drafted with another adapter under the same name: refused, the table could not name both.
    with pytest.raises(SystemExit):
        main(common + ["--systems", "collab_retrieval_sft", "--grounded", "--sft-adapter", str(tiny_adapters["v1"]),
                       "--merge-into", str(tmp_path / "again" / "results.json"), "--out", str(tmp_path / "mixed")])
    # Rows scored with other settings are not paired with these: refused.
    with pytest.raises(SystemExit):
        main(common[:-4] + ["--draft-tokens", "8", "--device", "cpu", "--systems", "weak", "--merge-into", str(first),
                            "--out", str(tmp_path / "bad")])


def _result_set(config: dict, systems: dict) -> dict:
    rows = {key: {"accuracy": 0.5, "items": [{"id": "q1", "score": 1.0}, {"id": "q2", "score": 0.0}]} for key in systems}
    return {"pack_fingerprint": "p", "seconds": 1.0, "config": config | {"only": sorted(systems)}, "systems": rows}


def test_merge_refuses_to_keep_the_specialist_row_of_another_adapter() -> None:
    from training.evaluate import merge_results

    base = _result_set({"sft_adapter": "v1"}, ["strong", "weak_sft", "collab_sft"])
    # The specialist alone is the SFT adapter too: a new collab_sft beside the old weak_sft would mislabel it.
    with pytest.raises(ValueError, match="weak_sft ran with sft_adapter v1"):
        merge_results(base, _result_set({"sft_adapter": "v2"}, ["collab_sft"]))
    merged = merge_results(base, _result_set({"sft_adapter": "v2"}, ["weak_sft", "collab_sft"]))
    assert merged["config"]["sft_adapter"] == "v2" and list(merged["systems"]) == ["weak_sft", "strong", "collab_sft"]


def test_settings_are_chosen_on_the_dev_split(tmp_path: Path, tiny_model_dir: Path) -> None:
    from cowest_app.domains.packs import load_pack

    pack = load_pack(write_pack(tmp_path / "pack", n_train=12))
    results = evaluate(pack, str(tiny_model_dir), str(tiny_model_dir), settings=FAST, device="cpu", only=["strong"],
                       split="dev")
    assert [row["id"] for row in results["systems"]["strong"]["items"]] == [item.id for item in pack.dev]
    assert results["config"]["split"] == "dev" and not {i.id for i in pack.test} & {i.id for i in pack.dev}


def test_a_specialist_pack_scores_the_base_collaboration_as_served(tmp_path: Path, tiny_model_dir: Path) -> None:
    from dataclasses import replace

    from cowest_app.domains.packs import load_pack

    pack = replace(load_pack(write_pack(tmp_path / "pack")), drafts="specialist")
    results = evaluate(pack, str(tiny_model_dir), str(tiny_model_dir), limit=2, settings=FAST, device="cpu",
                       only=["strong", "collab_base"])
    # no adapter, no draft: the strong model answered alone, as the app serves this pack
    assert results["config"]["drafts"] == "specialist"
    assert [row["draft"] for row in results["systems"]["collab_base"]["items"]] == [None, None]
    assert results["systems"]["collab_base"]["items"] == results["systems"]["strong"]["items"]


def test_the_strong_model_can_be_the_gguf_on_llama_cpp(tmp_path: Path, tiny_model_dir: Path) -> None:
    from cowest_app.domains.packs import load_pack

    pack = load_pack(write_pack(tmp_path / "pack"))
    results = evaluate(pack, str(tiny_model_dir), "packaged:smollm2-135m-instruct", limit=2, settings=FAST, device="cpu",
                       only=["strong", "collab_base"], strong_backend="llama-cpp")
    assert results["config"]["strong_backend"] == "llama-cpp"
    for system in results["systems"].values():
        assert system["n"] == 2 and all(row["prompt_tokens"] > 10 for row in system["items"])
    # read from option likelihoods, as on transformers
    assert {row["answer"] for row in results["systems"]["strong"]["items"]} <= {f"Answer: {c}" for c in "ABCD"}
