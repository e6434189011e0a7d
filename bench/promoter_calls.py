"""Sections about Promoter calls through the whole stack (``bench.stack``).

* ``calls``: how many calls a realistic Segment mix costs, beside a forwarder that calls for every
  identify and track, and beside the fewest calls any correct relay could make (both from the mix
  itself, ``bench.mix``, never from the relay).
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from bench import mix
from bench.sections import Ctx, Runs
from bench.stack import FINAL_STATES, JSON, Stack, iso

Rows = dict[str, dict[str, Any]]

MIX_SEED = 20_260_101
CALLS_RATE_LIMIT = 1000.0  # high enough never to be what limits the calls section
DRAIN_TIMEOUT_S = 900.0

ROW_MIX = "Segment mix"
ROW_FORWARDER = "(a) forwarder: every identify and track"
ROW_RELAY = "(b) relay: calls the sandbox received"
ROW_BOUND = "(c) lower bound: contact states + surveys due"
ROW_SAVED = "relay: calls saved by reason"
ROW_STATES = "relay: messages by final state"


def _runs(ctx: Ctx, one: Callable[[Ctx, str], Rows]) -> Runs:
    runs: Runs = defaultdict(list)
    for repeat in range(ctx.repeats):
        for row, figures in one(ctx, f"r{repeat}{uuid.uuid4().hex[:6]}").items():
            runs[row].append(figures)
    return runs


# --- calls ---------------------------------------------------------------------------------------


def calls(ctx: Ctx) -> Runs:
    return _runs(ctx, _calls_run)


def _bodies(messages: list[mix.Message], now: float) -> list[JSON]:
    """Segment bodies with timestamps: the mix's two days end a minute before ``now``."""
    base = now - mix.SPAN_SECONDS - 60
    return [
        {**{k: v for k, v in m.items() if k != "_at"}, "timestamp": iso(base + m["_at"])} for m in messages
    ]


def _calls_run(ctx: Ctx, salt: str) -> Rows:
    ctx.client.flushdb()
    messages = mix.generate(MIX_SEED, salt)
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
