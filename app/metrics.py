"""Prometheus ``/metrics``, read from the counters every process keeps in Redis.

Counting in Redis (inside the same Lua steps that change state) instead of in process memory means
the numbers are right with any number of gunicorn workers, Celery workers or hosts, and survive
restarts of any of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

from flask import Blueprint, Response
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from app.relay import Relay, relay
from worker import keys
from worker.metrics import LATENCY_BUCKETS
from worker.stats import snapshot

bp = Blueprint("metrics", __name__)


class RelayCollector(Collector):
    def __init__(self, handle: Relay) -> None:
        self.handle = handle

    def collect(self) -> Iterator[Metric]:
        client = self.handle.redis
        snap = snapshot(client, self.handle.settings.queue_name)
        by_type = {
            "accepted": snap["accepted"],
            "duplicate": snap["duplicates"],
            "rejected": snap["rejected"],
        }
        received = CounterMetricFamily(
            "relay_events_received",
            "Events received by ingest, by type and result",
            labels=["type", "result"],
        )
        for result, counts in by_type.items():
            for kind, count in counts.items():
                received.add_metric([kind, result], count)
        yield received
        outcomes = CounterMetricFamily(
            "relay_message_transitions", "Message state changes, by state reached", labels=["state"]
        )
        for state, count in snap["totals"].items():
            outcomes.add_metric([state], count)
        yield outcomes
        depth = GaugeMetricFamily("relay_queue", "Messages by where they wait", labels=["where"])
        for where, count in snap["queue"].items():
            depth.add_metric([where], count)
        yield depth
        yield from _latency(cast(dict[str, str], client.hgetall(keys.LATENCY)))


def _latency(raw: dict[str, str]) -> Iterator[Metric]:
    histogram = HistogramMetricFamily(
        "relay_promoter_request_duration_seconds", "Promoter API call latency", labels=["endpoint"]
    )
    calls = CounterMetricFamily(
        "relay_promoter_requests", "Promoter API calls by answer", labels=["endpoint", "status"]
    )
    endpoints = sorted({name.split("|")[0] for name in raw if not name.startswith("calls|")})
    for endpoint in endpoints:
        buckets, running = [], 0.0
        for bound in LATENCY_BUCKETS:
            running += float(raw.get(f"{endpoint}|le|{bound}", 0))
            buckets.append((str(bound), running))
        count = float(raw.get(f"{endpoint}|count", 0))
        histogram.add_metric([endpoint], [*buckets, ("+Inf", count)], float(raw.get(f"{endpoint}|sum", 0)))
    for name, value in raw.items():
        if name.startswith("calls|"):
            _, endpoint, status = name.split("|", 2)
            calls.add_metric([endpoint, status], float(value))
    yield histogram
    yield calls


@bp.get("/metrics")
def metrics() -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(relay()))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
