"""Upgrades of what Redis holds: numbered schema versions and the steps between them.

``relay:schema`` holds the version of the stored layout. A Redis without it holds either nothing of the
relay (a fresh one: stamped with ``CURRENT`` and nothing to do) or the data of release ece91c4, the
last one without it: version 1. Each ``Step`` takes the data from the version before it to its own;
``STEPS`` is the chain, oldest first, and a new layout appends one step (and its tests) to it.

A step is ``run(context) -> counts``. It must be idempotent and resumable: it works in batches (SCAN,
then one Lua call per batch, each atomic), picks only what is still in the old layout, and the version
is written only once the whole step is done, so a crash midway and a rerun finish the job. Steps run
under ``keys.MIGRATION_LOCK``, renewed between batches, so two processes starting at once do not both
run one; the other waits for the version to arrive.

Why at start rather than reading both layouts: every script would have to read two person encodings,
two identity schemes and two sets of state names for as long as a year-old person may be read (its
TTL), and the scripts that decide surveys are the last place for such branches. A migration is one
tested function per change, run once. The workers and beat run it before they consume anything, the
API answers 503 (Segment retries) until it is done, and ``promoter-relay migrate`` runs it by hand.
See docs/upgrading.md.
"""

from __future__ import annotations

import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import redis

from worker import keys
from worker.settings import Settings

Counts = dict[str, int]
BATCH = 200
SCAN_COUNT = 1000
LOCK_SECONDS = 60
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class MigrationError(Exception):
    """The stored data cannot be brought to this version (newer data, a lost lock, a timeout)."""


@dataclass
class Context:
    """What a step gets: the Redis, the settings (TTLs), the time, whether to only count, and the lock
    it renews between batches (``None`` on a dry run, which takes none)."""

    redis: redis.Redis
    settings: Settings
    now: float
    dry_run: bool = False
    lock: MigrationLock | None = None

    def batches(self, match: str, kind: str, pattern: re.Pattern[str]) -> Iterator[list[str]]:
        """The parts (``pattern``'s group 1) of the keys of type ``kind`` matching ``match``, in
        batches; the lock is renewed before each."""
        batch: list[str] = []
        for key in self.redis.scan_iter(match=match, count=SCAN_COUNT, _type=kind):
            found = pattern.match(key)
            if found:
                batch.append(found.group(1))
            if len(batch) >= BATCH:
                self.renew()
                yield batch
                batch = []
        if batch:
            self.renew()
            yield batch

    def renew(self) -> None:
        if self.lock is not None:
            self.lock.renew()

    def script(self, name: str) -> Callable[..., list[str | int]]:
        """A Lua file of ``worker/migrations``, called with the time first."""
        registered = self.redis.register_script((MIGRATIONS_DIR / f"{name}.lua").read_text())

        def call(*args: str | int | float) -> list[str | int]:
            answer = registered(keys=[], args=[f"{self.now:.3f}", *args])
            return cast(list[str | int], answer)

        return call


@dataclass(frozen=True)
class Step:
    """One migration: the version it leaves the data in, what it does in a line, and the function."""

    version: int
    summary: str
    run: Callable[[Context], Counts]


def _pairs(flat: list[str | int]) -> Counts:
    return {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}


# --- version 1 -> 2: "One userId, one person" (commit beaca5b) ----------------------------------------

_OLD_PERSON = re.compile(r"^relay:person:\{(\d+)\}$")
_IDENTITY = re.compile(r"^(relay:id:\{.*\})$")
_MESSAGE = re.compile(r"^relay:msg:\{(.*)\}$")
_OLD_PERSON_SEQUENCE = "relay:person-seq"


