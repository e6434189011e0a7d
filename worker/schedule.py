"""Our own delay queue for retries: a sorted set of due times, moved into Celery by beat.

Celery ETAs are held in worker memory and, on the Redis broker, a message whose countdown outlives
the visibility timeout is delivered again and again (Celery #2599, #5935, kombu #337). Keeping long
waits in Redis instead means a waiting retry survives any worker crash and costs no worker slot.
"""

from __future__ import annotations

import random
import time

import redis

from worker import keys
from worker.ledger import lua_script

_SCHEDULE = lua_script(
    f"""
-- KEYS: status; ARGV: now, ttl, message id, due, task message, detail, attempts
redis.call('ZADD', '{keys.SCHEDULE}', ARGV[4], ARGV[3])
redis.call('HSET', '{keys.SCHEDULED}', ARGV[3], ARGV[5])
enqueued(KEYS[1], ARGV[5], ARGV[4], tonumber(ARGV[2]))
set_state(KEYS[1], 'retrying', ARGV[6], ARGV[1], tonumber(ARGV[2]), ARGV[7] ~= '' and ARGV[7] or nil)
return 1
"""
)

_DISPATCH = f"""
-- KEYS: queue; ARGV: now, max
local due = redis.call('ZRANGEBYSCORE', '{keys.SCHEDULE}', '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(due) do
  local message = redis.call('HGET', '{keys.SCHEDULED}', id)
  if message then
    redis.call('LPUSH', KEYS[1], message)
    redis.call('ZADD', '{keys.PENDING}', 'XX', ARGV[1], id)
  end
  redis.call('HDEL', '{keys.SCHEDULED}', id)
  redis.call('ZREM', '{keys.SCHEDULE}', id)
end
return #due
"""


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": never shorter than half the nominal delay."""
    nominal = min(cap, base * 2.0 ** max(0, attempt - 1))
    return nominal / 2 + (rng or random).uniform(0, nominal / 2)


class Schedule:
    def __init__(self, client: redis.Redis, status_ttl: int, queue: str) -> None:
        self.client = client
        self.status_ttl = status_ttl
        self.queue = queue
        self._schedule = client.register_script(_SCHEDULE)
        self._dispatch = client.register_script(_DISPATCH)

    def later(
        self, message_id: str, message: str, delay: float, detail: str, attempts: int | None = None
    ) -> float:
        now = time.time()
        due = now + max(0.0, delay)
        self._schedule(
            keys=[keys.message(message_id)],
            args=[
                f"{now:.3f}",
                self.status_ttl,
                message_id,
                f"{due:.3f}",
                message,
                detail,
                "" if attempts is None else attempts,
            ],
            client=self.client,
        )
        return due

    def dispatch_due(self, limit: int = 1000) -> int:
        moved: int = self._dispatch(keys=[self.queue], args=[f"{time.time():.3f}", limit], client=self.client)
        return moved
