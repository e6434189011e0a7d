"""The per-app handles (settings and stores) that views reach through ``services()``."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from worker.events import source_of_key
from worker.settings import Settings
from worker.stores import Stores, build_stores


@dataclass(frozen=True)
class Services:
    settings: Settings
    stores: Stores
    # The source label of each configured write key, computed once (a SHA-256 per request is not free).
    sources: dict[str, str]


def connect(settings: Settings) -> Services:
    # Short timeouts: Segment's webhook gives up after 5 s, and a 503 it can retry beats a hang.
    sources = {key: source_of_key(key) for key in settings.segment_write_keys}
    return Services(settings, build_stores(settings, timeout=2.0), sources)


def services() -> Services:
    handle: Services = current_app.extensions["services"]
    return handle
