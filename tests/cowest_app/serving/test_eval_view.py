"""The Evaluation tab: finding, checking and showing result sets written as literal JSON files."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from cowest_app.serving.eval_view import (
    NO_SETS, PACK_PLACEHOLDER, ResultsError, build_evaluation_tab, find_result_sets, list_result_sets,
    read_results, show_result_set,
)
from cowest_app.core.results import render_chart, render_table

RESULTS = {
    "pack": "tiny-pack",
    "pack_fingerprint": "0123456789abcdef0123",
    "task_type": "multiple_choice",
    "metric": "accuracy",
    "config": {
        "weak": "packaged:smollm2-135m-instruct", "strong": "packaged:qwen2.5-coder-1.5b-instruct",
        "sft_adapter": "data/pipeline/tiny-pack/sft/adapter", "dpo_adapter": "data/pipeline/tiny-pack/dpo/adapter",
        "limit": 5, "load_4bit": False, "strong_dtype": "bfloat16", "rag_k": 3, "draft_tokens": 48,
        "answer_tokens": 32, "batch_size": 8, "bootstrap": {"resamples": 1000, "seed": 0, "level": 0.95},
    },
    "seconds": 754.2,
    "systems": {
        "weak": {"accuracy": 0.2, "n": 5, "ci_low": 0.0, "ci_high": 0.6, "label": "Weak alone", "seconds": 1.0, "items": []},
        "strong": {"accuracy": 0.6, "n": 5, "ci_low": 0.2, "ci_high": 1.0, "label": "Strong alone", "seconds": 2.0, "items": []},
        "collab_dpo": {"accuracy": 0.8, "n": 5, "ci_low": 0.4, "ci_high": 1.0, "label": "Weak + Strong (SFT+DPO weak)",
                       "seconds": 3.0, "items": []},
    },
}
PIPELINE = {
    "pack": "tiny-pack", "total_seconds": 3725.0,
    "stages": {
        "sft": {"ran": False, "seconds": 0.0, "fingerprint": "a", "summary": {}},
        "feedback": {"ran": True, "seconds": 1500.5, "fingerprint": "b", "summary": {"note": "12 pairs from 40 questions"}},
        "dpo": {"ran": True, "seconds": 42.0, "fingerprint": "c", "summary": {"trained": True}},
        "evaluate": {"ran": True, "seconds": 754.2, "fingerprint": "d", "summary": {}},
    },
}
FEEDBACK_STAGE = {
    "stage": "feedback", "status": "done",
    "inputs": {"train_limit": 40, "k": 4, "weak_options": {"max_new_tokens": 48, "temperature": 0.8, "seed": 7},
               "strong_options": {"max_new_tokens": 96, "temperature": 0.0},
               "feedback_scoring": "likelihood", "min_margin": 0.05},
}


def shell_words(command: str) -> list[str]:
    """The arguments bash really passes for the multi-line command (backslash continuations included)."""
    words = subprocess.run(["bash", "-c", f'args() {{ printf "%s\\0" "$@"; }}; args {command}'],
                           capture_output=True, text=True, check=True).stdout
    return words.split("\0")[:-1]


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def dirs(tmp_path):
    """A data dir with one pipeline run (timings, feedback inputs, chart) and an empty run; a repo with one shipped pack."""
    data, repo = tmp_path / "data", tmp_path / "repo"
    run = data / "pipeline" / "tiny-pack"
    results = write_json(run / "evaluate" / "results.json", RESULTS)
    render_chart(RESULTS, run / "evaluate" / "results.png")
    write_json(run / "pipeline.json", PIPELINE)
    write_json(run / "feedback" / "stage.json", FEEDBACK_STAGE)
    (data / "pipeline" / "unfinished" / "sft").mkdir(parents=True)  # a run without results is not listed
    (repo / "packs" / "tiny-pack").mkdir(parents=True)  # the pack itself, without results
    shipped = write_json(repo / "packs" / "shipped-pack" / "results" / "results.json", RESULTS | {"pack": "shipped-pack"})
    return data, repo, results, shipped


def test_finds_pipeline_eval_and_shipped_sets(dirs):
    data, repo, results, shipped = dirs
    evaluated = write_json(data / "eval" / "results.json", RESULTS)
    earlier = write_json(shipped.parent / "corpus-only-sft" / "results.json", RESULTS | {"pack": "shipped-pack"})
    sets = find_result_sets(data, repo)
    assert [(s.path, s.source, s.name) for s in sets] == [
        (results, "pipeline run", "tiny-pack"),
        (evaluated, "evaluate run", "eval"),
        (shipped, "shipped with the repo", "shipped-pack"),
        (earlier, "shipped with the repo", "shipped-pack (corpus-only-sft)"),
    ]
    assert "tiny-pack · pipeline run" in sets[0].label
    # The same file reached twice (data dir inside the repo's packs/) is listed once.
    assert len(find_result_sets(repo / "packs" / "shipped-pack", repo)) == 2  # the two shipped sets, each once
    assert find_result_sets(data / "nowhere", data / "nowhere") == []


@pytest.mark.parametrize("content, message", [
    (None, "no results.json"),
    ('{"systems": {', "not valid JSON (line 1, column 14"),
    ("[1, 2]", "the top level is list, expected an object"),
    ('{"pack": "x"}', "'systems' is missing or empty"),
    (json.dumps({"systems": {"weak": {"accuracy": 0.5, "n": True, "ci_low": "0", "ci_high": 1.0, "label": "W"}}}),
     "systems.weak.ci_low is missing or not a number; systems.weak.n is missing or not a positive integer"),
    (json.dumps({"systems": {"weak": 3}}), "systems.weak is not an object"),
])
def test_read_results_explains_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ResultsError, match="results.json") as info:
        read_results(path)
    assert message in str(info.value)


def test_shows_table_chart_config_timings_and_command(dirs):
    data, repo, results, _ = dirs
    status, table, chart, config, timings, command = show_result_set(str(results), data, repo)
    assert "tiny-pack · pipeline run" in status and "⚠️" not in status
    assert table == render_table(RESULTS)
    assert "| Weak + Strong (SFT+DPO weak) | 80.0 | [40.0, 100.0] | 5 |" in table
    assert isinstance(chart, Image.Image)
    assert chart.size == Image.open(results.parent / "results.png").size
    for row in ("| weak model | packaged:smollm2-135m-instruct |", "| test items scored (n) | 5 |",
                "| limit | 5 |", "| evaluation time | 12 min 34 s |", "| pack fingerprint | 0123456789ab |"):
        assert row in config
    assert "| sft | reused | unchanged inputs, output of an earlier run |" in timings
    assert "| feedback | 25 min 00 s | 12 pairs from 40 questions |" in timings
    assert "| **total** | **1 h 02 min** | |" in timings
    assert command.startswith(".venv/bin/python -m training.pipeline ")


def test_pipeline_command_parses_back_to_the_recorded_run(dirs):
    from training.pipeline import build_parser, options_from_args

    data, repo, results, _ = dirs
    command = show_result_set(str(results), data, repo)[-1]
    ns = build_parser().parse_args(shell_words(command)[3:])
    opts = options_from_args(ns)
    assert ns.pack == "packs/tiny-pack"  # the repo has the pack, so the command names it
    assert (opts.weak, opts.strong, opts.test_limit) == (RESULTS["config"]["weak"], RESULTS["config"]["strong"], 5)
    assert (opts.train_limit, opts.k, opts.final_tokens, opts.seed, opts.min_margin) == (40, 4, 96, 7, 0.05)
    assert (opts.eval.draft_tokens, opts.eval.answer_tokens, opts.eval.rag_k, opts.strong_dtype) == (48, 32, 3, "bfloat16")
    assert not opts.load_4bit


def test_shipped_run_command_carries_recorded_options(dirs):
    from training.pipeline import build_parser, options_from_args

    data, repo, _, shipped = dirs
    earlier = write_json(shipped.parent / "corpus-only-sft" / "results.json", RESULTS | {"pack": "shipped-pack"})
    options = {"train_limit": 128, "k": 4, "sft_data": "corpus+drafts+knowledge", "knowledge_repeats": 2,
               "knowledge_format": "chat", "statement_repeats": 3,
               "sft_overrides": ["max_length=128", "target_modules=q_proj,v_proj"], "dpo_overrides": ["num_train_epochs=2"]}
    write_json(earlier.parent / "pipeline.json", PIPELINE | {"options": options})
    command = show_result_set(str(earlier), data, repo)[-1]
    opts = options_from_args(ns := build_parser().parse_args(shell_words(command)[3:]))
    assert ns.pack == "packs/shipped-pack"  # the pack, not the results folder the set sits in
    assert (opts.train_limit, opts.k, opts.sft_data) == (128, 4, "corpus+drafts+knowledge")
    assert (opts.knowledge_repeats, opts.knowledge_format, opts.statement_repeats) == (2, "chat", 3)
    assert opts.sft_overrides == ("max_length=128", "target_modules=q_proj,v_proj")
    assert opts.dpo_overrides == ("num_train_epochs=2",)


def test_evaluate_run_gets_the_evaluate_command(dirs):
    from training.evaluate import build_parser

    data, repo, _, _ = dirs
    standalone = RESULTS | {"pack": "elsewhere", "config": RESULTS["config"] | {
        "weak": "models/my weak; $(rm -rf x)", "sft_adapter": "adapters/my-sft", "dpo_adapter": None, "limit": None, "strong_dtype": "default", "load_4bit": True}}
    path = write_json(data / "eval" / "results.json", standalone)
    command = show_result_set(str(path), data, repo)[-1]
    assert command.startswith(".venv/bin/python -m training.evaluate ")
    ns = build_parser().parse_args(shell_words(command)[3:])
    assert ns.pack == PACK_PLACEHOLDER  # no such pack in the repo: the user fills in theirs
    assert ns.weak == "models/my weak; $(rm -rf x)"  # quoted: the shell passes it through untouched
    assert (ns.sft_adapter, ns.dpo_adapter, ns.limit, ns.strong_dtype, ns.load_4bit) == ("adapters/my-sft", None, None, "auto", True)


def test_missing_chart_is_drawn_and_missing_timings_are_left_out(dirs):
    data, repo, _, shipped = dirs
    status, table, chart, _, timings, command = show_result_set(str(shipped), data, repo)
    assert isinstance(chart, Image.Image) and chart.size[0] > 100  # no results.png there: drawn from the JSON
    assert timings == "" and "shipped-pack" in table
    assert "--pack packs/shipped-pack" in command


def test_bad_files_become_messages(dirs):
    data, repo, results, _ = dirs
    write_json(results.parent.parent / "pipeline.json", "{oops")
    status, table, *_ = show_result_set(str(results), data, repo)
    assert "stage timings unavailable" in status and "not valid JSON" in status
    assert table == render_table(RESULTS)  # a broken pipeline.json does not hide the results

    write_json(results, {"systems": {}})
    status, table, chart, config, timings, command = show_result_set(str(results), data, repo)
    assert status.startswith("⚠️") and "'systems' is missing or empty" in status
    assert (table, chart, config, timings, command) == ("", None, "", "", "")


def test_only_listed_files_are_read(dirs, tmp_path):
    data, repo, _, _ = dirs
    outside = write_json(tmp_path / "secret" / "results.json", RESULTS)
    status, table, *_ = show_result_set(str(outside), data, repo)
    assert "Pick a result set" in status and table == ""
    assert show_result_set(None, tmp_path / "empty", tmp_path / "empty")[0] == NO_SETS


def test_refresh_keeps_the_choice_or_picks_the_first(dirs):
    data, repo, results, shipped = dirs
    dropdown, status, table, *_ = list_result_sets(str(shipped), data, repo)
    assert dropdown.value == str(shipped) and "shipped-pack" in table
    dropdown, status, table, *_ = list_result_sets("gone", data, repo)
    assert dropdown.value == str(results) and [v for _, v in dropdown.choices] == [str(results), str(shipped)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_tab_over_http_returns_the_table(dirs):
    from gradio_client import Client

    data, repo, results, _ = dirs
    with gr.Blocks() as demo:
        build_evaluation_tab(data, repo)
    demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        status, table, chart, config, timings, command = client.predict(str(results), api_name="/evaluation_result")
        assert table == render_table(RESULTS).strip()  # Gradio strips the Markdown it sends
        assert Image.open(chart).size == Image.open(results.parent / "results.png").size
        assert "| limit | 5 |" in config and "| dpo |" in timings and "training.pipeline" in command
        choice, status, table, *_ = client.predict(None, api_name="/evaluation_refresh")
        assert choice["value"] == str(results) and table == render_table(RESULTS).strip()
    finally:
        demo.close()


def test_app_ui_wires_the_tab_to_the_configured_data_dir(dirs, tiny_model_dir):
    from cowest_app.config import AppConfig
    from cowest_app.models.local import TransformersBackend
    from cowest_app.serving.service import CollabService
    from cowest_app.core.store import LogStore
    from cowest_app.serving.ui import build_ui

    data, _, results, _ = dirs
    config = AppConfig(data_dir=data)
    tiny = TransformersBackend(str(tiny_model_dir))
    demo = build_ui(CollabService(config, tiny, tiny, LogStore(config.db_path)))
    [show] = [f.fn for f in demo.fns.values() if f.api_name == "evaluation_result"]
    status, table, *_ = show(str(results))
    assert table == render_table(RESULTS) and "pipeline run" in status
