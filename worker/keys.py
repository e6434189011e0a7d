"""Redis key names, in one place so that the Lua scripts and the inspection API agree.

Per-user keys carry a hash tag (``relay:{u:42}:...``) and message keys one of their own, so a move to
Redis Cluster could shard them; today the scripts also touch global keys (the queue, counters,
``relay:pending``) in the same step, and Celery's Redis broker does not support Cluster, so the relay
needs a single Redis (with a replica for failover).
"""

from __future__ import annotations

PREFIX = "relay"
STATS = f"{PREFIX}:stats"
SCHEDULE = f"{PREFIX}:schedule"
SCHEDULED = f"{PREFIX}:scheduled"
HOLDS = f"{PREFIX}:holds"
HELD_COUNT = f"{PREFIX}:held-count"
DEAD = f"{PREFIX}:dead"
DEAD_INDEX = f"{PREFIX}:dead:index"
RECENT = f"{PREFIX}:recent"
PENDING = f"{PREFIX}:pending"
PAUSE = f"{PREFIX}:pause-until"
RATE = f"{PREFIX}:rate"
LATENCY = f"{PREFIX}:latency"


def message(message_id: str) -> str:
    return f"{PREFIX}:msg:{{{message_id}}}"


def payload(message_id: str) -> str:
    """The task message of a message that should be moving (see ``ledger``); its own key, so the
    status hash stays small (Redis keeps small hashes compact, and a hash never shrinks back)."""
    return f"{message(message_id)}:payload"


def history(message_id: str) -> str:
    return f"{message(message_id)}:log"


def known(user: str) -> str:
    return f"{PREFIX}:{{{user}}}:known"


def held(user: str) -> str:
    return f"{PREFIX}:{{{user}}}:held"


def email_seen(user: str) -> str:
    """Set at ingest when an identify with an email is accepted, before Promoter has it."""
    return f"{PREFIX}:{{{user}}}:email-seen"


def orders(user: str) -> str:
    return f"{PREFIX}:{{{user}}}:orders"
