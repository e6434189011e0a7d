"""The relay's task bodies run in this process, over a real Redis and the sandbox over real HTTP.

``Relay.drain()`` takes task messages off the queues the way a worker does (housekeeping first, then
the high queue, then the low one, each FIFO) and runs ``tasks.deliver`` on each: the same code a Celery
worker runs, minus Celery, so tests of delivery semantics are deterministic. A settable clock drives
retries, holds and leases without sleeping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis

from app.devtools.sandbox import SandboxServer
from tests.conftest import CAMPAIGN_ID, SANDBOX_KEY
from tests.factories import accept, text, text_map
from worker import keys, taskmessages
from worker.events import Event
from worker.promoter import PromoterClient
from worker.runtime import Runtime
from worker.settings import load
from worker.stores import Stores, build_stores
from worker.tasks import HANDLERS, deliver


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Relay:
    runtime: Runtime
    clock: Clock
    sandbox: SandboxServer
    ran: list[tuple[str, str]] = field(default_factory=list)

    @property
    def stores(self) -> Stores:
        return self.runtime.stores

    @property
    def redis(self) -> redis.Redis:
        return self.runtime.stores.redis

    def send(self, *events: Event, route: str = "high") -> list[str]:
        return accept(self.stores, *events, route=route)

    def step(self) -> str | None:
        """Run the next queued task; returns its ref (None when every queue is empty)."""
        settings = self.runtime.settings
        for queue in (settings.queue_name, settings.low_queue):
            popped = self.redis.rpop(queue)
            if popped:
                raw = text(popped)
                message = json.loads(raw)
                ref = taskmessages.ref_of(raw)
                outcome = deliver(
                    ref, HANDLERS[message["headers"]["task"]], self.runtime, message["headers"]["id"]
                )
                self.ran.append((ref, outcome))
                return ref
        return None

    def drain(self, limit: int = 10_000) -> int:
        """Run tasks until the queues are empty (retries come back only through ``later``)."""
        for count in range(limit):
            if self.step() is None:
                return count
        raise AssertionError("the queues never emptied")

    def later(self, seconds: float = 3600.0) -> int:
        """Let time pass and dispatch what came due (retries, waits), then drain."""
        self.clock.advance(seconds)
        self.stores.schedule.dispatch_due()
        return self.drain()

    def state(self, ref: str) -> str | None:
        return self.stores.messages.state(ref)

    def record(self, ref: str) -> dict[str, str]:
        return text_map(self.redis.hgetall(keys.message(ref)))

    def surveys(self) -> list[dict[str, Any]]:
        return [c["json"] for c in self.sandbox.state.calls("/v2/survey/") if c["status"] == 200]

    def upserts(self) -> list[dict[str, Any]]:
        return [c["json"] for c in self.sandbox.state.calls("/contacts/") if c["status"] == 200]

    def contact(self, email: str) -> dict[str, Any]:
        found = [c for c in self.sandbox.state.contacts() if c["email"].lower() == email.lower()]
        assert len(found) == 1, f"{email}: {found}"
        return found[0]


def make_relay(client: redis.Redis, sandbox: SandboxServer, **overrides: Any) -> Relay:
    clock = Clock()
    values: dict[str, Any] = {
        "redis_url": "redis://unused",
        "promoter_api_url": sandbox.url,
        "promoter_api_key": SANDBOX_KEY,
        "promoter_campaign_id": CAMPAIGN_ID,
        "promoter_rate_limit": 100000.0,
        "promoter_timeout_seconds": 2.0,
        "environment": "test",
        **overrides,
    }
    settings = load({}, **values)
    stores = build_stores(settings, client=client, clock=clock)
    runtime = Runtime(
        settings,
        stores,
        PromoterClient(sandbox.url, SANDBOX_KEY, timeout=settings.promoter_timeout_seconds),
        clock,
    )
    return Relay(runtime, clock, sandbox)
