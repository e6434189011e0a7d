"""Two sections about Promoter calls through the whole stack (``bench.stack``).

* ``calls``: how many calls a realistic Segment mix costs, beside a forwarder that calls for every
  identify and track, and beside the fewest calls any correct relay could make (both from the mix
  itself, ``bench.mix``, never from the relay).
* ``backlog``: with Promoter's real budget (10 calls/s) and 20,000 trait updates queued, how long a
  new user waits for their survey; beside what one FIFO queue would make them wait (computed).
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from bench import mix
from bench.sections import Ctx, Runs
from bench.stack import FINAL_STATES, JSON, Stack, iso

Rows = dict[str, dict[str, Any]]

MIX_SEED = 20_260_101
CALLS_RATE_LIMIT = 1000.0  # high enough never to be what limits the calls section
DRAIN_TIMEOUT_S = 900.0
MIX_USERS = 1000  # per-1,000-event figures: the same shape as 2,000 users, in half the time

ROW_MIX = "Segment mix"
ROW_FORWARDER = "(a) forwarder: every identify and track"
ROW_RELAY = "(b) relay: calls the sandbox received"
ROW_BOUND = "(c) lower bound: contact states + surveys due"
ROW_SAVED = "relay: calls saved by reason"
ROW_STATES = "relay: messages by final state"


def _runs(ctx: Ctx, one: Callable[[Ctx, str], Rows], repeats: int | None = None) -> Runs:
    runs: Runs = defaultdict(list)
    for repeat in range(ctx.repeats if repeats is None else repeats):
        for row, figures in one(ctx, f"r{repeat}{uuid.uuid4().hex[:6]}").items():
            runs[row].append(figures)
    return runs


# --- calls ---------------------------------------------------------------------------------------


def calls(ctx: Ctx) -> Runs:
    """Counts, not times: the same seed's mix makes the same calls in every run (three runs gave 4,602,
    4,605 and 4,602 of a lower bound of 4,601), so one run says it, in a fifth of the bench's time."""
    return _runs(ctx, _calls_run, repeats=1)


def _bodies(messages: list[mix.Message], now: float) -> list[JSON]:
    """Segment bodies with timestamps: the mix's two days end a minute before ``now``."""
    base = now - mix.SPAN_SECONDS - 60
    return [
        {**{k: v for k, v in m.items() if k != "_at"}, "timestamp": iso(base + m["_at"])} for m in messages
    ]


def _calls_run(ctx: Ctx, salt: str) -> Rows:
    ctx.client.flushdb()
    messages = mix.generate(MIX_SEED, salt, mix.MixShape(users=MIX_USERS))
    stack = Stack(ctx.procs, ctx.redis_url, "bench-calls", CALLS_RATE_LIMIT)
    try:
        stack.start_worker(CALLS_RATE_LIMIT)
        started = time.monotonic()
        send_s = stack.post_batches(_bodies(messages, time.time()))
        stats = stack.wait_final(DRAIN_TIMEOUT_S)
        timing = {"send_s": send_s, "final_after_s": time.monotonic() - started}
        received, contacts = stack.calls(), stack.contacts()
    finally:
        stack.stop()
    ctx.client.flushdb()
    return _calls_rows(messages, stats, received, contacts) | {ROW_MIX: mix.shape_counts(messages) | timing}


def _per_1000(figures: dict[str, int], events: int) -> dict[str, float]:
    return {**figures, "per_1000": 1000 * figures["calls"] / events}


def _sandbox_calls(received: list[JSON]) -> dict[str, int]:
    contacts = sum(1 for call in received if call["path"] == "/contacts/")
    surveys = sum(1 for call in received if call["path"] == "/v2/survey/")
    failed = sum(1 for call in received if call["status"] != 200)
    return {"calls": len(received), "contacts": contacts, "surveys": surveys, "not_200": failed}


def _wrong_contacts(messages: list[mix.Message], contacts: list[JSON]) -> int:
    """Persons whose contact at Promoter does not end with their last plan and distinct order count."""
    found = {
        c["email"].lower(): {
            "plan": c["attributes"].get("plan"),
            "orders": int(c["attributes"].get("order_count") or 0),
        }
        for c in contacts
    }
    return sum(1 for email, want in mix.final_contacts(messages).items() if found.get(email) != want)


