"""The evaluation result files: their names and how a result set is drawn.

`training.evaluate` writes a result set (`results.json`, `results.md`,
`results.png`) with these names and renderers; the app's Evaluation tab
(`cowest_app.serving.eval_view`) reads and draws the same files. Both import them
from here, so the app never imports `training`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RESULTS_JSON, RESULTS_MD, RESULTS_PNG = "results.json", "results.md", "results.png"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def render_table(results: dict[str, Any]) -> str:
    """Markdown table: one row per system, the metric in percent with its 95% CI."""
    metric = str(results.get("metric") or "accuracy")
    lines = [
        f"### {results.get('pack', 'pack')} ({results.get('task_type', '')})",
        "",
        f"| System | {metric} (%) | 95% CI | n | answering model's prompt tokens (mean) |",
        "|---|---:|---:|---:|---:|",
    ]
    for system in results["systems"].values():
        ci = f"[{_pct(system['ci_low'])}, {_pct(system['ci_high'])}]"
        tokens = system.get("mean_prompt_tokens", "-")  # result sets from before it was recorded have none
        lines.append(f"| {system['label']} | {_pct(system['accuracy'])} | {ci} | {system['n']} | {tokens} |")
    return "\n".join(lines) + "\n"


def render_chart(results: dict[str, Any], path: str | Path) -> Path:
    """Bar chart of every system's score with 95% CI error bars, as PNG."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and touches no global pyplot state

    systems = list(results["systems"].values())
    values = [100 * s["accuracy"] for s in systems]
    errors = [
        [100 * (s["accuracy"] - s["ci_low"]) for s in systems],
        [100 * (s["ci_high"] - s["accuracy"]) for s in systems],
    ]
    fig = Figure(figsize=(max(4.0, 1.4 * len(systems)), 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(systems)), values, yerr=errors, capsize=4, color="#4C72B0")
    ax.set_xticks(range(len(systems)), [s["label"] for s in systems], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"{results.get('metric') or 'accuracy'} (%)")
    ax.set_title(f"{results.get('pack', '')}: 95% bootstrap CI")
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
