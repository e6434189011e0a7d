"""One snapshot of the relay's state, shared by ``promoter-relay status``, the admin API and /metrics."""

from __future__ import annotations

import time
from typing import Any

import redis

from worker import keys
from worker.ledger import STATES

RATE_WINDOW_MINUTES = 5
UNACKED = "unacked"


def snapshot(client: redis.Redis, queue: str) -> dict[str, Any]:
    minute = int(time.time() // 60)
    pipe = client.pipeline(transaction=False)
    pipe.llen(queue)
    pipe.hlen(UNACKED)
    pipe.zcard(keys.SCHEDULE)
    pipe.get(keys.HELD_COUNT)
    pipe.zcard(keys.HOLDS)
    pipe.zcard(keys.DEAD_INDEX)
    pipe.hgetall(keys.STATS)
    for offset in range(1, RATE_WINDOW_MINUTES + 1):
        pipe.hgetall(f"{keys.STATS}:m:{minute - offset}")
    queued, unacked, scheduled, held, held_users, dead, counters, *minutes = pipe.execute()
    totals = {state: int(counters.get(f"state:{state}", 0)) for state in STATES}
    per_minute = {
        state: round(sum(int(m.get(state, 0)) for m in minutes) / RATE_WINDOW_MINUTES, 2) for state in STATES
    }

    def by_type(prefix: str) -> dict[str, int]:
        return {k.split(":", 1)[1]: int(v) for k, v in counters.items() if k.startswith(f"{prefix}:")}

    return {
        "queue": {
            "queued": queued,
            "in_flight": unacked,
            "retry_scheduled": scheduled,
            "held": max(0, int(held or 0)),
            "held_users": held_users,
            "dead_letters": dead,
        },
        "totals": totals,
        "per_minute": per_minute,
        "accepted": by_type("accepted"),
        "duplicates": by_type("duplicate"),
        "rejected": by_type("rejected"),
    }
