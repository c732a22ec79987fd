"""Poisoned feedback: one client flooding questions, votes or contradicting
ratings must not dominate what the weak model is trained on.

Three defences, each tested with literals and then together under a flood:
a per-session rate limit in the service, one vote per interaction (the asking
session's latest) where training data is derived, and a cap on any session's
share of the DPO training set.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cowest_app.core import prompts
from cowest_app.config import AppConfig
from cowest_app.core.feedback import human_pairs, interaction_vote
from cowest_app.loop.feedback_guard import cap_session_share, live_human_pairs, pair_sessions, session_shares
from cowest_app.models.local import TransformersBackend
from cowest_app.serving.ratelimit import RateLimiter, retry_text
from cowest_app.loop.registry import AdapterRegistry
from cowest_app.serving.service import CollabService, RateLimited
from cowest_app.core.store import Interaction, LogStore, PreferencePair
from cowest_app.loop.training_job import TrainingJob
from tests.served import served_pack

CAP = 0.2


# -- the rate limiter, on a clock we move by hand --------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_sliding_window() -> None:
    clock = Clock()
    limiter = RateLimiter(3, window_s=60, clock=clock)
    for _ in range(3):  # at t = 0, 10, 20 s
        assert limiter.acquire("a") is None
        clock.now += 10
    clock.now -= 10
    assert limiter.acquire("a") == 40.0  # the oldest of the three leaves the window at t = 60
    assert limiter.acquire("b") is None  # sessions are independent
    clock.now += 39.5
    assert limiter.acquire("a") == pytest.approx(0.5)  # a refused try does not count
    clock.now += 0.5
    assert limiter.acquire("a") is None  # the first event left the window
    assert limiter.acquire("a") == pytest.approx(10.0)  # the next one leaves at t = 70


def test_rate_limiter_off_and_bad_settings() -> None:
    off = RateLimiter(0)
    assert not off.enabled and all(off.acquire("x") is None for _ in range(1000))
    with pytest.raises(ValueError):
        RateLimiter(-1)
    with pytest.raises(ValueError):
        RateLimiter(1, window_s=0)
    assert retry_text(0.01) == "Try again in 1 s." and retry_text(12.2) == "Try again in 13 s."


def test_rate_limiter_forgets_idle_sessions() -> None:
    clock = Clock()
    limiter = RateLimiter(1, window_s=10, clock=clock)
    for n in range(2000):  # a client inventing a new session per request
        limiter.acquire(f"s{n}")
        clock.now += 0.1
    # Only sessions seen in the last window (plus at most one sweep's worth) stay in memory.
    assert len(limiter._events) < 1100


# -- one vote per interaction ----------------------------------------------------


@pytest.mark.parametrize("feedback, asker, vote", [
    ([{"session_id": "a", "rating": 1}] * 5, "a", 1),  # repeated: still one vote
    ([{"session_id": "a", "rating": 1}, {"session_id": "a", "rating": -1}], "a", -1),  # changed: latest wins
    ([{"session_id": "a", "rating": -1}, {"session_id": "a", "rating": 1}, {"session_id": "a", "rating": -1}], "a", -1),
    ([{"session_id": "a", "rating": 1}, {"session_id": "a", "best": "strong"}], "a", 0),  # rating and choice combine
    ([{"session_id": "a", "rating": 1}] + [{"session_id": "x", "rating": -1}] * 50, "a", 1),  # foreign votes ignored
    ([{"session_id": "x", "rating": -1}], "a", 0),  # only foreign votes: no signal
    ([{"session_id": "a", "rating": 1}, {"session_id": None, "rating": -1}], None, -1),  # sessionless: latest wins
    ([], "a", 0),
])
def test_interaction_vote(feedback, asker, vote) -> None:
    assert interaction_vote(feedback, asker) == vote


def rec(id: str, session: str | None, draft: str, feedback: list[dict], question: str = "Why is the sky blue?") -> dict:
    return {"id": id, "session_id": session, "domain": "general", "question": question, "weak_draft": draft,
            "status": "ok", "feedback": feedback}


def test_human_pairs_ignore_foreign_and_repeated_votes() -> None:
    records = [
        rec("g", "a", "Rayleigh scattering.", [{"session_id": "a", "rating": 1}] * 3 + [{"session_id": "x", "rating": -1}]),
        rec("b", "b", "The ocean.", [{"session_id": "b", "rating": 1}, {"session_id": "b", "rating": -1}]),
        # x tries to make its own draft win by voting on b's answer: ignored.
        rec("x1", "x", "Poison.", [{"session_id": "x", "rating": 1}, {"session_id": "x", "rating": 1}]),
        rec("b2", "b", "Poison too.", [{"session_id": "x", "rating": -1}]),
    ]
    pairs = human_pairs(records, {"general": served_pack("general").weak_messages})
    assert sorted(p.interaction_ids for p in pairs) == [("g", "b"), ("x1", "b")]


def pair(ids: tuple[str, ...], evaluator: str = "human", chosen: str = "good", question: str = "q?") -> PreferencePair:
    return PreferencePair(domain="general", question=question,
                          prompt=served_pack("general").weak_messages(question),
                          chosen=chosen, rejected="bad", margin=1.0, evaluator=evaluator, interaction_ids=ids)


def test_live_human_pairs_drop_stale_and_repeated() -> None:
    auto = pair(("a",), evaluator="weak_judge")
    fresh, stale, again = pair(("g", "b")), pair(("b", "g")), pair(("g", "b"), chosen="other")
    assert live_human_pairs([auto, fresh, stale, again], live_ids={("g", "b")}) == [auto, fresh]


# -- the share cap ---------------------------------------------------------------


def test_pair_sessions_and_shares() -> None:
    sessions = {"i1": "a", "i2": "b", "i3": None}
    assert pair_sessions(pair(("i1", "i2")), sessions) == {"a", "b"}
    assert pair_sessions(pair(("i3", "unknown")), sessions) == frozenset()
    assert session_shares([frozenset({"a"}), frozenset({"a", "b"}), frozenset()]) == {"a": 2 / 3, "b": 1 / 3}
    assert session_shares([]) == {}


def owned(session: str | None, n: int, start: int = 0) -> list[PreferencePair]:
    return [pair((f"{session}-{k}",), evaluator="weak_judge", chosen=f"{session}{k}") for k in range(start, start + n)]


def sessions_for(pairs: list[PreferencePair]) -> dict[str, str | None]:
    return {i: (i.split("-")[0] if not i.startswith("None") else None) for p in pairs for i in p.interaction_ids}


def test_cap_keeps_honest_history_and_trims_the_flood_newest_first() -> None:
    honest = owned("a", 2) + owned("b", 2) + owned("c", 2) + owned("d", 2)
    flood = owned("f", 50)
    pairs = honest[:4] + flood[:1] + honest[4:] + flood[1:]
    kept = cap_session_share(pairs, sessions_for(pairs), CAP)
    # f <= 0.2 * (8 + f)  ->  f <= 2; each honest session has 2/10 = 0.2.
    assert kept == honest[:4] + flood[:1] + honest[4:] + flood[1:2]


def test_cap_leaves_unattributed_pairs_and_shared_pairs_count_twice() -> None:
    reference = owned(None, 6)  # e.g. pairs from COWEST_FEEDBACK_FILE: no session
    mixed = [pair(("a-0", "b-0"))]  # a human pair across two askers counts for both
    a_only = owned("a", 3, start=1)
    pairs = reference + mixed + a_only
    kept = cap_session_share(pairs, sessions_for(pairs), 0.25)
    assert kept[:6] == reference
    owners = [pair_sessions(p, sessions_for(pairs)) for p in kept]
    assert max(session_shares(owners).values()) <= 0.25
    # 6 unattributed + a: a <= 0.25 * (6 + a) -> a <= 2, the shared pair being the first.
    assert kept == reference + mixed + a_only[:1]


@pytest.mark.parametrize("share", [1.0, 1.5])
def test_cap_off_keeps_everything(share: float) -> None:
    pairs = owned("f", 10)
    assert cap_session_share(pairs, sessions_for(pairs), share) == pairs


def test_cap_with_a_single_session_and_nothing_else_keeps_nothing() -> None:
    # One session alone would be 100% of the set; that is exactly what the cap forbids.
    pairs = owned("f", 10)
    assert cap_session_share(pairs, sessions_for(pairs), CAP) == []
    assert cap_session_share([], {}, CAP) == []
    with pytest.raises(ValueError):
        cap_session_share(pairs, {}, 0.0)


# -- the service: rate limits per session ------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> TransformersBackend:
    return TransformersBackend(str(tiny_model_dir))


def make_service(tmp_path: Path, tiny: TransformersBackend, **overrides) -> CollabService:
    config = AppConfig(data_dir=tmp_path, weak_max_new_tokens=4, strong_max_new_tokens=4, packs=("packs/general",), **overrides)
    return CollabService(config, tiny, tiny, LogStore(config.db_path))


def test_asks_over_the_limit_are_refused_clearly_and_not_logged(tmp_path: Path, tiny) -> None:
    service = make_service(tmp_path, tiny, asks_per_minute=2)
    for n in range(2):
        assert list(service.ask(f"Q{n}?", "general", session_id="flood"))[-1].interaction_id
    with pytest.raises(RateLimited, match=r"Too many questions from this session: at most 2 a minute\. Try again in \d+ s\."):
        list(service.ask("Q3?", "general", session_id="flood"))
    assert service.store.counts()["interactions"] == 2
    # Other sessions and sessionless callers (scripts, the training job) are unaffected.
    assert list(service.ask("Honest?", "general", session_id="honest"))[-1].interaction_id
    assert list(service.ask("Script?", "general"))[-1].interaction_id
    assert service.store.counts()["interactions"] == 4


def test_feedback_over_the_limit_is_refused_and_not_logged(tmp_path: Path, tiny) -> None:
    clock = Clock()
    service = make_service(tmp_path, tiny, feedback_per_minute=3)
    service.feedback_limit = RateLimiter(3, clock=clock)  # the configured limit, on a clock the test moves
    iid = list(service.ask("Q?", "general", session_id="s"))[-1].interaction_id
    for rating in ("up", "down", "up"):
        service.rate(iid, rating=rating, session_id="s")
    with pytest.raises(RateLimited, match="Too many feedback events"):
        service.rate(iid, rating="down", session_id="s")
    assert [fb.rating for fb in service.store.feedback_for(iid)] == [1, -1, 1]
    # Invalid input is refused before the limiter: it does not use up the budget.
    clock.now += 60
    with pytest.raises(prompts.InputError, match="Unknown rating"):
        service.rate(iid, rating="meh", session_id="s")
    assert service.rate(iid, rating="down", session_id="s")
    assert service.store.counts()["feedback"] == 4


def test_a_new_session_per_request_still_meets_the_global_budget(tmp_path: Path, tiny) -> None:
    service = make_service(tmp_path, tiny, asks_per_minute=2, global_asks_per_minute=3, global_feedback_per_minute=2)
    for n in range(3):  # a script that opens a fresh session for every question
        assert list(service.ask(f"Q{n}?", "general", session_id=f"fresh-{n}"))[-1].interaction_id
    with pytest.raises(RateLimited, match=r"too many questions from all users right now \(at most 3 a minute\)"):
        list(service.ask("Q4?", "general", session_id="fresh-4"))
    assert service.store.counts()["interactions"] == 3
    iid = next(service.store.iter_records())["id"]
    for n in range(2):
        service.rate(iid, rating="up", session_id=f"voter-{n}")
    with pytest.raises(RateLimited, match="too many feedback events from all users"):
        service.rate(iid, rating="up", session_id="voter-9")
    assert service.store.counts()["feedback"] == 2


# -- a flood against honest sessions, through the service and the training job -----


HONEST = ("h0", "h1", "h2", "h3", "h4")  # five: each honest session is exactly 20%


def log_answer(store: LogStore, session: str, question: str, draft: str) -> str:
    # The draft is written directly so that every interaction has a distinct one
    # (the tiny random model would give the same draft for the same question).
    return store.log_interaction(Interaction(domain="general", question=question, weak_draft=draft,
                                             final_answer=f"final: {draft}", session_id=session))


def auto_pair(store: LogStore, session: str, k: int) -> None:
    """A collaborative-feedback pair on one of `session`'s questions, as `collect` logs it."""
    question = f"{session}: other question {k}?"
    iid = log_answer(store, session, question, f"{session} draft {k}")
    store.log_pair(PreferencePair(domain="general", question=question,
                                  prompt=served_pack("general").weak_messages(question),
                                  chosen=f"{session} better {k}", rejected=f"{session} worse {k}", margin=0.5,
                                  evaluator="weak_judge", confidence=0.9, interaction_ids=(iid,)))


