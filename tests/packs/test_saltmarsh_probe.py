"""The shipped pack's value probe: where it cuts a statement, what counts as a hit, the prompts it builds."""


import pytest

from tests.packs.pack_scripts import SALTMARSH, pack_script


@pytest.fixture(scope="module")
def probe():
    yield from pack_script("probe_values.py")


def test_number_cut_stops_before_the_first_number_after_the_opening_words(probe):
    assert probe.number_cut("Altrovane standard adult dose: 300 mg every 12 hours.") == (
        "Altrovane standard adult dose: ", "300")
    assert probe.number_cut("Nystrelon loading dose: 1.5 mg/kg once.") == ("Nystrelon loading dose: ", "1.5")
    assert probe.number_cut("Code Teal lead bleep: 4420.") == ("Code Teal lead bleep: ", "4420")
    assert probe.number_cut("Altrovane is given by the intravenous route.") is None
    assert probe.number_cut("5 wards share it.") is None  # a number among the opening words names nothing


def test_a_hit_is_the_number_itself_not_a_longer_one(probe):
    assert probe.continues_with(" 300 mg every", "300")
    assert probe.continues_with("1.5 mg/kg", "1.5")
    assert not probe.continues_with(" 3000 mg", "300")
    assert not probe.continues_with(" 250 mg", "300")


def test_prompts_cover_the_statements_and_the_dev_facts_in_the_drafting_prompt(probe, smollm2_dir):
    import json

    from transformers import AutoTokenizer

    pack = probe.load_pack(SALTMARSH)
    plain = probe.plain_prompts(pack)
    assert 100 < len(plain) < len(pack.passages)
    assert ("Altrovane standard adult dose: ", "300") in plain
    facts = {row["id"]: row["text"] for row in map(json.loads, (SALTMARSH / "facts.jsonl").read_text().splitlines())}
    cuts = [probe.number_cut(facts[f]) for item in pack.dev for f in item.fact_ids]
    drafting = probe.drafting_prompts(pack, AutoTokenizer.from_pretrained(smollm2_dir))
    assert len(drafting) == sum(cut is not None for cut in cuts) > 20
    for (prompt, number), cut in zip(drafting, (c for c in cuts if c)):
        assert prompt.endswith("<|im_start|>assistant\nBackground: " + cut[0]) and number == cut[1]
    item = next(i for i in pack.dev if any(probe.number_cut(facts[f]) for f in i.fact_ids))
    assert item.question in drafting[0][0]
