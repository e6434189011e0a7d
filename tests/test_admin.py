"""The inspection API, metrics and CLI, over a real Redis (no worker needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from flask.testing import FlaskClient

from app.cli import main
from tests.conftest import ADMIN_TOKEN, basic
from worker import keys
from worker.deadletters import DeadLetters
from worker.events import Event

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def event(message_id: str, **extra: Any) -> Event:
    base: Event = {
        "messageId": message_id,
        "type": "track",
        "userId": "u1",
        "anonymousId": None,
        "traits": {},
        "event": "NPS",
        "properties": {"score": 1e-7},
        "context": {},
        "timestamp": None,
        "receivedAt": "2026-11-29T00:00:00Z",
        "campaignId": None,
    }
    base.update(extra)  # type: ignore[typeddict-item]
    return base


@pytest.mark.parametrize(
    "path",
    ["stats", "messages", "messages/x", "users/u1", "dead-letters"],
)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": "Bearer "},
    ],
    ids=["none", "wrong", "wrong-scheme", "empty"],
)
def test_admin_api_needs_the_token(client: FlaskClient, path: str, headers: dict[str, str]) -> None:
    response = client.get(f"/admin/api/{path}", headers=headers)
    assert response.status_code == 401
    assert ADMIN_TOKEN not in response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["dead-letters/replay", "dead-letters/x/replay"])
def test_replay_needs_the_token(client: FlaskClient, path: str) -> None:
    assert client.post(f"/admin/api/{path}").status_code == 401


def test_dashboard_shell_has_no_data_and_no_token(client: FlaskClient, redis_client: redis.Redis) -> None:
    DeadLetters(redis_client, 3600, "relay").bury(event("secret-looking-id"), "test", 1)
    page = client.get("/admin/")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "secret-looking-id" not in text and ADMIN_TOKEN not in text
    assert "Authorization" in text


def test_stats_reflect_ingest(client: FlaskClient) -> None:
    client.post("/v1/identify", json={"userId": "u1", "traits": {"email": "a@example.com"}}, headers=basic())
    client.post("/v1/track", json={"userId": "u1", "event": "NPS", "messageId": "m1"}, headers=basic())
    client.post("/v1/track", json={"userId": "u1", "event": "NPS", "messageId": "m1"}, headers=basic())
    client.post("/v1/track", json={"userId": "u1"}, headers=basic())
    client.post("/v1/page", json={"userId": "u1"}, headers=basic())
    stats = client.get("/admin/api/stats", headers=BEARER).get_json()
    assert stats["queue"]["queued"] == 2
    assert stats["accepted"] == {"identify": 1, "track": 1, "page": 1}
    assert stats["duplicates"] == {"track": 1}
    assert stats["rejected"] == {"track": 1}
    assert stats["totals"]["received"] == 2 and stats["totals"]["skipped"] == 1


def test_message_status_and_history(client: FlaskClient) -> None:
    client.post("/v1/track", json={"userId": "u1", "event": "NPS", "messageId": "m-42"}, headers=basic())
    body = client.get("/admin/api/messages/m-42", headers=BEARER).get_json()
    assert body["message"]["state"] == "received"
    assert [h["state"] for h in body["message"]["history"]] == ["received"]
    assert body["dead_letter"] is None
    assert client.get("/admin/api/messages/nope", headers=BEARER).status_code == 404
    recent = client.get("/admin/api/messages", headers=BEARER).get_json()["messages"]
    assert [m["id"] for m in recent] == ["m-42"]


def test_user_view(client: FlaskClient, redis_client: redis.Redis) -> None:
    redis_client.hset(keys.known("u:u7"), mapping={"email": "u7@example.com", "first_name": "Ua"})
    body = client.get("/admin/api/users/u7", headers=BEARER).get_json()
    assert body["known"] is True and body["contact"]["email"] == "u7@example.com"
    assert body["held_count"] == 0
    unknown = client.get("/admin/api/users/zz", headers=BEARER).get_json()
    assert unknown["known"] is False and unknown["contact"] is None


def test_dead_letters_list_and_replay(client: FlaskClient, redis_client: redis.Redis) -> None:
    dead = DeadLetters(redis_client, 3600, "relay")
    dead.bury(event("d1"), "Promoter rejected it: 403", 3, '{"detail": "nope"}')
    dead.bury(event("d2"), "never identified", 0)
    listing = client.get("/admin/api/dead-letters", headers=BEARER).get_json()
    assert listing["total"] == 2
    first = {d["id"]: d for d in listing["dead_letters"]}["d1"]
    assert first["attempts"] == 3 and first["last_response"] == '{"detail": "nope"}'
    assert first["event"]["properties"] == {"score": 1e-7}

    assert client.post("/admin/api/dead-letters/d1/replay", headers=BEARER).get_json() == {"replayed": 1}
    assert client.post("/admin/api/dead-letters/d1/replay", headers=BEARER).status_code == 404
    assert redis_client.hget(keys.message("d1"), "state") == "received"
    queued = json.loads(redis_client.lindex("relay", 0) or "{}")
    assert json.loads(queued["body"])[0][0]["messageId"] == "d1"

    assert client.post("/admin/api/dead-letters/replay", headers=BEARER).get_json() == {"replayed": 1}
    assert dead.count() == 0 and redis_client.llen("relay") == 2


def test_metrics_expose_counts_and_latency(client: FlaskClient, redis_client: redis.Redis) -> None:
    from worker.metrics import observe_promoter

    client.post("/v1/track", json={"userId": "u1", "event": "NPS"}, headers=basic())
    client.post("/v1/track", json={"userId": "u1"}, headers=basic())
    observe_promoter(redis_client, "survey", 200, 0.03)
    observe_promoter(redis_client, "survey", None, 2.0)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'relay_events_received_total{result="accepted",type="track"} 1.0' in text
    assert 'relay_events_received_total{result="rejected",type="track"} 1.0' in text
    assert 'relay_queue{where="queued"} 1.0' in text
    assert 'relay_promoter_request_duration_seconds_bucket{endpoint="survey",le="0.05"} 1.0' in text
    assert 'relay_promoter_request_duration_seconds_count{endpoint="survey"} 2.0' in text
    assert 'relay_promoter_requests_total{endpoint="survey",status="error"} 1.0' in text


def test_cli_status_and_dead_letters(redis_client: redis.Redis, redis_url: str, monkeypatch: Any) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    DeadLetters(redis_client, 3600, "relay").bury(event("c1"), "never identified", 0)
    runner = CliRunner()
    status = runner.invoke(main, ["status", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["queue"]["dead_letters"] == 1
    listing = runner.invoke(main, ["dead-letters", "list"])
    assert (
        "1 dead letter(s)" in listing.output
        and "c1" in listing.output
        and "never identified" in listing.output
    )
    replay = runner.invoke(main, ["dead-letters", "replay", "c1", "missing"])
    assert "c1: replayed" in replay.output and "missing: not found" in replay.output
    assert redis_client.llen("relay") == 1
