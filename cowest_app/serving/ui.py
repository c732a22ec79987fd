"""Gradio Blocks UI. Every callback is a closure over one `CollabService`.

Model output is shown in text boxes, never rendered as HTML or Markdown, so
markup in an answer is displayed as text and never executed.
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING, Any

import gradio as gr

from cowest_app.core import prompts
from cowest_app.serving.eval_view import build_evaluation_tab
from cowest_app.serving.pipeline import COLLAB, NOTE, STRONG_ALONE, WEAK, WEAK_ALONE, Snapshot
from cowest_app.serving.service import CollabService
from cowest_app.core.store import BEST_CHOICES as BEST_KEYS

if TYPE_CHECKING:
    from cowest_app.loop.control import TrainingControl

STAGE_TITLES = {
    WEAK: "Weak draft",
    COLLAB: "Final answer (weak + strong)",
    WEAK_ALONE: "Weak alone",
    STRONG_ALONE: "Strong alone",
}
BEST_LABELS = {"collab": "Final answer (collaboration)", "weak": "Weak draft", "strong": "Strong alone"}  # display order
# (label, key) for every key the store accepts; a key without a label fails here, at import.
BEST_CHOICES = [(BEST_LABELS[key], key) for key in sorted(BEST_KEYS, key=list(BEST_LABELS).index)]


def _ms(value: float | None) -> str:
    # Sub-second stages in ms: "0.0 s" for a fast first token read as "no time at all".
    if value is None:
        return "–"
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.1f} s"


def stage_table(snapshot: Snapshot) -> str:
    """Markdown table of each stage: model, adapter, status and latency."""
    rows = ["| stage | model | adapter | status | first token | total |", "|---|---|---|---|---|---|"]
    for key, stage in snapshot.stages.items():
        info = stage.info
        status = stage.status if not stage.error else f"failed: {stage.error}"
        if info.get(NOTE):  # what the draft check did: re-drafted, not used, fallback
            status += f" · {info[NOTE]}"
        rows.append(
            f"| {STAGE_TITLES[key]} | {_escape(info.get('model', '…'))} | {_escape(info.get('adapter_version') or '–')} "
            f"| {_escape(status)} | {_ms(stage.first_token_ms)} | {_ms(stage.ms)} |"
        )
    return "\n".join(rows)


# Markdown punctuation that could start a link, an image, emphasis, code or a table cell.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#!|~])")


def _escape(text: str) -> str:
    """Text from outside (errors echo server or user text) shown inside Markdown stays
    inert and on one line: HTML becomes entities, Markdown punctuation is escaped."""
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))
    return " ".join(text.splitlines())


def user_error(exc: BaseException) -> gr.Error:
    # gr.Error renders its message as HTML, and messages can quote user input.
    return gr.Error(html.escape(str(exc), quote=False), duration=8)


def pack_choices(service: CollabService) -> list[tuple[str, str]]:
    """The served packs for the domain dropdown: (title, name)."""
    return [(pack.title, name) for name, pack in service.packs.items()]


def pack_examples(service: CollabService) -> list[list[str]]:
    """Every served pack's example questions, each with its pack selected."""
    return [[example, name] for name, pack in service.packs.items() for example in pack.examples]


def models_banner(service: CollabService) -> str:
    weak, strong = service.weak.describe(), service.strong.describe()
    adapters = weak.get("adapters") or {}
    served = ", ".join(f"{name} `{adapters.get(name, 'base')}`" for name in service.packs)
    weak_line = f"**Weak:** `{weak['model']}` · adapters per domain: {served}"
    if weak.get("memory_mib") is not None:
        precision = "NF4 4-bit" if weak.get("quantization") == "nf4" else "full precision"
        weak_line += f" · {precision}, {weak['memory_mib']:.0f} MiB"
    strong_line = f"**Strong:** `{strong['model']}` via {strong['backend']}"
    if strong.get("endpoint"):
        strong_line += f" ({strong['endpoint']})"
    return f"{weak_line}  \n{strong_line}"


def log_counts(service: CollabService) -> str:
    c = service.store.counts()
    return (
        f"**{c['interactions']}** interactions · **{c['feedback']}** feedback events "
        f"(👍 {c['thumbs_up']} · 👎 {c['thumbs_down']})"
    )


