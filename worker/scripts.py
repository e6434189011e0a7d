"""Loading the Lua scripts: ``worker/lua/<owner>.<name>.lua``, each wrapped with the part of the
shared prelude it uses.

Constants the scripts need (states, key formats, TTLs, queue names, the task message template, the
budget) are generated here from ``State``, ``keys``, ``taskmessages`` and ``Settings``, so a key format
or the list of final states exists once, in Python. A script body sees ``NOW`` (its ``ARGV[1]``), the
prelude's functions, and returns through a wrapper that writes the counters it gathered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import redis

from worker import keys, taskmessages
from worker.metrics import LATENCY_BUCKETS
from worker.settings import DAY, Settings
from worker.states import FINAL

LUA_DIR = Path(__file__).resolve().parent / "lua"
HISTORY_LIMIT = 50
RECENT_LIMIT = 200

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
    "person_sequence": keys.PERSON_SEQUENCE,
}


def _lua(value: Any) -> str:
    """A Python constant as a Lua literal (strings through JSON escaping, which Lua reads alike)."""
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


def constants(settings: Settings) -> str:
    """The generated head of every script."""
    lines = [
        "local NOW = tonumber(ARGV[1])",
        "local FINAL = {" + ", ".join(f"{state} = true" for state in sorted(FINAL)) + "}",
        f"local KEY = {_lua(_GLOBAL_KEYS)}",
        f"local QUEUE = {_lua({'high': settings.queue_name, 'low': settings.low_queue})}",
        "local TASKS_JSON = "
        + _lua({kind: json.dumps(name) for kind, name in taskmessages.TASK_FOR_TYPE.items()}),
        f"local TASK_TEMPLATE = {_lua(taskmessages.TEMPLATE)}",
        f"local BODY_SUFFIX = {_lua(taskmessages.BODY_SUFFIX)}",
        f"local HISTORY_LIMIT = {HISTORY_LIMIT}",
        f"local RECENT_LIMIT = {RECENT_LIMIT}",
        f"local LATENCY_BUCKETS = {_lua(list(LATENCY_BUCKETS))}",
        f"local CONTACT_LISTS = {_lua(','.join(map(str, settings.promoter_contact_list_ids)))}",
        "local CONFIG = "
        + _lua(
            {
                "status_ttl": settings.status_ttl_seconds,
                # A held message's record must outlive the hold, however short STATUS_TTL_SECONDS is.
                "held_status_ttl": max(
                    settings.status_ttl_seconds,
                    max(settings.hold_ttl_seconds, settings.anonymous_hold_ttl_seconds) + DAY,
                ),
                "dead_ttl": max(settings.status_ttl_seconds, settings.dead_letter_ttl_seconds),
                "person_ttl": settings.person_ttl_seconds,
                "anonymous_id_ttl": settings.anonymous_id_ttl_seconds,
                "survey_cooldown": settings.survey_cooldown_days * DAY,
                "resend_unknown": settings.unknown_survey_outcome == "resend",
            }
        ),
        "local BUDGET = "
        + _lua(
            {
                "interval_ms": 1000.0 / settings.promoter_rate_limit,
                # One second of burst, less the slot being taken.
                "burst_ms": max(0.0, 1000.0 - 1000.0 / settings.promoter_rate_limit),
                "daily_limit": settings.promoter_daily_limit or 0,
                "daily_reserve": settings.promoter_daily_reserve,
            }
        ),
    ]
    for name, template in keys.FORMATS.items():
        before, after = template.split("%s")
        lines.append(f"local function key_{name}(x) return {_lua(before)} .. x .. {_lua(after)} end")
    return "\n".join(lines) + "\n"


@cache
def _source(name: str) -> str:
    return (LUA_DIR / f"{name}.lua").read_text()


def render(name: str, settings: Settings) -> str:
    """The full text of script ``name`` as Redis runs it: the constants and prelude functions it uses
    (directly or through each other), then its body.

    Redis runs the whole text on every call, so each prelude function a script carries but never
    calls is a closure built and collected per call: about a quarter of a short script's time
    (``ledger.begin``: 18.7 µs with the whole prelude, 13.6 µs with its part).
    """
    body = f"\nlocal function main()\n{_source(name)}\nend\n{_WRAPPER_END}"
    definitions = _definitions(constants(settings) + _source("prelude"))
    wanted = _used_by(body, definitions)
    return "".join(text for defined, text in definitions if defined in wanted) + body


_WRAPPER_END = "local result = main()\nflush_counts()\nreturn result\n"

# A top-level definition: ``local function f(``, ``local X =`` / ``local x`` (forward declaration), or
# ``x = function(`` (the body of a forward-declared function).
_DEFINITION = re.compile(r"(?:local\s+function\s+(\w+)|local\s+(\w+)|(\w+)\s*=\s*function\b)")
_NAME = re.compile(r"[A-Za-z_]\w*")


def _definitions(text: str) -> list[tuple[str, str]]:
    """The top-level definitions of a Lua text, in order, each with the comment lines just above it."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines(keepends=True):
        match = _DEFINITION.match(line)
        if match:
            found.append((next(group for group in match.groups() if group), pending + line))
            pending = ""
        elif line.startswith("--") or not found:
            pending += line
        else:
            found[-1] = (found[-1][0], found[-1][1] + line)
    return found


def _used_by(body: str, definitions: list[tuple[str, str]]) -> set[str]:
    """Names of the definitions ``body`` reaches. Any word counts as a use (comments included), so a
    doubt adds a definition, never drops one."""
    texts: dict[str, str] = {}
    for defined, text in definitions:
        texts[defined] = texts.get(defined, "") + text
    wanted: set[str] = set()
    todo = [body]
    while todo:
        for word in set(_NAME.findall(todo.pop())):
            if word in texts and word not in wanted:
                wanted.add(word)
                todo.append(texts[word])
    return wanted


def names() -> list[str]:
    """Every script (the prelude is not one)."""
    return sorted(path.stem for path in LUA_DIR.glob("*.lua") if path.stem != "prelude")


class Lua:
    """The scripts of one owning module (``lua/<owner>.<name>.lua``), called by name: ``lua.bury(...)``."""

    def __init__(
        self, client: redis.Redis, owner: str, settings: Settings, clock: Callable[[], float]
    ) -> None:
        self._client, self._owner, self._settings, self._clock = client, owner, settings, clock
        self._scripts: dict[str, Script] = {}

    def __getattr__(self, name: str) -> Script:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._scripts:
            self._scripts[name] = Script(self._client, f"{self._owner}.{name}", self._settings, self._clock)
        return self._scripts[name]


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


def encode(value: Any) -> str:
    """JSON for ARGV (compact; Lua's cjson reads it)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
