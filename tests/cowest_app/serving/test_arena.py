"""The arena: two weak-model versions of one pack, refined by the same strong model, voted on blind."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cowest_app.config import AppConfig
from cowest_app.core.prompts import InputError
from cowest_app.core.store import LogStore
from cowest_app.models.base import AdapterSlot
from cowest_app.models.local import TransformersBackend
from cowest_app.serving.arena import BASE, Arena
from cowest_app.serving.service import CollabService
from tests.conftest import make_lora_adapter


@pytest.fixture(scope="module")
def weak(tiny_model_dir: Path, tiny_adapters) -> TransformersBackend:
    return TransformersBackend(str(tiny_model_dir), adapters={"general": AdapterSlot(str(tiny_adapters["v1"]), "v1")})


@pytest.fixture
def service(tmp_path: Path, weak, tiny_model_dir: Path) -> CollabService:
    config = AppConfig(data_dir=tmp_path, weak_max_new_tokens=8, strong_max_new_tokens=8)
    return CollabService(config, weak, TransformersBackend(str(tiny_model_dir)), LogStore(config.db_path))


def play(arena: Arena, question: str = "Why is the sky blue?", session: str = "s1"):
    updates = list(arena.run(question, "general", session_id=session))
    assert all(u.round_id is None for u in updates[:-1]) and updates[-1].round_id
    return updates[-1]


def test_both_versions_answer_and_the_vote_becomes_a_human_pair(service: CollabService):
    arena = Arena(service, random.Random(3))
    last = play(arena)
    adapters = {side: snap.stages["weak_draft"].info["adapter_version"] for side, snap in last.snapshots.items()}
    assert sorted(adapters.values()) == ["base", "v1"]  # one side each, in a random order
    verdict = arena.vote(last.round_id, "B", session_id="s1")
    assert verdict.versions == adapters and verdict.winner == "B" and verdict.pair_id

    [pair] = list(service.store.iter_pairs(trainable_only=False))
    assert (pair.evaluator, pair.domain, pair.question, pair.margin) == ("human", "general", "Why is the sky blue?", 1.0)
    assert pair.chosen == last.snapshots["B"].stages["weak_draft"].text.strip()
    assert pair.rejected == last.snapshots["A"].stages["weak_draft"].text.strip()
    assert pair.details["source"] == "arena" and pair.details["shown_as"] == adapters
    assert (pair.details["winner_version"], pair.details["loser_version"]) == (adapters["B"], adapters["A"])
    assert pair.adapter_version == adapters["B"] and pair.prompt[-1]["content"].count("Why is the sky blue?")
    # The vote is feedback on both logged runs: +1 the winner, -1 the loser.
    winner, loser = pair.interaction_ids
    assert [f.rating for f in service.store.feedback_for(winner)] == [1]
    assert [f.rating for f in service.store.feedback_for(loser)] == [-1]
    assert {service.store.get_interaction(i).adapter_version for i in pair.interaction_ids} == {"v1", BASE}


def test_votes_are_checked(service: CollabService):
    arena = Arena(service, random.Random(0))
    last = play(arena)
    with pytest.raises(InputError, match="Vote for A or B"):
        arena.vote(last.round_id, "C", session_id="s1")
    with pytest.raises(InputError, match="another session"):
        arena.vote(last.round_id, "A", session_id="intruder")
    arena.vote(last.round_id, "A", session_id="s1")
    with pytest.raises(InputError, match="one vote"):
        arena.vote(last.round_id, "A", session_id="s1")
    with pytest.raises(InputError, match="Nothing to vote on"):
        arena.vote(["not", "an", "id"], "A", session_id="s1")


def test_a_pack_without_an_adapter_has_nothing_to_compare(service: CollabService):
    with pytest.raises(InputError, match="no trained adapter yet"):
        list(Arena(service).run("Is lying wrong?", "ethics"))
    with pytest.raises(InputError, match="type a question"):
        list(Arena(service).run("  ", "general"))
    assert list(service.store.iter_records()) == []  # refused before any work


def test_the_active_version_meets_its_previous_one(tmp_path: Path, tiny_model_dir: Path):
    """With v1 and v2 registered and v2 active, a round compares v2 with v1 (loaded on first use)."""
    from cowest_app.loop.registry import AdapterRegistry, AdapterVersion

    config = AppConfig(data_dir=tmp_path, weak_max_new_tokens=8, strong_max_new_tokens=8)
    registry = AdapterRegistry(config.pack_adapters_dir("general"))
    for seed, version in enumerate(("v1", "v2"), start=1):
        staged = make_lora_adapter(tiny_model_dir, registry.staging_dir(version), seed=seed)
        registry.register(staged, AdapterVersion(version=version, status="candidate", base_model=str(tiny_model_dir)))
    registry.promote("v2")
    weak = TransformersBackend(str(tiny_model_dir),
                               adapters={"general": AdapterSlot(str(registry.verified_path("v2")), "v2")})
    service = CollabService(config, weak, weak, LogStore(config.db_path))
    arena = Arena(service, random.Random(1))
    assert [c.version for c in arena.contenders("general")] == ["v2", "v1"]
    assert weak.adapter_versions()["general@v1"] == "v1"
    assert [c.version for c in arena.contenders("general", "base")] == ["v2", BASE]
    last = play(arena)
    assert sorted(s.stages["weak_draft"].info["adapter_version"] for s in last.snapshots.values()) == ["v1", "v2"]
    verdict = arena.vote(last.round_id, "A", session_id="s1")
    [pair] = list(service.store.iter_pairs(trainable_only=False))
    assert {pair.details["winner_version"], pair.details["loser_version"]} == {"v1", "v2"} == set(verdict.versions.values())
    with pytest.raises(InputError, match="Compare against"):
        arena.contenders("general", "v0")
