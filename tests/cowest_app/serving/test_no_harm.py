"""No harm (issue 12): a looping draft must not reach, or show in, the final answer.

The weak model is scripted to loop exactly as the unspecialised model did
live; the strong model is a real HTTP endpoint (the fake OpenAI server)
scripted to fail the way the live strong model did: given notes, it
judges them and copies them. Everything between, the serving service,
pipeline, draft check, prompts, remote backend, store and stage table, is real.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from cowest_app.core import prompts
from cowest_app.config import AppConfig
from cowest_app.models.remote import InferenceClientBackend
from cowest_app.serving.pipeline import (
    COLLAB, FALLBACK, NO_SPECIALIST, REDRAFTED, WEAK, DRAFT_REPETITION_PENALTY, REDRAFT_REPETITION_PENALTY,
)
from cowest_app.serving.service import CollabService
from cowest_app.core.store import LogStore
from cowest_app.serving.ui import stage_table
from cowest_app.core.prompts import background_only
from tests.cowest_app.core.test_draft_check import GOOD, LIVE_LOOP, SCURVY
from tests.fakes.openai_server import serve_openai
from tests.fakes.scripted_backend import ScriptedBackend
from tests.served import served_pack

STRONG_ALONE_ANSWER = "Scurvy is caused by a lack of vitamin C; the first-line treatment is vitamin C (ascorbic acid)."
NOTES = re.compile(r'"""\n(.*?)\n"""', re.DOTALL)
LEAKS = ("draft", "specialist", "colleague", "notes", "final answer")


def copying_strong(messages: list[dict]) -> str:
    """The live failure mode: with notes it judges and repeats them; alone it is right."""
    notes = NOTES.search(messages[-1]["content"])
    if notes:
        return "The specialist draft is incorrect. The correct answer is: " + notes.group(1)
    return STRONG_ALONE_ANSWER


def ask(tmp_path: Path, weak: ScriptedBackend, server, drafts: str = "always") -> tuple[CollabService, object]:
    """SCURVY in the medicine pack, whose weak model drafts (`always`, for the draft guard's tests)
    or, as served, only once an adapter specialises it (`specialist`)."""
    config = AppConfig(data_dir=tmp_path, weak_max_new_tokens=192, strong_max_new_tokens=256)
    strong = InferenceClientBackend(model="strong", base_url=server.base_url)
    medicine = replace(served_pack("medicine"), drafts=drafts)
    service = CollabService(config, weak, strong, LogStore(config.db_path), packs={"medicine": medicine})
    return service, list(service.ask(SCURVY, "medicine", session_id="s1"))[-1]


def test_a_looping_draft_is_redrafted_then_dropped_and_the_strong_model_answers_alone(tmp_path: Path):
    weak = ScriptedBackend([LIVE_LOOP])  # loops again when re-drafted
    with serve_openai(reply=copying_strong) as server:
        service, last = ask(tmp_path, weak, server)
    final = last.snapshot.stages[COLLAB].text

    # The answer is the strong model's own: no loop, no word about the draft.
    assert final == STRONG_ALONE_ANSWER
    assert "vibrio" not in final.lower() and not any(leak in final.lower() for leak in LEAKS)
    # The strong model never saw the loop: it got the direct prompt.
    [request] = server.requests
    assert "Vibrio" not in str(request.body["messages"])
    assert request.body["messages"] == served_pack("medicine").direct_messages(SCURVY)

    # One re-draft, sampled and stricter than the first draft, which had the serving anti-loop rules.
    (_, first), (_, second) = weak.calls
    assert first.stop_after_line == prompts.DRAFT_ANSWER_LABEL and first.repetition_penalty == DRAFT_REPETITION_PENALTY
    assert first.no_repeat_ngram_size > 0
    assert second.temperature > 0 and second.repetition_penalty == REDRAFT_REPETITION_PENALTY and second.seed is not None

    # What happened is on screen and in the log.
    assert last.snapshot.stages[WEAK].info[REDRAFTED] and last.snapshot.stages[COLLAB].info[FALLBACK] == "loop"
    table = stage_table(last.snapshot)
    assert "fallback: loop" in table and "not used" in table
    row = service.store.get_interaction(last.interaction_id)
    assert row.status == "fallback:loop"
    assert row.final_answer == STRONG_ALONE_ANSWER and "Vibrio" in row.weak_draft  # the bad draft stays inspectable


def test_a_good_redraft_is_refined_and_leaked_scaffolding_is_stripped(tmp_path: Path):
    weak = ScriptedBackend([LIVE_LOOP, GOOD])
    with serve_openai(reply=copying_strong) as server:
        service, last = ask(tmp_path, weak, server)
    [request] = server.requests
    notes = NOTES.search(request.body["messages"][-1]["content"]).group(1)
    assert notes == background_only(GOOD)  # the strong model read the second draft's background (notes: background)
    final = last.snapshot.stages[COLLAB].text
    assert not final.lower().startswith(("the specialist", "the correct answer"))
    assert FALLBACK not in last.snapshot.stages[COLLAB].info
    assert "loop: re-drafted" in stage_table(last.snapshot)
    assert service.store.get_interaction(last.interaction_id).status == "redrafted:loop"


def test_a_good_first_draft_is_refined_once_and_ends_after_its_answer_line(tmp_path: Path):
    weak = ScriptedBackend([GOOD + "\nBackground: and then it went on and on"])
    with serve_openai(reply=copying_strong) as server:
        service, last = ask(tmp_path, weak, server)
    assert len(weak.calls) == 1
    assert last.snapshot.stages[WEAK].text == GOOD  # cut after the "Draft answer:" line
    assert service.store.get_interaction(last.interaction_id).status == "ok"


@pytest.mark.parametrize("draft, reason", [("", "empty"), (f"Background: {SCURVY}\nDraft answer: {SCURVY}", "echo")])
def test_empty_and_echo_drafts_fall_back_too(tmp_path: Path, draft: str, reason: str):
    with serve_openai(reply=copying_strong) as server:
        service, last = ask(tmp_path, ScriptedBackend([draft]), server)
    assert last.snapshot.stages[COLLAB].text == STRONG_ALONE_ANSWER
    assert service.store.get_interaction(last.interaction_id).status == f"fallback:{reason}"


def test_without_a_specialist_the_weak_model_never_drafts_and_the_strong_model_answers_alone(tmp_path: Path):
    weak = ScriptedBackend([LIVE_LOOP])
    with serve_openai(reply=copying_strong) as server:
        service, last = ask(tmp_path, weak, server, drafts="specialist")
    assert weak.calls == []  # no adapter for medicine: no draft, and no time spent on one
    [request] = server.requests
    assert request.body["messages"] == served_pack("medicine").direct_messages(SCURVY)
    assert last.snapshot.stages[COLLAB].text == STRONG_ALONE_ANSWER
    assert last.snapshot.stages[WEAK].status == "skipped"
    assert "no specialist adapter for this domain yet" in stage_table(last.snapshot)
    # votes on this answer must not become preference pairs about a draft
    assert service.store.get_interaction(last.interaction_id).status == f"fallback:{NO_SPECIALIST}"


def test_once_an_adapter_is_active_for_the_pack_the_weak_model_drafts(tmp_path: Path, tiny_adapters):
    from cowest_app.loop.registry import AdapterRegistry

    registry = AdapterRegistry(AppConfig(data_dir=tmp_path).pack_adapters_dir("medicine"))
    registry.import_adapter(tiny_adapters["v1"])  # active once imported, as a promotion leaves it
    weak = ScriptedBackend([GOOD])
    with serve_openai(reply=copying_strong) as server:
        service, last = ask(tmp_path, weak, server, drafts="specialist")
    assert len(weak.calls) == 1 and last.snapshot.stages[WEAK].text == GOOD
    assert service.store.get_interaction(last.interaction_id).status == "ok"


@pytest.mark.parametrize("status, reusable", [
    ("ok", True), ("fallback:loop", True), ("redrafted:echo", True),
    ("weak_draft_failed", False), ("cancelled", False),
])
def test_questions_of_fallback_runs_stay_available_for_feedback_collection(status, reusable):
    from cowest_app.core.store import answered

    assert answered(status) is reusable
