"""The Training tab: what the retraining loop is doing, explained for someone who just arrived."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from cowest_app.core import prompts
from cowest_app.serving.service import CollabService
from cowest_app.serving.text import _escape, user_error

if TYPE_CHECKING:
    from cowest_app.loop.control import TrainingControl


HISTORY_COLUMNS = ["version", "status", "parent", "pairs", "train loss", "reward margin",
                   "held-out (candidate)", "held-out (previous)", "created", "hub", "error"]


PHASE_WORDS = {
    "idle": "idle — no run in progress",
    "collecting": "collecting — turning feedback into preference pairs",
    "training": "training the weak model's adapter",
}


def job_state_md(state: dict[str, Any]) -> str:
    phase = state["phase"]
    line = f"**State:** {PHASE_WORDS.get(phase, phase)}"
    if phase == "training" and state.get("total_steps"):
        line += f" — step {state['step']} of {state['total_steps']}"
    if state.get("detail"):
        line += f" — {_escape(state['detail'])}"
    parts = [line]
    if state.get("version"):
        parts.append(f"**Run:** {state['version']}")
    if state.get("last_result"):
        parts.append(f"**Last result:** {_escape(state['last_result'])}")
    if state.get("last_error"):
        parts.append(f"**Last error:** {_escape(state['last_error'][-500:])}")
    return "  \n".join(parts)


TRAINING_HELP = (
    "**How training works.** Each rating on the Ask tab, and each vote in Compare versions, is feedback. "
    "When a run starts, feedback becomes **preference pairs**: for one question, a weak-model draft that led "
    "to a better answer (*chosen*) next to one that led to a worse answer (*rejected*). Pairs come from your "
    "votes (*human*) and from automatic judges; *measured agreement* is how often a judge picked the better "
    "draft on questions with known answers (`training.labeller_study`). A run trains the weak model's adapter on the new trainable "
    "pairs with DPO, scores it on held-out questions, and makes it active only if it scores at least as "
    "well as the version it replaces."
)


def pair_counts_md(counts: dict[str, dict[str, int]], waiting: int | None = None, needed: int | None = None,
                   agreement: dict[str, float] | None = None) -> str:
    """Pairs per evaluator with its measured agreement with the truth and, with
    `waiting`/`needed`, how far the next run is."""
    from cowest_app.loop.agreement import agreement_text

    rows = ["| evaluator | pairs collected | trainable | measured agreement |", "|---|---|---|---|"]
    rows += [f"| {name} | {c['total']} | {c['trainable']} | {agreement_text(name, agreement or {})} |"
             for name, c in sorted(counts.items())]
    table = "\n".join(rows)
    if waiting is None or needed is None:
        return table
    progress = f"**{min(waiting, needed)} of {needed}** new trainable pairs needed for the next run"
    if waiting >= needed:
        progress += " — enough: the next scheduled run trains"
    return f"{progress}.\n\n{table}\n\nRatings become pairs when a run starts, so new ratings show up here after it."


def next_run_md(control: "TrainingControl") -> str:
    every = control.config.train_every_minutes
    if not every:
        return "**Next run:** none scheduled (`COWEST_TRAIN_EVERY_MINUTES=0`); an admin can start one."
    job = control.scheduler.get_job("retrain") if control.scheduler is not None else None
    when = getattr(job, "next_run_time", None)
    if when is None:
        return f"**Next run:** every {every:g} minutes (the scheduler is not running)."
    return f"**Next run:** {when.astimezone().strftime('%Y-%m-%d %H:%M %Z')} (every {every:g} minutes)."


def active_versions_md(service: CollabService, control: "TrainingControl") -> str:
    """Each served pack's active adapter version and its held-out score."""
    rows = ["| domain | active version | held-out score |", "|---|---|---|"]
    for name, pack in service.packs.items():
        active = control.job.registry_for(name).active()
        score = active.metrics.get("candidate_score") if active is not None else None
        shown = f"{score:.3f}" if isinstance(score, (int, float)) else "not scored"
        rows.append(f"| {_escape(pack.title)} | {active.version if active else 'base model (no adapter)'} "
                    f"| {shown if active else '–'} |")
    return "\n".join(rows)


def admin_hint(control: "TrainingControl") -> str:
    if control.gate.enabled:
        return "Admin controls are in the **Admin** section below (they need the admin secret)."
    return ("Admin controls (start or stop a run, roll back a version, retry Hub pushes) appear here when the app "
            "is started with `COWEST_ADMIN_SECRET` set.")


NO_CURVE = "No training run yet: the loss and reward-margin curve appears here while a run trains."


def push_md(status: dict[str, Any]) -> str:
    if "pending" in status:
        text = (f"Hub push: {len(status['pending'])} pending · {len(status.get('failed', []))} failed "
                f"· {len(status.get('done', []))} done")
        if status.get("last_error"):
            text += f"  \nLast push error: {_escape(str(status['last_error']))}"
    else:
        text = "Hub push: off (set `COWEST_HUB_REPO`)."
    if status.get("log_sync_error"):
        text += f"  \n{_escape(status['log_sync_error'])}"
    return text


