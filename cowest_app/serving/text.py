"""Text shown in the page that comes from outside (users, models, servers): escaped, and
user mistakes answered the same way everywhere (one log line, no traceback)."""

from __future__ import annotations

import html
import logging
import re

import gradio as gr

log = logging.getLogger("cowest_app.serving.ui")

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
