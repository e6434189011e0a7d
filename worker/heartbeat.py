"""Heartbeats of beat and of the workers, in Redis, for health checks and ``/metrics``.

A hung process, or one that lost Redis, still has a live PID: only a recent write says it is working.
Beat writes one key as it ticks (``worker.beat``). Each worker's main process writes its name and the
time into one small hash every ``WORKER_INTERVAL`` seconds from Celery's own timer (one HSET a beat,
no task, no extra thread); names not heard from for a day are dropped, so the hash stays as small as
the fleet, and it expires with the last worker.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, cast

import redis
from celery import bootsteps

from worker import keys

log = logging.getLogger(__name__)

BEAT = keys.HEARTBEAT + "beat"
BEAT_TTL = 60
WORKERS = keys.HEARTBEAT + "workers"
WORKER_INTERVAL = 10.0
# A worker counts as alive while its last heartbeat is this recent (several missed beats).
WORKER_ALIVE_SECONDS = 60.0
FORGET_SECONDS = 86400


def write_worker(client: redis.Redis, name: str, now: float) -> None:
    beats = cast(dict[str, str], client.hgetall(WORKERS))
    gone = [other for other, at in beats.items() if other != name and now - _float(at) > FORGET_SECONDS]
    pipe = client.pipeline(transaction=False)
    pipe.hset(WORKERS, name, f"{now:.3f}")
    if gone:
        pipe.hdel(WORKERS, *gone)
    pipe.expire(WORKERS, FORGET_SECONDS)
    pipe.execute()


def _float(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class Heartbeats:
    """Ages in seconds; None when nothing was ever heard (or beat's key expired)."""

    beat_age: float | None
    worker_age: float | None
    workers_alive: int
    worker_ages: dict[str, float]


def read(beat: str | None, workers: dict[str, str], now: float) -> Heartbeats:
    """From what ``GET`` of ``BEAT`` and ``HGETALL`` of ``WORKERS`` answered (pipelined by the caller)."""
    ages = {name: max(0.0, now - _float(at)) for name, at in workers.items()}
    return Heartbeats(
        beat_age=max(0.0, now - _float(beat)) if beat else None,
        worker_age=min(ages.values()) if ages else None,
        workers_alive=sum(1 for age in ages.values() if age <= WORKER_ALIVE_SECONDS),
        worker_ages=ages,
    )


class WorkerHeartbeat(bootsteps.StartStopStep):
    """A worker bootstep: beats on the worker's timer while the worker runs."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timer: Any = None
        self._client: redis.Redis | None = None
        self._name = ""

    def start(self, parent: Any) -> None:
        from worker.stores import redis_client

        self._client = redis_client(parent.app.runtime.settings, timeout=2.0)
        self._name = str(parent.hostname)
        self._beat()
        self._timer = parent.timer.call_repeatedly(WORKER_INTERVAL, self._beat, priority=10)

    def stop(self, parent: Any) -> None:  # noqa: ARG002 - bootstep signature
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _beat(self) -> None:
        if self._client is None:
            return
        try:
            write_worker(self._client, self._name, time.time())
        except redis.RedisError:
            log.warning("could not write this worker's heartbeat; /metrics will show it as silent")
