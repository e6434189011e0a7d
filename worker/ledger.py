"""Status records: one small Redis hash per message, plus a capped history and global counters.

The status record doubles as the dedup marker: a ``messageId`` whose record exists has been
accepted before, so a Segment retry is acknowledged without being queued again. It is written in
the same Lua step that queues the task, which is what makes "answered 200" equal "queued".

Every state change of every script goes through the ``set_state`` Lua function below, so history,
counters and TTLs cannot drift apart between code paths.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from worker import keys
from worker.events import Event, user_key

FINAL_STATES = frozenset({"delivered", "ineligible", "skipped", "dead"})
STATES = ("received", "held", "retrying", "delivered", "ineligible", "skipped", "dead")
RECENT_LIMIT = 200
HISTORY_LIMIT = 50

# Shared by every script that changes a message's state. ARGV conventions stay with each script.
#
# ``relay:pending`` is the safety net under the broker: every message that should be in the queue, in
# a worker or in the retry schedule has an entry scored with when that last became true, and its
# task message is kept beside the status record (``...:payload``). A message the broker lost (a worker
# or Redis killed between BRPOP and kombu's unacked bookkeeping) shows up there as stale, and
# ``worker.reconcile`` queues it again. Final and held messages leave the set: they need no task.
_PRELUDE = f"""
local STATS = '{keys.STATS}'
local PENDING = '{keys.PENDING}'
local FINAL = {{delivered = true, ineligible = true, skipped = true, dead = true}}
local COUNTS = {{}}
local function count(field, n)
  COUNTS[field] = (COUNTS[field] or 0) + (n or 1)
end
local function message_id(key)
  return string.sub(key, {len(keys.message(""))}, -2)
end
local function enqueued(key, message, at, ttl)
  redis.call('SET', key .. ':payload', message, 'EX', ttl)
  redis.call('ZADD', PENDING, at, message_id(key))
end
local function note(key, state, detail, now, ttl)
  redis.call('HSET', key, 'updated', now, 'detail', detail or '')
  local log = key .. ':log'
  local entry = cjson.encode({{at = tonumber(now), state = state, detail = detail or ''}})
  local length = redis.call('RPUSH', log, entry)
  if length > {HISTORY_LIMIT} then redis.call('LTRIM', log, -{HISTORY_LIMIT}, -1) end
  redis.call('EXPIRE', key, ttl)
  redis.call('EXPIRE', log, ttl)
end
local function set_state(key, state, detail, now, ttl, attempts)
  if attempts then
    redis.call('HSET', key, 'state', state, 'attempts', attempts)
  else
    redis.call('HSET', key, 'state', state)
  end
  note(key, state, detail, now, ttl)
  count('state:' .. state)
  if FINAL[state] or state == 'held' then
    redis.call('ZREM', PENDING, message_id(key))
    redis.call('DEL', key .. ':payload')
  end
end
local function flush_counts()
  local minute = STATS .. ':m:' .. math.floor(tonumber(redis.call('TIME')[1]) / 60)
  local states = false
  for field, n in pairs(COUNTS) do
    redis.call('HINCRBY', STATS, field, n)
    local state = string.match(field, '^state:(.+)$')
    if state then
      redis.call('HINCRBY', minute, state, n)
      states = true
    end
  end
  if states then redis.call('EXPIRE', minute, 3900) end
end
"""


def lua_script(body: str) -> str:
    """``body`` with the shared functions above; counters are written once, when it has run."""
    runner = "local result = main()\nflush_counts()\nreturn result\n"
    return f"{_PRELUDE}local function main()\n{body}\nend\n{runner}"


_ACCEPT = lua_script(
    f"""
