"""The Lua scripts: ``worker/lua/<owner>.<name>.lua``, each run with the library above its body.

A script as Redis runs it is three parts, in this order:

1. the *head*, generated here from Python: ``NOW`` (the caller's clock, always ``ARGV[1]``), every enum
   of ``worker/states.py`` as a table (``STATE.HELD``...), ``FINAL``, the identity prefixes (``ID``), the
   global keys (``KEY``), ``key_<name>(x)`` for each per-message or per-person key of ``keys.FORMATS``,
   the queues, the Celery task message template, and the settings the scripts need (``CONFIG``,
   ``BUDGET``), so a key format or a state exists once, in Python;
2. the *library*, ``worker/lua/lib/*.lua`` in ``LIBRARY`` order, whole (each file opens with what it
   holds);
3. the script's own body, wrapped in ``main()``; the wrapper then writes the person records and
   counters the call changed.

``promoter-relay scripts show NAME`` prints that text with line numbers, which is what a Redis error's
``user_script:<line>`` points into. Carrying the whole library costs each call about 5 µs more than
carrying only what it uses (measured when the old regex linker was dropped); one plain rule is worth it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import redis

from worker import keys, taskmessages
from worker.events import ANONYMOUS_PREFIX, USER_PREFIX
from worker.metrics import LATENCY_BUCKETS
from worker.settings import DAY, Settings
from worker.states import FINAL, LUA_ENUMS, SYNC_OWED

LUA_DIR = Path(__file__).resolve().parent / "lua"
LIBRARY = ("core", "persons", "holds", "budget", "updates", "surveys", "forget")
HISTORY_LIMIT = 50
RECENT_LIMIT = 200
# A person keeps this many anonymousIds (the longest unseen dropped first), alias ids and attributes.
MAX_ANONYMOUS_IDS = 10
MAX_ALIAS_IDS = 20
MAX_ATTRIBUTES = 100
# A userId remembers this many of the anonymousIds it was seen with, for a forget.
MAX_DEVICES = 50
# Attribute names given a number in relay:names (persons.lua); past it, records carry the names.
MAX_NAMES = 1000
# While Promoter refuses the account, one call per this many seconds finds out whether it is fixed.
PROBE_SECONDS = 60.0

_GLOBAL_KEYS = {
    "stats": keys.STATS,
    "stats_minute": keys.STATS_MINUTE,
    "schedule": keys.SCHEDULE,
    "pending": keys.PENDING,
    "holds_users": keys.HOLDS_USERS,
    "holds_anonymous": keys.HOLDS_ANONYMOUS,
    "held_count": keys.HELD_COUNT,
    "dead": keys.DEAD,
    "dead_index": keys.DEAD_INDEX,
    "recent": keys.RECENT,
    "pause": keys.PAUSE,
    "rate": keys.RATE,
    "latency": keys.LATENCY,
    "budget_day": keys.BUDGET_DAY,
    "account": keys.ACCOUNT,
    "nps_latest": keys.NPS_LATEST,
    "names": keys.NAMES,
}


def _lua(value: Any) -> str:
    """A Python constant as a Lua literal (strings as long strings, which need no escaping)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if "]==]" in value:
            raise ValueError("constant cannot be written as a Lua long string")
        return f"[==[{value}]==]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_lua(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "{" + ", ".join(_lua(v) for v in value) + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def config(settings: Settings) -> dict[str, Any]:
    """The settings the scripts read, as ``CONFIG``."""
    return {
        "status_ttl": settings.status_ttl_seconds,
        # A held message's record must outlive the hold, however short STATUS_TTL_SECONDS is.
        "held_status_ttl": max(
            settings.status_ttl_seconds,
            max(settings.hold_ttl_seconds, settings.anonymous_hold_ttl_seconds) + DAY,
        ),
        "dead_ttl": max(settings.status_ttl_seconds, settings.dead_letter_ttl_seconds),
        "person_ttl": settings.person_ttl_seconds,
        # A visitor never identified is reachable only through its anonymousId and held tracks.
        "anonymous_person_ttl": max(settings.anonymous_id_ttl_seconds, settings.anonymous_hold_ttl_seconds),
        "anonymous_id_ttl": settings.anonymous_id_ttl_seconds,
        "survey_cooldown": settings.survey_cooldown_days * DAY,
        "resend_unknown": settings.unknown_survey_outcome == "resend",
        "max_anonymous_ids": MAX_ANONYMOUS_IDS,
        "max_alias_ids": MAX_ALIAS_IDS,
        "max_attributes": MAX_ATTRIBUTES,
        "max_devices": MAX_DEVICES,
        # No status record outlives its last change of state by more than this (each change re-scores
        # its entry): older entries of an identity's message index go.
        "index_horizon": max(
            settings.status_ttl_seconds,
            settings.dead_letter_ttl_seconds,
            max(settings.hold_ttl_seconds, settings.anonymous_hold_ttl_seconds) + DAY,
        )
        + DAY,
    }


def head(settings: Settings) -> str:
    """The generated part of every script."""
    lines = ["local NOW = tonumber(ARGV[1])"]
    for name, enum in LUA_ENUMS.items():
        lines.append(f"local {name} = " + _lua({member.name: member.value for member in enum}))
    lines += [
        "local FINAL = {" + ", ".join(f"{state} = true" for state in sorted(FINAL)) + "}",
        f"local ID = {_lua({'USER': USER_PREFIX, 'ANONYMOUS': ANONYMOUS_PREFIX})}",
        f"local KEY = {_lua(_GLOBAL_KEYS)}",
        f"local QUEUE = {_lua({'high': settings.queue_name, 'low': settings.low_queue})}",
        "local TASKS_JSON = "
        + _lua({kind: json.dumps(name) for kind, name in taskmessages.TASK_FOR_TYPE.items()}),
        f"local TASK_TEMPLATE = {_lua(taskmessages.TEMPLATE)}",
        f"local BODY_SUFFIX = {_lua(taskmessages.BODY_SUFFIX)}",
        f"local TASK_ID_SEPARATOR = {_lua(taskmessages.TASK_ID_SEPARATOR)}",
        f"local SYNC_OWED = {_lua(SYNC_OWED)}",
        f"local HISTORY_LIMIT = {HISTORY_LIMIT}",
        f"local MINUTE_TTL = {keys.MINUTE_TTL}",
        f"local RECENT_LIMIT = {RECENT_LIMIT}",
        f"local MAX_NAMES = {MAX_NAMES}",
        f"local LATENCY_BUCKETS = {_lua(list(LATENCY_BUCKETS))}",
        f"local CONTACT_LISTS = {_lua(','.join(map(str, settings.promoter_contact_list_ids)))}",
        f"local CONFIG = {_lua(config(settings))}",
        "local BUDGET = "
        + _lua(
            {
                "interval_ms": 1000.0 / settings.promoter_rate_limit,
                # One second of burst, less the slot being taken.
                "burst_ms": max(0.0, 1000.0 - 1000.0 / settings.promoter_rate_limit),
                "daily_limit": settings.promoter_daily_limit or 0,
                "daily_reserve": settings.promoter_daily_reserve,
                "probe_ms": PROBE_SECONDS * 1000,
            }
        ),
    ]
    for name, template in keys.FORMATS.items():
        before, after = template.split("%s")
        lines.append(f"local function key_{name}(x) return {_lua(before)} .. x .. {_lua(after)} end")
    return "\n".join(lines) + "\n"


@cache
def source(name: str) -> str:
    """A script's own text, or a library file's (``lib/<name>``)."""
    return (LUA_DIR / f"{name}.lua").read_text()


_WRAPPER = """local function main()
{body}
end
local result = main()
flush_persons()
flush_counts()
return result
"""


def render(name: str, settings: Settings) -> str:
    """The full text of script ``name`` as Redis runs it."""
    library = "".join(source(f"lib/{part}") for part in LIBRARY)
    return head(settings) + library + _WRAPPER.format(body=source(name))


def numbered(name: str, settings: Settings) -> str:
    """The script as Redis runs it, each line numbered as Redis' errors number them."""
    return "".join(
        f"{number:5} {line}\n" for number, line in enumerate(render(name, settings).splitlines(), 1)
    )


def names() -> list[str]:
    """Every script (the library files are not scripts)."""
    return sorted(path.stem for path in LUA_DIR.glob("*.lua"))


class Script:
    """One registered script; calling it passes the clock as ``ARGV[1]``."""

    def __init__(
        self, client: redis.Redis, name: str, settings: Settings, clock: Callable[[], float]
    ) -> None:
        self.name = name
        self.clock = clock
        self._script = client.register_script(render(name, settings))

    def __call__(self, *args: Any, keys: Sequence[str] = ()) -> Any:
        return self._script(keys=list(keys), args=[f"{self.clock():.3f}", *args])

    def queue(self, pipe: redis.client.Pipeline, *args: Any) -> None:
        """Queue one call on ``pipe`` (its answer comes back from ``pipe.execute()``): how the bench
        loads a million people through the same scripts without a round trip per call."""
        self._script(keys=[], args=[f"{self.clock():.3f}", *args], client=pipe)


class Scripts:
    """The scripts of one owning store (``lua/<owner>.<name>.lua``), each made once by name."""

    def __init__(
        self, client: redis.Redis, owner: str, settings: Settings, clock: Callable[[], float]
    ) -> None:
        self._client, self._owner, self._settings, self._clock = client, owner, settings, clock

    def __call__(self, name: str) -> Script:
        return Script(self._client, f"{self._owner}.{name}", self._settings, self._clock)


def encode(value: Any) -> str:
    """JSON for ARGV (compact; Lua's cjson reads it)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
