"""A per-key sliding-window rate limit, used per browser session in the service.

One client asking or rating non-stop must neither monopolise the models nor
flood the feedback that trains them. The window is a deque of event times per
key; keys idle for a whole window are forgotten, so memory stays bounded by
the sessions active in the last window.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Callable

PRUNE_EVERY = 1024  # calls between sweeps of idle keys


class RateLimiter:
    """At most `max_events` accepted events per key in any `window_s` seconds.

    `max_events=0` turns the limit off. Only accepted events count, so a
    refused request never pushes its own retry further away.
    """

    def __init__(self, max_events: int, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if max_events < 0 or window_s <= 0:
            raise ValueError("max_events must be >= 0 and window_s > 0")
        self.max_events = max_events
        self.window_s = window_s
        self._clock = clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._calls = 0

    @property
    def enabled(self) -> bool:
        return self.max_events > 0

    def acquire(self, key: str) -> float | None:
        """Record one event for `key`; None when accepted, else seconds until a slot frees."""
        if not self.enabled:
            return None
        with self._lock:
            now = self._clock()
            self._maybe_prune(now)
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - self.window_s:
                events.popleft()
            if len(events) >= self.max_events:
                return max(0.0, events[0] + self.window_s - now)
            events.append(now)
            return None

    def _maybe_prune(self, now: float) -> None:
        self._calls += 1
        if self._calls % PRUNE_EVERY:
            return
        idle = [key for key, events in self._events.items() if not events or events[-1] <= now - self.window_s]
        for key in idle:
            del self._events[key]


def retry_text(seconds: float) -> str:
    """'Try again in N s' for a user-facing message; never '0 s'."""
    return f"Try again in {max(1, math.ceil(seconds))} s."
