"""The Evaluation tab: browse the result sets written by `training.evaluate`.

A result set is a directory holding `results.json` (and usually `results.md`
and `results.png`), found in three places:

- `<data dir>/pipeline/*/evaluate/`  runs of `python -m training.pipeline`
- `<data dir>/eval/`                  the default --out of `python -m training.evaluate`
- `packs/*/results/`, `packs/*/results/*/`  results committed with a pack in this repository

The tab shows the table (rendered by `cowest_app.core.results.render_table`, as
`training.evaluate` writes it), the chart with CI error bars, the run's config, the stage timings from a
`pipeline.json` next to it, and the command that reproduces the run.
Everything here reads files only; a missing or malformed file becomes a
message in the tab, never an exception.
"""

from __future__ import annotations

import json
import math
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from cowest_app.core.results import RESULTS_JSON, RESULTS_PNG, render_chart, render_table

REPO_ROOT = Path(__file__).resolve().parents[2]
PIPELINE_JSON = "pipeline.json"
STAGE_JSON = "stage.json"
PYTHON = ".venv/bin/python"
PACK_PLACEHOLDER = "PATH/TO/YOUR/PACK"
# The pipeline's --strong-dtype choices; evaluate records "default" when none was given.
DTYPES = ("float32", "bfloat16")


class ResultsError(ValueError):
    """A result set that cannot be shown, with a message that names the file."""


@dataclass(frozen=True)
class ResultSet:
    path: Path  # the results.json
    source: str  # where it was found: "pipeline run", "evaluate run" or "shipped with the repo"
    name: str  # the pack (pipeline / shipped) or directory it belongs to

    @property
    def label(self) -> str:
        return f"{self.name} · {self.source} · {shown_path(self.path.parent)}"


def shown_path(path: Path) -> str:
    """The path relative to the working directory or the repo when it lies inside one."""
    resolved = path.resolve()
    for root in (Path.cwd().resolve(), REPO_ROOT):
        if resolved.is_relative_to(root):
            return str(resolved.relative_to(root)) or "."
    return str(resolved)


# -- finding result sets ---------------------------------------------------------
def find_result_sets(data_dir: str | Path, repo_root: str | Path = REPO_ROOT) -> list[ResultSet]:
    """Every results.json in the known places, pipeline runs first; each file once."""
    data_dir, repo_root = Path(data_dir), Path(repo_root)
    found = [
        *(ResultSet(p, "pipeline run", p.parent.parent.name)
          for p in sorted(data_dir.glob(f"pipeline/*/evaluate/{RESULTS_JSON}"))),
        *(ResultSet(p, "evaluate run", "eval") for p in [data_dir / "eval" / RESULTS_JSON] if p.is_file()),
        *(ResultSet(p, "shipped with the repo", p.parent.parent.name)
          for p in sorted(repo_root.glob(f"packs/*/results/{RESULTS_JSON}"))),
        # Earlier or ablation runs a pack keeps beside its headline results.
        *(ResultSet(p, "shipped with the repo", f"{p.parent.parent.parent.name} ({p.parent.name})")
          for p in sorted(repo_root.glob(f"packs/*/results/*/{RESULTS_JSON}"))),
    ]
    seen: set[Path] = set()
    unique = []
    for result_set in found:  # a data dir inside packs/ would otherwise list a file twice
        key = result_set.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(result_set)
    return unique


