"""Simulated users: each thread asks a question through gradio_client, then rates the answer.

Used by tests/system/test_load.py (which checks the database afterwards) and by
bench/load.py (which prints the numbers). Every rating carries a unique comment
token, so the caller can find exactly the rows it wrote. A refusal by the
Gradio queue ("Queue is full") is expected under overload: the user waits a
little and tries again; any other failure is recorded as an error.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from dataclasses import dataclass, field

from gradio_client import Client
from gradio_client.utils import QueueError

QUESTIONS = ("What is 2 + 2?", "Is 7 prime?", "Why is the sky blue?", "What does DNA stand for?",
             "Name a noble gas.", "How many days are in a leap year?")
BACKOFF_S = (0.1, 0.4)  # a refused user waits this long (uniform) before trying again


@dataclass(frozen=True)
class Rating:
    token: str  # the comment sent with the rating: unique per attempt
    interaction_id: str
    rating: int  # 1 (up) or -1 (down)


@dataclass
class LoadResult:
    users: int
    elapsed_s: float = 0.0
    ask_latencies_s: list[float] = field(default_factory=list)  # successful asks, queue wait included
    acknowledged: list[Rating] = field(default_factory=list)  # ratings the server answered with success
    refused_ratings: list[str] = field(default_factory=list)  # tokens of ratings the queue refused
    refused_asks: int = 0
    errors: list[str] = field(default_factory=list)  # anything else: must stay empty
    interaction_ids: list[str] = field(default_factory=list)  # one per successful ask

    @property
    def throughput(self) -> float:
        """Completed ask + rate cycles per second."""
        return len(self.acknowledged) / self.elapsed_s if self.elapsed_s else 0.0

    def percentile(self, q: float) -> float:
        if not self.ask_latencies_s:
            return float("nan")
        ordered = sorted(self.ask_latencies_s)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def summary(self) -> str:
        return (f"{self.users} users x {self.elapsed_s:.1f} s: {len(self.interaction_ids)} asks, "
                f"{len(self.acknowledged)} ratings acknowledged, {self.refused_asks} asks and "
                f"{len(self.refused_ratings)} ratings refused by the queue, {len(self.errors)} errors; "
                f"{self.throughput:.2f} cycles/s, ask p50 {self.percentile(0.5):.2f} s, "
                f"p95 {self.percentile(0.95):.2f} s, mean {statistics.fmean(self.ask_latencies_s or [0]):.2f} s")


class _Budget:
    """A shared cap on the number of asks, so a run is bounded in count as well as in time."""

    def __init__(self, total: int) -> None:
        self._left = total
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True


def run_users(url: str, users: int, duration_s: float, max_asks: int, seed: int = 0,
              stop: threading.Event | None = None) -> LoadResult:
    """`users` threads ask and rate until `duration_s` has passed, `max_asks` were sent or `stop` is set."""
    stop = stop or threading.Event()
    result = LoadResult(users)
    lock = threading.Lock()
    budget = _Budget(max_asks)
    clients = [Client(url, verbose=False) for _ in range(users)]  # set up before the clock starts
    start = threading.Barrier(users + 1)
    deadline: list[float] = []

    def user(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        start.wait()
        attempt = 0
        while time.monotonic() < deadline[0] and not stop.is_set() and budget.take():
            attempt += 1
            # The seed is part of the token, so runs against the same database stay apart.
            _one_cycle(clients[number], f"s{seed}-u{number}-a{attempt}", rng, deadline[0], result, lock)

    threads = [threading.Thread(target=user, args=(n,), name=f"user-{n}") for n in range(users)]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    deadline.append(began + duration_s)
    start.wait()
    for thread in threads:
        thread.join()
    result.elapsed_s = time.monotonic() - began
    for client in clients:
        client.close()
    return result


def _one_cycle(client: Client, tag: str, rng: random.Random, deadline: float, result: LoadResult,
               lock: threading.Lock) -> None:
    question = rng.choice(QUESTIONS)
    started = time.monotonic()
    try:
        *_, interaction_id = client.predict(question, "general", False, api_name="/ask")
    except QueueError:
        with lock:
            result.refused_asks += 1
        time.sleep(rng.uniform(*BACKOFF_S))
        return
    except Exception as exc:  # noqa: BLE001 - counted, and the test fails on any
        with lock:
            result.errors.append(f"ask: {type(exc).__name__}: {exc}")
        return
    with lock:
        result.ask_latencies_s.append(time.monotonic() - started)
        result.interaction_ids.append(interaction_id)
    _rate(client, tag, interaction_id, rng, deadline, result, lock)


def _rate(client: Client, tag: str, interaction_id: str, rng: random.Random, deadline: float,
          result: LoadResult, lock: threading.Lock) -> None:
    """Rate once; a refused rating is retried (with a new token) until the deadline."""
    for retry in range(100):
        up = rng.random() < 0.5
        token = f"{tag}-r{retry}"
        try:
            client.predict(interaction_id, "collab", token, api_name="/rate_up" if up else "/rate_down")
        except QueueError:
            with lock:
                result.refused_ratings.append(token)
            if time.monotonic() > deadline:
                return
            time.sleep(rng.uniform(*BACKOFF_S))
            continue
        except Exception as exc:  # noqa: BLE001
            with lock:
                result.errors.append(f"rate: {type(exc).__name__}: {exc}")
            return
        with lock:
            result.acknowledged.append(Rating(token, interaction_id, 1 if up else -1))
        return