-- KEYS[1] queue, KEYS[1+i] status key of item i; ARGV[1] now, ARGV[2] ttl, ARGV[3] seen ttl,
-- then 8 per item (the 8th: the email-seen key of an identify carrying an email, else '').
local now, ttl, seen_ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local fresh, recent = {{}}, {{}}
for i = 2, #KEYS do
  local key = KEYS[i]
  local base = 3 + (i - 2) * 8
  local state, kind = ARGV[base + 1], ARGV[base + 2]
  if redis.call('EXISTS', key) == 1 then
    fresh[#fresh + 1] = 0
    count('duplicate:' .. kind)
  else
    redis.call('HSET', key, 'id', ARGV[base + 6], 'type', kind, 'user', ARGV[base + 3],
      'event', ARGV[base + 4], 'received', now, 'since', now, 'attempts', 0)
    set_state(key, state, ARGV[base + 5], now, ttl)
    if ARGV[base + 7] ~= '' then
      enqueued(key, ARGV[base + 7], now, ttl)
      redis.call('LPUSH', KEYS[1], ARGV[base + 7])
    end
    count('accepted:' .. kind)
    if ARGV[base + 8] ~= '' then redis.call('SET', ARGV[base + 8], 1, 'EX', seen_ttl) end
    recent[#recent + 1] = ARGV[base + 6]
    fresh[#fresh + 1] = 1
  end
end
if #recent > 0 then
  redis.call('LPUSH', '{keys.RECENT}', unpack(recent, math.max(1, #recent - {RECENT_LIMIT - 1})))
  redis.call('LTRIM', '{keys.RECENT}', 0, {RECENT_LIMIT - 1})
end
return fresh
"""
)

_TRANSITION = lua_script(
    """
-- KEYS[1] status key; ARGV: now, ttl, state, detail, attempts ('' = unchanged)
local attempts = ARGV[5] ~= '' and ARGV[5] or nil
set_state(KEYS[1], ARGV[3], ARGV[4], ARGV[1], tonumber(ARGV[2]), attempts)
return 1
"""
)


_BEGIN = f"""
-- KEYS: status; ARGV: now, ttl, message id. Counts an attempt; returns state, attempts, since.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'state', 'received', 'received', ARGV[1], 'since', ARGV[1], 'attempts', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
redis.call('ZADD', '{keys.PENDING}', 'XX', ARGV[1], ARGV[3])
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
local record = redis.call('HMGET', KEYS[1], 'state', 'since')
return {{record[1] or 'received', attempts, record[2] or ARGV[1]}}
"""

# The survey guard: 'inflight:<deadline>' while a worker calls Promoter, then 'sent', or 'unknown'
# when the call may have reached Promoter but its answer did not reach us. An inflight lease that
# ran out means its worker died mid-call: unknown too. Only 'go' lets a survey call be made.
_CLAIM_SURVEY = """
-- KEYS: status; ARGV: now, lease seconds. Returns 'go', 'sent', 'unknown' or seconds still leased.
local current = redis.call('HGET', KEYS[1], 'survey') or ''
if current == 'sent' or current == 'unknown' then return current end
local deadline = string.match(current, '^inflight:(.+)$')
if deadline then
  if tonumber(deadline) > tonumber(ARGV[1]) then return tostring(tonumber(deadline) - tonumber(ARGV[1])) end
  redis.call('HSET', KEYS[1], 'survey', 'unknown')
  return 'unknown'
end
redis.call('HSET', KEYS[1], 'survey', 'inflight:' .. (tonumber(ARGV[1]) + tonumber(ARGV[2])))
return 'go'
"""


@dataclass(frozen=True)
class Attempt:
    state: str
    number: int
    since: float


@dataclass(frozen=True)
class Admission:
    """One validated event on its way in: the state it starts in and its task message, if any."""

    event: Event
    state: str
    detail: str = ""
    message: str | None = None
    task_id: str = ""


class Ledger:
    def __init__(self, client: redis.Redis, ttl_seconds: int, queue: str, seen_ttl: int = 604800) -> None:
        self.client = client
        self.ttl = ttl_seconds
        self.queue = queue
        self.seen_ttl = seen_ttl
        self._accept = client.register_script(_ACCEPT)
        self._transition = client.register_script(_TRANSITION)
        self._begin = client.register_script(_BEGIN)
        self._claim_survey = client.register_script(_CLAIM_SURVEY)

    def accept(self, admissions: Sequence[Admission]) -> list[bool]:
        """Record and queue every admission in one atomic round trip; False marks a duplicate."""
        if not admissions:
            return []
        argv: list[Any] = [f"{time.time():.3f}", self.ttl, self.seen_ttl]
        for item in admissions:
            event = item.event
            carries_email = (
                event["type"] == "identify" and bool(event["traits"].get("email")) and item.message
            )
            argv += [
                item.state,
                event["type"],
                user_key(event),
                event.get("event") or "",
                item.detail,
                event["messageId"],
                item.message or "",
                keys.email_seen(user_key(event)) if carries_email else "",
            ]
        status_keys = [keys.message(a.event["messageId"]) for a in admissions]
        flags = self._accept(keys=[self.queue, *status_keys], args=argv, client=self.client)
        return [bool(flag) for flag in flags]

    def transition(self, message_id: str, state: str, detail: str = "", attempts: int | None = None) -> None:
        self._transition(
            keys=[keys.message(message_id)],
            args=[f"{time.time():.3f}", self.ttl, state, detail, "" if attempts is None else attempts],
            client=self.client,
        )

    def begin(self, message_id: str) -> Attempt:
        state, number, since = self._begin(
            keys=[keys.message(message_id)],
            args=[f"{time.time():.3f}", self.ttl, message_id],
            client=self.client,
        )
        return Attempt(str(state), int(number), float(since))

    def claim_survey(self, message_id: str, lease_seconds: float) -> str | float:
        """'go' to call Promoter, 'sent' or 'unknown' after an earlier call, else seconds to wait."""
        answer = self._claim_survey(
            keys=[keys.message(message_id)], args=[f"{time.time():.3f}", lease_seconds], client=self.client
        )
        return answer if answer in ("go", "sent", "unknown") else float(answer)

    def settle_survey(self, message_id: str, outcome: str) -> None:
        """'sent', 'unknown', or '' when the call certainly did not happen and may be made again."""
        self.client.hset(keys.message(message_id), "survey", outcome)

    def status(self, message_id: str) -> dict[str, Any] | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(keys.message(message_id))
        pipe.lrange(keys.history(message_id), 0, -1)
        record, log = pipe.execute()
        if not record:
            return None
        result: dict[str, Any] = {_text(k): _text(v) for k, v in record.items()}
        result["attempts"] = int(result.get("attempts") or 0)
        result["history"] = [json.loads(entry) for entry in log]
        return result


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
