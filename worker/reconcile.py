"""Re-queue messages whose task message the broker lost.

kombu's Redis transport takes a message off the list (BRPOP) before it records it as unacked; a
worker SIGKILLed, or a Redis killed, between the two loses that message for good, late acks or
not. The relay does not depend on that window being empty: ``relay:pending`` knows every message that
should be moving, and since when. One is *stale* when it has been neither queued, started nor
scheduled for longer than the visibility timeout plus a margin (by then kombu would have restored it
if it could), and it has left the queues: each queue is FIFO, so anything enqueued before the
pending message nearest a queue's head has been taken off it. Stale messages are queued again; delivery is
idempotent on the ref, so a false alarm costs one no-op task. This also restarts a message that
waited for another message's contact update when that message's worker died.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import cast

import redis

from worker import keys, taskmessages
from worker.scripts import Scripts

MARGIN_SECONDS = 30.0
# How far from a queue's head to look for a message still pending.
HEAD_SCAN = 100


class Reconciler:
    def __init__(
        self,
        client: redis.Redis,
        *,
        scripts: Scripts,
        queues: Sequence[str],
        grace_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self._requeue = scripts("requeue")
        self.queues = list(queues)
        self.grace = grace_seconds
        self.clock = clock

    def cutoff(self, now: float) -> float | None:
        """Pending entries scored before this have left the queues; None when that cannot be told."""
        cutoff = now - self.grace
        pipe = self.client.pipeline(transaction=False)
        for queue in self.queues:
            pipe.lrange(queue, -HEAD_SCAN, -1)
        for heads in pipe.execute():
            queued_at = self._oldest_pending(cast(list[str], heads))
            if queued_at is None:
                if heads:
                    return None
                continue
            cutoff = min(cutoff, queued_at - 0.001)
        return cutoff

    def _oldest_pending(self, heads: list[str]) -> float | None:
        """When the message nearest a queue's head that is still pending was queued. Copies of
        finished messages (no pending entry) are passed over: one can sit at the head of a queue that
        other queues' traffic keeps from moving, and must not stop the reconciler meanwhile."""
        for raw in reversed(heads):
            try:
                ref = taskmessages.ref_of(raw)
            except (ValueError, KeyError, IndexError, TypeError):
                return None
            queued_at = self.client.zscore(keys.PENDING, ref)
            if queued_at is not None:
                return float(queued_at)
        return None

    def requeue_stale(self, limit: int = 500) -> int:
        cutoff = self.cutoff(self.clock())
        if cutoff is None:
            return 0
        stale = cast(list[str], self.client.zrangebyscore(keys.PENDING, "-inf", cutoff, start=0, num=limit))
        if not stale:
            return 0
        requeued: int = self._requeue(f"{cutoff:.3f}", *stale)
        return requeued
