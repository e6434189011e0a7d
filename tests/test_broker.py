"""Our hand-built task messages must be the ones Celery itself would publish, field for field."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis
from celery import Celery

from worker import broker
from worker.events import Event

EVENT: Event = {
    "messageId": "m-1",
    "type": "track",
    "userId": "u1",
    "anonymousId": None,
    "traits": {},
    "event": "NPS",
    "properties": {"score": 1e-7, "name": "Zoë"},
    "context": {},
    "timestamp": None,
    "receivedAt": "2026-11-29T00:00:00Z",
    "campaignId": None,
}
# Per-message values, and the two we set on purpose: no result backend, so no reply_to and
# ignore_result; argsrepr shows only the message type and id.
VARYING = {
    "id",
    "root_id",
    "origin",
    "argsrepr",
    "correlation_id",
    "delivery_tag",
    "ignore_result",
    "reply_to",
}


def shape(value: Any) -> Any:
    """Keys all the way down, with values kept except the per-message ones."""
    if isinstance(value, dict):
        return {k: "*" if k in VARYING else shape(v) for k, v in value.items()}
    return value


def test_envelope_matches_what_send_task_publishes(redis_client: redis.Redis, redis_url: str) -> None:
    app = Celery("probe", broker=redis_url)
    app.conf.update(task_serializer="json", accept_content=["json"], task_default_queue="relay")
    app.send_task(broker.TRACK_TASK, args=[EVENT], queue="relay")
    published = json.loads(redis_client.rpop("relay") or "{}")
    ours = json.loads(broker.envelope(EVENT, "relay"))

    assert published["properties"].pop("body_encoding") == "base64"
    assert ours["properties"].pop("body_encoding") is None, "a plain body, readable by kombu as is"
    assert json.loads(ours.pop("body")) == json.loads(base64.b64decode(published.pop("body")))
    assert shape(ours) == shape(published)
    assert ours["headers"]["argsrepr"] == "('track', 'm-1')"
    assert "Zo" not in ours["headers"]["argsrepr"], "event content stays out of what Flower shows"


def test_each_envelope_has_its_own_ids() -> None:
    first, second = json.loads(broker.envelope(EVENT, "relay")), json.loads(broker.envelope(EVENT, "relay"))
    assert first["headers"]["id"] != second["headers"]["id"]
    assert first["properties"]["delivery_tag"] != second["properties"]["delivery_tag"]
    assert json.loads(broker.envelope(EVENT, "relay", task_id="t-1"))["headers"]["id"] == "t-1"
