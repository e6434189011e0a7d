"""Prometheus ``/metrics``, read from the counters every process keeps in Redis.

Counting in Redis (inside the same Lua steps that change state) instead of in process memory means
the numbers are right with any number of gunicorn workers, Celery workers or hosts, and survive
restarts of any of them. With ``METRICS_TOKEN`` set, scrapes need ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, cast

import redis
from flask import Blueprint, Response, jsonify, request
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from app.auth import bearer_matches
from app.processmetrics import ProcessCollector
from app.services import Services, services
from worker import keys
from worker.metrics import LATENCY_BUCKETS
from worker.stats import snapshot

bp = Blueprint("metrics", __name__)


def _counter(name: str, text: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=[label])
    for value, count in sorted(values.items()):
        family.add_metric([value], count)
    return family


class RelayCollector(Collector):
    """Everything the relay keeps in Redis. When Redis does not answer, the scrape still succeeds with
    ``relay_redis_up 0`` (and the API's own counters), so the alerts that matter then can fire."""

    def __init__(self, handle: Services) -> None:
        self.handle = handle

    def collect(self) -> Iterator[Metric]:
        try:
            families = list(self._from_redis())
        except redis.RedisError:
            families = []
        yield GaugeMetricFamily(
            "relay_redis_up", "1 when Redis answered this scrape", value=1 if families else 0
        )
        yield from families

    def _from_redis(self) -> Iterator[Metric]:
        client = self.handle.stores.redis
        snap = snapshot(client, self.handle.settings)
        received = CounterMetricFamily(
            "relay_events_received",
            "Events received by ingest, by type and result",
            labels=["type", "result"],
        )
        for result in ("accepted", "duplicate", "rejected"):
            for kind, count in sorted(snap[result].items()):
                received.add_metric([kind, result], count)
        yield received
        yield _counter(
            "relay_requests_refused",
            "Requests refused before any message was read",
            "status",
            snap["refused"],
        )
        yield _counter(
            "relay_message_transitions", "Message state changes, by state reached", "state", snap["totals"]
        )
        saved = "Promoter calls the relay did not need to make, by reason"
        yield _counter("relay_promoter_calls_saved", saved, "reason", snap["saved"])
        yield _counter(
            "relay_dead_letters_dropped", "Dead letters dropped (discarded, expired, over the cap)", "why",
            snap["dead_dropped"],
        )  # fmt: skip
        yield _counter(
            "relay_survey_outcomes_unknown", "Survey calls whose outcome was unknown, by cause", "cause",
            snap["survey_unknown"],
        )  # fmt: skip
        depth = GaugeMetricFamily("relay_queue", "Messages by where they wait", labels=["where"])
        for where, count in snap["queue"].items():
            depth.add_metric([where], count)
        yield depth
        budget = snap["budget"]
        yield GaugeMetricFamily("relay_promoter_budget_used_today", "Promoter calls made today (UTC)",
                                value=budget["used_today"])  # fmt: skip
        if budget["daily_limit"]:
            yield GaugeMetricFamily("relay_promoter_budget_daily_limit", "PROMOTER_DAILY_LIMIT",
                                    value=budget["daily_limit"])  # fmt: skip
        yield GaugeMetricFamily("relay_promoter_paused_seconds", "Seconds left of a 429 pause",
                                value=budget["paused_for_seconds"])  # fmt: skip
        account = snap["account"]
        yield GaugeMetricFamily(
            "relay_promoter_account_refused",
            "1 while Promoter refuses the account (401/403: the key; 404/405: the URL): delivery is paused",
            value=int(account["refused"]),
        )
        yield GaugeMetricFamily(
            "relay_promoter_account_refused_seconds", "How long Promoter has refused the account",
            value=account["refused_for_seconds"],
        )  # fmt: skip
        yield from _waiting(snap)
        yield CounterMetricFamily(
            "relay_lost_task_messages_requeued",
            "Messages the reconciler queued again because the broker had lost their task message",
            value=snap["requeued"],
        )
        replayed = snap["replayed"]
        yield CounterMetricFamily("relay_dead_letters_replayed", "Dead letters replayed", value=replayed)
        yield from _latency(cast(dict[str, str], client.hgetall(keys.LATENCY)))
        yield from _memory(client)


def _waiting(snap: dict[str, Any]) -> Iterator[Metric]:
    oldest = GaugeMetricFamily(
        "relay_oldest_message_age_seconds",
        "Age of the oldest message waiting: queued (or a retry due and not yet taken), held for an identify",
        labels=["where"],
    )
    for where, age in snap["oldest_age_seconds"].items():
        oldest.add_metric([where], age)
    yield oldest
    beats = GaugeMetricFamily(
        "relay_heartbeat_age_seconds",
        "Seconds since beat, and the most recent of the workers, last wrote a heartbeat (+Inf: none)",
        labels=["service"],
    )
    for service, age in snap["heartbeat_age_seconds"].items():
        beats.add_metric([service], math.inf if age is None else age)
    yield beats
    yield GaugeMetricFamily(
        "relay_workers_alive", "Workers whose heartbeat is under a minute old", value=snap["workers_alive"]
    )


def _memory(client: redis.Redis) -> Iterator[Metric]:
    """Redis' memory against its maxmemory: with ``noeviction``, writes (and so ingest) stop at the limit."""
    try:
        info = client.info("memory")
    except redis.ResponseError:  # INFO refused (an ACL without it): the rest of the scrape still counts
        return
    yield GaugeMetricFamily("relay_redis_memory_used_bytes", "Redis used_memory",
                            value=float(info.get("used_memory", 0)))  # fmt: skip
    yield GaugeMetricFamily("relay_redis_maxmemory_bytes", "Redis maxmemory (0: no limit)",
                            value=float(info.get("maxmemory", 0)))  # fmt: skip


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
            # The scripts write bucket names as Lua prints numbers (1.0 as "1"), which is ``:g``.
            running += float(raw.get(f"{endpoint}|le|{bound:g}", 0))
            buckets.append((str(bound), running))
        count = float(raw.get(f"{endpoint}|count", 0))
        histogram.add_metric([endpoint], [*buckets, ("+Inf", count)], float(raw.get(f"{endpoint}|sum", 0)))
    for name, value in sorted(raw.items()):
        if name.startswith("calls|"):
            _, endpoint, status = name.split("|", 2)
            calls.add_metric([endpoint, status], float(value))
    yield histogram
    yield calls


@bp.get("/metrics")
def metrics() -> Response | tuple[Response, int]:
    token = services().settings.metrics_token
    if token and not bearer_matches(request, token):
        return jsonify(error="Missing or invalid bearer token (METRICS_TOKEN)."), 401
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(services()))
    registry.register(ProcessCollector())
    response = Response(generate_latest(registry))
    # CONTENT_TYPE_LATEST already names its charset; set it whole so Flask does not add a second one.
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