def _calls_rows(messages: list[mix.Message], stats: JSON, received: list[JSON], contacts: list[JSON]) -> Rows:
    events = len(messages)
    relay = _per_1000(_sandbox_calls(received), events)
    relay["contacts_wrong"] = _wrong_contacts(messages, contacts)
    return {
        ROW_FORWARDER: _per_1000(mix.forwarder_calls(messages), events),
        ROW_RELAY: relay,
        ROW_BOUND: _per_1000(mix.lower_bound(messages), events),
        ROW_SAVED: {reason: int(n) for reason, n in stats["saved"].items()},
        ROW_STATES: {state: int(stats["totals"].get(state, 0)) for state in FINAL_STATES},
    }


# --- backlog -------------------------------------------------------------------------------------

PERSONS = 2000
BACKLOG_UPDATES = 20_000
REAL_RATE = 10.0  # Promoter's budget, calls/s
SETUP_RATE = 1000.0
NEW_USER_EVERY_S = 0.5
NEW_USERS_FOR_S = 30.0  # 60 new users a run, 180 in three
TRACK_FIRST_SHARE = 0.3
SURVEY_GRACE_S = 30.0
CALLS_PER_NEW_USER = 2  # contact upsert, then the survey

ROW_NEW = "relay: new user's survey, s after ingest"
ROW_FIFO = "one FIFO queue at 10 calls/s (computed)"
ROW_BACKLOG = "backlog and budget during the run"


def backlog(ctx: Ctx) -> Runs:
    return _runs(ctx, _backlog_run)


def _person(salt: str, n: int) -> tuple[str, str]:
    return f"bk_{salt}_{n:05d}", f"person{n}.{salt}@example.com"


def _identify(message_id: str, user: str, traits: JSON, at: float) -> JSON:
    body = {"type": "identify", "messageId": message_id, "userId": user, "traits": traits}
    return {**body, "timestamp": iso(at), "context": mix.LIBRARY}


def _known_persons(stack: Stack, salt: str, base: float) -> None:
    """2,000 persons Promoter knows, delivered with a budget that does not limit."""
    bodies = []
    for n in range(PERSONS):
        user, email = _person(salt, n)
        traits = {"email": email, "name": "Ada Lovelace", "plan": "free", "seats": 1}
        bodies.append(_identify(f"{user}-setup", user, traits, base))
    stack.start_worker(SETUP_RATE)
    stack.post_batches(bodies)
    stack.wait_final(300)
    stack.stop_worker()


