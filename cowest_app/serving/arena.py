"""Compare versions (the arena): two weak-model versions answer one question side by side.

The two are a pack's active adapter version and either its previous version
(loaded into a slot of its own on first use) or the bare base model.

Each side drafts with its own adapter version and the same strong model refines
its draft, so the two final answers differ only by the weak model's version.
The sides are shown as "A" and "B" in random order; which version wrote which
is revealed only after the vote. The vote is logged as feedback on both runs
(+1 the winner, -1 the loser) and stored as a human preference pair (the
winner's draft chosen over the loser's) whose details say it came from the
arena, which versions met and how they were shown.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from cowest_app.core import prompts
from cowest_app.core.store import Feedback, PreferencePair
from cowest_app.serving.pipeline import COLLAB, FALLBACK, WEAK, Snapshot

if TYPE_CHECKING:
    from cowest_app.serving.service import CollabService

log = logging.getLogger(__name__)

SIDES = ("A", "B")
BASE = "base"
PREVIOUS = "previous"  # what a round compares the active version with: its previous version, or the base
OPPONENTS = (PREVIOUS, BASE)
# A slot no weak model has: drafting with it runs the bare base model, no adapter.
BASE_SLOT = "__arena_base__"
MAX_OPEN_ROUNDS = 1000  # rounds waiting for a vote, oldest dropped first (memory stays bounded)


@dataclass(frozen=True)
class Contender:
    version: str  # what the reveal and the pair's provenance name
    slot: str  # the weak model's adapter slot that drafts


@dataclass
class Side:
    contender: Contender
    snapshot: Snapshot | None = None
    interaction_id: str | None = None


@dataclass
class Round:
    id: str
    session_id: str | None
    pack: str
    question: str
    prompt: list[dict[str, str]]
    sides: dict[str, Side] = field(default_factory=dict)


@dataclass(frozen=True)
class ArenaUpdate:
    snapshots: dict[str, Snapshot]  # by side, "A" and "B"
    round_id: str | None = None  # set once both sides are done and logged


@dataclass(frozen=True)
class Verdict:
    winner: str
    versions: dict[str, str]  # side -> version, the reveal
    pair_id: int | None  # None when the two drafts give nothing to learn from
    note: str


class Arena:
    def __init__(self, service: "CollabService", rng: random.Random | None = None) -> None:
        self.service = service
        self.rng = rng or random.Random()
        self._rounds: dict[str, Round] = {}
        self._lock = threading.Lock()

    def contenders(self, pack: str, against: str = PREVIOUS) -> tuple[Contender, Contender]:
        """The pack's active adapter version against its previous version (`against="previous"`,
        when there is one) or the bare base model."""
        if against not in OPPONENTS:
            raise prompts.InputError(f"Compare against {' or '.join(OPPONENTS)}, not {prompts.shown(against)}.")
        active = (self.service.weak.describe().get("adapters") or {}).get(pack)
        if not active:
            raise prompts.InputError(f"The {pack} pack has no trained adapter yet, so there is only the base model: "
                                     "nothing to compare. Rate answers on the Ask tab to train one.")
        previous = self._previous(pack, active) if against == PREVIOUS else None
        return Contender(active, pack), previous or Contender(BASE, BASE_SLOT)

    def _previous(self, pack: str, active: str) -> Contender | None:
        """The newest usable version older than the active one, loaded into its own slot on first use."""
        from cowest_app.loop.registry import AdapterRegistry, RegistryError, version_number

        registry = AdapterRegistry(self.service.config.pack_adapters_dir(pack))
        try:
            older = [v for v in registry.versions() if v.status != "failed" and v.number < version_number(active)]
        except (RegistryError, ValueError):  # an adapter not from the registry (COWEST_WEAK_ADAPTER)
            return None
        swap = getattr(self.service.weak, "swap_adapter", None)
        if not older or swap is None:
            return None
        version = older[-1].version
        slot = f"{pack}@{version}"
        if slot not in (self.service.weak.describe().get("adapters") or {}):
            try:  # once per version: the weak model is rebuilt with one more adapter slot
                swap(str(registry.verified_path(version)), version, slot)
            except Exception as exc:  # a damaged old version must not break the comparison
                log.error("arena: cannot load %s of %s, comparing with the base model: %s", version, pack, exc)
                return None
        return Contender(version, slot)

    def run(self, question: Any, pack_name: Any, session_id: str | None = None,
            against: str = PREVIOUS) -> Iterator[ArenaUpdate]:
        """Both sides, A then B, streamed; the last update carries the round id to vote on."""
        service = self.service
        pack = service.get_pack(pack_name)
        text = prompts.validate_question(question, service.config.max_question_chars)
        pair = list(self.contenders(pack.name, against))
        service._throttle(service.ask_limit, service.global_ask_limit, session_id, "questions")
        self.rng.shuffle(pair)  # anonymised: the order says nothing about which is which
        prompt_set = pack.prompt_set(grounded=pack.retrieval_passages > 0)
        rnd = Round(uuid.uuid4().hex, session_id, pack.name, text, prompt_set.draft(text),
                    {side: Side(c) for side, c in zip(SIDES, pair)})
        for name, side in rnd.sides.items():
            for snap in service.pipeline.run(prompt_set, text, adapter=side.contender.slot,
                                             weak_opts=service.weak_options(pack),
                                             strong_opts=service.strong_options(pack)):
                side.snapshot = snap
                if snap.done:
                    side.interaction_id = service._log(pack.name, text, snap, session_id, "ok")
                yield ArenaUpdate(self._snapshots(rnd))
        self._keep(rnd)
        yield ArenaUpdate(self._snapshots(rnd), rnd.id)

    @staticmethod
    def _snapshots(rnd: Round) -> dict[str, Snapshot]:
        return {name: side.snapshot for name, side in rnd.sides.items() if side.snapshot is not None}

    def _keep(self, rnd: Round) -> None:
        with self._lock:
            self._rounds[rnd.id] = rnd
            while len(self._rounds) > MAX_OPEN_ROUNDS:
                self._rounds.pop(next(iter(self._rounds)))

    def vote(self, round_id: Any, winner: Any, session_id: str | None = None) -> Verdict:
        """Record which side won; reveals the versions. Each round takes one vote."""
        if winner not in SIDES:
            raise prompts.InputError(f"Vote for A or B, not {prompts.shown(winner)}.")
        rnd = self._take(round_id, session_id)
        won, lost = rnd.sides[winner], rnd.sides[SIDES[1 - SIDES.index(winner)]]
        for side, rating in ((won, 1), (lost, -1)):
            self.service.store.log_feedback(Feedback(side.interaction_id, rating=rating, session_id=session_id))
        pair_id, note = self._store_pair(rnd, winner, won, lost)
        log.info("arena vote: %s beat %s on %s (pair %s)", won.contender.version, lost.contender.version,
                 rnd.pack, pair_id)
        versions = {name: side.contender.version for name, side in rnd.sides.items()}
        return Verdict(winner, versions, pair_id, note)

    def _take(self, round_id: Any, session_id: str | None) -> Round:
        with self._lock:
            rnd = self._rounds.get(round_id) if isinstance(round_id, str) else None
            if rnd is None:
                raise prompts.InputError("Nothing to vote on: ask a question in Compare versions first "
                                         "(each comparison takes one vote).")
            if rnd.session_id is not None and rnd.session_id != session_id:
                raise prompts.InputError("This comparison belongs to another session.")
            return self._rounds.pop(round_id)

    def _store_pair(self, rnd: Round, winner: str, won: Side, lost: Side) -> tuple[int | None, str]:
        chosen, rejected = (_draft(s) for s in (won, lost))
        if not chosen or not rejected or chosen == rejected:
            return None, "The two drafts are the same (or one is empty): vote logged, no preference pair stored."
        # A side whose draft was not used (the strong model answered alone) was not judged on its draft.
        fell_back = [s.contender.version for s in (won, lost) if _fell_back(s)]
        info = _collab_info(won)
        pair = PreferencePair(
            domain=rnd.pack, question=rnd.question, prompt=rnd.prompt, chosen=chosen, rejected=rejected,
            chosen_score=1.0, rejected_score=0.0, margin=1.0, evaluator="human", confidence=1.0,
            trainable=not fell_back, interaction_ids=(won.interaction_id, lost.interaction_id),
            details={"source": "arena", "round": rnd.id, "winner_version": won.contender.version,
                     "loser_version": lost.contender.version, "winner_shown_as": winner,
                     "shown_as": {name: s.contender.version for name, s in rnd.sides.items()},
                     "drafts_not_used": fell_back, "rejected_adapter_version": lost.contender.version},
            weak_model=_weak_info(won).get("model"), strong_model=info.get("model"),
            adapter_version=won.contender.version,
        )
        pair_id = self.service.store.log_pair(pair)
        note = f"Stored as human preference pair #{pair_id}"
        if fell_back:
            note += f" (not trainable: the draft of {', '.join(fell_back)} was not used)"
        return pair_id, note + "."


def _draft(side: Side) -> str:
    return side.snapshot.stages[WEAK].text.strip() if side.snapshot else ""


def _weak_info(side: Side) -> dict[str, Any]:
    return dict(side.snapshot.stages[WEAK].info) if side.snapshot else {}


def _collab_info(side: Side) -> dict[str, Any]:
    return dict(side.snapshot.stages[COLLAB].info) if side.snapshot else {}


def _fell_back(side: Side) -> bool:
    return bool(_collab_info(side).get(FALLBACK))
