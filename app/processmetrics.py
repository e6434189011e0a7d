"""Counters kept in the API process, for what cannot be counted in Redis: the 503s ingest answers
while Redis is unreachable or refuses writes (a full Redis with ``noeviction`` refuses the counter's
write too).

Under gunicorn the counters are shared by its worker processes through prometheus_client's
multiprocess directory (``app.gunicorn_conf`` prepares it before the workers fork), so any worker's
``/metrics`` reports the whole server. Outside gunicorn (tests, ``flask run``) they are plain
in-process counters. Each API host (or container) is its own scrape target: sum them in PromQL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

_LOCAL = CollectorRegistry(auto_describe=True)
UNAVAILABLE = Counter(
    "relay_ingest_unavailable",
    "Ingest requests answered 503 because Redis could not take them, by cause",
    ["cause"],
    registry=_LOCAL,
)

_CAUSES: tuple[tuple[type[redis.RedisError], str], ...] = (
    (redis.exceptions.OutOfMemoryError, "out_of_memory"),
    (redis.exceptions.ReadOnlyError, "read_only"),
    (redis.exceptions.BusyLoadingError, "loading"),
    (redis.exceptions.ConnectionError, "unreachable"),
    (redis.exceptions.TimeoutError, "unreachable"),
)
# Every cause is exported from the start, at 0, so rate() sees the first 503 as an increase.
for _cause in ("out_of_memory", "read_only", "loading", "unreachable", "error"):
    UNAVAILABLE.labels(_cause)


def cause_of(error: redis.RedisError) -> str:
    """A small, fixed set of label values (never the error's text). A write refused inside a script
    comes back as a script error that quotes Redis' OOM error (Redis 6)."""
    for kind, cause in _CAUSES:
        if isinstance(error, kind):
            return cause
    if "OOM command not allowed" in str(error):
        return "out_of_memory"
    return "error"


def count_unavailable(error: redis.RedisError) -> None:
    UNAVAILABLE.labels(cause_of(error)).inc()


class ProcessCollector(Collector):
    """This server's process-local counters: merged from every gunicorn worker when there are several."""

    def collect(self) -> Iterator[Metric]:
        path = os.environ.get(MULTIPROC_DIR)
        if path and os.path.isdir(path):
            merged = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]
            yield from merged.collect()  # type: ignore[no-untyped-call]
        else:
            yield from _LOCAL.collect()
