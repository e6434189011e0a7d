"""Per-process handles for the worker: one Redis pool, one HTTP session, the Lua-backed stores.

Created lazily and dropped on fork (``worker_process_init``): a requests session or Redis socket
inherited from the parent process would be shared by two processes without either knowing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import redis

from worker.deadletters import DeadLetters
from worker.holds import Holds
from worker.ledger import Ledger
from worker.metrics import observe_promoter
from worker.orders import Orders
from worker.promoter import PromoterClient
from worker.ratelimit import RateLimiter
from worker.schedule import Schedule
from worker.settings import Settings, load


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    redis: redis.Redis
    ledger: Ledger
    holds: Holds
    schedule: Schedule
    dead: DeadLetters
    orders: Orders
    rate: RateLimiter
    promoter: PromoterClient


def redis_client(settings: Settings, timeout: float) -> redis.Redis:
    """The one way both sides open Redis: text replies, health-checked, bounded waits."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=min(timeout, 2.0),
        socket_timeout=timeout,
        health_check_interval=30,
        decode_responses=True,
    )


def build(settings: Settings) -> Runtime:
    client = redis_client(settings, timeout=10.0)
    ttl, queue = settings.status_ttl_seconds, settings.queue_name
    return Runtime(
        settings=settings,
        redis=client,
        ledger=Ledger(client, ttl, queue),
        holds=Holds(client, ttl, queue, settings.hold_ttl_seconds),
        schedule=Schedule(client, ttl, queue),
        dead=DeadLetters(client, ttl, queue),
        orders=Orders(client),
        rate=RateLimiter(client, settings.promoter_rate_limit),
        promoter=PromoterClient(
            settings.promoter_api_url,
            settings.promoter_api_key,
            timeout=settings.promoter_timeout_seconds,
            on_response=lambda endpoint, status, seconds: observe_promoter(client, endpoint, status, seconds),
        ),
    )


_lock = threading.Lock()
_current: Runtime | None = None


def runtime() -> Runtime:
    global _current
    if _current is None:
        with _lock:
            if _current is None:
                _current = build(load())
    return _current


def reset(replacement: Runtime | None = None) -> None:
    """Forget the handles (after fork), or install ``replacement`` (tests)."""
    global _current
    with _lock:
        _current = replacement
