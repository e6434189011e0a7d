"""Our own delay queue for retries and waits: a sorted set of due times, moved into Celery by beat.

Celery ETAs are held in worker memory and, on the Redis broker, a message whose countdown outlives
the visibility timeout is delivered again and again (Celery #2599, #5935, kombu #337). Keeping long
waits in Redis instead means a waiting retry survives any worker crash and costs no worker slot.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from worker.scripts import Scripts


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": never shorter than half the nominal delay."""
    nominal = min(cap, base * 2.0 ** max(0, attempt - 1))
    return nominal / 2 + (rng or random).uniform(0, nominal / 2)


class Schedule:
    def __init__(self, *, scripts: Scripts, clock: Callable[[], float] = time.time) -> None:
        self._later = scripts("later")
        self._dispatch = scripts("dispatch")
        self.clock = clock

    def later(self, ref: str, delay: float, detail: str, attempts_delta: int = 0) -> str:
        """Run ``ref`` again after ``delay`` seconds; returns its state (not 'retrying' when final)."""
        due = self.clock() + max(0.0, delay)
        state: str = self._later(ref, f"{due:.3f}", detail, attempts_delta)
        return state

    def dispatch_due(self, limit: int = 1000) -> int:
        moved: int = self._dispatch(limit)
        return moved