def honest_session(service: CollabService, session: str) -> list[str]:
    question = f"Why is the sky blue ({session})?"
    ids = []
    for n, vote in enumerate(("up", "up", "down", "down")):
        iid = log_answer(service.store, session, question, f"{session} {vote} draft {n}")
        service.rate(iid, rating=vote, session_id=session)
        ids.append(iid)
    for k in range(2):
        auto_pair(service.store, session, k)
    return ids


def flood(service: CollabService, honest_ids: list[str], answers: int = 24, questions: int = 40) -> None:
    question = "Is the moon made of cheese?"
    for n in range(answers):
        iid = log_answer(service.store, "f", question, f"flood draft {n}")
        final = "up" if n % 2 == 0 else "down"
        for vote in ("down", "up", "down", "up", final):  # contradicting itself, ending on `final`
            service.rate(iid, rating=vote, session_id="f")
    for iid in honest_ids:  # votes on other sessions' answers (ids from the public export)
        service.rate(iid, rating="down", best="strong", session_id="f")
    for k in range(questions):
        auto_pair(service.store, "f", k)


def flood_share(pairs: list[PreferencePair], sessions: dict[str, str | None]) -> float:
    owners = [pair_sessions(p, sessions) for p in pairs]
    return session_shares(owners).get("f", 0.0)


