"""The real app: `python app.py` on 127.0.0.1, driven through gradio_client.

Packaged SmolLM2 in both roles (the `fast` profile), NF4 weak model, short
token budgets. Ask, get both stages, rate, export, then find the rows in SQLite.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gradio_client import Client

ROOT = Path(__file__).parents[1]
ADMIN_SECRET = "admin-secret-for-tests"
HF_TOKEN = "hf_token_that_must_never_leak"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, smollm2_dir):
    data_dir = tmp_path_factory.mktemp("app-data")
    port = free_port()
    env = {
        **os.environ,
        "COWEST_PROFILE": "fast",
        "COWEST_DATA_DIR": str(data_dir),
        "COWEST_PORT": str(port),
        "COWEST_WEAK_MAX_NEW_TOKENS": "24",
        "COWEST_STRONG_MAX_NEW_TOKENS": "24",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "COWEST_ADMIN_SECRET": ADMIN_SECRET,
        "HF_TOKEN": HF_TOKEN,
        "COWEST_TRAIN_EVERY_MINUTES": "0",
    }
    log_path = data_dir / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"app exited early:\n{log_path.read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(1)
        else:
            proc.kill()
            pytest.fail(f"app did not start:\n{log_path.read_text()[-3000:]}")
        try:
            yield url, data_dir, log_path
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_ask_rate_export_and_find_rows(app_server):
    url, data_dir, log_path = app_server
    client = Client(url, verbose=False)
    # the shipped pack: its weak model drafts (from retrieved passages, through its shipped adapter)
    job = client.submit("What is the Saltmarsh maximum daily dose of Altrovane?", "saltmarsh-formulary", False,
                        api_name="/ask")
    outputs = list(job)  # every streamed update
    weak, final, weak_alone, strong_alone, stages, interaction_id = job.result()
    assert len(outputs) > 2, "both stages should stream"
    assert weak.strip() and final.strip() and interaction_id
    assert "Weak draft" in stages and "packaged:smollm2-135m-instruct" in stages
    message, counts = client.predict(interaction_id, "collab", "clear and correct", api_name="/rate_up")
    assert "recorded" in message and "**1** feedback" in counts

    with sqlite3.connect(data_dir / "cowest.sqlite3") as conn:
        conn.row_factory = sqlite3.Row
        [row] = conn.execute("SELECT * FROM interactions").fetchall()
        [fb] = conn.execute("SELECT * FROM feedback").fetchall()
    assert (row["id"], row["question"], row["domain"]) == (
        interaction_id, "What is the Saltmarsh maximum daily dose of Altrovane?", "saltmarsh-formulary")
    assert row["weak_draft"] == weak and row["final_answer"] == final and row["status"] == "ok"
    assert (fb["interaction_id"], fb["rating"], fb["best"], fb["comment"]) == (interaction_id, 1, "collab", "clear and correct")

    exported = client.predict("jsonl", api_name="/export")
    records = [json.loads(line) for line in Path(exported).read_text().splitlines()]
    assert records[0]["id"] == interaction_id and records[0]["feedback"][0]["rating"] == 1

    # NF4 in use, and its footprint reported in the log.
    assert "NF4 4-bit" in log_path.read_text()


def test_another_session_gets_none_of_a_sessions_text_back(app_server):
    """Session B exports (its own rows), and without the admin secret cannot export everyone's:
    nothing of session A's question or comment comes back to it."""
    url, _, _ = app_server
    secret_question = "Is my private question 4471 leaking?"
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    *_, mine = a.predict(secret_question, "general", False, api_name="/ask")
    a.predict(mine, "collab", "private comment 4471", api_name="/rate_up")
    *_, theirs = b.predict("Is 9 prime?", "general", False, api_name="/ask")

    own = Path(b.predict("jsonl", api_name="/export")).read_text()
    assert "4471" not in own and [json.loads(line)["id"] for line in own.splitlines()] == [theirs]
    with pytest.raises(Exception, match="Wrong admin secret"):
        b.predict("jsonl", "guess", api_name="/export_all")
    everything = Path(b.predict("jsonl", ADMIN_SECRET, api_name="/export_all")).read_text()
    assert secret_question in everything and "private comment 4471" in everything  # admins see all


def test_bad_input_gets_a_clear_error_and_the_app_keeps_serving(app_server):
    url, _, _ = app_server
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="type a question"):
        client.predict("   ", "general", False, api_name="/ask")
    # Gradio rejects a value outside the dropdown before our own check runs.
    with pytest.raises(Exception, match="astrology is not in the list of choices"):
        client.predict("hi", "astrology", False, api_name="/ask")
    with pytest.raises(Exception, match="Ask a question first"):
        client.predict("", None, "", api_name="/rate_down")
    *_, interaction_id = client.predict("Is 7 prime?", "general", False, api_name="/ask")
    assert interaction_id


def test_admin_actions_are_refused_through_the_api_without_the_secret(app_server):
    url, _, _ = app_server
    client = Client(url, verbose=False)
    for api_name, args in (("/admin_start", ("nope",)), ("/admin_stop", ("",)), ("/admin_rollback_base", ("x", "general")),
                           ("/admin_retry_pushes", ("x",))):
        with pytest.raises(Exception, match="Wrong admin secret"):
            client.predict(*args, api_name=api_name)
    assert "no run in progress" in client.predict(ADMIN_SECRET, api_name="/admin_stop")
    with pytest.raises(Exception, match="Pick an adapter version"):
        client.predict(None, "general", api_name="/download_adapter")


def test_secrets_never_reach_the_page_or_the_log(app_server):
    import urllib.request

    url, _, log_path = app_server
    for path in ("", "config", "gradio_api/info"):
        with urllib.request.urlopen(url + path, timeout=30) as response:
            body = response.read().decode(errors="replace")
        assert HF_TOKEN not in body and ADMIN_SECRET not in body
    log_text = log_path.read_text()
    assert HF_TOKEN not in log_text and ADMIN_SECRET not in log_text
