"""The general reference set (packs/general): loads as a pack, well formed, reproducible."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

from cowest_app.domains.packs import format_item, load_pack

GENERAL = Path(__file__).resolve().parents[3] / "packs" / "general"


@pytest.fixture(scope="module")
def pack():
    return load_pack(GENERAL)


def test_loads_as_a_multiple_choice_pack(pack):
    assert (pack.name, pack.task_type, pack.metric) == ("general", "multiple_choice", "accuracy")
    assert len(pack.test) >= 110 and len(pack.train) >= 12
    assert {kind for kind in ("weak", "strong", "direct", "rag")} <= set(pack.prompts)


def test_items_are_four_option_questions_with_answers_spread_over_the_letters(pack):
    for split in (pack.train, pack.test):
        for item in split:
            assert item.options is not None and len(item.options) == 4 and len(set(item.options)) == 4
            assert item.answer in "ABCD" and item.kind in ("recall", "reasoning")
    letters = Counter(item.answer for item in pack.test)
    assert set(letters) == set("ABCD") and min(letters.values()) >= len(pack.test) // 5
    assert min(Counter(item.kind for item in pack.test).values()) >= 30


def test_ids_and_questions_are_unique_and_train_and_test_do_not_overlap(pack):
    items = pack.train + pack.test
    assert len({i.id for i in items}) == len(items)
    assert len({i.question for i in items}) == len(items)


def test_the_strong_prompt_offers_notes_and_does_not_name_a_helper(pack):
    system, user = (m["content"].lower() for m in pack.strong_messages(format_item(pack.test[0]), "Some notes."))
    assert "some notes." in user and "ignore" in system
    assert not any(word in system + user for word in ("specialist", "colleague", "draft"))


def test_the_builder_reproduces_the_committed_files(tmp_path: Path):
    spec = importlib.util.spec_from_file_location("general_build_pack", GENERAL / "build_pack.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(tmp_path)
    for name in ("test.jsonl", "train.jsonl"):
        assert (tmp_path / name).read_text(encoding="utf-8") == (GENERAL / name).read_text(encoding="utf-8")