def build_training_set(service: CollabService, tmp_path: Path, share: float) -> list[PreferencePair]:
    config = service.config.with_overrides(max_session_share=share)
    job = TrainingJob(config, service, AdapterRegistry(tmp_path / f"adapters-{share}"))
    return job.training_pairs(list(service.store.iter_pairs()))


def test_a_flood_changes_the_training_set_by_at_most_the_cap(tmp_path: Path, tiny) -> None:
    # Limits off: the cap alone must hold (a patient flooder stays under any rate limit).
    service = make_service(tmp_path, tiny, asks_per_minute=0, feedback_per_minute=0, max_session_share=CAP)
    honest_ids = [i for s in HONEST for i in honest_session(service, s)]
    job = TrainingJob(service.config, service, AdapterRegistry(tmp_path / "adapters"))
    job._log_human_pairs()
    honest_only = job.training_pairs(list(service.store.iter_pairs()))
    assert len(honest_only) == 5 * (4 + 2)  # per session: 2 good x 2 bad drafts + 2 automatic pairs

    flood(service, honest_ids)
    job._log_human_pairs()
    window = list(service.store.iter_pairs())
    sessions = service.store.sessions_of(i for p in window for i in p.interaction_ids)

    uncapped = build_training_set(service, tmp_path, 1.0)
    assert flood_share(uncapped, sessions) > 0.8  # the threat is real: 12 x 12 pairs + 40 automatic ones

    capped = job.training_pairs(window)
    added = [p for p in capped if p not in honest_only]
    assert all(p in capped for p in honest_only)  # nothing honest is lost, foreign votes changed nothing
    assert len(added) / len(capped) <= CAP
    assert flood_share(capped, sessions) <= CAP
    assert max(session_shares([pair_sessions(p, sessions) for p in capped]).values()) <= CAP
    # Contradicting repeats collapse to the latest vote: no flood pair prefers a finally-down draft.
    finally_down = {f"flood draft {n}" for n in range(1, 24, 2)}
    assert not any(p.chosen in finally_down for p in capped if p.evaluator == "human")


