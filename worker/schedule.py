"""Our own delay queue for retries and waits: a sorted set of due times, moved into Celery by beat.

Celery ETAs are held in worker memory and, on the Redis broker, a message whose countdown outlives
the visibility timeout is delivered again and again (Celery #2599, #5935, kombu #337). Keeping long
waits in Redis instead means a waiting retry survives any worker crash and costs no worker slot.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from worker.scripts import Lua


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": never shorter than half the nominal delay."""
    nominal = min(cap, base * 2.0 ** max(0, attempt - 1))
    return nominal / 2 + (rng or random).uniform(0, nominal / 2)


class Schedule:
    def __init__(self, *, lua: Lua, clock: Callable[[], float] = time.time) -> None:
        self.lua = lua
        self.clock = clock

    def later(self, ref: str, delay: float, detail: str, attempts_delta: int = 0) -> bool:
        """Run ``ref`` again after ``delay`` seconds; False when it is already final."""
        due = self.clock() + max(0.0, delay)
        return bool(self.lua.later(ref, f"{due:.3f}", detail, attempts_delta))

    def dispatch_due(self, limit: int = 1000) -> int:
        moved: int = self.lua.dispatch(limit)
        return moved
