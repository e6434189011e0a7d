"""People: what a known person costs in Redis, and whether a track's and an identify's cost grows with
the number of people.

People are loaded through the relay's own scripts, pipelined (``Script.queue``), as the worker runs
them: an identify is accepted (``messages.accept``), begun, merged into its person (``people.contact``)
and settled as Promoter accepted it (``people.synced``); half the people are then surveyed (a track:
``people.track``, ``people.settle_survey``), a quarter have an order (``people.track``,
``people.synced``). No HTTP and no Promoter call: what is measured is what Redis keeps and does.

"Status records expired" is applied as Redis would: every key whose TTL is within STATUS_TTL_SECONDS
of now is deleted (status records, stored events, histories, and anonymousId links, whose TTL is
shorter), and what remains is what a person costs for the rest of the year.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import redis

from bench.infra import median
from bench.storage import SETTINGS, admit
from worker import keys
from worker.events import Event, anonymous_identity, user_identity, version
from worker.mapping import contact_body, contact_fields, order_of
from worker.messages import Admission
from worker.people import decision
from worker.promoter import NO_CALL
from worker.scripts import Script, encode
from worker.settings import Settings
from worker.stores import Stores, build_stores

# Default TTLs (status records three days, anonymousId links a day, people a year).
PEOPLE_SETTINGS = replace(
    SETTINGS,
    status_ttl_seconds=Settings.status_ttl_seconds,
    survey_events=frozenset({"NPS Survey"}),
    promoter_campaign_id=1,
)
CAMPAIGN = 1
BATCH = 500
PROFILES: dict[str, tuple[int, int]] = {
    "10 traits, 1 anonymousId": (10, 1),
    "30 traits, 1 anonymousId": (30, 1),
    "10 traits, 5 anonymousIds": (10, 5),
}
TARGET_PROFILE = "10 traits, 1 anonymousId"
MAX_BYTES = 400
SCALE_SMALL = 10_000
PROFILE_PEOPLE = 2000
SAMPLES = 1000
# Ordinary trait names and values of a shop's or an app's customer, past email and names.
TRAITS = [
    ("plan", "pro"), ("company", "Analytical Engines Ltd"), ("city", "London"), ("country", "GB"),
    ("phone", "+44 20 7946 0958"), ("title", "Head of Product"), ("created_at", "2024-03-14T09:26:53Z"),
    ("industry", "Software"), ("locale", "en-GB"), ("employees", "51-200"),
]  # fmt: skip
KINDS = [
    ("person record", re.compile(r"^relay:person:\{[^}]*\}$")),
    ("anonymousIds of a person", re.compile(r"^relay:person:\{[^}]*\}:anon$")),
    ("anonymousId links", re.compile(r"^relay:id:\{a:[^}]*\}$")),
    ("email index", re.compile(r"^relay:emails?:\{[^}]*\}$")),
]


def traits_of(i: int, count: int, salt: str) -> dict[str, str]:
    """``count`` traits: email, first and last name, then ordinary ones (numbered past the ten known)."""
    traits = {"email": f"ada{i}.{salt}@example.com", "firstName": "Ada", "lastName": "Lovelace"}
    extra = TRAITS + [(f"custom_trait_{n}", f"value {n} of {i}") for n in range(count)]
    for name, value in extra[: count - 3]:
        traits[name] = value
    return traits


@dataclass
class Population:
    """People loaded through the scripts into one Redis; ``size`` of them so far."""

    client: redis.Redis
    stores: Stores
    salt: str
    size: int = 0

    @classmethod
    def make(cls, client: redis.Redis) -> Population:
        return cls(client, build_stores(PEOPLE_SETTINGS, client=client), uuid.uuid4().hex[:6])

    def script(self, owner: str, name: str) -> Script:
        found: Script = getattr(getattr(self.stores, owner), f"_{name}")
        return found

    def user(self, i: int) -> str:
        return f"usr_{self.salt}{i:08d}"

    def email(self, i: int) -> str:
        return traits_of(i, 3, self.salt)["email"]

    def anonymous(self, i: int, n: int) -> str:
        digest = hashlib.md5(f"{self.salt}{i}.{n}".encode(), usedforsecurity=False).digest()
        return str(uuid.UUID(bytes=digest))

    def grow(
        self, count: int, traits: int = 10, anonymous: int = 1, expire: bool = True, surveys: bool = True
    ) -> None:
        """``count`` more people, in batches; ``expire`` drops each batch's status records as it goes
        (what their TTL does), so a million people fit in memory. ``surveys=False`` leaves out the
        survey tracks, which leave nothing in a person (a quicker load of the same population)."""
        for start in range(self.size, self.size + count, BATCH):
            people = range(start, min(start + BATCH, self.size + count))
            refs = self.identify(people, traits, 0)
            for n in range(1, anonymous):
                refs += self.identify(people, traits, n)
            if surveys:
                refs += self.track([i for i in people if i % 2 == 0], order=False)
            refs += self.track([i for i in people if i % 4 == 1], order=True)
            if expire:
                self.forget(refs)
        self.size += count

    def identify(self, people: Sequence[int], traits: int, nth: int, changed: str = "") -> list[str]:
        """One identify per person, delivered: its anonymousId is the person's ``nth``."""
        bodies = []
        for i in people:
            body_traits = traits_of(i, traits, self.salt)
            if changed:
                body_traits["plan"] = changed
            message_id = f"{self.salt}-{i}-i{nth}{changed}"
            bodies.append({"messageId": message_id, "userId": self.user(i), "traits": body_traits,
                           "anonymousId": self.anonymous(i, nth)})  # fmt: skip
        events = self.accept(bodies, "identify")
        plans = self.run("people", "contact", [self._contact_args(e) for e in events])
        synced = []
        for event, raw in zip(events, plans, strict=True):
            plan = decision(raw).sync
            if plan is None:  # an identify that changes nothing (another anonymousId) is skipped
                continue
            synced.append(self._synced_args(plan, event))
        self.run("people", "synced", synced)
        return [e["ref"] for e in events]

    def track(self, people: Sequence[int], order: bool, tag: str = "") -> list[str]:
        """A survey track (order=False) or an "Order Completed" (not a survey event) per person."""
        bodies: list[dict[str, Any]] = []
        for i in people:
            message_id = f"{self.salt}-{i}-t{int(order)}{tag}"
            body: dict[str, Any] = {"messageId": message_id, "userId": self.user(i),
                                    "anonymousId": self.anonymous(i, 0)}  # fmt: skip
            if order:
                body |= {"event": "Order Completed", "properties": {"order_id": f"o{i}", "total": 42.5}}
            else:
                body |= {"event": "NPS Survey", "properties": {"plan": "pro"}}
            bodies.append(body)
        events = self.accept(bodies, "track")
        answers = self.run("people", "track", [self._track_args(e, order) for e in events])
        follow: list[list[Any]] = []
        for event, raw in zip(events, answers, strict=True):
            plan = decision(raw)
            if order and plan.sync is not None:
                follow.append(self._synced_args(plan.sync, event))
            elif plan.survey is not None:
                email = plan.survey.email
                follow.append([event["ref"], "sent", f"survey sent (campaign {CAMPAIGN})", email, CAMPAIGN,
                               *NO_CALL.args()])  # fmt: skip
        self.run("people", "synced" if order else "settle", follow)
        return [e["ref"] for e in events]

    def accept(self, bodies: list[dict[str, Any]], kind: str) -> list[Event]:
        admissions: list[Admission] = [admit(body, kind) for body in bodies]
        self.stores.messages.accept(admissions)
        self.client.delete(PEOPLE_SETTINGS.queue_name, PEOPLE_SETTINGS.low_queue)
        # messages.start is left out: it numbers the run (1 here) and reads the stored event, whatever
        # the population; the person scripts are what could grow with it.
        return [a.event for a in admissions]

    def run(self, owner: str, name: str, calls: list[list[Any]]) -> list[Any]:
        if not calls:
            return []
        script = self.script(owner, name)
        pipe = self.client.pipeline(transaction=False)
        for args in calls:
            script.queue(pipe, *args)
        answers: list[Any] = pipe.execute()
        return answers

    def forget(self, refs: list[str]) -> None:
        """What STATUS_TTL_SECONDS does to these messages."""
        pipe = self.client.pipeline(transaction=False)
        for ref in refs:
            pipe.delete(keys.message(ref), keys.event(ref), keys.history(ref))
        pipe.zrem(keys.PENDING, *refs)
        pipe.execute()

    def _contact_args(self, event: Event) -> list[Any]:
        user, anonymous = _identities(event)
        fields = contact_fields(event["traits"])
        return [event["ref"], _token(event), user, anonymous, encode(fields), version(event), "high",
                self.stores.people.lease_seconds, ""]  # fmt: skip

    def _synced_args(self, plan: Any, event: Event) -> list[Any]:
        body = contact_body(plan.fields, ())
        contact_id = str(48_000_000 + int(str(event["userId"])[-8:]))
        return [plan.person, event["ref"], _token(event), plan.rev, plan.fingerprint, body["email"],
                body.get("first_name", ""), body.get("last_name", ""), contact_id, "high",
                self.stores.people.lease_seconds, *NO_CALL.args()]  # fmt: skip

    def _track_args(self, event: Event, is_order: bool) -> list[Any]:
        user, anonymous = _identities(event)
        order = ""
        if is_order:
            found = order_of(event.get("properties") or {}, event["messageId"], event["timestamp"])
            order = encode(found.as_json(version(event)))
        lease = self.stores.people.lease_seconds
        survey = "" if is_order else "1"
        return [event["ref"], _token(event), user, anonymous, order, survey, CAMPAIGN, "high", lease, lease]


