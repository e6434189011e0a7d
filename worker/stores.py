"""The one place that builds the relay's Redis-backed stores from ``Settings``.

The API (ingest, admin), the CLI and the worker all come through ``build_stores``, so a TTL or a queue
name can never be wired differently in one of them. Arguments are keyword-only everywhere below.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from worker.budget import Budget
from worker.deadletters import DeadLetters
from worker.holds import Holds
from worker.messages import Messages
from worker.people import People
from worker.reconcile import MARGIN_SECONDS, Reconciler
from worker.schedule import Schedule
from worker.scripts import Scripts
from worker.settings import Settings


def redis_client(settings: Settings, *, timeout: float) -> redis.Redis:
    """The one way every process opens Redis: text replies, health-checked, bounded waits."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=min(timeout, 2.0),
        socket_timeout=timeout,
        health_check_interval=30,
        decode_responses=True,
    )


@dataclass(frozen=True)
class Stores:
    redis: redis.Redis
    messages: Messages
    people: People
    holds: Holds
    schedule: Schedule
    dead: DeadLetters
    budget: Budget
    reconciler: Reconciler


def build_stores(
    settings: Settings,
    *,
    client: redis.Redis | None = None,
    timeout: float = 10.0,
    clock: Callable[[], float] = time.time,
) -> Stores:
    client = client if client is not None else redis_client(settings, timeout=timeout)

    def scripts(owner: str) -> Scripts:
        return Scripts(client, owner, settings, clock)

    return Stores(
        redis=client,
        messages=Messages(client, scripts=scripts("messages")),
        people=People(client, scripts=scripts("people"), lease_seconds=settings.survey_lease_seconds),
        holds=Holds(
            client,
            scripts=scripts("holds"),
            user_ttl=settings.hold_ttl_seconds,
            anonymous_ttl=settings.anonymous_hold_ttl_seconds,
            anonymous_outcome=settings.anonymous_hold_expiry,
            clock=clock,
        ),
        schedule=Schedule(scripts=scripts("schedule"), clock=clock),
        dead=DeadLetters(
            client,
            scripts=scripts("deadletters"),
            ttl=settings.dead_letter_ttl_seconds,
            cap=settings.dead_letter_max,
            clock=clock,
        ),
        budget=Budget(client, scripts=scripts("budget"), clock=clock, window=settings.retry_window_seconds),
        reconciler=Reconciler(
            client,
            scripts=scripts("reconcile"),
            queues=settings.delivery_queues,
            grace_seconds=settings.visibility_timeout + MARGIN_SECONDS,
            clock=clock,
        ),
    )
