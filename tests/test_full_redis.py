"""A Redis that is full (``maxmemory`` with ``noeviction``, as compose runs it) refuses writes: ingest
answers 503 with ``Retry-After`` (Segment retries it), never 500, and nothing it answered 200 is
lost; once Redis has room again, all of it is delivered."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app import create_app
from app.devtools.processes import EmbeddedRedis
from app.devtools.sandbox import SandboxServer
from tests.conftest import SOURCE, basic, ref, settings_for
from tests.harness import make_relay
from tests.test_admin import samples
from worker import keys
from worker.events import WEBHOOK_SOURCE

pytestmark = pytest.mark.integration
MAXMEMORY = "3mb"
BATCH_USERS = 40


@pytest.fixture
def full(tmp_path: Path) -> Iterator[tuple[str, redis.Redis]]:
    """A redis-server of this test's own with a tiny maxmemory."""
    server = EmbeddedRedis(tmp_path / "redis", maxmemory=MAXMEMORY).start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        yield server.url, client
    finally:
        client.close()
        server.stop()


def batch(number: int) -> list[dict[str, Any]]:
    messages = []
    for n in range(BATCH_USERS):
        user = f"u{number}-{n}"
        traits = {"email": f"{user}@example.com", "plan": "pro" * 20}
        messages.append({"type": "identify", "userId": user, "messageId": f"id-{user}", "traits": traits})
        messages.append({"type": "track", "userId": user, "messageId": f"nps-{user}", "event": "NPS"})
    return messages


def test_a_full_redis_answers_503_and_loses_nothing_it_acknowledged(
    full: tuple[str, redis.Redis], sandbox: SandboxServer
) -> None:
    url, client = full
    api = create_app({"TESTING": True, **settings_for(url)}).test_client()
    acknowledged: list[str] = []  # refs
    refusals: list[Any] = []

    def send(path: str, body: Any, message_ids: list[str]) -> None:
        """Near the limit a small request may still fit: every answer is 200 (then it is stored) or
        503 with Retry-After."""
        response = api.post(path, json=body, headers=basic())
        if response.status_code == 200:
            acknowledged.extend(message_ids)
            return
        assert response.status_code == 503, (path, response.status_code, response.get_data(as_text=True))
        assert response.headers["Retry-After"] == "5"
        assert response.get_json()["code"] == "unavailable"
        refusals.append(path)

    for number in range(1000):
        messages = batch(number)
        send("/v1/batch", {"batch": messages}, [ref(m["messageId"]) for m in messages])
        if len(refusals) >= 3:
            break
    assert len(refusals) >= 3, "Redis never filled up"
    assert len(acknowledged) > 100, "Redis was full from the start"
    for n in range(200):
        track = {"type": "track", "userId": f"u0-{n % BATCH_USERS}", "event": "NPS", "messageId": f"late-{n}"}
        path = "/v1/track" if n % 2 else "/segment"
        send(path, track, [ref(track["messageId"], SOURCE if n % 2 else WEBHOOK_SOURCE)])
        if {"/v1/track", "/segment"} <= set(refusals[3:]):
            break
    assert {"/v1/track", "/segment"} <= set(refusals), "single events and webhooks are refused too"
    assert api.post("/v1/track", json={"userId": "x", "event": "NPS"}).status_code == 401, "auth still works"
    assert samples(api, "relay_ingest_unavailable_total")["cause=out_of_memory"] >= len(refusals)
    assert samples(api, "relay_redis_up") == {"": 1.0}, "a full Redis still answers reads"

    # Every acknowledged message is stored and queued.
    records = client.pipeline(transaction=False)
    for message in acknowledged:
        records.hget(keys.message(message), "state")
        records.exists(keys.event(message))
    answers = records.execute()
    assert answers[0::2] == ["received"] * len(acknowledged)
    assert answers[1::2] == [1] * len(acknowledged)
    assert client.zcard(keys.PENDING) == len(acknowledged)

    # A worker that takes a message off the queue while Redis is full cannot start it; the message
    # stays pending, and the reconciler queues it again once there is room.
    relay = make_relay(client, sandbox)
    relay.clock.now = time.time()
    with pytest.raises(redis.RedisError, match="OOM"):
        relay.step()
    client.config_set("maxmemory", "0")  # what the operator does: give Redis room
    relay.drain()
    relay.clock.advance(relay.stores.reconciler.grace + 1)
    assert relay.stores.reconciler.requeue_stale() == 1, "the one taken while Redis was full"
    relay.drain()
    states = [relay.state(message) for message in acknowledged]
    assert states == ["delivered"] * len(acknowledged)
    late = sum(1 for message in acknowledged if ":late-" in message)
    assert len(relay.surveys()) == (len(acknowledged) - late) // 2 + late
