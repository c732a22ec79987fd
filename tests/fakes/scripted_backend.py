"""A deterministic Backend: replies from a script, streamed word by word.

Stands in for a model whose output must be exactly known, e.g. a weak model
that loops, and records the options of every call so tests can check how
the pipeline asked for each reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from cowest_app.models.base import GenerationOptions, Message, apply_stop_rules, options_from
from tests.fakes.openai_server import split_words


@dataclass
class ScriptedBackend:
    replies: list[str]  # one per call, in order; the last repeats once the script runs out
    model: str = "scripted"
    calls: list[tuple[list[Message], GenerationOptions]] = field(default_factory=list)

    def generate(self, messages: list[Message], **opts: Any) -> Iterator[str]:
        options = options_from(opts)
        reply = self.replies[min(len(self.calls), len(self.replies) - 1)]
        self.calls.append((messages, options))
        # Stop rules as a real backend honours them; no_repeat/penalty cannot change a script.
        return apply_stop_rules(iter(split_words(reply)), options)

    def describe(self) -> dict[str, Any]:
        return {"backend": "scripted", "model": self.model, "adapter_version": "base"}
