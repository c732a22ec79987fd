from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path

import pytest

from cowest_app.domains import pack_sources
from cowest_app.core.feedback import score_with_reference
from cowest_app.domains.packs import PackError, PackItem

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "public"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines() if line.strip()]


def test_ifqa_rows_map_to_short_answers():
    items = [pack_sources.ifqa_item(r, i, "dev") for i, r in enumerate(rows("ifqa"))]
    assert [i.id for i in items] == ["ifqa-dev-0", "ifqa-dev-1", "ifqa-dev-2"]
    assert items[0].question.startswith("If the village clock tower") and items[0].options is None
    assert items[0].answer == ("1892",) and items[0].reference == "1892"
    assert items[1].reference == ("25 minutes", "twenty-five minutes")
    assert score_with_reference("It would take twenty-five minutes.", items[1].reference, "short_answer") == 1.0


def test_ifqa_accepts_other_layouts():
    single = pack_sources.ifqa_item({"id": "x7", "question": "If so?", "answer": "then this"})
    assert (single.id, single.answer) == ("ifqa-train-x7", ("then this",))
    squad = pack_sources.ifqa_item({"question": "If so?", "answers": {"text": ["a", "b"]}}, 4)
    assert (squad.id, squad.answer) == ("ifqa-train-4", ("a", "b"))
    with pytest.raises(PackError, match="answer"):
        pack_sources.ifqa_item({"idx": 1, "question": "If so?", "answers": []})


def test_medmcqa_rows_map_to_four_option_items():
    mapped = [pack_sources.medmcqa_item(r, i) for i, r in enumerate(rows("medmcqa")[:3])]
    first, second, unlabelled = mapped
    assert first == PackItem("0a1b2c3d-0001", rows("medmcqa")[0]["question"], "C",
                             ("Alphase", "Betase", "Gammase", "Deltase"))
    assert first.reference == 2 and second.answer == "A"
    assert unlabelled is None  # cop = -1: the public test split hides answers
    assert score_with_reference("Answer: C", first.reference, "multiple_choice", first.options) == 1.0
    with pytest.raises(PackError, match="question"):
        pack_sources.medmcqa_item(rows("medmcqa")[3])


def test_ethics_commonsense_rows_map_to_labels():
    items = [pack_sources.ethics_commonsense_item(r, i, "test") for i, r in enumerate(rows("ethics_commonsense"))]
    assert [i.answer for i in items] == ["acceptable", "unacceptable", "acceptable"]
    assert items[1].id == "ethics-commonsense-test-1" and items[1].question.startswith("I read my sister's diary")
    assert score_with_reference("Verdict: unacceptable", items[1].reference, "label", pack_sources.ETHICS_LABELS) == 1.0
    with pytest.raises(PackError, match="0 or 1"):
        pack_sources.ethics_commonsense_item({"label": 2, "input": "x"})


def test_map_rows_skips_unanswered_and_malformed_rows(caplog):
    with caplog.at_level(logging.WARNING):
        items = pack_sources.map_rows("medmcqa", rows("medmcqa"), "validation")
    assert [i.id for i in items] == ["0a1b2c3d-0001", "0a1b2c3d-0002"]
    assert "skipped 1 malformed rows" in caplog.text
    assert len(pack_sources.map_rows("ethics_commonsense", rows("ethics_commonsense"), "train", limit=2)) == 2
    with pytest.raises(ValueError, match="unknown public dataset"):
        pack_sources.map_rows("squad", [], "train")


def test_sources_describe_their_packs():
    assert pack_sources.SOURCES["medmcqa"].task_type == "multiple_choice"
    assert pack_sources.SOURCES["ethics_commonsense"].labels == ("acceptable", "unacceptable")
    assert pack_sources.SOURCES["ifqa"].metric == "contains_f1"
    assert {s.domain for s in pack_sources.SOURCES.values()} == {"counterfactual", "medicine", "ethics"}


@pytest.fixture
def fake_datasets(monkeypatch):
    """`datasets.load_dataset` replaced by the fixtures (the Hub is not reachable in tests)."""
    calls: list[tuple[tuple, dict]] = []
    files = {"json": "ifqa", "openlifescienceai/medmcqa": "medmcqa", "hendrycks/ethics": "ethics_commonsense"}

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return iter(rows(files[args[0]]))

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_load_public_calls_datasets_with_the_source_layout(fake_datasets):
    items = pack_sources.load_public("ethics_commonsense", "validation", limit=2)
    assert [i.answer for i in items] == ["acceptable", "unacceptable"]
    assert fake_datasets[-1] == (("hendrycks/ethics", "commonsense"), {"split": "validation", "streaming": True})
    assert len(pack_sources.load_public("medmcqa", "train")) == 2
    assert fake_datasets[-1] == (("openlifescienceai/medmcqa",), {"split": "train", "streaming": False})
    ifqa = pack_sources.load_public("ifqa", "dev", limit=5)
    assert len(ifqa) == 3 and fake_datasets[-1][1]["data_files"]["dev"].endswith("/full_split/dev.json")
    with pytest.raises(ValueError, match="not 'validation'"):
        pack_sources.load_public("ifqa", "validation")


@pytest.mark.parametrize("name", sorted(pack_sources.SOURCES))
def test_public_rows_written_as_a_pack_load_back_the_same(name: str, tmp_path: Path) -> None:
    items = pack_sources.map_rows(name, rows(name), "train")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text("# Domain notes\n\nOne fact per line.\n", encoding="utf-8")
    pack = pack_sources.write_pack(name, tmp_path / "pack", items[:2], items[2:] or items[:1], docs)
    assert pack.task_type == pack_sources.SOURCES[name].task_type
    assert list(pack.train) == items[:2]  # every field survives the round trip through JSONL
    assert [p.name for p in pack.corpus_paths] == ["notes.md"]
    assert "{draft}" in (tmp_path / "pack" / "domain.yaml").read_text()


def test_write_pack_needs_domain_documents(tmp_path: Path) -> None:
    items = pack_sources.map_rows("medmcqa", rows("medmcqa"), "train")
    with pytest.raises(PackError, match="domain document"):
        pack_sources.write_pack("medmcqa", tmp_path / "pack", items, items, tmp_path / "nothing-here")