# -- reading and checking ----------------------------------------------------------
def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsError(f"{shown_path(path)}: no {what} here") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{shown_path(path)}: cannot read it ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(
            f"{shown_path(path)}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def system_problems(key: str, system: Any) -> list[str]:
    """What stops one system's row from being drawn: the fields render_table and the chart read."""
    if not isinstance(system, dict):
        return [f"systems.{key} is not an object"]
    problems = [f"systems.{key}.{field} is missing or not a number"
                for field in ("accuracy", "ci_low", "ci_high") if not _is_number(system.get(field))]
    n = system.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        problems.append(f"systems.{key}.n is missing or not a positive integer")
    if not isinstance(system.get("label"), str):
        problems.append(f"systems.{key}.label is missing or not a string")
    return problems


def results_problems(data: Any) -> list[str]:
    if not isinstance(data, dict):
        return [f"the top level is {type(data).__name__}, expected an object"]
    systems = data.get("systems")
    if not isinstance(systems, dict) or not systems:
        return ["'systems' is missing or empty"]
    problems = [p for key, system in systems.items() for p in system_problems(key, system)]
    if "config" in data and not isinstance(data["config"], dict):
        problems.append("'config' is not an object")
    return problems


def read_results(path: str | Path) -> dict[str, Any]:
    """The parsed results.json, or a ResultsError saying what is wrong with it."""
    path = Path(path)
    data = _read_json(path, f"{RESULTS_JSON} (run the pipeline or `python -m training.evaluate` first)")
    problems = results_problems(data)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ResultsError(f"{shown_path(path)}: not an evaluation results file: {shown}")
    return data


def pipeline_dir(results_path: Path) -> Path | None:
    """The pipeline's --out when results.json is its evaluate stage's output."""
    return results_path.parent.parent if results_path.parent.name == "evaluate" else None


def pipeline_report_path(results_path: Path) -> Path | None:
    """pipeline.json beside results.json (committed results) or one level up (a pipeline's --out)."""
    candidates = [results_path.parent / PIPELINE_JSON]
    if (out := pipeline_dir(results_path)) is not None:
        candidates.append(out / PIPELINE_JSON)
    return next((p for p in candidates if p.is_file()), None)


def read_pipeline_report(path: Path) -> dict[str, Any]:
    data = _read_json(path, PIPELINE_JSON)
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        raise ResultsError(f"{shown_path(path)}: not a pipeline report ('stages' is missing)")
    return data


def pipeline_options(results_path: Path) -> dict[str, Any]:
    """The options pipeline.json records (limits, K, SFT data, recipe overrides), or {} without one."""
    path = pipeline_report_path(results_path)
    try:
        options = json.loads(path.read_text(encoding="utf-8")).get("options") if path else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return {}  # only enriches the command
    return options if isinstance(options, dict) else {}


def feedback_inputs(results_path: Path) -> dict[str, Any]:
    """The feedback stage's recorded inputs (train limit, k, ...), when the run's directory is still there."""
    out = pipeline_dir(results_path)
    if out is None:
        return {}
    try:
        record = json.loads((out / "feedback" / STAGE_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # only enriches the command; without it the command keeps the pipeline's defaults
    inputs = record.get("inputs") if isinstance(record, dict) else None
    return inputs if isinstance(inputs, dict) else {}


# -- rendering ---------------------------------------------------------------------
def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def duration(seconds: Any) -> str:
    if not _is_number(seconds):
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def config_md(results: dict[str, Any]) -> str:
    """The run's settings: models, adapters, items scored, limit and generation budgets."""
    cfg = results.get("config") or {}
    sizes = sorted({s["n"] for s in results["systems"].values()})
    limit = cfg.get("limit")
    fingerprint = str(results.get("pack_fingerprint") or "")[:12]
    rows = [
        ("pack", results.get("pack")), ("task type", results.get("task_type")), ("metric", results.get("metric")),
        ("weak model", cfg.get("weak")), ("strong model", cfg.get("strong")),
        ("SFT adapter", cfg.get("sft_adapter") or "none"), ("DPO adapter", cfg.get("dpo_adapter") or "none"),
        ("test items scored (n)", ", ".join(map(str, sizes))),
        ("limit", "all test items" if limit is None else limit),
        ("strong dtype", cfg.get("strong_dtype")), ("NF4 (4-bit)", cfg.get("load_4bit")),
        ("RAG paragraphs", cfg.get("rag_k")), ("draft tokens", cfg.get("draft_tokens")),
        ("answer tokens", cfg.get("answer_tokens")), ("batch size", cfg.get("batch_size")),
        ("evaluation time", duration(results.get("seconds"))), ("pack fingerprint", fingerprint or None),
    ]
    lines = ["#### Run config", "", "| setting | value |", "|---|---|"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in rows if value is not None]
    return "\n".join(lines) + "\n"


def timings_md(report: dict[str, Any]) -> str:
    """pipeline.json's stages: how long each took, or that it was reused from an earlier run."""
    lines = ["#### Pipeline stages", "", "| stage | time | note |", "|---|---:|---|"]
    for name, stage in report["stages"].items():
        stage = stage if isinstance(stage, dict) else {}
        summary = stage.get("summary") if isinstance(stage.get("summary"), dict) else {}
        ran = stage.get("ran", True)
        time_text = duration(stage.get("seconds")) if ran else "reused"
        note = summary.get("note") or ("" if ran else "unchanged inputs, output of an earlier run")
        lines.append(f"| {_cell(name)} | {time_text} | {_cell(note)} |")
    lines.append(f"| **total** | **{duration(report.get('total_seconds'))}** | |")
    return "\n".join(lines) + "\n"


def chart_image(results: dict[str, Any], results_path: Path) -> Any:
    """The results.png beside results.json, or the same chart drawn now when it is missing or broken."""
    from PIL import Image, UnidentifiedImageError

    png = results_path.parent / RESULTS_PNG
    try:
        with Image.open(png) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError):
        pass
    with tempfile.TemporaryDirectory() as tmp:
        drawn = render_chart(results, Path(tmp) / RESULTS_PNG)
        with Image.open(drawn) as image:
            return image.convert("RGB")


# -- the reproducing command ---------------------------------------------------------
def is_pipeline_run(results: dict[str, Any], results_path: Path) -> bool:
    """Pipeline results come from its evaluate stage, with the SFT adapter at <out>/sft/adapter."""
    sft = (results.get("config") or {}).get("sft_adapter")
    return results_path.parent.name == "evaluate" or (
        isinstance(sft, str) and Path(sft).parts[-2:] == ("sft", "adapter"))


def pack_argument(results: dict[str, Any], result_set: ResultSet, repo_root: Path) -> str:
    """The pack's directory when this repo has it, else a placeholder for the user's own pack."""
    if result_set.source == "shipped with the repo":  # packs/<pack>/results[/<run>]/results.json
        parts = result_set.path.parts
        packs_at = len(parts) - 1 - parts[::-1].index("packs")  # the last "packs" on the path
        return str(Path("packs") / parts[packs_at + 1])
    name = results.get("pack")
    if isinstance(name, str) and name and (repo_root / "packs" / name).is_dir():
        return str(Path("packs") / name)
    return PACK_PLACEHOLDER


def _flags(pairs: list[tuple[str, Any]]) -> list[str]:
    """`--flag value` (quoted for the shell) for every recorded value; `True` gives a bare flag, None or False nothing."""
    return [flag if value is True else f"{flag} {shlex.quote(str(value))}"
            for flag, value in pairs if value is not None and value is not False]


def shell_lines(program: list[str], flags: list[str]) -> str:
    """One flag per line, joined with backslashes: readable in the tab and pastes into a shell as is."""
    return " \\\n  ".join([shlex.join(program), *flags])


def _feedback_flags(inputs: dict[str, Any]) -> list[tuple[str, Any]]:
    weak_opts = inputs.get("weak_options") if isinstance(inputs.get("weak_options"), dict) else {}
    strong_opts = inputs.get("strong_options") if isinstance(inputs.get("strong_options"), dict) else {}
    return [
        ("--train-limit", inputs.get("train_limit")), ("--k", inputs.get("k")),
        ("--final-tokens", strong_opts.get("max_new_tokens")), ("--seed", weak_opts.get("seed")),
        ("--feedback-scoring", inputs.get("feedback_scoring")), ("--min-margin", inputs.get("min_margin")),
        ("--pairs-per-question", inputs.get("pairs_per_question")),
    ]


def _option_flags(options: dict[str, Any]) -> list[tuple[str, Any]]:
    """pipeline.json's SFT data choices and recipe overrides, as flags (each --set once per override)."""
    overrides = [("--set", f"{stage}.{item}") for stage in ("sft", "dpo")
                 for item in options.get(f"{stage}_overrides") or [] if isinstance(item, str)]
    data = [(flag, options.get(key)) for flag, key in (
        ("--sft-data", "sft_data"), ("--knowledge-repeats", "knowledge_repeats"),
        ("--knowledge-format", "knowledge_format"), ("--statement-repeats", "statement_repeats"))]
    return data + overrides


def reproduce_command(results: dict[str, Any], result_set: ResultSet, repo_root: str | Path = REPO_ROOT) -> str:
    """The command that reruns this result set: the whole pipeline, or evaluate alone for an evaluate run."""
    cfg = results.get("config") or {}
    if not cfg.get("weak") or not cfg.get("strong"):
        return "# results.json does not record the models, so the command cannot be rebuilt"
    pack = pack_argument(results, result_set, Path(repo_root))
    dtype = cfg.get("strong_dtype") if cfg.get("strong_dtype") in DTYPES else None
    shared = [("--rag-k", cfg.get("rag_k")), ("--draft-tokens", cfg.get("draft_tokens")),
              ("--answer-tokens", cfg.get("answer_tokens")), ("--batch-size", cfg.get("batch_size")),
              ("--strong-dtype", dtype), ("--load-4bit", cfg.get("load_4bit") is True)]
    models = [("--pack", pack), ("--weak", cfg["weak"]), ("--strong", cfg["strong"])]
    if is_pipeline_run(results, result_set.path):
        options = pipeline_options(result_set.path)
        recorded = feedback_inputs(result_set.path) or {k: options.get(k) for k in ("train_limit", "k")}
        return shell_lines([PYTHON, "-m", "training.pipeline"], _flags(
            models + [("--test-limit", cfg.get("limit"))] + _feedback_flags(recorded) + shared
            + _option_flags(options)))
    return shell_lines([PYTHON, "-m", "training.evaluate"], _flags(
        models + [("--sft-adapter", cfg.get("sft_adapter")), ("--dpo-adapter", cfg.get("dpo_adapter")),
                  ("--limit", cfg.get("limit"))] + shared + [("--out", "data/eval")]))


# -- the tab -------------------------------------------------------------------------
EMPTY_VIEW = ("", None, "", "", "")
NO_SETS = (
    "No result sets yet. Run `python -m training.pipeline --pack packs/saltmarsh-formulary` "
    "(results in `data/pipeline/<pack>/evaluate/`) or `python -m training.evaluate`, then press **Refresh**."
)


def show_result_set(choice: str | None, data_dir: str | Path, repo_root: str | Path = REPO_ROOT) -> tuple[Any, ...]:
    """(status, table, chart, config, timings, command) for the chosen results.json.

    The choice must be one of the listed sets: the API accepts any string, and
    it must not become a way to read arbitrary files.
    """
    sets = {str(s.path): s for s in find_result_sets(data_dir, repo_root)}
    if not sets:
        return (NO_SETS, *EMPTY_VIEW)
    if not choice or choice not in sets:
        return ("Pick a result set from the list (press **Refresh** if it is not there).", *EMPTY_VIEW)
    result_set = sets[choice]
    try:
        results = read_results(result_set.path)
    except ResultsError as exc:
        return (f"⚠️ {exc}", *EMPTY_VIEW)
    status = f"**{result_set.label}**"
    timings = ""
    if (report_path := pipeline_report_path(result_set.path)) is not None:
        try:
            timings = timings_md(read_pipeline_report(report_path))
        except ResultsError as exc:
            status += f"  \n⚠️ stage timings unavailable: {exc}"
    command = reproduce_command(results, result_set, repo_root)
    return (status, render_table(results), chart_image(results, result_set.path), config_md(results), timings, command)


def list_result_sets(current: str | None, data_dir: str | Path, repo_root: str | Path = REPO_ROOT) -> tuple[Any, ...]:
    """Rescan; keep the current choice when it is still there, else pick the first set, and show it."""
    sets = find_result_sets(data_dir, repo_root)
    values = [str(s.path) for s in sets]
    value = current if current in values else (values[0] if values else None)
    dropdown = gr.Dropdown(choices=[(s.label, str(s.path)) for s in sets], value=value)
    return (dropdown, *show_result_set(value, data_dir, repo_root))


def build_evaluation_tab(data_dir: str | Path, repo_root: str | Path = REPO_ROOT) -> None:
    """The Evaluation tab; call inside a gr.Blocks. It rescans whenever it is opened."""
    sets = find_result_sets(data_dir, repo_root)
    with gr.Tab("Evaluation") as tab:
        gr.Markdown(
            "Scores of each system on a domain pack's test split (95% bootstrap confidence intervals), "
            "as written by `training.evaluate` and `training.pipeline`."
        )
        with gr.Row():
            choice = gr.Dropdown([(s.label, str(s.path)) for s in sets], value=None, label="Result set", scale=4)
            refresh_btn = gr.Button("Refresh", scale=1)
        status = gr.Markdown()
        table = gr.Markdown()
        chart = gr.Image(label="Scores with 95% CI", type="pil", interactive=False)
        with gr.Row():
            config = gr.Markdown()
            timings = gr.Markdown()
        command = gr.Code(label="Reproduce this result set (swap --pack for your own pack)",
                          language="shell", interactive=False)
    view = [status, table, chart, config, timings, command]

    def on_refresh(current: str | None):
        return list_result_sets(current, data_dir, repo_root)

    def on_choose(value: str | None):
        return show_result_set(value, data_dir, repo_root)

    tab.select(on_refresh, choice, [choice, *view], api_name=False)
    refresh_btn.click(on_refresh, choice, [choice, *view], api_name="evaluation_refresh")
    choice.input(on_choose, choice, view, api_name="evaluation_result")