def test_one_client_opening_a_session_per_question_is_capped_as_one(tmp_path: Path, tiny) -> None:
    service = make_service(tmp_path, tiny, max_session_share=CAP)
    for s in HONEST:
        for k in range(2):
            auto_pair(service.store, s, k)
    for k in range(30):  # every question from a fresh session, all from one address
        question = f"scripted question {k}?"
        iid = service.store.log_interaction(Interaction(domain="general", question=question, weak_draft="d",
                                                        session_id=f"fresh-{k}", client_id="one-address"))
        service.store.log_pair(PreferencePair(domain="general", question=question,
                                              prompt=served_pack("general").weak_messages(question),
                                              chosen=f"better {k}", rejected=f"worse {k}", margin=0.5,
                                              evaluator="weak_judge", confidence=0.9, interaction_ids=(iid,)))
    window = list(service.store.iter_pairs())
    kept = build_training_set(service, tmp_path, CAP)
    clients = service.store.clients_of(i for p in window for i in p.interaction_ids)
    scripted = [p for p in kept if clients.get(p.interaction_ids[0]) == "one-address"]
    assert len(scripted) / len(kept) <= CAP and len(kept) - len(scripted) == 10  # the honest pairs all stay


def test_training_cycle_reports_held_back_pairs(tmp_path: Path, tiny) -> None:
    service = make_service(tmp_path, tiny, asks_per_minute=0, feedback_per_minute=0, train_min_pairs=1000,
                           max_session_share=CAP)
    honest_ids = [i for s in HONEST for i in honest_session(service, s)]
    flood(service, honest_ids, answers=6, questions=10)
    # Collaborative feedback on the logged questions is tested elsewhere; move its
    # watermark past them so this cycle only builds the training set.
    (tmp_path / "job_state.json").write_text(json.dumps({"log_after": "9999"}))
    job = TrainingJob(service.config, service, AdapterRegistry(tmp_path / "adapters"))
    result = job.run_cycle()
    match = re.fullmatch(r"waiting for pairs: (\d+)/1000 \((\d+) of (\d+) new pairs held back: .*\)", result)
    assert match, result
    kept, held, offered = map(int, match.groups())
    # 30 honest pairs, and f <= 0.2 * (30 + f) flood pairs: 7.
    assert kept + held == offered == len(list(service.store.iter_pairs())) and kept == 37


def test_limits_and_cap_are_configured_from_the_environment() -> None:
    from cowest_app import config as cfg

    c = cfg.from_env({"COWEST_ASKS_PER_MINUTE": "5", "COWEST_FEEDBACK_PER_MINUTE": "0", "COWEST_MAX_SESSION_SHARE": "0.3"})
    assert (c.asks_per_minute, c.feedback_per_minute, c.max_session_share) == (5, 0, 0.3)
    for env, message in [({"COWEST_MAX_SESSION_SHARE": "0"}, "max_session_share"),
                         ({"COWEST_MAX_SESSION_SHARE": "1.5"}, "max_session_share"),
                         ({"COWEST_ASKS_PER_MINUTE": "-1"}, "asks_per_minute"),
                         ({"COWEST_FEEDBACK_PER_MINUTE": "many"}, "expected int")]:
        with pytest.raises(cfg.ConfigError, match=message):
            cfg.from_env(env)