def training_tab(service: CollabService, control: "TrainingControl", tab: gr.Tab) -> None:
    import pandas as pd

    from cowest_app.loop.agreement import load_agreement
    from cowest_app.loop.control import AdminError
    from cowest_app.loop.registry import RegistryError
    from cowest_app.loop.training_job import JobError

    trained = control.job.pack.name
    gr.Markdown(TRAINING_HELP, elem_id="training-help")
    gr.Markdown(f"The scheduled job trains **{_escape(service.packs[trained].title)}**; every served pack keeps "
                "its own adapter versions (`data/adapters/<pack>/vN`, tagged `<pack>-vN` on the Hub).  \n"
                + admin_hint(control), elem_id="training-admin-hint")
    state_md = gr.Markdown(elem_id="training-state")
    next_md = gr.Markdown(elem_id="training-next")
    with gr.Row(elem_classes="stack-on-phone"):
        pairs_md = gr.Markdown(elem_id="training-pairs")
        active_md = gr.Markdown(elem_id="training-active")
    curve_empty = gr.Markdown(NO_CURVE, elem_id="training-curve-empty")
    plot = gr.LinePlot(x="step", y="value", color="series", title="DPO loss and reward margin", height=260,
                       visible=False)
    hub_md = gr.Markdown()
    pack_pick = gr.Dropdown([(p.title, name) for name, p in service.packs.items()], value=trained,
                            label="Pack", elem_id="training-pack")
    history = gr.Dataframe(headers=HISTORY_COLUMNS, label="Adapter versions", interactive=False, wrap=True,
                           elem_id="adapter-history")
    with gr.Row():
        version_pick = gr.Dropdown([], label="Adapter version", allow_custom_value=False)
        download_btn = gr.Button("Download adapter (.zip with model card)")
    download_file = gr.File(label="Adapter", interactive=False)
    with gr.Accordion("Admin", open=False, visible=control.gate.enabled):
        secret = gr.Textbox(label="Admin secret", type="password")
        with gr.Row():
            start_btn = gr.Button("Start a run now", variant="primary")
            stop_btn = gr.Button("Stop the run", variant="stop")
            rollback_btn = gr.Button("Roll back to selected version")
            base_btn = gr.Button("Roll back to the base model")
            retry_btn = gr.Button("Retry failed pushes")
        admin_md = gr.Markdown()

    def waiting_pairs() -> int:
        return sum(1 for _ in service.store.iter_pairs(after_id=control.job.last_trained_pair_id()))

    def refresh(pack: str | None, current: str | None):
        rows = control.history(pack or trained)
        versions = [r["version"] for r in rows if r["status"] != "failed"]
        active = next((r["version"] for r in rows if r["status"] == "active"), None)
        curve = pd.DataFrame(control.curve(), columns=["step", "value", "series"])
        pairs = pair_counts_md(service.store.pair_counts(), waiting_pairs(), service.config.train_min_pairs,
                               load_agreement(control.job.pack.root))
        return (job_state_md(control.state()), next_run_md(control), pairs, active_versions_md(service, control),
                gr.Markdown(visible=curve.empty), gr.LinePlot(value=curve, visible=not curve.empty),
                push_md(control.push_status()), pd.DataFrame(rows, columns=HISTORY_COLUMNS),
                # Keep the user's pick; otherwise preselect the active version, so Download works at once.
                gr.Dropdown(choices=versions, value=current if current in versions else active))

    outputs = [state_md, next_md, pairs_md, active_md, curve_empty, plot, hub_md, history, version_pick]
    gr.Timer(2.0).tick(refresh, [pack_pick, version_pick], outputs, api_visibility="private", show_progress="hidden")
    pack_pick.change(refresh, [pack_pick, version_pick], outputs, api_visibility="private", show_progress="hidden")
    tab.select(refresh, [pack_pick, version_pick], outputs, api_visibility="private", show_progress="hidden")

    def admin(action):
        def run(*args):
            try:
                return action(*args)
            except (AdminError, JobError, RegistryError) as exc:
                raise user_error(exc) from None
        return run

    start_btn.click(admin(control.start_run), secret, admin_md, api_name="admin_start")
    stop_btn.click(admin(control.stop_run), secret, admin_md, api_name="admin_stop")
    rollback_btn.click(admin(control.rollback), [secret, version_pick, pack_pick], admin_md, api_name="admin_rollback")
    base_btn.click(admin(lambda s, pack: control.rollback(s, None, pack)), [secret, pack_pick], admin_md,
                   api_name="admin_rollback_base")
    retry_btn.click(admin(control.retry_pushes), secret, admin_md, api_name="admin_retry_pushes")

    def on_download(version: str | None, pack: str | None) -> str:
        if not version:
            raise user_error(prompts.InputError("Pick an adapter version first."))
        try:
            return str(control.download(version, pack or trained))
        except (RegistryError, JobError) as exc:
            raise user_error(exc) from None

    download_btn.click(on_download, [version_pick, pack_pick], download_file, api_name="download_adapter")
