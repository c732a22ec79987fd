"""A fresh install serves the shipped pack with the adapter its pipeline trained (slow: the packaged SmolLM2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gradio_client import Client

from cowest_app.core.store import LogStore
from tests.system.app_process import AppProcess

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "packs" / "saltmarsh-formulary"


@pytest.mark.slow
def test_a_shipped_pack_question_is_drafted_by_its_shipped_adapter(tmp_path: Path, smollm2_dir: Path) -> None:
    question = json.loads((PACK / "test.jsonl").read_text().splitlines()[0])["question"]
    env = {
        "COWEST_PROFILE": "fast",  # SmolLM2 in both roles: the weak one with the pack's adapter
        "COWEST_DATA_DIR": str(tmp_path / "data"),
        "COWEST_WEAK_MAX_NEW_TOKENS": "96",
        "COWEST_STRONG_MAX_NEW_TOKENS": "16",
        "COWEST_TRAIN_EVERY_MINUTES": "0",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
    }
    app = AppProcess.start(env, tmp_path / "server.log")
    try:
        client = Client(app.url, verbose=False)
        # No pack named: the default selection, the shipped pack.
        weak_draft, final, *_ = client.predict(question, "saltmarsh-formulary", False, api_name="/ask")
    finally:
        app.stop()
    [row] = list(LogStore(tmp_path / "data" / "cowest.sqlite3").iter_records())
    assert (row["domain"], row["adapter_version"], row["question"]) == ("saltmarsh-formulary", "v1", question)
    assert weak_draft.startswith("Background:") and final
    # The draft copies formulary passages it was shown: it names Saltmarsh codes, drugs or wards.
    corpus = " ".join(p.read_text() for p in (PACK / "corpus").glob("*.md"))
    background = weak_draft.split("Draft answer:")[0].removeprefix("Background:").strip()
    assert background and background.split(".")[0] in corpus
