"""One request budget for every worker process: GCRA in Redis, plus the global 429 pause.

Promoter limits per account, not per process, so ``PROMOTER_RATE_LIMIT`` is enforced in Redis
where all workers see it; and when Promoter answers 429 every worker must stop, not just the one
that was told.
"""

from __future__ import annotations

import time

import redis

from worker import keys

_ACQUIRE = f"""
-- ARGV: now ms, interval ms, burst ms. Returns 0 when a request may go, else ms to wait.
local now, interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local paused = tonumber(redis.call('GET', '{keys.PAUSE}') or '0')
if paused > now then return paused - now end
local tat = math.max(tonumber(redis.call('GET', '{keys.RATE}') or '0'), now)
if tat - now > burst then return math.ceil(tat - now - burst) end
redis.call('SET', '{keys.RATE}', tat + interval, 'PX', math.ceil(tat + interval - now) + 1000)
return 0
"""

_PAUSE = f"""
local current = tonumber(redis.call('GET', '{keys.PAUSE}') or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', '{keys.PAUSE}', ARGV[1], 'PX', math.ceil(tonumber(ARGV[1]) - tonumber(ARGV[2])) + 1000)
end
return 1
"""


class RateLimiter:
    def __init__(self, client: redis.Redis, per_second: float, burst_seconds: float = 1.0) -> None:
        self.client = client
        self.interval_ms = 1000.0 / per_second
        self.burst_ms = max(0.0, burst_seconds * 1000.0 - self.interval_ms)
        self._acquire = client.register_script(_ACQUIRE)
        self._pause = client.register_script(_PAUSE)

    def wait_seconds(self) -> float:
        """Take one request slot if free now; otherwise how long until one may be."""
        now_ms = time.time() * 1000.0
        wait: int = self._acquire(args=[f"{now_ms:.0f}", self.interval_ms, self.burst_ms], client=self.client)
        return wait / 1000.0

    def pause(self, seconds: float) -> None:
        now_ms = time.time() * 1000.0
        self._pause(args=[f"{now_ms + seconds * 1000.0:.0f}", f"{now_ms:.0f}"], client=self.client)