def persons_v2(ctx: Context) -> Counts:
    """Each schema 1 person (a numbered hash with its ids set, orders hash and waiting set) becomes one
    JSON record named after its newest userId (else its anonymousId), its other userIds alias
    pointers, its anonymousIds linked to the name; fingerprints, versions and orders converted so
    that nothing unchanged is sent again (``worker/migrations/v2_persons.lua``)."""
    convert = ctx.script("v2_persons")
    settings = ctx.settings
    anonymous_person_ttl = max(settings.anonymous_id_ttl_seconds, settings.anonymous_hold_ttl_seconds)
    counts: Counter[str] = Counter()
    for batch in ctx.batches("relay:person:{*}", "hash", _OLD_PERSON):
        counts.update(
            _pairs(
                convert(
                    settings.person_ttl_seconds,
                    anonymous_person_ttl,
                    settings.anonymous_id_ttl_seconds,
                    "1" if ctx.dry_run else "",
                    *batch,
                )
            )
        )
    return dict(counts)


def identity_links_v2(ctx: Context) -> Counts:
    """Links that still name a person by number lead nowhere once the persons are converted (their
    person expired, or merged away): schema 1 would have started a new person for them too."""
    dropped = 0
    for batch in ctx.batches("relay:id:{*}", "string", _IDENTITY):
        values = ctx.redis.mget(batch)
        pairs = zip(batch, cast(list[str | None], values), strict=True)
        numbered = [(key, value) for key, value in pairs if value and value.isdigit()]
        pipe = ctx.redis.pipeline(transaction=False)
        for _, value in numbered:
            pipe.exists(f"relay:person:{{{value}}}")
        stale = [key for (key, _), alive in zip(numbered, pipe.execute(), strict=True) if not alive]
        if stale and not ctx.dry_run:
            ctx.redis.delete(*stale)
        dropped += len(stale)
    return {"links_dropped": dropped} if dropped else {}


def records_v2(ctx: Context) -> Counts:
    """Status records as schema 2 reads them (``worker/migrations/v2_records.lua``)."""
    convert = ctx.script("v2_records")
    counts: Counter[str] = Counter()
    for batch in ctx.batches("relay:msg:{*}", "hash", _MESSAGE):
        counts.update(_pairs(convert("1" if ctx.dry_run else "", *batch)))
        counts["records"] += len(batch)
    if not ctx.dry_run:
        ctx.redis.delete(_OLD_PERSON_SEQUENCE)
    return dict(counts)


def to_v2(ctx: Context) -> Counts:
    """Persons first (records and links are read against them), then links, then status records.
    Queued Celery messages need nothing: task names and their one argument, the ref, are unchanged."""
    counts: Counter[str] = Counter()
    for part in (persons_v2, identity_links_v2, records_v2):
        counts.update(part(ctx))
    return dict(counts)


STEPS: list[Step] = [
    Step(2, "persons named by identity, alias pointers, status records of schema 2", to_v2),
]
CURRENT = STEPS[-1].version


# --- running them ---------------------------------------------------------------------------------------


class MigrationLock:
    """``keys.MIGRATION_LOCK`` with this process's token, expiring unless renewed (a crashed migrator
    lets the next one in within ``LOCK_SECONDS``)."""

    _MINE = "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end "
    _RENEW = _MINE + "return redis.call('EXPIRE', KEYS[1], ARGV[2])"
    _RELEASE = _MINE + "return redis.call('DEL', KEYS[1])"

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.token = uuid.uuid4().hex

    def acquire(self) -> bool:
        return bool(self.client.set(keys.MIGRATION_LOCK, self.token, nx=True, ex=LOCK_SECONDS))

    def renew(self) -> None:
        if not self.client.eval(self._RENEW, 1, keys.MIGRATION_LOCK, self.token, LOCK_SECONDS):
            raise MigrationError("the migration lock was lost (another process took over); run it again")

    def release(self) -> None:
        self.client.eval(self._RELEASE, 1, keys.MIGRATION_LOCK, self.token)


@dataclass
class Report:
    """What a run found and did: the version before (``None``: an empty Redis), after, and per step
    (its version) the counts and seconds."""

    before: int | None
    after: int
    steps: dict[int, Counts] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    dry_run: bool = False


def stored_version(client: redis.Redis) -> int | None:
    """The stored layout's version; ``None`` for a Redis with nothing of the relay in it."""
    value = client.get(keys.SCHEMA)
    if value is not None:
        return int(value)
    for _ in client.scan_iter(match=f"{keys.PREFIX}:*", count=SCAN_COUNT):
        return 1
    return None


