"""Gradio Blocks UI. Every callback is a closure over one `CollabService`.

Answers are rendered as Markdown with every HTML tag escaped first (and
Gradio's sanitizer on behind that), so `**bold**` and lists render while
markup in an answer is displayed as text and never executed.

The page's own events answer user mistakes with a toast (`refuse`), never an
error badge on the answer boxes. API clients call the same actions through
endpoints on hidden buttons that keep the documented contract and raise.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import gradio as gr

from cowest_app.core import prompts
from cowest_app.serving.eval_view import build_evaluation_tab
from cowest_app.models import refs
from cowest_app.serving.arena import Arena
from cowest_app.serving.pipeline import COLLAB, NOTE, STRONG_ALONE, WEAK, WEAK_ALONE, Snapshot, truncated_at
from cowest_app.serving.service import AskUpdate, CollabService
from cowest_app.serving.text import _escape, refuse, user_error
from cowest_app.serving.training_view import training_tab
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
        limit = truncated_at(stage)
        if limit:  # the answer is cut off mid-way: say so, or it reads as complete
            status += f" · stopped at the {limit}-token limit"
        rows.append(
            f"| {STAGE_TITLES[key]} | {_escape(info.get('model', '…'))} | {_escape(info.get('adapter_version') or '–')} "
            f"| {_escape(status)} | {_ms(stage.first_token_ms)} | {_ms(stage.ms)} |"
        )
    return "\n".join(rows)


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
            "a general **strong** model refines question + draft into the final answer. In a domain where "
            "the weak model is no specialist yet, the strong model answers alone. "
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
        try:
            for n, update in enumerate(service.ask(q, d, bool(cmp), session_id=_session(request))):
                yield _render(update.snapshot, update.interaction_id, markdown=True) + rating_form(
                    update, q, bool(cmp), first=n == 0)
        except prompts.InputError as exc:
            refuse(exc)
            yield (gr.skip(),) * (len(answer_outputs) + len(form))

    def on_stop(request: gr.Request) -> Any:
        # Outside the queue there are no toasts: the answer goes to the message line.
        return gr.skip() if service.stop(_session(request)) else "Nothing is running: nothing to stop."

    ask_event = dict(fn=on_ask, inputs=[p.question, p.domain, p.compare], outputs=answer_outputs + form,
                     api_visibility="private")
    p.ask_btn.click(**ask_event).then(lambda: log_counts(service), None, counts_md, api_visibility="private")
    # Stop runs beside the question it stops: outside the queue, so it never waits behind a question.
    p.stop_btn.click(on_stop, None, p.feedback_md, queue=False, api_visibility="private", show_progress="hidden")
    p.compare.change(lambda c: gr.Row(visible=bool(c)), p.compare, p.alone_row, api_visibility="private")
    wire_rating(service, p, counts_md)
    wire_ask_api(service, p)


def rating_form(update: AskUpdate, question: str, compare: bool, first: bool) -> tuple[Any, ...]:
    """The rating form (target line, best, comment, message) for one update of a question."""
    target, best, comment, message = (gr.skip(),) * 4
    if first:  # a new question: nothing chosen, no comment, no old "recorded"; the answers now shown
        target, comment, message = "Rating: wait for the answer to finish.", "", ""
        best = gr.Radio(choices=best_choices(compare), value=None)
    if update.interaction_id:  # logged: votes from now on go to this interaction, and say so
        target = _rating_target(question, update.interaction_id, update.stopped)
        if update.stopped:
            message = "Stopped: what was written so far is kept, logged as cancelled."
    return target, best, comment, message


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
