"""Load a keyspace snapshot written by ``make_snapshot.py`` into a Redis (the tests' own)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis

SNAPSHOT = Path(__file__).resolve().parent / "snapshot-ece91c4.json"


def read(path: Path = SNAPSHOT) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def restore(client: redis.Redis, snapshot: dict[str, Any]) -> None:
    """Write every key as it was, with its remaining TTL."""
    pipe = client.pipeline(transaction=False)
    for item in snapshot["keys"]:
        key, kind, value = item["key"], item["type"], item["value"]
        pipe.delete(key)
        if kind == "string":
            pipe.set(key, value)
        elif kind == "hash":
            pipe.hset(key, mapping=value)
        elif kind == "list":
            pipe.rpush(key, *value)
        elif kind == "set":
            pipe.sadd(key, *value)
        elif kind == "zset":
            pipe.zadd(key, dict(value))
        if item["pttl"] > 0:
            pipe.pexpire(key, item["pttl"])
    pipe.execute()
