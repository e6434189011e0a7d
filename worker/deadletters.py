"""Dead letters: messages the relay gave up on, kept whole so an operator can read and replay them.

A record holds the full event (or the exact task message it was queued with), why it died, how many
attempts were made and Promoter's last answer. Replay queues a fresh task for the same event and
restarts its retry window; the message id stays the same, so idempotency still holds.
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

import redis

from worker import broker, keys
from worker.events import Event, user_key
from worker.ledger import RECENT_LIMIT, lua_script

_BURY = lua_script(
    f"""
-- KEYS: status; ARGV: now, ttl, id, record, reason, attempts, type, user, event name
redis.call('HSET', '{keys.DEAD}', ARGV[3], ARGV[4])
redis.call('HSET', KEYS[1], 'id', ARGV[3], 'type', ARGV[7], 'user', ARGV[8], 'event', ARGV[9])
redis.call('HSETNX', KEYS[1], 'received', ARGV[1])
redis.call('ZADD', '{keys.DEAD_INDEX}', ARGV[1], ARGV[3])
set_state(KEYS[1], 'dead', ARGV[5], ARGV[1], tonumber(ARGV[2]), ARGV[6])
return 1
"""
)

_REPLAY = lua_script(
    f"""
-- KEYS: status, queue; ARGV: now, ttl, id, task message
redis.call('ZREM', '{keys.DEAD_INDEX}', ARGV[3])
if redis.call('HDEL', '{keys.DEAD}', ARGV[3]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'id', ARGV[3], 'since', ARGV[1], 'survey', '')
redis.call('LPUSH', '{keys.RECENT}', ARGV[3])
redis.call('LTRIM', '{keys.RECENT}', 0, {RECENT_LIMIT - 1})
set_state(KEYS[1], 'received', 'replayed from dead letters', ARGV[1], tonumber(ARGV[2]), 0)
enqueued(KEYS[1], ARGV[4], ARGV[1], tonumber(ARGV[2]))
redis.call('LPUSH', KEYS[2], ARGV[4])
return 1
"""
)


def event_of(record: dict[str, Any]) -> Event:
    """The event inside a dead letter, whichever way it was stored."""
    if "event" in record:
        event: Event = record["event"]
        return event
    body = json.loads(json.loads(record["message"])["body"])
    stored: Event = body[0][0]
    return stored


class DeadLetters:
    def __init__(self, client: redis.Redis, status_ttl: int, queue: str) -> None:
        self.client = client
        self.status_ttl = status_ttl
        self.queue = queue
        self._bury = client.register_script(_BURY)
        self._replay = client.register_script(_REPLAY)

    def bury(self, event: Event, reason: str, attempts: int, last_response: str = "") -> None:
        record = {
            "id": event["messageId"],
            "reason": reason,
            "attempts": attempts,
            "last_response": last_response[:2000],
            "at": time.time(),
            "event": event,
        }
        self._bury(
            keys=[keys.message(event["messageId"])],
            args=[
                f"{time.time():.3f}",
                self.status_ttl,
                event["messageId"],
                json.dumps(record, separators=(",", ":")),
                reason,
                attempts,
                event["type"],
                user_key(event),
                event.get("event") or "",
            ],
            client=self.client,
        )

    def count(self) -> int:
        return int(self.client.zcard(keys.DEAD_INDEX))

    def get(self, message_id: str) -> dict[str, Any] | None:
        raw = self.client.hget(keys.DEAD, message_id)
        return _public(json.loads(raw)) if raw else None

    def list(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        ids = cast(list[str], self.client.zrevrange(keys.DEAD_INDEX, offset, offset + limit - 1))
        if not ids:
            return []
        raws = self.client.hmget(keys.DEAD, ids)
        return [_public(json.loads(raw)) for raw in raws if raw]

    def replay(self, message_id: str) -> bool:
        raw = self.client.hget(keys.DEAD, message_id)
        if not raw:
            return False
        message = broker.envelope(event_of(json.loads(raw)), self.queue)
        replayed: int = self._replay(
            keys=[keys.message(message_id), self.queue],
            args=[f"{time.time():.3f}", self.status_ttl, message_id, message],
            client=self.client,
        )
        return bool(replayed)

    def replay_all(self) -> int:
        """Replay the dead letters there are now; those that die again stay for the next look."""
        ids = cast(list[str], self.client.zrange(keys.DEAD_INDEX, 0, -1))
        return sum(self.replay(message_id) for message_id in ids)


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """A dead letter as shown to operators: the event decoded, the raw task message dropped."""
    out = {k: v for k, v in record.items() if k != "message"}
    out["event"] = event_of(record)
    return out
