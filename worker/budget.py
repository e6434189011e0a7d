"""Promoter's request budget, shared by every worker: a rate (GCRA in Redis), an optional daily
limit, and the global pause after a 429.

Promoter limits per account, not per process, so ``PROMOTER_RATE_LIMIT`` is enforced in Redis where all
workers see it; when Promoter answers 429 every worker must stop, not just the one that was told.
Surveys and contact-defining identifies come first: low-priority updates keep half of the burst free
for them, and with ``PROMOTER_DAILY_LIMIT`` they stop at ``1 - PROMOTER_DAILY_RESERVE`` of it, waiting
for the next day's budget instead of eating the surveys' share.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from worker import keys
from worker.scripts import Lua

log = logging.getLogger(__name__)
# As the budget script keeps it: two days, so "today" is always there.
DAY_KEY_TTL = 172800


class Budget:
    def __init__(
        self,
        client: redis.Redis,
        *,
        lua: Lua,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.lua = lua
        self.clock = clock

    def wait_seconds(self, priority: str = "high") -> tuple[float, str]:
        """Take one request slot if free now (``(0, "")``); otherwise how long until one may be, and why."""
        answer = self.lua.acquire(priority)
        if answer == 0:
            return 0.0, ""
        return float(answer[0]) / 1000.0, str(answer[1])

    def pause(self, seconds: float) -> None:
        self.lua.pause(f"{(self.clock() + seconds) * 1000.0:.0f}")

    def used_today(self) -> int:
        day = int(self.clock() // 86400)
        return int(self.client.get(keys.budget(str(day))) or 0)

    def count_request(self) -> None:
        """Count one Promoter request in today's budget key, for when no ``PROMOTER_DAILY_LIMIT`` is set.

        With a limit, the budget script counts each slot it grants; without one it counts nothing,
        and "budget used today" would read 0 however many calls were made. Best effort: a lost count
        must not stop a delivery. (Once the script counts without a limit too, this goes.)
        """
        day_key = keys.budget(str(int(self.clock() // 86400)))
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.incr(day_key)
            pipe.expire(day_key, DAY_KEY_TTL)
            pipe.execute()
        except redis.RedisError:
            log.warning("could not count a Promoter request in today's budget")
