"""The packs that stand for the app's domain presets (general, medicine, ethics, counterfactual) load and name themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from cowest_app.domains.packs import format_item, load_pack

PACKS = Path(__file__).resolve().parents[3] / "packs"


@pytest.mark.parametrize("name", ["general", "medicine", "ethics", "counterfactual"])
def test_preset_pack_loads_with_title_examples_and_notes_prompts(name: str):
    pack = load_pack(PACKS / name)
    assert (pack.name, pack.task_type, pack.metric) == (name, "multiple_choice", "accuracy")
    assert pack.title.strip() and len(pack.examples) >= 1
    assert pack.train and pack.test
    for item in pack.train + pack.test:
        assert item.options is not None and len(item.options) == 4 and item.answer in "ABCD"
    strong = pack.prompts["strong"]
    assert "{draft}" in strong.user and "never mention the notes" in strong.system.lower()
    assert "Background:" in pack.prompts["weak"].user
    system, user = (m["content"] for m in pack.strong_messages(format_item(pack.test[0]), "Some notes."))
    assert "Some notes." in user and "{draft}" not in user
