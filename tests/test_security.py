"""Who gets in, what gets out: replays, timing-safe checks, and secrets absent from every output."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from app import auth, create_app
from app.devtools.sandbox import SandboxControl
from tests.conftest import ADMIN_TOKEN, SANDBOX_KEY, WRITE_KEY, Processes, basic, settings_for, wait_until
from worker import keys

SECRET = "webhook-secret-for-security-tests"
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def signed_post(client: FlaskClient, body: str, secret: str = SECRET) -> Any:
    signature = hmac.new(secret.encode(), body.encode(), hashlib.sha1).hexdigest()
    return client.post(
        "/segment", data=body, headers={"Content-Type": "application/json", "X-Signature": signature}
    )


@pytest.fixture
def hook_client(redis_client: redis.Redis, redis_url: str) -> FlaskClient:
    app = create_app({"TESTING": True, **settings_for(redis_url, segment_shared_secret=SECRET)})
    return app.test_client()


def test_replayed_webhook_is_acknowledged_but_queued_once(
    hook_client: FlaskClient, redis_client: redis.Redis
) -> None:
    body = json.dumps({"type": "track", "userId": "r1", "event": "NPS", "messageId": "replay-1"})
    first, replay = signed_post(hook_client, body), signed_post(hook_client, body)
    assert first.status_code == replay.status_code == 200
    assert replay.get_json() == {"success": True, "duplicate": True}
    assert redis_client.llen("relay") == 1


def test_webhook_replayed_after_the_dedup_window_is_refused(
    hook_client: FlaskClient, redis_client: redis.Redis
) -> None:
    old = (datetime.now(UTC) - timedelta(days=4)).isoformat()
    body = json.dumps(
        {"type": "track", "userId": "r2", "event": "NPS", "messageId": "replay-2", "receivedAt": old}
    )
    response = signed_post(hook_client, body)
    assert response.status_code == 400
    assert "replay window" in response.get_json()["errors"]["receivedAt"][0]
    fresh = json.loads(body) | {"receivedAt": datetime.now(UTC).isoformat(), "messageId": "replay-3"}
    assert signed_post(hook_client, json.dumps(fresh)).status_code == 200
    assert redis_client.llen("relay") == 1


@pytest.mark.parametrize("signature_secret", ["", "wrong-secret", SECRET.upper()])
def test_webhook_with_a_wrong_signature_is_refused(
    hook_client: FlaskClient, redis_client: redis.Redis, signature_secret: str
) -> None:
    body = json.dumps({"type": "track", "userId": "r4", "event": "NPS"})
    response = (
        signed_post(hook_client, body, signature_secret)
        if signature_secret
        else hook_client.post("/segment", data=body, headers={"Content-Type": "application/json"})
    )
    assert response.status_code == 401
    assert SECRET not in response.get_data(as_text=True)
    assert redis_client.llen("relay") == 0


def test_write_key_checks_compare_every_key_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("app.auth.hmac.compare_digest", counting)
    allowed = ("key-one", "key-two", "key-three")
    assert auth.key_matches("key-one", allowed)
    assert len(compared) == 3, "a match on the first key must not stop the comparisons"
    compared.clear()
    assert not auth.key_matches("nope", allowed)
    assert len(compared) == 3
    compared.clear()
    assert auth.signature_matches(SECRET, b"{}", hmac.new(SECRET.encode(), b"{}", hashlib.sha1).hexdigest())
    assert len(compared) == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
    path=st.sampled_from(
        [
            "stats",
            "messages",
            "messages/x",
            "users/u",
            "dead-letters",
            "dead-letters/replay",
            "dead-letters/x/replay",
            "dead-letters/x/discard",
            "dead-letters/discard",
        ]
    ),
    header=st.one_of(
        st.none(),
        st.text(max_size=40).map(lambda t: f"Bearer {t}"),
        st.just(f"bearer {ADMIN_TOKEN[:-1]}"),
        st.just(f"Basic {ADMIN_TOKEN}"),
        st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
    ),
)
def test_admin_api_never_opens_without_the_token(
    client: FlaskClient, method: str, path: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    try:
        response = client.open(f"/admin/api/{path}", method=method, headers=headers)
    except ValueError:
        return  # the test client itself refuses headers with newlines; no request was made
    assert response.status_code in (401, 405)
    assert response.status_code < 500
    assert ADMIN_TOKEN not in response.get_data(as_text=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=60))
def test_random_admin_paths_are_never_a_5xx(client: FlaskClient, path: str) -> None:
    response = client.get(f"/admin/api/{path}", headers=BEARER)
    assert response.status_code < 500


@pytest.mark.integration
def test_no_secret_in_logs_errors_or_admin_output(
    redis_client: redis.Redis,
    redis_url: str,
    processes: Processes,
    sandbox_control: SandboxControl,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every secret is set and every error path is walked; none of them may show up anywhere."""
    wrong_key = "promoter-key-that-promoter-refuses"
    suppression_key = "suppression-key-of-this-test-run"
    secrets = [wrong_key, WRITE_KEY, ADMIN_TOKEN, SECRET, SANDBOX_KEY, suppression_key]
    processes.env.update(PROMOTER_API_KEY=wrong_key, SEGMENT_SHARED_SECRET=SECRET, LOG_LEVEL="debug")
    processes.worker()
    settings = settings_for(redis_url, segment_shared_secret=SECRET, suppression_key=suppression_key)
    app = create_app({"TESTING": True, **settings})
    client = app.test_client()
    outputs: list[str] = []
    with caplog.at_level(logging.DEBUG):
        requests: list[Callable[[], TestResponse]] = [
            lambda: client.post(
                "/v1/identify", json={"userId": "s1", "traits": {"email": "s1@example.com"}}, headers=basic()
            ),
            lambda: client.post("/v1/track", json={"userId": "s1", "event": "NPS"}, headers=basic("wrong")),
            lambda: client.post("/v1/track", json={"userId": "s1", "event": "NPS", "writeKey": "guess"}),
            lambda: client.post("/segment", data="{}", headers={"X-Signature": "00"}),
            lambda: client.get("/admin/api/stats", headers={"Authorization": "Bearer guess"}),
            lambda: client.get("/admin/api/stats", headers=BEARER),
            lambda: client.get("/admin/api/dead-letters", headers=BEARER),
            lambda: client.get("/admin/"),
            lambda: client.get("/metrics"),
            lambda: client.post("/admin/api/people/forget", json={"userIds": ["gone"]}, headers=BEARER),
        ]
        for request in requests:
            outputs.append(request().get_data(as_text=True))
        # Promoter refuses the key: delivery pauses, and says so in the status, the API and the logs.
        wait_until(lambda: redis_client.exists(keys.ACCOUNT), timeout=30)
        message = client.get("/admin/api/messages/s1", headers=BEARER).get_data(as_text=True)
        wait_until(lambda: "401" in client.get("/admin/api/messages", headers=BEARER).get_data(as_text=True))
        outputs.append(message)
        outputs.append(client.get("/admin/api/users/s1", headers=BEARER).get_data(as_text=True))
        outputs.append(client.get("/admin/api/stats", headers=BEARER).get_data(as_text=True))
        outputs.append(client.get("/admin/api/messages", headers=BEARER).get_data(as_text=True))
        outputs.append(str(redis_client.get(keys.ACCOUNT)))
    wait_until(lambda: "refuses the account" in processes.logs(), timeout=10)
    outputs.append(processes.logs())
    outputs.append(caplog.text)
    outputs.append(json.dumps(sandbox_control.calls()))
    everything = "\n".join(outputs)
    assert "Promoter refuses the account" in everything, "the error paths were not exercised"
    for secret in secrets:
        assert secret not in everything, f"a secret leaked: {secret[:4]}..."
