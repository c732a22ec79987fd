from __future__ import annotations

from pathlib import Path

import pytest

from cowest_app.models.base import GenerationOptions
from cowest_app.models.local import TransformersBackend
from cowest_app.models.remote import InferenceClientBackend
from cowest_app.serving.pipeline import COLLAB, STRONG_ALONE, WEAK, WEAK_ALONE, CollaborationPipeline
from tests.fakes.openai_server import closed_port_url, serve_openai
from tests.served import served_pack

OPTS = GenerationOptions(max_new_tokens=12)
PROMPTS = served_pack("medicine").prompt_set()


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> TransformersBackend:
    return TransformersBackend(str(tiny_model_dir))


def run(pipeline, compare=False):
    snaps = list(pipeline.run(PROMPTS, "Which vitamin prevents scurvy?", compare))
    return snaps, snaps[-1]


def test_weak_then_strong_stream_and_strong_sees_the_draft(tiny):
    with serve_openai(reply="Vitamin C; treat with ascorbic acid.") as server:
        strong = InferenceClientBackend(model="strong-model", base_url=server.base_url)
        snaps, last = run(CollaborationPipeline(tiny, strong, OPTS, OPTS))
        assert last.done and not last.failed
        draft = last.stages[WEAK].text
        assert draft and last.stages[COLLAB].text == "Vitamin C; treat with ascorbic acid."
        # The strong request carries the question and the weak draft.
        sent = server.requests[0].body["messages"][1]["content"]
        assert "Which vitamin prevents scurvy?" in sent and draft in sent
    # Stages stream: the final answer grows over several snapshots, after the draft is done.
    growing = [s.stages[COLLAB].text for s in snaps if s.stages[COLLAB].status == "running"]
    assert len({t for t in growing if t}) > 1
    first_collab = next(i for i, s in enumerate(snaps) if s.stages[COLLAB].status != "pending")
    assert snaps[first_collab].stages[WEAK].status == "done"
    assert last.stages[WEAK].info["adapter_version"] == "base"
    assert last.stages[WEAK].ms > 0 and last.stages[COLLAB].first_token_ms is not None


def test_compare_runs_all_four_stages(tiny):
    snaps, last = run(CollaborationPipeline(tiny, tiny, OPTS, OPTS), compare=True)
    assert list(last.stages) == [WEAK, COLLAB, WEAK_ALONE, STRONG_ALONE]
    assert all(s.status == "done" and s.text for s in last.stages.values())


def test_strong_failure_keeps_the_weak_draft(tiny):
    strong = InferenceClientBackend(model="m", base_url=closed_port_url(), timeout_s=2)
    _, last = run(CollaborationPipeline(tiny, strong, OPTS, OPTS))
    assert last.done and last.failed == [COLLAB]
    assert last.stages[WEAK].status == "done" and last.stages[WEAK].text
    assert "unreachable" in last.stages[COLLAB].error


def test_strong_http_error_is_reported(tiny):
    with serve_openai(fail_with_status=500, error_message="model overloaded") as server:
        strong = InferenceClientBackend(model="m", base_url=server.base_url)
        _, last = run(CollaborationPipeline(tiny, strong, OPTS, OPTS))
    assert "500" in last.stages[COLLAB].error and "model overloaded" in last.stages[COLLAB].error


class Exploding:
    def generate(self, messages, **opts):
        raise RuntimeError("boom")

    def describe(self):
        return {"model": "exploding"}


def test_weak_failure_still_gets_a_strong_answer(tiny):
    _, last = run(CollaborationPipeline(Exploding(), tiny, OPTS, OPTS))
    assert last.failed == [WEAK] and "boom" in last.stages[WEAK].error
    assert last.stages[COLLAB].status == "done" and last.stages[COLLAB].text
