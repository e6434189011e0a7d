"""One snapshot of the relay's state, shared by ``promoter-relay status``, the admin API and /metrics.

What waits, and for how long (``oldest_age_seconds``):

- ``queued``: the oldest entry of ``relay:pending``, i.e. a message queued or being worked on since
  then, or a retry (or a wait for budget) whose time has come but that no worker has taken yet
  (beat down, workers down or behind). This is the one that should stay near zero.
- ``held`` / ``held_anonymous``: the oldest track waiting for its person's identify, which may
  normally last up to ``HOLD_TTL_SECONDS`` / ``ANONYMOUS_HOLD_TTL_SECONDS``.
- A retry not yet due waits on purpose; the retry window bounds it (then it is a dead letter).
"""

from __future__ import annotations

import time
from typing import Any

import redis

from worker import heartbeat, keys
from worker.budget import account_problem
from worker.settings import Settings
from worker.states import State

RATE_WINDOW_MINUTES = 5
# The scripts keep each minute's counts (``relay:stats:m:<minute>``) this long.
MINUTE_KEY_TTL = keys.MINUTE_TTL
KEPT_MINUTES = MINUTE_KEY_TTL // 60
UNACKED = "unacked"
_GROUPS = (
    "accepted",
    "duplicate",
    "rejected",
    "refused",
    "saved",
    "dead_dropped",
    "survey_unknown",
    "survey_resend",
    "suppressed",
)


def snapshot(client: redis.Redis, settings: Settings, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    minute = int(now // 60)
    queues = {"high": settings.queue_name, "low": settings.low_queue, "control": settings.control_queue}
    pipe = client.pipeline(transaction=False)
    for queue in queues.values():
        pipe.llen(queue)
    pipe.hlen(UNACKED)
    pipe.zcard(keys.SCHEDULE)
    pipe.get(keys.HELD_COUNT)
    pipe.zcard(keys.HOLDS_USERS)
    pipe.zcard(keys.HOLDS_ANONYMOUS)
    pipe.zcard(keys.DEAD_INDEX)
    pipe.hgetall(keys.STATS)
    pipe.get(keys.budget(str(int(now // 86400))))
    pipe.get(keys.PAUSE)
    pipe.get(keys.ACCOUNT)
    pipe.zrange(keys.PENDING, 0, 0, withscores=True)
    pipe.zrange(keys.HOLDS_USERS, 0, 0, withscores=True)
    pipe.zrange(keys.HOLDS_ANONYMOUS, 0, 0, withscores=True)
    pipe.get(heartbeat.BEAT)
    pipe.hgetall(heartbeat.WORKERS)
    for offset in range(RATE_WINDOW_MINUTES):
        pipe.hgetall(keys.minute(minute - offset))
    answers = pipe.execute()
    depths = dict(zip(queues, answers[: len(queues)], strict=True))
    unacked, scheduled, held, held_users, held_anonymous, dead, counters, used, paused, account = answers[
        len(queues) : len(queues) + 10
    ]
    oldest_pending, oldest_user_hold, oldest_anonymous_hold, beat, workers = answers[
        len(queues) + 10 : len(queues) + 15
    ]
    minutes = answers[len(queues) + 15 :]
    beats = heartbeat.read(beat, workers, now)
    # The current minute is partial: rate over the part of the window that has actually elapsed.
    elapsed = (RATE_WINDOW_MINUTES - 1) + (now % 60) / 60
    totals = {state.value: int(counters.get(f"state:{state.value}", 0)) for state in State}
    per_minute = {
        state.value: round(sum(int(m.get(state.value, 0)) for m in minutes) / max(elapsed, 1 / 60), 2)
        for state in State
    }

    def group(prefix: str) -> dict[str, int]:
        return {k.split(":", 1)[1]: int(v) for k, v in counters.items() if k.startswith(f"{prefix}:")}

    paused_until = float(paused) / 1000 if paused else 0.0
    refused = account_problem(account)
    return {
        "queue": {
            "queued": sum(depths[name] for name in ("high", "low")),
            "queued_high": depths["high"],
            "queued_low": depths["low"],
            "in_flight": unacked,
            "retry_scheduled": scheduled,
            "held": max(0, int(held or 0)),
            "held_identities": held_users + held_anonymous,
            "dead_letters": dead,
        },
        "totals": totals,
        "per_minute": per_minute,
        **{name: group(name) for name in _GROUPS},
        "budget": {
            "used_today": int(used or 0),
            "daily_limit": settings.promoter_daily_limit,
            "rate_per_second": settings.promoter_rate_limit,
            "paused_for_seconds": round(max(0.0, paused_until - now), 1),
        },
        # While Promoter refuses the account (wrong URL, revoked key), delivery waits for a probe to pass.
        "account": {
            "refused": refused is not None,
            "refused_for_seconds": round(max(0.0, now - refused["since"]), 1) if refused else 0.0,
            "why": refused["why"] if refused else "",
        },
        "oldest_age_seconds": {
            "queued": _age(oldest_pending, now),
            "held": _age(oldest_user_hold, now),
            "held_anonymous": _age(oldest_anonymous_hold, now),
        },
        "heartbeat_age_seconds": {
            "beat": _rounded(beats.beat_age),
            "worker": _rounded(beats.worker_age),
        },
        "workers_alive": beats.workers_alive,
        "persons_merged": int(counters.get("persons_merged", 0)),
        "requeued": int(counters.get("requeued", 0)),
        "replayed": int(counters.get("replayed", 0)),
    }


def _age(first: list[tuple[str, float]], now: float) -> float:
    """Seconds since the lowest score of a sorted set (from ``ZRANGE 0 0 WITHSCORES``); 0 when empty
    or when that score is still ahead (a retry not yet due)."""
    return round(max(0.0, now - float(first[0][1])), 1) if first else 0.0


def _rounded(age: float | None) -> float | None:
    return None if age is None else round(age, 1)


def per_minute(client: redis.Redis, minutes: int, now: float | None = None) -> list[dict[str, Any]]:
    """State changes per minute, oldest first, for the last ``minutes`` whole minutes and the current
    (partial) one; minutes older than the counters are kept (``KEPT_MINUTES``) are left out."""
    now = time.time() if now is None else now
    current = int(now // 60)
    numbers = range(current - min(minutes, KEPT_MINUTES - 1), current + 1)
    pipe = client.pipeline(transaction=False)
    for number in numbers:
        pipe.hgetall(keys.minute(number))
    return [
        {"minute": number * 60, **{state.value: int(counts.get(state.value, 0)) for state in State}}
        for number, counts in zip(numbers, pipe.execute(), strict=True)
    ]
