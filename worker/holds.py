"""Known users and held tracks: a track waits until its user's identify has been delivered.

Both directions are single Lua scripts. "Is the user known? if not, hold" and "mark the user known
and release everything held" must not interleave, or a track that checked just before the identify
finished would be held after the release ran and would wait forever. Released messages are pushed
straight into the Celery queue inside the same script, so a worker dying right after the release
cannot drop them either.

A held item is stored as ``<held-at>|<message id>|<task message>`` so that scripts can read its age
and id without decoding JSON (and without cjson re-encoding, which rounds numbers).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import redis

from worker import keys
from worker.events import Event, user_key
from worker.ledger import lua_script

NEVER_IDENTIFIED = "never identified"

_HOLD = lua_script(
    f"""
-- KEYS: known, held, status; ARGV: now, status ttl, user, item, detail
local contact = redis.call('HGETALL', KEYS[1])
if #contact > 0 then return contact end
if redis.call('HGET', KEYS[3], 'state') == 'held' then return {{}} end
redis.call('RPUSH', KEYS[2], ARGV[4])
redis.call('ZADD', '{keys.HOLDS}', 'NX', ARGV[1], ARGV[3])
redis.call('INCR', '{keys.HELD_COUNT}')
set_state(KEYS[3], 'held', ARGV[5], ARGV[1], tonumber(ARGV[2]))
return {{}}
"""
)

_RELEASE = lua_script(
    f"""
-- KEYS: queue, then (known, held) per identity; ARGV: now, status ttl, n fields, fields..., users...
local now, ttl, nfields = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local fields = {{}}
for i = 1, nfields do fields[i] = ARGV[3 + i] end
local items = {{}}
for i = 2, #KEYS, 2 do
  redis.call('HSET', KEYS[i], unpack(fields))
  for _, item in ipairs(redis.call('LRANGE', KEYS[i + 1], 0, -1)) do items[#items + 1] = item end
  redis.call('DEL', KEYS[i + 1])
  redis.call('ZREM', '{keys.HOLDS}', ARGV[3 + nfields + i / 2])
end
table.sort(items, function(a, b)
  return tonumber(string.match(a, '^[^|]+')) < tonumber(string.match(b, '^[^|]+'))
end)
for _, item in ipairs(items) do
  local at, id, message = string.match(item, '^([^|]*)|([^|]*)|(.*)$')
  local status = 'relay:msg:{{' .. id .. '}}'
  enqueued(status, message, now, ttl)
  redis.call('HSET', status, 'since', now)
  redis.call('LPUSH', KEYS[1], message)
  set_state(status, 'received', 'released: user identified', now, ttl)
end
if #items > 0 then redis.call('DECRBY', '{keys.HELD_COUNT}', #items) end
return #items
"""
)

_EXPIRE = lua_script(
    f"""
-- ARGV: now, cutoff, status ttl, max users
local now, cutoff, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local expired = 0
for _, user in ipairs(redis.call('ZRANGEBYSCORE', '{keys.HOLDS}', '-inf', cutoff, 'LIMIT', 0, ARGV[4])) do
  local held = 'relay:{{' .. user .. '}}:held'
  while true do
    local item = redis.call('LINDEX', held, 0)
    if not item then break end
    local at, id, message = string.match(item, '^([^|]*)|([^|]*)|(.*)$')
    if tonumber(at) > cutoff then break end
    redis.call('LPOP', held)
    local record = cjson.encode({{id = id, reason = '{NEVER_IDENTIFIED}', attempts = 0,
      last_response = '', at = tonumber(now), user = user, message = message}})
    redis.call('HSET', '{keys.DEAD}', id, record)
    redis.call('ZADD', '{keys.DEAD_INDEX}', now, id)
    set_state('relay:msg:{{' .. id .. '}}', 'dead', '{NEVER_IDENTIFIED}', now, ttl)
    expired = expired + 1
  end
  local first = redis.call('LINDEX', held, 0)
  if first then
    redis.call('ZADD', '{keys.HOLDS}', tonumber(string.match(first, '^[^|]+')), user)
  else
    redis.call('ZREM', '{keys.HOLDS}', user)
  end
end
if expired > 0 then redis.call('DECRBY', '{keys.HELD_COUNT}', expired) end
return expired
"""
)


@dataclass(frozen=True)
class Contact:
    email: str
    first_name: str = ""
    last_name: str = ""

    @classmethod
    def from_hash(cls, data: Mapping[str, str]) -> Contact:
        return cls(data["email"], data.get("first_name", ""), data.get("last_name", ""))


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class Holds:
    def __init__(self, client: redis.Redis, status_ttl: int, queue: str, hold_ttl: int = 604800) -> None:
        self.client = client
        self.status_ttl = status_ttl
        self.queue = queue
        # A held message's status record must outlive the hold, however short STATUS_TTL_SECONDS is.
        self.held_status_ttl = max(status_ttl, hold_ttl + 86400)
        self._hold = client.register_script(_HOLD)
        self._release = client.register_script(_RELEASE)
        self._expire = client.register_script(_EXPIRE)

    def contact(self, user: str) -> Contact | None:
        data = cast(dict[str, str], self.client.hgetall(keys.known(user)))
        return Contact.from_hash(data) if data.get("email") else None

    def hold(self, event: Event, message: str) -> Contact | None:
        """Hold ``event`` unless its user became known meanwhile; then return the contact instead."""
        user = user_key(event)
        now = f"{time.time():.3f}"
        item = f"{now}|{event['messageId']}|{message}"
        detail = f"waiting for identify of {user}"
        flat = self._hold(
            keys=[keys.known(user), keys.held(user), keys.message(event["messageId"])],
            args=[now, self.held_status_ttl, user, item, detail],
            client=self.client,
        )
        data = _pairs(flat)
        return Contact.from_hash(data) if data.get("email") else None

    def mark_known(self, users: Sequence[str], contact: Contact, contact_id: str = "") -> int:
        """Remember the contact under every identity and queue what was held; returns how many."""
        fields = {
            "email": contact.email,
            "first_name": contact.first_name,
            "last_name": contact.last_name,
            "contact_id": contact_id,
            "since": f"{time.time():.3f}",
        }
        flat = [part for pair in fields.items() for part in pair]
        script_keys = [self.queue]
        for user in users:
            script_keys += [keys.known(user), keys.held(user)]
        released: int = self._release(
            keys=script_keys,
            args=[f"{time.time():.3f}", self.status_ttl, len(flat), *flat, *users],
            client=self.client,
        )
        return released

    def expire(self, ttl_seconds: int, max_users: int = 500) -> int:
        now = time.time()
        expired: int = self._expire(
            args=[f"{now:.3f}", f"{now - ttl_seconds:.3f}", self.status_ttl, max_users],
            client=self.client,
        )
        return expired

    def held_count(self, user: str) -> int:
        return int(self.client.llen(keys.held(user)))

    def held_messages(self, user: str, limit: int = 100) -> list[dict[str, str]]:
        items = cast(list[str], self.client.lrange(keys.held(user), 0, limit - 1))
        out = []
        for item in items:
            at, message_id, _ = item.split("|", 2)
            out.append({"id": message_id, "held_at": at})
        return out
