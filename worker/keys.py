"""Redis key names, in one place so that the Lua scripts and the inspection API agree.

Per-user keys carry a hash tag (``relay:{u:42}:...``) so that every key a per-user script touches
lives in one Redis Cluster slot.
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


def history(message_id: str) -> str:
    return f"{message(message_id)}:log"


def known(user: str) -> str:
    return f"{PREFIX}:{{{user}}}:known"


def held(user: str) -> str:
    return f"{PREFIX}:{{{user}}}:held"


def orders(user: str) -> str:
    return f"{PREFIX}:{{{user}}}:orders"
