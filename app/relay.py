"""The per-app handles (settings and stores) that views reach through ``relay()``."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from worker.settings import Settings
from worker.stores import Stores, build_stores


@dataclass(frozen=True)
class Relay:
    settings: Settings
    stores: Stores


def connect(settings: Settings) -> Relay:
    # Short timeouts: Segment's webhook gives up after 5 s, and a 503 it can retry beats a hang.
    return Relay(settings, build_stores(settings, timeout=2.0))


def relay() -> Relay:
    handle: Relay = current_app.extensions["relay"]
    return handle
