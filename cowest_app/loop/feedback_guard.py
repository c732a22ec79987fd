"""Keeps one client from steering training: pure functions applied where the
DPO training set is built from logged preference pairs.

- `live_human_pairs`: a human pair is trained on only while the votes that
  made it still stand. Votes are append-only rows and the latest vote of the
  asking session wins (`feedback.interaction_vote`), so a changed or repeated
  vote never leaves a second, contradicting pair behind.
- `cap_session_share`: no browser session contributes more than a set share
  of the pairs. A pair belongs to the sessions that asked the questions it
  comes from; pairs with no session (reference files, scripts) are not capped.

Nothing here opens the database; the training job passes rows in.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Mapping, Sequence

from cowest_app.core.store import PreferencePair

HUMAN = "human"


def live_human_pairs(pairs: Iterable[PreferencePair], live_ids: set[tuple[str, ...]]) -> list[PreferencePair]:
    """Drop human pairs whose votes changed since they were logged, and repeats.

    `live_ids` are the `interaction_ids` of the human pairs today's votes make
    (`feedback.human_pairs` over the log). Other pairs pass unchanged; order is kept.
    """
    seen: set[tuple[str, ...]] = set()
    out = []
    for pair in pairs:
        if pair.evaluator == HUMAN:
            ids = tuple(pair.interaction_ids)
            if ids not in live_ids or ids in seen:
                continue
            seen.add(ids)
        out.append(pair)
    return out


def pair_sessions(pair: PreferencePair, session_of: Mapping[str, str | None]) -> frozenset[str]:
    """The sessions that asked the questions behind a pair (none for unattributed pairs)."""
    return frozenset(s for s in (session_of.get(i) for i in pair.interaction_ids) if s)


def session_shares(owners: Sequence[frozenset[str]]) -> dict[str, float]:
    """Each session's share of a set of pairs, given each pair's sessions."""
    if not owners:
        return {}
    counts = Counter(s for sessions in owners for s in sessions)
    return {s: n / len(owners) for s, n in counts.items()}


def cap_session_share(
    pairs: Sequence[PreferencePair], session_of: Mapping[str, str | None], max_share: float
) -> list[PreferencePair]:
    """The pairs, thinned until no session owns more than `max_share` of them.

    A session over the cap loses its newest pairs first (a flood comes after
    the honest history it tries to drown). Dropping pairs shrinks the set and
    so the cap, hence the loop; it ends because every round drops a pair. A
    pair shared by two sessions counts against both. `max_share >= 1` keeps all.
    With fewer than 1/max_share sessions and nothing unattributed, the set
    shrinks accordingly: that is the cap doing its job.
    """
    if not 0 < max_share:
        raise ValueError(f"max_share must be > 0, got {max_share}")
    kept = list(pairs)
    if max_share >= 1:
        return kept
    owners = [pair_sessions(p, session_of) for p in kept]
    while kept:
        limit = math.floor(max_share * len(kept) + 1e-9)  # 1e-9: 0.2 * 10 must give 2, not 1
        counts = Counter(s for sessions in owners for s in sessions)
        excess = {s: n - limit for s, n in counts.items() if n > limit}
        if not excess:
            break
        drop: set[int] = set()
        for session, extra in excess.items():
            mine = [i for i, sessions in enumerate(owners) if session in sessions]
            drop.update(mine[-extra:])
        kept = [p for i, p in enumerate(kept) if i not in drop]
        owners = [o for i, o in enumerate(owners) if i not in drop]
    return kept
