"""The Grafana dashboard is what its generator makes, and every PromQL query of the dashboard and the
alert rules names only metrics the relay exports: read off the real ``/metrics`` of an app over a real
Redis, after traffic that makes each of them appear."""

from __future__ import annotations

from typing import Any

import promql_parser
import pytest
import redis
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from app.devtools.sandbox import SandboxServer
from deploy import grafana_dashboard
from tests.conftest import basic, settings_for
from tests.factories import make_event
from tests.harness import make_relay
from tests.test_alerts import alerts

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def test_the_committed_dashboard_is_what_the_generator_makes() -> None:
    assert grafana_dashboard.OUTPUT.read_text() == grafana_dashboard.render(), "run make grafana"
    assert grafana_dashboard.main(["--check"]) == 0


def test_the_dashboard_has_the_panels_an_operator_needs() -> None:
    titles = {panel["title"] for panel in grafana_dashboard.dashboard()["panels"]}
    for needed in ("Ingest rate", "Delivery outcomes", "Queue depth", "Queue age", "Promoter latency",
                   "Promoter answers", "Budget", "Held messages", "Dead letters"):  # fmt: skip
        assert needed in titles
    ids = [panel["id"] for panel in grafana_dashboard.dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def all_queries() -> dict[str, str]:
    found = {f"alert {rule['alert']}": str(rule["expr"]) for rule in alerts()}
    for n, expr in enumerate(grafana_dashboard.queries(grafana_dashboard.dashboard())):
        found[f"dashboard query {n}"] = expr
    return found


def metric_names(expr: str) -> set[str]:
    """Every metric a PromQL expression selects (Grafana's ``$__rate_interval`` read as 5m)."""
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr.replace("$__rate_interval", "5m")), visit)
    return names


def test_the_name_extraction_sees_every_selector() -> None:
    expr = (
        'histogram_quantile(0.9, max by (le) (rate(a_bucket[5m]))) / on() b{x="y"}'
        " and absent(c) or max_over_time(d[5m:1m])"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d"}
    with pytest.raises(ValueError, match="parenthesis"):
        metric_names("sum(rate(x[5m])")


@pytest.fixture
def scraped(redis_client: redis.Redis, redis_url: str, sandbox: SandboxServer) -> set[str]:
    """Sample names the relay exports after some traffic: accepted, duplicate, rejected and refused
    events, deliveries (Promoter latency and answers), a held track, a dead letter replayed and one
    discarded, with a daily limit set."""
    client: FlaskClient = create_app(
        {"TESTING": True, **settings_for(redis_url, promoter_daily_limit=50000)}
    ).test_client()
    identify = {"userId": "u1", "messageId": "m1", "traits": {"email": "u1@example.com"}}
    assert client.post("/v1/identify", json=identify, headers=basic()).status_code == 200
    assert client.post("/v1/identify", json=identify, headers=basic()).status_code == 200
    assert client.post("/v1/track", json={"userId": "u1"}, headers=basic()).status_code == 400
    assert client.post("/v1/track", json={"userId": "u1", "event": "NPS"}).status_code == 401
    relay = make_relay(redis_client, sandbox)
    relay.send(make_event("t1", user="u1"), make_event("t2", user="nobody"))
    relay.drain()
    sandbox.state.configure({"fail_next": [400, 400]})
    relay.send(make_event("d1", "identify", "u2"), make_event("d2", "identify", "u3"))
    relay.drain()
    assert relay.stores.dead.replay(relay.stores.dead.resolve("d1")) == "replayed"
    assert relay.stores.dead.discard([relay.stores.dead.resolve("d2")]) == 1
    text = client.get("/metrics").get_data(as_text=True)
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def test_every_query_names_only_metrics_the_relay_exports(scraped: set[str]) -> None:
    unknown = {
        where: sorted(metric_names(expr) - scraped)
        for where, expr in all_queries().items()
        if metric_names(expr) - scraped
    }
    assert unknown == {}
    used = set().union(*(metric_names(expr) for expr in all_queries().values()))
    assert "relay_promoter_request_duration_seconds_bucket" in used
    assert "relay_ingest_unavailable_total" in used


def test_the_check_catches_a_misspelt_metric(scraped: set[str]) -> None:
    assert metric_names("rate(relay_events_recieved_total[5m])") - scraped == {"relay_events_recieved_total"}
    assert metric_names("relay_promoter_request_duration_seconds") - scraped, "a histogram's bare name"
