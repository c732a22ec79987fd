"""Gradio Blocks UI. Every callback is a closure over one `CollabService`.

Answers are rendered as Markdown with every HTML tag escaped first (and
Gradio's sanitizer on behind that), so `**bold**` and lists render while
markup in an answer is displayed as text and never executed.

The page's own events answer user mistakes with a toast (`refuse`), never an
error badge on the answer boxes. API clients call the same actions through
endpoints on hidden buttons that keep the documented contract and raise.
"""

from __future__ import annotations

import html
import logging
import re
from typing import TYPE_CHECKING, Any, Callable

import gradio as gr

from cowest_app.core import prompts
from cowest_app.serving.eval_view import build_evaluation_tab
from cowest_app.models import refs
from cowest_app.serving.arena import Arena
from cowest_app.serving.pipeline import COLLAB, NOTE, STRONG_ALONE, WEAK, WEAK_ALONE, Snapshot, truncated_at
from cowest_app.serving.service import CollabService
from cowest_app.core.store import BEST_CHOICES as BEST_KEYS

if TYPE_CHECKING:
    from cowest_app.loop.control import TrainingControl

log = logging.getLogger(__name__)

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
        limit = truncated_at(stage)
        if limit:  # the answer is cut off mid-way: say so, or it reads as complete
            status += f" · stopped at the {limit}-token limit"
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
    """For API callers: the error they get back. No traceback in the server log: it is their input."""
    log.info("refused: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    # gr.Error renders its message as HTML, and messages can quote user input.
    return gr.Error(html.escape(str(exc), quote=False), duration=8, print_exception=False)


def refuse(exc: BaseException) -> None:
    """For the page: a toast and one log line; the outputs stay as they were (no error badge)."""
    log.info("refused: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    gr.Warning(html.escape(str(exc), quote=False), duration=8, title="Please check")


# Code spans and fenced blocks: their text is shown literally by Markdown, so it is not escaped.
_CODE = re.compile(r"(```.*?(?:```|$)|`[^`\n]*`)", re.DOTALL)


def answer_markdown(text: str) -> str:
    """Model text for a Markdown box: Markdown renders, HTML tags show as text.

    `<` and `&` outside code are escaped (inside code Markdown already shows
    them as typed); Gradio's sanitizer stays on behind this.
    """
    parts = _CODE.split(text or "")
    # Only & and <: a tag cannot start without "<", and ">" must stay a Markdown blockquote.
    return "".join(part if i % 2 else part.replace("&", "&amp;").replace("<", "&lt;") for i, part in enumerate(parts))


def pack_choices(service: CollabService) -> list[tuple[str, str]]:
    """The served packs for the domain dropdown: (title, name)."""
    return [(pack.title, name) for name, pack in service.packs.items()]


def pack_examples(service: CollabService) -> list[list[str]]:
    """Every served pack's example questions, each with its pack selected."""
    return [[example, name] for name, pack in service.packs.items() for example in pack.examples]


# -- models banner ----------------------------------------------------------------
def model_card(ref: str) -> tuple[str, str | None]:
    """A model reference as (name, link to its model card or None for a local directory)."""
    if refs.is_packaged(ref):
        hub_id = refs.packaged_spec(ref).hub_id
        return hub_id, f"https://huggingface.co/{hub_id}"
    if re.fullmatch(r"[\w.-]+/[\w.-]+", ref) and not ref.startswith((".", "/")):
        return ref, f"https://huggingface.co/{ref}"
    return ref, None


def parameter_count(backend: Any) -> str | None:
    """'1.5B parameters' for a local model; None when the size is unknown (a remote endpoint)."""
    model = getattr(backend, "model", None)
    count = getattr(model, "num_parameters", None)
    if count is None:
        return None
    n = count()
    return f"{n / 1e9:.1f}B parameters" if n >= 1e9 else f"{n / 1e6:.0f}M parameters" if n >= 1e6 else f"{n:,} parameters"


def model_line(role: str, backend: Any, facts: dict[str, Any]) -> str:
    name, link = model_card(str(facts.get("model")))
    shown = f"[`{_escape(name)}`]({link})" if link else f"`{name}`"
    parts = [f"**{role}:** {shown}"]
    if "coder" in name.lower():
        parts.append("a coding model")
    size = parameter_count(backend)
    if size:
        parts.append(size)
    if facts.get("backend") == "transformers":
        precision = "NF4 4-bit" if facts.get("quantization") == "nf4" else "not quantised"
        memory = f", {facts['memory_mib']:.0f} MiB" if facts.get("memory_mib") is not None else ""
        parts.append(precision + memory)
    elif facts.get("endpoint"):
        parts.append(f"via {_escape(facts['endpoint'])}")
    return " · ".join(parts)


def models_banner(service: CollabService) -> str:
    weak, strong = service.weak.describe(), service.strong.describe()
    adapters = weak.get("adapters") or {}
    served = ", ".join(f"{_escape(pack.title)} `{adapters.get(name, 'base')}`" for name, pack in service.packs.items())
    return (f"{model_line('Weak model (drafts)', service.weak, weak)}  \n"
            f"Active adapter per domain: {served}  \n"
            f"{model_line('Strong model (refines the draft)', service.strong, strong)}")


def log_counts(service: CollabService) -> str:
    c = service.store.counts()
    return (
        f"**{c['interactions']}** interactions · **{c['feedback']}** feedback events "
        f"(👍 {c['thumbs_up']} · 👎 {c['thumbs_down']})"
    )


# -- page style and keys ------------------------------------------------------------
# Answer boxes (and other side-by-side rows) stack below ~700 px.
CSS = """
.stack-on-phone { flex-wrap: wrap; }
@media (max-width: 700px) {
  .stack-on-phone { flex-direction: column !important; }
  .stack-on-phone > * { min-width: 100% !important; }
}
.answer-title { margin-bottom: -0.5em; }
#stage-table { overflow-x: auto; }
#stage-table table { min-width: 560px; }
#question-count .over { color: #b91c1c; font-weight: 600; }
"""

# Enter asks, Shift+Enter is a newline (Gradio's multi-line box does the reverse),
# and the question box counts its characters against the limit.
HEAD = """<script>
(() => {
  const asks = {"question": "ask", "arena-question": "arena-ask"};
  const questionBox = (e) => e.key === "Enter" && !e.isComposing && e.target.closest
    && e.target.closest("#question, #arena-question");
  document.addEventListener("keydown", (e) => {
    const box = questionBox(e);
    if (!box || e.shiftKey) return;  // Shift+Enter: the browser writes the newline
    e.preventDefault();  // also suppresses the keypress
    e.stopPropagation();
    const button = document.getElementById(asks[box.id]);
    if (button) button.click();
  }, true);
  // Gradio's own keypress handler submits on Shift+Enter and blocks the newline: keep it out.
  document.addEventListener("keypress", (e) => { if (questionBox(e)) e.stopPropagation(); }, true);
  document.addEventListener("input", (e) => {
    if (!(e.target.closest && e.target.closest("#question"))) return;
    const counter = document.querySelector("#question-count [data-limit]");
    if (!counter) return;
    const limit = Number(counter.dataset.limit), n = e.target.value.length;
    counter.textContent = n > limit
      ? `${n} / ${limit} characters: too long, shorten it by ${n - limit} to ask`
      : `${n} / ${limit} characters`;
    counter.classList.toggle("over", n > limit);
  }, true);
})();
</script>"""


def counter_html(limit: int) -> str:
    return f'<span data-limit="{limit}">0 / {limit} characters</span> · Enter asks, Shift+Enter starts a new line'


def best_choices(compare: bool) -> list[tuple[str, str]]:
    """The answers shown that the log can record as best: the final answer and the draft,
    and with the compare view the strong model alone (the log has no key for "weak alone")."""
    keys = ["collab", "weak"] + (["strong"] if compare else [])
    return [(label, key) for label, key in BEST_CHOICES if key in keys]


HISTORY_HEADERS = ["when (UTC)", "domain", "question", "answer", "status", "rating", "best"]


def history_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [[r["created_at"][:19].replace("T", " "), r["domain"], r["question"], _preview(r["final_answer"]),
             r["status"], r["rating"], r["best"]] for r in rows]


def _preview(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_ui(service: CollabService, control: "TrainingControl | None" = None) -> gr.Blocks:
    arena = Arena(service)
    with gr.Blocks(title="CoWeSt: weak-strong collaboration") as demo:
        gr.Markdown(
            "# CoWeSt — weak–strong collaboration\n"
            "A small domain-specialised **weak** model drafts an answer with background knowledge; "
            "a general **strong** model refines question + draft into the final answer. "
            "Rate answers: your feedback becomes preference data that retrains the weak model."
        )
        banner = gr.Markdown(models_banner(service), elem_id="models-banner")
        with gr.Tabs() as tabs:
            with gr.Tab("Ask", id="ask-tab"):
                ask_parts = ask_tab(service)
            with gr.Tab("Compare versions", id="arena-tab"):
                arena_tab(service, arena)
            with gr.Tab("History", id="history-tab") as history_tab_block:
                gr.Markdown("Your questions in this browser session, newest first. Click a row to ask it again.")
                history = gr.Dataframe(headers=HISTORY_HEADERS, interactive=False, wrap=True, elem_id="history",
                                       column_widths=["13%", "12%", "27%", "30%", "8%", "5%", "5%"])
                history_rows = gr.State([])
            with gr.Tab("Log & export", id="log-tab"):
                counts_md = log_tab(service, control)
            build_evaluation_tab(service.config.data_dir)
            if control is not None:
                with gr.Tab("Training", id="training-tab") as training_block:
                    training_tab(service, control, training_block)
        wire_ask(service, ask_parts, counts_md)
        wire_history(service, ask_parts, tabs, history_tab_block, history, history_rows)
        demo.load(lambda: (models_banner(service), log_counts(service)), None, [banner, counts_md],
                  api_visibility="private")
    return demo


class AskParts:
    """The Ask tab's components, for wiring its events."""

    def __init__(self, **parts: Any) -> None:
        self.__dict__.update(parts)


def ask_tab(service: CollabService) -> AskParts:
    limit = service.config.max_question_chars
    with gr.Row():
        with gr.Column(scale=4):
            # No max_length: a long paste is kept whole and refused with a clear message, never cut silently.
            question = gr.Textbox(label="Question", lines=3, elem_id="question", placeholder="Ask a domain question…")
            gr.HTML(counter_html(limit), elem_id="question-count")
        with gr.Column(scale=1, min_width=220):
            domain = gr.Dropdown(pack_choices(service), value=service.default_pack, label="Domain", elem_id="domain")
            compare = gr.Checkbox(False, label="Also answer with each model alone", elem_id="compare")
            with gr.Row():
                ask_btn = gr.Button("Ask", variant="primary", elem_id="ask")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
    gr.Examples(pack_examples(service), [question, domain], examples_per_page=4)
    with gr.Row(elem_classes="stack-on-phone"):
        weak_md = _answer_box(STAGE_TITLES[WEAK], "weak-draft")
        final_md = _answer_box(STAGE_TITLES[COLLAB], "final-answer")
    with gr.Row(visible=False, elem_classes="stack-on-phone") as alone_row:
        weak_alone_md = _answer_box(STAGE_TITLES[WEAK_ALONE], "weak-alone")
        strong_alone_md = _answer_box(STAGE_TITLES[STRONG_ALONE], "strong-alone")
    stages_md = gr.Markdown(elem_id="stage-table")
    interaction_id = gr.Textbox(visible=False, label="interaction id")
    with gr.Group():
        rating_for = gr.Markdown("Ask a question, then rate its answer here.", elem_id="rating-for")
        with gr.Row():
            best = gr.Radio(best_choices(False), label="Which answer was best?", elem_id="best")
            comment = gr.Textbox(label="Comment (optional)", lines=2, elem_id="comment",
                                 max_length=service.config.max_comment_chars)
        with gr.Row():
            up_btn = gr.Button("👍 Good answer", elem_id="rate-up")
            down_btn = gr.Button("👎 Bad answer", elem_id="rate-down")
            send_btn = gr.Button("Send choice / comment only", elem_id="send-feedback")
    feedback_md = gr.Markdown(elem_id="feedback-message")
    return AskParts(question=question, domain=domain, compare=compare, ask_btn=ask_btn, stop_btn=stop_btn,
                    weak_md=weak_md, final_md=final_md, alone_row=alone_row, weak_alone_md=weak_alone_md,
                    strong_alone_md=strong_alone_md, stages_md=stages_md, interaction_id=interaction_id,
                    rating_for=rating_for, best=best, comment=comment, up_btn=up_btn, down_btn=down_btn,
                    send_btn=send_btn, feedback_md=feedback_md)


def _answer_box(label: str, elem_id: str) -> gr.Markdown:
    # A Markdown block shows no label of its own: the title is a line above it.
    with gr.Column(min_width=0):
        gr.Markdown(f"**{label}**", elem_classes="answer-title")
        return gr.Markdown(container=True, elem_id=elem_id, buttons=["copy"], elem_classes="answer-box",
                           min_height=160)


def wire_ask(service: CollabService, p: AskParts, counts_md: gr.Markdown) -> None:
    """The Ask tab's events: the page's (toasts) and the API's (hidden buttons, raising)."""
    answer_outputs = [p.weak_md, p.final_md, p.weak_alone_md, p.strong_alone_md, p.stages_md, p.interaction_id]
    form = [p.rating_for, p.best, p.comment, p.feedback_md]

    def on_ask(q: str, d: str, cmp: bool, request: gr.Request):
        session = _session(request)
        first = True
        try:
            for update in service.ask(q, d, bool(cmp), session_id=session):
                rendered = _render(update.snapshot, update.interaction_id, markdown=True)
                if first:  # a new question: the rating form starts empty, offering the answers now shown
                    reset = ("Rating: wait for the answer to finish.", gr.Radio(choices=best_choices(bool(cmp)),
                             value=None), "", "")
                    first = False
                else:
                    reset = (gr.skip(),) * len(form)
                if update.interaction_id:
                    reset = (_rating_target(q, update.interaction_id, update.stopped),) + reset[1:3] + (
                        "Stopped: what was written so far is kept, logged as cancelled." if update.stopped else reset[3],)
                yield rendered + reset
        except prompts.InputError as exc:
            refuse(exc)
            yield (gr.skip(),) * (len(answer_outputs) + len(form))

    def on_stop(request: gr.Request) -> None:
        if not service.stop(_session(request)):
            gr.Info("Nothing is running.", duration=3)

    ask_event = dict(fn=on_ask, inputs=[p.question, p.domain, p.compare], outputs=answer_outputs + form,
                     api_visibility="private")
    p.ask_btn.click(**ask_event).then(lambda: log_counts(service), None, counts_md, api_visibility="private")
    # Stop runs beside the question it stops: outside its concurrency limit, with no queue wait.
    p.stop_btn.click(on_stop, None, None, concurrency_limit=None, api_visibility="private", show_progress="hidden")
    p.compare.change(lambda c: gr.Row(visible=bool(c)), p.compare, p.alone_row, api_visibility="private")
    wire_rating(service, p, counts_md)
    wire_ask_api(service, p)


def _rating_target(question: str, interaction_id: str, stopped: bool) -> str:
    shown = _escape(_preview(prompts.clean_text(question), 80))
    what = "the stopped answer to" if stopped else "the answer to"
    return f"Rating {what} “{shown}” (interaction `{interaction_id[:8]}`)."


def wire_rating(service: CollabService, p: AskParts, counts_md: gr.Markdown) -> None:
    def rate_with(rating: str | None):
        def handler(iid: str, choice: str | None, text: str, request: gr.Request):
            if not iid:  # the id is cleared while an answer is still being written
                refuse(prompts.InputError("Nothing to rate yet: ask a question, and rate once its answer is done."))
                return gr.skip(), gr.skip()
            try:
                message = rate(service, rating, iid, choice, text, request)
            except prompts.InputError as exc:
                refuse(exc)
                return gr.skip(), gr.skip()
            return message, log_counts(service)

        return handler

    inputs = [p.interaction_id, p.best, p.comment]
    for button, rating in ((p.up_btn, "up"), (p.down_btn, "down"), (p.send_btn, None)):
        button.click(rate_with(rating), inputs, [p.feedback_md, counts_md], api_visibility="private")


def rate(service: CollabService, rating: str | None, iid: str, choice: str | None, text: str,
         request: gr.Request | None) -> str:
    """Record one vote; the message names the question it was for."""
    service.rate(iid or None, rating=rating, best=choice or None, comment=text, session_id=_session(request))
    thanks = {"up": "👍 recorded", "down": "👎 recorded"}.get(rating or "", "Feedback recorded")
    interaction = service.store.get_interaction(iid)
    about = f" for “{_escape(_preview(interaction.question, 80))}”" if interaction else ""
    return f"{thanks}{about} (interaction `{iid[:8]}`). Thank you!"


def wire_ask_api(service: CollabService, p: AskParts) -> None:
    """The documented API (/ask, /rate_up, /rate_down, /send_feedback): plain text out, errors raised."""
    with gr.Group(visible=False):
        api_ask, api_rate_up, api_rate_down, api_send = (gr.Button(visible=False) for _ in range(4))
        api_outputs = [gr.Textbox(visible=False) for _ in range(6)]
        api_message, api_counts = gr.Textbox(visible=False), gr.Textbox(visible=False)

    def api_on_ask(q: str, d: str, cmp: bool, request: gr.Request):
        try:
            for update in service.ask(q, d, bool(cmp), session_id=_session(request)):
                yield _render(update.snapshot, update.interaction_id, markdown=False)
        except prompts.InputError as exc:
            raise user_error(exc) from None

    def api_rate(rating: str | None):
        def handler(iid: str, choice: str | None, text: str, request: gr.Request):
            try:
                return rate(service, rating, iid, choice, text, request), log_counts(service)
            except prompts.InputError as exc:
                raise user_error(exc) from None

        return handler

    api_ask.click(api_on_ask, [p.question, p.domain, p.compare], api_outputs, api_name="ask")
    for button, rating, name in ((api_rate_up, "up", "rate_up"), (api_rate_down, "down", "rate_down"),
                                 (api_send, None, "send_feedback")):
        button.click(api_rate(rating), [p.interaction_id, p.best, p.comment], [api_message, api_counts],
                     api_name=name)


def wire_history(service: CollabService, p: AskParts, tabs: gr.Tabs, tab: gr.Tab, history: gr.Dataframe,
                 rows_state: gr.State) -> None:
    def refresh(request: gr.Request):
        rows = service.history(_session(request))
        return history_table(rows), [(r["question"], r["domain"]) for r in rows]

    def pick(rows: list[tuple[str, str]], evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not isinstance(row, int) or not 0 <= row < len(rows):
            return gr.skip(), gr.skip(), gr.skip()
        question, domain = rows[row]
        if domain not in service.packs:  # a pack no longer served: ask in the default one
            domain = service.default_pack
        return question, domain, gr.Tabs(selected="ask-tab")

    tab.select(refresh, None, [history, rows_state], api_visibility="private")
    # The id changes when a question starts (cleared) and when it is logged; ratings change the table too.
    p.interaction_id.change(refresh, None, [history, rows_state], api_visibility="private", show_progress="hidden")
    for button in (p.up_btn, p.down_btn, p.send_btn):
        button.click(refresh, None, [history, rows_state], api_visibility="private", show_progress="hidden")
    history.select(pick, rows_state, [p.question, p.domain, tabs], api_visibility="private").then(
        lambda: None, None, None, js="() => document.getElementById('ask').click()", api_visibility="private")


def log_tab(service: CollabService, control: "TrainingControl | None") -> gr.Markdown:
    counts_md = gr.Markdown(elem_id="log-counts")
    fmt = gr.Radio(["jsonl", "parquet"], value="jsonl", label="Format")
    gr.Markdown("The export holds this browser session's questions, answers and feedback only.")
    export_btn = gr.Button("Export my questions and feedback", elem_id="export")
    with gr.Accordion("Admin: everyone's log", open=False, visible=control is not None and control.gate.enabled):
        export_secret = gr.Textbox(label="Admin secret", type="password")
        export_all_btn = gr.Button("Export the whole log", elem_id="export-all")
    export_file = gr.File(label="Download", interactive=False, elem_id="export-file")

    def check_format(f: str) -> None:
        if f not in ("jsonl", "parquet"):
            raise user_error(prompts.InputError(f"Unknown export format {prompts.shown(f)}."))

    def on_export(f: str, request: gr.Request) -> str:
        check_format(f)
        session = _session(request)
        if session is None:
            raise user_error(prompts.InputError("No browser session: nothing of yours to export."))
        return str(service.export(f, session_id=session))

    def on_export_all(f: str, secret: str) -> str:
        from cowest_app.loop.control import AdminError

        check_format(f)
        if control is None:
            raise user_error(prompts.InputError("Admin actions are disabled."))
        try:
            control.gate.check(secret)
        except AdminError as exc:
            raise user_error(exc) from None
        return str(service.export(f))

    export_btn.click(on_export, fmt, export_file, api_name="export")
    export_all_btn.click(on_export_all, [fmt, export_secret], export_file, api_name="export_all")
    return counts_md


def arena_tab(service: CollabService, arena: Arena) -> None:
    gr.Markdown(
        "Two versions of the weak model — the domain's active adapter and its previous version (or the bare base "
        "model) — each draft an answer that the same strong model refines. You see them as **A** and **B** in "
        "random order; which is which is revealed after your vote. Your vote is stored as a human preference "
        "pair for training.")
    with gr.Row():
        question = gr.Textbox(label="Question", lines=2, scale=4, elem_id="arena-question",
                              placeholder="Ask a domain question… (Enter compares)")
        with gr.Column(scale=1, min_width=220):
            domain = gr.Dropdown(pack_choices(service), value=service.default_pack, label="Domain",
                                 elem_id="arena-domain")
            against = gr.Radio([("its previous version", "previous"), ("the base model", "base")], value="previous",
                               label="Compare the active version with", elem_id="arena-against",
                               info="With no previous version, the base model.")
            ask_btn = gr.Button("Compare", variant="primary", elem_id="arena-ask")
    with gr.Row(elem_classes="stack-on-phone"):
        answer_a = _answer_box("Answer A", "arena-a")
        answer_b = _answer_box("Answer B", "arena-b")
    status_md = gr.Markdown(elem_id="arena-status")
    with gr.Row():
        vote_a = gr.Button("A is better", elem_id="arena-vote-a")
        vote_b = gr.Button("B is better", elem_id="arena-vote-b")
    reveal_md = gr.Markdown(elem_id="arena-reveal")
    round_id = gr.State(None)

    def on_compare(q: str, d: str, vs: str, request: gr.Request):
        try:
            for update in arena.run(q, d, session_id=_session(request), against=vs):
                a, b = (update.snapshots.get(side) for side in ("A", "B"))
                status = "Both done: which answer is better?" if update.round_id else "Answering…"
                yield (answer_markdown(a.stages[COLLAB].text) if a else "",
                       answer_markdown(b.stages[COLLAB].text) if b else "",
                       status, "", update.round_id)
        except prompts.InputError as exc:
            refuse(exc)
            yield (gr.skip(),) * 5

    def on_vote(side: str):
        def handler(rid: str | None, request: gr.Request):
            try:
                verdict = arena.vote(rid, side, session_id=_session(request))
            except prompts.InputError as exc:
                refuse(exc)
                return gr.skip(), gr.skip()
            shown = " · ".join(f"**{s}** was `{_escape(v)}`" for s, v in verdict.versions.items())
            return f"You chose **{verdict.winner}**. {shown}. {verdict.note}", None

        return handler

    ask_btn.click(on_compare, [question, domain, against], [answer_a, answer_b, status_md, reveal_md, round_id],
                  api_visibility="private")
    vote_a.click(on_vote("A"), round_id, [reveal_md, round_id], api_visibility="private")
    vote_b.click(on_vote("B"), round_id, [reveal_md, round_id], api_visibility="private")


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def _render(snapshot: Snapshot, interaction_id: str | None, markdown: bool) -> tuple[Any, ...]:
    show = answer_markdown if markdown else (lambda text: text)
    text = {k: s.text for k, s in snapshot.stages.items()}
    return (
        show(text.get(WEAK, "")),
        show(text.get(COLLAB, "")),
        show(text.get(WEAK_ALONE, "")),
        show(text.get(STRONG_ALONE, "")),
        stage_table(snapshot),
        interaction_id or "",
    )

# -- training dashboard ---------------------------------------------------------
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
    "votes (*human*) and from automatic judges. A run trains the weak model's adapter on the new trainable "
    "pairs with DPO, scores it on held-out questions, and makes it active only if it scores at least as "
    "well as the version it replaces."
)


def pair_counts_md(counts: dict[str, dict[str, int]], waiting: int | None = None, needed: int | None = None) -> str:
    """Pairs per evaluator and, with `waiting`/`needed`, how far the next run is."""
    rows = ["| evaluator | pairs collected | trainable |", "|---|---|---|"]
    rows += [f"| {name} | {c['total']} | {c['trainable']} |" for name, c in sorted(counts.items())]
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
        pairs = pair_counts_md(service.store.pair_counts(), waiting_pairs(), service.config.train_min_pairs)
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