def build_ui(service: CollabService, control: "TrainingControl | None" = None) -> gr.Blocks:
    with gr.Blocks(title="CoWeSt: weak-strong collaboration") as demo:
        gr.Markdown(
            "# CoWeSt — weak–strong collaboration\n"
            "A small domain-specialised **weak** model drafts an answer with background knowledge; "
            "a general **strong** model refines question + draft into the final answer. "
            "Rate answers: your feedback becomes preference data that retrains the weak model."
        )
        banner = gr.Markdown(models_banner(service), elem_id="models-banner")
        with gr.Tab("Ask"):
            with gr.Row():
                question = gr.Textbox(label="Question", lines=3, scale=4, elem_id="question",
                                      placeholder="Ask a domain question…",
                                      max_length=service.config.max_question_chars)
                with gr.Column(scale=1, min_width=220):
                    domain = gr.Dropdown(pack_choices(service), value=service.default_pack, label="Domain",
                                         elem_id="domain")
                    compare = gr.Checkbox(False, label="Also answer with each model alone")
                    ask_btn = gr.Button("Ask", variant="primary", elem_id="ask")
            gr.Examples(pack_examples(service), [question, domain])
            with gr.Row():
                weak_box = gr.Textbox(label=STAGE_TITLES[WEAK], lines=12, interactive=False, buttons=["copy"],
                                      elem_id="weak-draft")
                final_box = gr.Textbox(label=STAGE_TITLES[COLLAB], lines=12, interactive=False, buttons=["copy"],
                                       elem_id="final-answer")
            with gr.Row(visible=False) as alone_row:
                weak_alone_box = gr.Textbox(label=STAGE_TITLES[WEAK_ALONE], lines=8, interactive=False)
                strong_alone_box = gr.Textbox(label=STAGE_TITLES[STRONG_ALONE], lines=8, interactive=False)
            stages_md = gr.Markdown(elem_id="stage-table")
            interaction_id = gr.Textbox(visible=False, label="interaction id")
            with gr.Group():
                with gr.Row():
                    best = gr.Radio(BEST_CHOICES, label="Which answer was best? (when several are shown)")
                    comment = gr.Textbox(label="Comment (optional)", lines=2,
                                         max_length=service.config.max_comment_chars)
                with gr.Row():
                    up_btn = gr.Button("👍 Good answer", elem_id="rate-up")
                    down_btn = gr.Button("👎 Bad answer")
                    send_btn = gr.Button("Send choice / comment only")
            feedback_md = gr.Markdown(elem_id="feedback-message")
        with gr.Tab("Log & export"):
            counts_md = gr.Markdown(elem_id="log-counts")
            fmt = gr.Radio(["jsonl", "parquet"], value="jsonl", label="Format")
            gr.Markdown("The export holds this browser session's questions, answers and feedback only.")
            export_btn = gr.Button("Export my questions and feedback", elem_id="export")
            with gr.Accordion("Admin: everyone's log", open=False, visible=control is not None and control.gate.enabled):
                export_secret = gr.Textbox(label="Admin secret", type="password")
                export_all_btn = gr.Button("Export the whole log", elem_id="export-all")
            export_file = gr.File(label="Download", interactive=False, elem_id="export-file")
        build_evaluation_tab(service.config.data_dir)
        if control is not None:
            with gr.Tab("Training"):
                training_tab(service, control)

        def on_ask(q: str, d: str, cmp: bool, request: gr.Request):
            try:
                updates = service.ask(q, d, bool(cmp), session_id=_session(request))
                for update in updates:
                    yield _render(update.snapshot, update.interaction_id)
            except prompts.InputError as exc:
                raise user_error(exc) from None

        def on_rate(rating: str | None, iid: str, choice: str | None, text: str, request: gr.Request):
            try:
                service.rate(iid or None, rating=rating, best=choice or None, comment=text, session_id=_session(request))
            except prompts.InputError as exc:
                raise user_error(exc) from None
            thanks = {"up": "👍 recorded.", "down": "👎 recorded."}.get(rating or "", "Feedback recorded.")
            return f"{thanks} Thank you!", log_counts(service)

        def rate_with(rating: str | None):
            # A plain closure, not functools.partial: Gradio counts a partial's
            # parameters wrongly when one of them is the injected gr.Request.
            def handler(iid: str, choice: str | None, text: str, request: gr.Request):
                return on_rate(rating, iid, choice, text, request)

            return handler

        def check_format(f: str) -> None:
            if f not in ("jsonl", "parquet"):
                raise gr.Error(html.escape(f"Unknown export format {prompts.shown(f)}.", quote=False))

        def on_export(f: str, request: gr.Request) -> str:
            check_format(f)
            session = _session(request)
            if session is None:
                raise gr.Error("No browser session: nothing of yours to export.")
            return str(service.export(f, session_id=session))

        def on_export_all(f: str, secret: str) -> str:
            from cowest_app.loop.control import AdminError

            check_format(f)
            if control is None:
                raise gr.Error("Admin actions are disabled.")
            try:
                control.gate.check(secret)
            except AdminError as exc:
                raise user_error(exc) from None
            return str(service.export(f))

        ask_event = dict(fn=on_ask, inputs=[question, domain, compare],
                         outputs=[weak_box, final_box, weak_alone_box, strong_alone_box, stages_md, interaction_id])
        ask_btn.click(**ask_event, api_name="ask")
        question.submit(**ask_event, api_name=False)
        compare.change(lambda c: gr.Row(visible=bool(c)), compare, alone_row, api_name=False)
        rate_inputs = [interaction_id, best, comment]
        up_btn.click(rate_with("up"), rate_inputs, [feedback_md, counts_md], api_name="rate_up")
        down_btn.click(rate_with("down"), rate_inputs, [feedback_md, counts_md], api_name="rate_down")
        send_btn.click(rate_with(None), rate_inputs, [feedback_md, counts_md], api_name="send_feedback")
        export_btn.click(on_export, fmt, export_file, api_name="export")
        export_all_btn.click(on_export_all, [fmt, export_secret], export_file, api_name="export_all")
        demo.load(lambda: (models_banner(service), log_counts(service)), None, [banner, counts_md], api_name=False)
    return demo


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def _render(snapshot: Snapshot, interaction_id: str | None) -> tuple[Any, ...]:
    text = {k: s.text for k, s in snapshot.stages.items()}
    return (
        text.get(WEAK, ""),
        text.get(COLLAB, ""),
        text.get(WEAK_ALONE, ""),
        text.get(STRONG_ALONE, ""),
        stage_table(snapshot),
        interaction_id or "",
    )


