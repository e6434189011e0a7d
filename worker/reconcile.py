"""Re-queue messages whose task message the broker lost.

kombu's Redis transport takes a message off the list (BRPOP) before it records it as unacked; a
worker SIGKILLed, or a Redis killed, between the two loses that message for good, late acks or
not. The relay does not depend on that window being empty: ``relay:pending`` (see ``ledger``)
knows every message that should be moving, and since when. One is *stale* when it has been
neither queued, started nor scheduled for longer than the visibility timeout plus a margin (by
then kombu would have restored it if it could), and it has left the queue: the queue is FIFO, so
anything enqueued before the message now at its head has been taken off it. Stale messages are
queued again; delivery is idempotent on the message id, so a false alarm costs one no-op task.
"""

from __future__ import annotations

import json
import time
from typing import cast

import redis

from worker import broker, keys
from worker.deadletters import event_of
from worker.ledger import lua_script

MARGIN_SECONDS = 30.0

_REQUEUE = lua_script(
    """
-- KEYS: queue, status; ARGV: now, cutoff, message id, task message, ttl
local score = redis.call('ZSCORE', PENDING, ARGV[3])
if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
local state = redis.call('HGET', KEYS[2], 'state')
if not state or FINAL[state] or state == 'held' then
  redis.call('ZREM', PENDING, ARGV[3])
  return 0
end
enqueued(KEYS[2], ARGV[4], ARGV[1], tonumber(ARGV[5]))
redis.call('LPUSH', KEYS[1], ARGV[4])
note(KEYS[2], state, 're-queued: its task message was lost', ARGV[1], tonumber(ARGV[5]))
count('requeued')
return 1
"""
)


class Reconciler:
    def __init__(self, client: redis.Redis, queue: str, status_ttl: int, grace_seconds: float) -> None:
        self.client = client
        self.queue = queue
        self.status_ttl = status_ttl
        self.grace = grace_seconds
        self._requeue = client.register_script(_REQUEUE)

    def cutoff(self, now: float) -> float | None:
        """Pending entries scored before this have left the queue; None when that cannot be told."""
        cutoff = now - self.grace
        head = self.client.lindex(self.queue, -1)
        if not head:
            return cutoff
        try:
            message_id = json.loads(json.loads(cast(str, head))["body"])[0][0]["messageId"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None
        queued_at = self.client.zscore(keys.PENDING, message_id)
        # A head without a pending entry is a leftover copy of a finished message: it says nothing.
        return None if queued_at is None else min(cutoff, float(queued_at) - 0.001)

    def requeue_stale(self, limit: int = 500) -> int:
        now = time.time()
        cutoff = self.cutoff(now)
        if cutoff is None:
            return 0
        stale = cast(list[str], self.client.zrangebyscore(keys.PENDING, "-inf", cutoff, start=0, num=limit))
        if not stale:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for message_id in stale:
            pipe.get(keys.payload(message_id))
        requeued = 0
        for message_id, payload in zip(stale, pipe.execute(), strict=True):
            if not payload:
                self.client.zrem(keys.PENDING, message_id)
                continue
            message = broker.envelope(event_of({"message": payload}), self.queue)
            requeued += int(
                self._requeue(
                    keys=[self.queue, keys.message(message_id)],
                    args=[f"{now:.3f}", f"{cutoff:.3f}", message_id, message, self.status_ttl],
                    client=self.client,
                )
            )
        return requeued