def _token(event: Event) -> str:
    return f"{event['ref']}#1"


def _identities(event: Event) -> tuple[str, str]:
    user = user_identity(str(event["userId"])) if event.get("userId") else ""
    anonymous = anonymous_identity(str(event["anonymousId"])) if event.get("anonymousId") else ""
    return user, anonymous


# --- bytes per person ------------------------------------------------------------------------------


def expire_status(client: redis.Redis, within: int) -> None:
    """Delete every key that would have expired ``within`` seconds from now."""
    for batch in _scan(client):
        pipe = client.pipeline(transaction=False)
        for name in batch:
            pipe.ttl(name)
        doomed = [name for name, ttl in zip(batch, pipe.execute(), strict=True) if 0 < ttl <= within]
        if doomed:
            client.delete(*doomed)


def _scan(client: redis.Redis) -> list[list[str]]:
    names = [str(name) for name in client.scan_iter(count=1000)]
    return [names[i : i + 1000] for i in range(0, len(names), 1000)]


def usage_by_kind(client: redis.Redis) -> dict[str, float]:
    """MEMORY USAGE summed per kind of per-person key; the rest of the per-item keys as 'other'."""
    found: dict[str, float] = defaultdict(float)
    for batch in _scan(client):
        pipe = client.pipeline(transaction=False)
        for name in batch:
            pipe.memory_usage(name, samples=0)
        for name, size in zip(batch, pipe.execute(), strict=True):
            if "{" not in name:
                continue  # shared structures (counters, queues): not per person
            kind = next((label for label, pattern in KINDS if pattern.match(name)), f"other: {name[:16]}")
            found[kind] += int(size or 0)
    return dict(found)


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


