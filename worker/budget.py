"""Promoter's request budget, shared by every worker: a rate (GCRA in Redis), an optional daily
limit, and the global pause after a 429.

Promoter limits per account, not per process, so ``PROMOTER_RATE_LIMIT`` is enforced in Redis where all
workers see it; when Promoter answers 429 every worker must stop, not just the one that was told.
Surveys and contact-defining identifies come first: low-priority updates keep half of the burst free
for them, and with ``PROMOTER_DAILY_LIMIT`` they stop at ``1 - PROMOTER_DAILY_RESERVE`` of it, waiting
for the next day's budget instead of eating the surveys' share. An answer that refuses the account
itself (a revoked key, a wrong URL) pauses everyone too, and one probe call a minute finds out when it
is fixed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import redis

from worker import keys
from worker.scripts import Scripts


class Budget:
    def __init__(
        self,
        client: redis.Redis,
        *,
        scripts: Scripts,
        clock: Callable[[], float] = time.time,
        window: float = 14400.0,
    ) -> None:
        self.client = client
        self.clock = clock
        self.window = window
        self._acquire = scripts("acquire")
        self._pause = scripts("pause")
        self._account = scripts("account")

    def wait_seconds(self, priority: str = "high") -> tuple[float, str]:
        """Take one request slot if free now (``(0, "")``); otherwise how long until one may be, and why."""
        answer = self._acquire(priority)
        if answer == 0:
            return 0.0, ""
        return float(answer[0]) / 1000.0, str(answer[1])

    def used_today(self) -> int:
        """Requests granted today (UTC), whatever the daily limit."""
        day = int(self.clock() // 86400)
        return int(cast(str | None, self.client.get(keys.budget(str(day)))) or 0)

    def pause(self, seconds: float) -> None:
        """A 429: every worker waits ``seconds``."""
        self._pause(f"{(self.clock() + seconds) * 1000.0:.0f}")

    def refused_account(self, why: str) -> bool:
        """Promoter refused the account (401/403/404/405): pause all delivery but one probe call per
        minute, until a call is answered. True when this started the pause."""
        return bool(self._account(why[:200], int(self.window)))

    def account_problem(self) -> dict[str, Any] | None:
        """Since when, and why, Promoter refuses the account (None when it does not)."""
        return account_problem(cast(str | None, self.client.get(keys.ACCOUNT)))


def account_problem(raw: str | None) -> dict[str, Any] | None:
    """``relay:account`` ('<next probe ms>|<since>|<why>') read: since when, and Promoter's answer."""
    if not raw:
        return None
    _, since, why = raw.split("|", 2)
    return {"since": float(since), "why": why}