# -- training dashboard ---------------------------------------------------------
HISTORY_COLUMNS = ["version", "status", "parent", "pairs", "train loss", "reward margin",
                   "held-out (candidate)", "held-out (previous)", "created", "hub", "error"]


def job_state_md(state: dict[str, Any]) -> str:
    phase = state["phase"]
    line = f"**State:** {phase}"
    if phase == "training" and state.get("total_steps"):
        line += f" — step {state['step']} of {state['total_steps']}"
    if state.get("detail"):
        line += f" — {state['detail']}"
    parts = [line]
    if state.get("version"):
        parts.append(f"**Run:** {state['version']}")
    if state.get("last_result"):
        parts.append(f"**Last result:** {_escape(state['last_result'])}")
    if state.get("last_error"):
        parts.append(f"**Last error:** {_escape(state['last_error'][-500:])}")
    return "  \n".join(parts)


def pair_counts_md(counts: dict[str, dict[str, int]]) -> str:
    if not counts:
        return "No preference pairs yet."
    rows = ["| evaluator | pairs | trainable |", "|---|---|---|"]
    rows += [f"| {name} | {c['total']} | {c['trainable']} |" for name, c in sorted(counts.items())]
    return "\n".join(rows)


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


def training_tab(service: CollabService, control: "TrainingControl") -> None:
    import pandas as pd

    from cowest_app.loop.control import AdminError
    from cowest_app.loop.registry import RegistryError
    from cowest_app.loop.training_job import JobError

    trained = control.job.pack.name
    gr.Markdown(f"The scheduled job trains **{service.packs[trained].title}**; every served pack keeps its own "
                "adapter versions (`data/adapters/<pack>/vN`, tagged `<pack>-vN` on the Hub).")
    state_md = gr.Markdown(elem_id="training-state")
    plot = gr.LinePlot(x="step", y="value", color="series", title="DPO loss and reward margin", height=260)
    with gr.Row():
        pairs_md = gr.Markdown()
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

    def refresh(pack: str | None):
        rows = control.history(pack or trained)
        versions = [r["version"] for r in rows if r["status"] != "failed"]
        curve = pd.DataFrame(control.curve(), columns=["step", "value", "series"])
        return (job_state_md(control.state()), curve, pair_counts_md(service.store.pair_counts()),
                push_md(control.push_status()),
                pd.DataFrame(rows, columns=HISTORY_COLUMNS),
                gr.Dropdown(choices=versions))

    outputs = [state_md, plot, pairs_md, hub_md, history, version_pick]
    gr.Timer(2.0).tick(refresh, pack_pick, outputs, api_name=False, show_progress="hidden")
    pack_pick.change(refresh, pack_pick, outputs, api_name=False, show_progress="hidden")

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
            raise gr.Error("Pick an adapter version first.")
        try:
            return str(control.download(version, pack or trained))
        except (RegistryError, JobError) as exc:
            raise user_error(exc) from None

    download_btn.click(on_download, [version_pick, pack_pick], download_file, api_name="download_adapter")
