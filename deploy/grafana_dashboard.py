"""The Grafana dashboard ``deploy/grafana/promoter-relay.json``, written as code.

``python -m deploy.grafana_dashboard`` (``make grafana``) writes it; ``--check`` says whether the
committed file is what this module generates (``tests/test_monitoring_queries.py`` checks it too, and
that every query names only metrics the relay exports). Edit this module, not the JSON.

Numbers read from Redis are the same on every API target, so queries take ``max`` across targets
(``sum`` would count them once per target); the API's own counters (503s) are summed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "grafana" / "promoter-relay.json"
UID = "promoter-relay"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
WIDTH = 24

JSON = dict[str, Any]


def target(expr: str, legend: str, ref: str) -> JSON:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def targets(*queries: tuple[str, str]) -> list[JSON]:
    return [target(expr, legend, chr(ord("A") + n)) for n, (expr, legend) in enumerate(queries)]


def timeseries(
    title: str, description: str, unit: str, *queries: tuple[str, str], stack: bool = False
) -> JSON:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets(*queries),
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 20 if stack else 10,
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                    "showPoints": "never",
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(title: str, description: str, unit: str, expr: str, warn: float, bad: float) -> JSON:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets((expr, "")),
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {
                    "mode": "absolute",
                    "steps": [
                        {"color": "green", "value": None},
                        {"color": "orange", "value": warn},
                        {"color": "red", "value": bad},
                    ],
                },
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        },
    }


def row(title: str) -> JSON:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def overview() -> list[JSON]:
    return [
        stat(
            "Queued",
            "Task messages waiting in the high and low queues.",
            "short",
            'max(relay_queue{where="queued"})',
            1000,
            10000,
        ),
        stat(
            "Oldest waiting",
            "Age of the oldest message that should be moving (alert: 5 min).",
            "s",
            'max(relay_oldest_message_age_seconds{where="queued"})',
            60,
            300,
        ),
        stat(
            "Held",
            "Tracks waiting for their person's identify.",
            "short",
            'max(relay_queue{where="held"})',
            1000,
            10000,
        ),
        stat(
            "Dead letters",
            "Messages the relay gave up on, waiting for a replay or discard.",
            "short",
            'max(relay_queue{where="dead_letters"})',
            1,
            100,
        ),
        stat(
            "Workers alive",
            "Workers whose heartbeat is under a minute old.",
            "short",
            "max(relay_workers_alive)",
            0,
            0,
        )
        | _inverted_thresholds(),
        stat(
            "Budget used today",
            "Promoter requests this UTC day (see PROMOTER_DAILY_LIMIT).",
            "short",
            "max(relay_promoter_budget_used_today)",
            40000,
            48000,
        ),
    ]


def _inverted_thresholds() -> JSON:
    """Red at zero workers, green from one."""
    steps = [{"color": "red", "value": None}, {"color": "green", "value": 1}]
    return {
        "fieldConfig": {
            "defaults": {"unit": "short", "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        }
    }


def ingest() -> list[JSON]:
    return [
        timeseries(
            "Ingest rate",
            "Events reaching ingest per second, by result.",
            "reqps",
            (
                f"sum by (result) (max by (type, result) (rate(relay_events_received_total[{RATE}])))",
                "{{result}}",
            ),
            stack=True,
        ),
        timeseries(
            "Refused requests and 503s",
            "Requests refused before a message was read (by status), and 503s answered while Redis "
            "could not take events (by cause; Segment retries them).",
            "reqps",
            (f"max by (status) (rate(relay_requests_refused_total[{RATE}]))", "refused {{status}}"),
            (f"sum by (cause) (rate(relay_ingest_unavailable_total[{RATE}]))", "503 {{cause}}"),
        ),
    ]


def delivery() -> list[JSON]:
    return [
        timeseries(
            "Delivery outcomes",
            "Messages reaching each state, per second.",
            "ops",
            (
                "max by (state) (rate(relay_message_transitions_total"
                f'{{state=~"delivered|ineligible|skipped|dead|retrying|held"}}[{RATE}]))',
                "{{state}}",
            ),
            stack=True,
        ),
        timeseries(
            "Queue depth",
            "Where messages wait.",
            "short",
            (
                'max by (where) (relay_queue{where=~"queued_high|queued_low|in_flight|retry_scheduled"})',
                "{{where}}",
            ),
        ),
        timeseries(
            "Queue age",
            "How long the oldest message has waited: queued (should stay near 0), held.",
            "s",
            ("max by (where) (relay_oldest_message_age_seconds)", "{{where}}"),
        ),
        timeseries(
            "Workers and beat",
            "Heartbeat ages (above 60 s: silent) and workers alive.",
            "s",
            ("max by (service) (relay_heartbeat_age_seconds)", "{{service}} heartbeat age"),
            ("max(relay_workers_alive)", "workers alive"),
            (f"max(increase(relay_lost_task_messages_requeued_total[{RATE}]))", "lost messages re-queued"),
        ),
    ]


def promoter() -> list[JSON]:
    bucket = f"max by (le, endpoint) (rate(relay_promoter_request_duration_seconds_bucket[{RATE}]))"
    return [
        timeseries(
            "Promoter latency",
            "Call latency by endpoint: median and 95th percentile.",
            "s",
            (f"histogram_quantile(0.5, {bucket})", "p50 {{endpoint}}"),
            (f"histogram_quantile(0.95, {bucket})", "p95 {{endpoint}}"),
        ),
        timeseries(
            "Promoter answers",
            "Promoter's answers per second by endpoint and status (error: no answer).",
            "reqps",
            (
                f"max by (endpoint, status) (rate(relay_promoter_requests_total[{RATE}]))",
                "{{endpoint}} {{status}}",
            ),
        ),
        timeseries(
            "Budget",
            "Requests this UTC day, the daily limit (when set), and a 429 pause.",
            "short",
            ("max(relay_promoter_budget_used_today)", "used today"),
            ("max(relay_promoter_budget_daily_limit)", "daily limit"),
            ("max(relay_promoter_paused_seconds)", "paused (s)"),
        ),
        timeseries(
            "Calls saved",
            "Promoter calls the relay did not need to make, by reason.",
            "ops",
            (f"max by (reason) (rate(relay_promoter_calls_saved_total[{RATE}]))", "{{reason}}"),
        ),
    ]


def held_and_dead() -> list[JSON]:
    return [
        timeseries(
            "Held messages",
            "Tracks waiting for their person's identify; the identities they wait under.",
            "short",
            ('max(relay_queue{where="held"})', "held"),
            ('max(relay_queue{where="held_identities"})', "identities"),
        ),
        timeseries(
            "Dead letters",
            "Dead letters kept; new ones, replayed and dropped per hour.",
            "short",
            ('max(relay_queue{where="dead_letters"})', "kept"),
            ('max(increase(relay_message_transitions_total{state="dead"}[1h]))', "new (1 h)"),
            ("max(increase(relay_dead_letters_replayed_total[1h]))", "replayed (1 h)"),
            ("max by (why) (increase(relay_dead_letters_dropped_total[1h]))", "dropped {{why}} (1 h)"),
        ),
        timeseries(
            "Redis memory",
            "Redis' memory against maxmemory: at the limit, ingest answers 503.",
            "bytes",
            ("max(relay_redis_memory_used_bytes)", "used"),
            ("max(relay_redis_maxmemory_bytes > 0)", "maxmemory"),
        ),
        timeseries(
            "Surveys of unknown outcome",
            "Survey calls that may or may not have reached Promoter, by cause.",
            "short",
            ("max by (cause) (increase(relay_survey_outcomes_unknown_total[1h]))", "{{cause}} (1 h)"),
        ),
    ]


def layout(sections: list[tuple[str, list[JSON]]]) -> list[JSON]:
    """Rows of panels, left to right: stats 4 wide, graphs 12 wide."""
    panels: list[JSON] = []
    y = 0
    for title, members in sections:
        panels.append({**row(title), "gridPos": {"x": 0, "y": y, "w": WIDTH, "h": 1}})
        y += 1
        x, height = 0, 0
        for panel in members:
            width, tall = (4, 4) if panel["type"] == "stat" else (12, 8)
            if x + width > WIDTH:
                x, y = 0, y + height
            panels.append({**panel, "gridPos": {"x": x, "y": y, "w": width, "h": tall}})
            x, height = x + width, max(height, tall)
        y += height
    return [{**panel, "id": n + 1} for n, panel in enumerate(panels)]


def dashboard() -> JSON:
    sections = [
        ("Overview", overview()),
        ("Ingest", ingest()),
        ("Delivery", delivery()),
        ("Promoter", promoter()),
        ("Held, dead letters, Redis", held_and_dead()),
    ]
    return {
        "uid": UID,
        "title": "promoter-relay",
        "description": "Segment -> Promoter.io relay. Generated by deploy/grafana_dashboard.py; edit that.",
        "tags": ["promoter-relay"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "links": [],
        "panels": layout(sections),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def queries(board: JSON) -> Iterator[str]:
    """Every PromQL expression of a dashboard."""
    for panel in board["panels"]:
        for query in panel.get("targets", []):
            yield str(query["expr"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.grafana_dashboard", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run make grafana", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