def _queue_backlog(stack: Stack, salt: str, base: float) -> JSON:
    """20,000 trait updates with the worker stopped, each changing plan and seats; updates of one
    person are spread over the queue (every person's first, then every person's second, ...)."""
    bodies = []
    for j in range(BACKLOG_UPDATES // PERSONS):
        for n in range(PERSONS):
            user, email = _person(salt, n)
            traits = {"email": email, "plan": mix.PLANS[(j + 1) % len(mix.PLANS)], "seats": j + 2}
            bodies.append(_identify(f"{user}-update-{j}", user, traits, base + 60 * (j + 1)))
    stack.post_batches(bodies)
    return stack.stats()


def _new_user(stack: Stack, salt: str, i: int, track_first: bool) -> tuple[str, float]:
    """One new user's identify and survey track; returns their email and the ingest time (the POST
    of whichever of the two went last)."""
    user, email = f"new_{salt}_{i:04d}", f"new{i}.{salt}@example.com"
    now = time.time()
    identify = _identify(f"{user}-i", user, {"email": email, "name": "Grace Hopper", "plan": "pro"}, now)
    track: JSON = {"type": "track", "messageId": f"{user}-t", "userId": user, "event": mix.SURVEY_EVENT}
    track |= {"properties": {"page": "/welcome"}, "timestamp": iso(now), "context": mix.LIBRARY}
    sent = []
    for path, body in (("/v1/track", track), ("/v1/identify", identify))[:: 1 if track_first else -1]:
        sent.append(time.time())
        stack.post(path, body)
    return email, sent[-1]


def _new_users(stack: Stack, salt: str) -> dict[str, float]:
    """One new user every ``NEW_USER_EVERY_S`` for ``NEW_USERS_FOR_S``; email -> ingest time."""
    rng = random.Random(MIX_SEED)
    started, ingested = time.monotonic(), {}
    for i in range(int(NEW_USERS_FOR_S / NEW_USER_EVERY_S)):
        time.sleep(max(0.0, started + i * NEW_USER_EVERY_S - time.monotonic()))
        email, at = _new_user(stack, salt, i, rng.random() < TRACK_FIRST_SHARE)
        ingested[email] = at
        if i % 20 == 0:
            stack.check_alive()
    return ingested


def _first_surveys(received: list[JSON]) -> dict[str, float]:
    """email -> when the sandbox received the first accepted survey call for it."""
    first: dict[str, float] = {}
    for call in received:
        if call["path"] == "/v2/survey/" and call["status"] == 200:
            email = str(call["json"]["contact"]["email"]).lower()
            first[email] = min(first.get(email, math.inf), float(call["at"]))
    return first


def _await_surveys(stack: Stack, emails: Iterable[str]) -> list[JSON]:
    """The sandbox's calls once every new user was surveyed, or after ``SURVEY_GRACE_S``."""
    deadline, wanted = time.monotonic() + SURVEY_GRACE_S, set(emails)
    while True:
        received = stack.calls()
        if wanted <= set(_first_surveys(received)) or time.monotonic() > deadline:
            return received
        stack.check_alive()
        time.sleep(1.0)


def percentile(values: list[float], p: float) -> float:
    """Nearest rank; ``inf`` for the share that never arrived."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _spread(values: list[float]) -> dict[str, float]:
    return {f"p{p}_s": percentile(values, p) for p in (50, 95, 99)} | {"max_s": max(values, default=math.nan)}


def fifo_waits(
    ingested: list[float], start: float, backlog_calls: int, rate: float
) -> list[tuple[float, float]]:
    """(calls ahead, seconds until its survey call) per new user in one FIFO queue served at ``rate``
    from ``start`` with ``backlog_calls`` queued before them; each new user adds its own two calls."""
    busy_until, waits = start + backlog_calls / rate, []
    for at in sorted(ingested):
        ahead = max(0.0, busy_until - at) * rate
        busy_until = max(busy_until, at) + CALLS_PER_NEW_USER / rate
        waits.append((ahead, busy_until - at))
    return waits


def _backlog_run(ctx: Ctx, salt: str) -> Rows:
    ctx.client.flushdb()
    stack = Stack(ctx.procs, ctx.redis_url, "bench-backlog", REAL_RATE)
    base = time.time() - 3600
    try:
        _known_persons(stack, salt, base)
        before = _queue_backlog(stack, salt, base)
        stack.reset_calls()
        stack.start_worker(REAL_RATE)
        restarted = time.time()
        ingested = _new_users(stack, salt)
        received = _await_surveys(stack, ingested)
        ended, after = time.time(), stack.stats()
    finally:
        stack.stop()
    ctx.client.flushdb()
    window = {"restarted": restarted, "ended": ended, "before": before, "after": after}
    return _backlog_rows(ingested, received, window)


def _backlog_rows(ingested: dict[str, float], received: list[JSON], window: JSON) -> Rows:
    surveyed = _first_surveys(received)
    waits = [surveyed.get(email, math.inf) - at for email, at in ingested.items()]
    found = [w for w in waits if w != math.inf]
    fifo = fifo_waits(list(ingested.values()), window["restarted"], BACKLOG_UPDATES, REAL_RATE)
    contacts = [c for c in received if c["path"] == "/contacts/"]
    backlog_calls = sum(1 for c in contacts if str(c["json"]["email"]).lower() not in ingested)
    seconds = window["ended"] - window["restarted"]
    budget = {"seconds": seconds, "calls": len(received), "calls_per_s": len(received) / seconds}
    queue_before, queue_after = window["before"]["queue"], window["after"]["queue"]
    return {
        ROW_NEW: {"count": len(waits), "surveyed": len(found), **_spread(waits)},
        ROW_FIFO: {"count": len(fifo), **_spread([w for _, w in fifo])}
        | {"ahead_p50": percentile([a for a, _ in fifo], 50)},
        ROW_BACKLOG: budget
        | {"backlog_calls": backlog_calls, "queued_low_before": queue_before["queued_low"]}
        | {"queued_low_after": queue_after["queued_low"], "retry_after": queue_after["retry_scheduled"]},
    }
