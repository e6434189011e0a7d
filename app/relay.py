"""The per-app handles (settings, Redis, ledger) that views reach through ``relay()``."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import current_app

from worker.ledger import Ledger
from worker.runtime import redis_client
from worker.settings import Settings


@dataclass(frozen=True)
class Relay:
    settings: Settings
    redis: redis.Redis
    ledger: Ledger


def connect(settings: Settings) -> Relay:
    # Short timeouts: Segment's webhook gives up after 5 s, and a 503 it can retry beats a hang.
    client = redis_client(settings, timeout=2.0)
    ledger = Ledger(client, settings.status_ttl_seconds, settings.queue_name, settings.hold_ttl_seconds)
    return Relay(settings, client, ledger)


def relay() -> Relay:
    handle: Relay = current_app.extensions["relay"]
    return handle