# Redis memory a key with a TTL costs beyond its MEMORY USAGE: the allocator's rounding of its
# dictEntry, its slots in the keyspace's and the expiry table's arrays, and its expiry entry. Measured
# on redis-server 7.0.15 (jemalloc): used_memory per key minus MEMORY USAGE, 62 B among 100,000 keys
# of 280 B with a TTL, 57 B among 1,000,000.
KEY_OVERHEAD = 60
# Buckets hold from 10 to 20 entries (15 on average, as a million people make them), and the day
# they were last pruned, as persons.lua's index_email leaves them.
FILL_INDEX = """
local today = ARGV[1]
for i = 2, #ARGV do
  local bucket = tonumber(ARGV[i], 16)
  local key = 'relay:emails:{' .. ARGV[i] .. '}'
  for n = 1, 10 + (bucket * 7919) % 11 do
    local person = 'u:usr_' .. string.format('%014d', n) .. ' ' .. today
    redis.call('HSET', key, string.format('%012x', bucket * 1000 + n), person)
  end
  redis.call('HSET', key, '#', today)
  redis.call('EXPIRE', key, 31536000)
end
"""


def fill_email_index(client: redis.Redis, populations: Sequence[Population], count: int) -> None:
    """The buckets the first ``count`` people of these populations will write to, filled first (a
    person's share of the index is what its entry adds to a bucket as full as a million make it)."""
    buckets = sorted({keys.email_slot(p.email(i))[0][-5:-1] for p in populations for i in range(count)})
    today = int(time.time() // 86400)
    for start in range(0, len(buckets), 1000):
        client.eval(FILL_INDEX, 0, today, *buckets[start : start + 1000])


def profile_bytes(population: Population, count: int, traits: int, anonymous: int) -> dict[str, Any]:
    """Per person: MEMORY USAGE by key kind, while its anonymousIds are linked ("live") and after
    status records expired, and how many keys it keeps. The email index's buckets must be filled
    first (``fill_email_index``): its share is what a person adds among a million people."""
    client = population.client
    before, keys_before = usage_by_kind(client), client.dbsize()
    population.grow(count, traits, anonymous, expire=False)
    live = usage_by_kind(client)
    expire_status(client, PEOPLE_SETTINGS.status_ttl_seconds + 60)
    after = usage_by_kind(client)
    kinds = {kind: (after[kind] - before.get(kind, 0)) / count for kind in after}
    result: dict[str, Any] = {f"usage: {kind}": size for kind, size in kinds.items() if size}
    result["usage_bytes"] = sum(kinds.values())
    person_kinds = [label for label, _ in KINDS]
    result["live_bytes"] = sum(live.get(k, 0) - before.get(k, 0) for k in person_kinds) / count
    result["keys"] = (client.dbsize() - keys_before) / count
    result["with_key_overhead_bytes"] = result["usage_bytes"] + KEY_OVERHEAD * result["keys"]
    return result


# --- cost per event at two populations -----------------------------------------------------------


def event_costs(population: Population, samples: int = SAMPLES) -> dict[str, float]:
    """Server time of the scripts of an identify (a changed trait: contact + synced) and of a survey
    track (track + settle_survey) of people picked across the population: p50/p99 per event from
    SLOWLOG (every command logged), and Redis CPU per event from used_cpu and commandstats."""
    client = population.client
    step = max(1, population.size // samples)
    people = list(range(0, population.size, step))[:samples]
    tag = uuid.uuid4().hex[:4]
    figures: dict[str, float] = {}
    kinds: list[tuple[str, Callable[[Sequence[int]], list[str]]]] = [
        ("identify", lambda chunk: population.identify(chunk, 10, 0, changed=f"team-{tag}")),
        ("track", lambda chunk: population.track(chunk, order=False, tag=tag)),
    ]
    for kind, send in kinds:
        old = cast(dict[str, str], client.config_get("slowlog-*"))
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 4 * len(people) + 1000)
        try:
            client.slowlog_reset()
            cpu0, usec0 = _cpu(client)
            refs: list[str] = []
            for start in range(0, len(people), 100):
                refs += send(people[start : start + 100])
            cpu1, usec1 = _cpu(client)
            entries = client.slowlog_get(-1)
        finally:
            for name, value in old.items():
                client.config_set(name, value)
        per_event = _per_event(entries, set(refs))
        times = sorted(per_event.values())
        figures[f"{kind} p50 us"] = times[len(times) // 2]
        figures[f"{kind} p99 us"] = times[min(len(times) - 1, int(len(times) * 0.99))]
        figures[f"{kind} redis cpu us"] = (cpu1 - cpu0) * 1e6 / len(refs)
        figures[f"{kind} script us"] = (usec1 - usec0) / len(refs)
        population.forget(refs)
    return figures


def _cpu(client: redis.Redis) -> tuple[float, float]:
    cpu = client.info("cpu")
    stats = client.info("commandstats")
    usec = sum(float(v["usec"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), usec


def _per_event(entries: list[dict[str, Any]], refs: set[str]) -> dict[str, float]:
    """Microseconds of every script call that names one of ``refs`` (as ARGV[2] or ARGV[3]), summed
    per ref: an event's scripts, whatever they are."""
    total: dict[str, float] = defaultdict(float)
    for entry in entries:
        command = entry["command"]
        words = (command.decode(errors="replace") if isinstance(command, bytes) else str(command)).split(" ")
        if not words or words[0].upper() != "EVALSHA":
            continue
        ref = next((w for w in words[4:6] if w in refs), None)
        if ref is not None:
            total[ref] += float(entry["duration"])
    return total


def scaling(large: redis.Redis, small: redis.Redis, people: int, repeats: int) -> dict[str, Any]:
    """Event costs among SCALE_SMALL people (one Redis) and among ``people`` (another), measured in
    turns, so that the machine's noise hits both alike; and how long loading them took."""
    populations = {"small": Population.make(small), "large": Population.make(large)}
    result: dict[str, Any] = {"people": people, "small_people": SCALE_SMALL}
    for name, size in (("small", SCALE_SMALL), ("large", people)):
        started = time.monotonic()
        populations[name].client.flushdb(asynchronous=True)
        for _ in range(0, size, 50_000):
            populations[name].grow(min(50_000, size - populations[name].size), surveys=False)
            if size > 50_000:
                loaded = populations[name].size
                print(f"[bench] people: {loaded:,} loaded in {time.monotonic() - started:.0f} s", flush=True)
        result[f"load_s @{name}"] = time.monotonic() - started
        result[f"used_memory_mib @{name}"] = _used(populations[name].client) / 2**20
    runs: dict[str, list[dict[str, float]]] = {"small": [], "large": []}
    for _ in range(repeats):
        for name in ("small", "large"):
            runs[name].append(event_costs(populations[name]))
    for name, measured in runs.items():
        for figure in measured[0]:
            result[f"{figure} @{name}"] = median(r[figure] for r in measured)
    return result


def section(
    client: redis.Redis, small: redis.Redis | None, people: int, repeats: int
) -> dict[str, list[dict[str, Any]]]:
    """The bench's "people" section: one row per profile (bytes are exact: measured once), and the
    cost of events among SCALE_SMALL people, compared with ``people`` when it is larger."""
    runs: dict[str, list[dict[str, Any]]] = {}
    client.flushdb(asynchronous=True)
    populations = {name: Population.make(client) for name in PROFILES}
    fill_email_index(client, list(populations.values()), PROFILE_PEOPLE)
    for name, (traits, anonymous) in PROFILES.items():
        runs[f"profile: {name}"] = [profile_bytes(populations[name], PROFILE_PEOPLE, traits, anonymous)]
    client.flushdb(asynchronous=True)
    if small is not None and people > SCALE_SMALL:
        runs["events: scaling"] = [scaling(client, small, people, repeats)]
        # Printed at once: a long run's figures survive whatever fails after them.
        print("[bench] people scaling: " + json.dumps(runs["events: scaling"][0]), flush=True)
    else:
        client.flushdb(asynchronous=True)
        population = Population.make(client)
        started = time.monotonic()
        population.grow(SCALE_SMALL, surveys=False)
        load = time.monotonic() - started
        measured = [event_costs(population) for _ in range(repeats)]
        row = {f"{figure} @small": median(r[figure] for r in measured) for figure in measured[0]}
        runs["events: scaling"] = [
            {"people": SCALE_SMALL, "small_people": SCALE_SMALL, "load_s @small": load, **row}
        ]
    client.flushdb(asynchronous=True)
    return runs