def _check_not_newer(version: int) -> None:
    if version > CURRENT:
        raise MigrationError(
            f"Redis holds data of schema {version}, newer than this version's {CURRENT}: "
            "run the newer release (downgrades are not supported)"
        )


def migrate(
    client: redis.Redis,
    settings: Settings,
    *,
    dry_run: bool = False,
    wait_seconds: float = 0.0,
    clock: Callable[[], float] = time.time,
    progress: Callable[[str], None] = lambda _: None,
) -> Report:
    """Bring the stored data to ``CURRENT``. Another process migrating: wait up to ``wait_seconds``
    for it to finish (``MigrationError`` after that). A dry run counts what the next steps would
    convert and writes nothing."""
    before = stored_version(client)
    if before is None:
        if not dry_run:
            client.set(keys.SCHEMA, CURRENT, nx=True)
        return Report(None, CURRENT, dry_run=dry_run)
    _check_not_newer(before)
    if before == CURRENT:
        return Report(before, before, dry_run=dry_run)
    if dry_run:
        return _run(Context(client, settings, clock(), dry_run=True), before, progress)
    lock = MigrationLock(client)
    deadline = time.monotonic() + wait_seconds
    while not lock.acquire():
        version = stored_version(client) or CURRENT
        if version >= CURRENT:
            _check_not_newer(version)
            return Report(before, version)
        if time.monotonic() >= deadline:
            raise MigrationError("another process is migrating the stored data; try again when it is done")
        time.sleep(0.5)
    try:
        # Re-read under the lock: another process may have finished meanwhile.
        current = stored_version(client) or CURRENT
        _check_not_newer(current)
        report = _run(Context(client, settings, clock(), lock=lock), current, progress)
        report.before = before
        return report
    finally:
        lock.release()


def _run(ctx: Context, version: int, progress: Callable[[str], None]) -> Report:
    report = Report(version, version, dry_run=ctx.dry_run)
    for step in STEPS:
        if step.version <= version:
            continue
        progress(f"schema {report.after} -> {step.version}: {step.summary}")
        started = time.monotonic()
        report.steps[step.version] = step.run(ctx)
        report.seconds[step.version] = time.monotonic() - started
        if not ctx.dry_run:
            ctx.renew()
            ctx.redis.set(keys.SCHEMA, step.version)
        report.after = step.version
    return report


def is_current(client: redis.Redis) -> bool:
    """Whether the stored data is at this version (what the API checks before it serves)."""
    value = client.get(keys.SCHEMA)
    return value is not None and int(value) == CURRENT


def describe(report: Report) -> str:
    """One line per step, for logs and the CLI (counts only: no personal data)."""
    if report.before is None:
        return f"empty Redis: stamped with schema {report.after}"
    if not report.steps:
        return f"schema {report.after}: nothing to migrate"
    verb = "would convert" if report.dry_run else "migrated"
    lines = []
    for version, counts in report.steps.items():
        shown = ", ".join(f"{name} {value}" for name, value in sorted(counts.items())) or "nothing"
        lines.append(f"schema {version}: {verb} {shown} in {report.seconds[version]:.1f}s")
    return "\n".join(lines)


def at_start(settings: Settings, who: str, *, wait_seconds: float = 3600.0) -> None:
    """What a worker or beat does before it consumes anything: migrate, or wait for the process that
    is migrating. A failure stops the process with one line (a half-read layout must not be run)."""
    from worker.stores import redis_client

    def say(line: str) -> None:
        # Celery configures logging after worker_init: the lines go to stderr themselves.
        print(f"promoter-relay {who}: {line}", file=sys.stderr, flush=True)

    client = redis_client(settings, timeout=60.0)
    try:
        report = migrate(client, settings, wait_seconds=wait_seconds, progress=say)
    except (MigrationError, redis.RedisError) as error:
        print(f"promoter-relay {who}: stored data not at schema {CURRENT}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        client.close()
    if report.steps or report.before is None:
        say(describe(report).replace("\n", "; "))
