"""Celery beat's scheduler, plus a heartbeat in Redis (``worker.heartbeat``) that health checks read.

A beat that hangs or lost Redis still has a live process; the heartbeat says it is actually ticking.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import redis
from celery.beat import PersistentScheduler

from worker import heartbeat
from worker.celery_app import RelayCelery
from worker.stores import redis_client

log = logging.getLogger(__name__)


class HeartbeatScheduler(PersistentScheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        app = cast(RelayCelery, self.app)
        self._client = redis_client(app.runtime.settings, timeout=2.0)
        self._beaten = 0.0

    def tick(self, *args: Any, **kwargs: Any) -> float:
        delay: float = super().tick(*args, **kwargs)
        now = time.time()
        if now - self._beaten >= 5:
            try:
                self._client.set(heartbeat.BEAT, f"{now:.3f}", ex=heartbeat.BEAT_TTL)
                self._beaten = now
            except redis.RedisError:
                log.warning("could not write beat's heartbeat; the health check will say so")
        return min(delay, 5.0)
