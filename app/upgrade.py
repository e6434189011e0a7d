"""The API waits for the stored data to be in this version's layout before it serves.

Ingest writing new-layout records beside unconverted ones, or the admin pages reading half a
migration, would be wrong in ways nobody sees; a 503 with ``Retry-After`` is what Segment retries for
hours. So while ``worker.migrate`` says the data is not current, every request but the liveness probe
and ``/metrics`` is answered 503, and this process runs the migration itself in a thread (under the
migration lock: with several API processes and workers starting, one migrates, the others wait),
so an upgrade whose workers start later still completes.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from flask import Flask, Response, jsonify, request

from worker import migrate
from worker.settings import Settings

log = logging.getLogger("relay.migrate")
RETRY_AFTER_SECONDS = 30
# A failed or impossible migration is tried again at most this often, on the next request.
RETRY_SECONDS = 10.0
OPEN_PATHS = frozenset({"/healthz", "/metrics"})


class UpgradeGate:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.open = False
        self.problem = ""
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_try = 0.0

    def install(self, app: Flask) -> None:
        app.extensions["upgrade_gate"] = self
        app.before_request(self.check)
        self._current_or_migrate()

    def check(self) -> tuple[Response, int] | None:
        """None to serve the request; a 503 while the stored data is not in this version's layout."""
        if self.open or request.path in OPEN_PATHS:
            return None
        if self._current_or_migrate():
            return None
        response = jsonify(
            success=False,
            errors={"_service": [f"Upgrading the stored data to schema {migrate.CURRENT}; retry later."]},
        )
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response, 503

    def _current_or_migrate(self) -> bool:
        try:
            self.open = migrate.is_current(self.client)
        except redis.RedisError:
            return False
        if not self.open:
            self._start()
        return self.open

    def _start(self) -> None:
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
            if running or time.monotonic() - self._last_try < RETRY_SECONDS:
                return
            self._last_try = time.monotonic()
            self._thread = threading.Thread(target=self._migrate, name="relay-migrate", daemon=True)
            self._thread.start()

    def _migrate(self) -> None:
        try:
            report = migrate.migrate(self.client, self.settings, wait_seconds=3600.0, progress=log.info)
        except (migrate.MigrationError, redis.RedisError) as error:
            self.problem = str(error)
            log.error("the stored data is not at schema %s: %s", migrate.CURRENT, error)  # noqa: TRY400 - one line, no traceback
            return
        self.open = True
        if report.steps:
            log.info("api: %s", migrate.describe(report).replace("\n", "; "))
