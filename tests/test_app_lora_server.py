"""The real app (`python app.py`) drafting through a LoRA-serving weak server, via gradio_client.

`COWEST_WEAK_BACKEND=lora-server` points the weak role at a vLLM stand-in
(tests/fakes/openai_server.py with `serve_loras`); the strong role is a chat endpoint on
the same stand-in, so no weights load and the app starts in seconds. At start the app
loads the shipped pack's adapter on the server as `saltmarsh-formulary-v1`; a question on
that pack drafts with that adapter name, and one on a pack without an adapter with the
bare base model, and SQLite records which adapter version answered.
"""

from __future__ import annotations

import sqlite3

import pytest
from gradio_client import Client

from tests.fakes.openai_server import serve_openai
from tests.served import served_pack
from tests.system.app_process import AppProcess

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
SHIPPED = "saltmarsh-formulary"


def reply(messages: list[dict]) -> str:
    return "The formulary lists 5 mg twice daily."


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("lora-app")
    with serve_openai(reply=reply, model=BASE, serve_loras=True) as server:
        env = {"COWEST_PROFILE": "fast", "COWEST_DATA_DIR": str(data_dir), "COWEST_WEAK_BACKEND": "lora-server",
               "COWEST_WEAK_BASE_URL": server.base_url, "COWEST_WEAK_MODEL": BASE,
               "COWEST_STRONG_BACKEND": "inference-client", "COWEST_STRONG_BASE_URL": server.base_url,
               "COWEST_STRONG_MODEL": BASE, "COWEST_WEAK_MAX_NEW_TOKENS": "16", "COWEST_STRONG_MAX_NEW_TOKENS": "16",
               "COWEST_PACKS": f"packs/{SHIPPED},packs/general", "COWEST_TRAIN_EVERY_MINUTES": "0",
               "GRADIO_ANALYTICS_ENABLED": "False",
               # Both models are remote (127.0.0.1), which the client refuses to reach while offline.
               "HF_HUB_OFFLINE": "0"}
        app = AppProcess.start(env, data_dir / "server.log")
        try:
            yield app.url, data_dir, server
        finally:
            app.stop()


def drafted_with(server, question: str) -> set[str]:
    """The model names the weak draft requests for `question` were sent to."""
    return {r.body["model"] for r in server.requests if r.path.endswith("/chat/completions")
            and any(question in m.get("content", "") for m in r.body.get("messages", []))
            and r.body.get("max_tokens") == 16}


def test_each_answer_drafts_with_its_packs_adapter_and_logs_its_version(served) -> None:
    url, data_dir, server = served
    assert f"{SHIPPED}-v1" in server.loras  # loaded on the server at start, by the app's naming
    client = Client(url, verbose=False)
    question = "What is the dose of the study drug?"
    weak, final, *_, interaction_id = client.predict(question, SHIPPED, False, api_name="/ask")
    assert weak == final == reply([])
    *_, general_id = client.predict("Is 7 prime?", "general", False, api_name="/ask")

    assert f"{SHIPPED}-v1" in drafted_with(server, question)  # the adapter named per request
    # general has no adapter (drafts: specialist): one request, the strong model's answer to the direct prompt
    [alone] = [r.body for r in server.requests if r.path.endswith("/chat/completions")
               and any("Is 7 prime?" in m.get("content", "") for m in r.body.get("messages", []))]
    assert alone["messages"] == served_pack("general").direct_messages("Is 7 prime?")
    with sqlite3.connect(data_dir / "cowest.sqlite3") as conn:
        versions = dict(conn.execute("SELECT id, adapter_version FROM interactions").fetchall())
        models = {row[0] for row in conn.execute("SELECT weak_model FROM interactions")}
    assert versions == {interaction_id: "v1", general_id: None}
    assert models == {BASE}
