"""Ingest over the Tracking API (``/v1/...``): every 4xx path, what lands in Redis, and Redis trouble.

Everything here goes through the Flask test client against a real Redis; what the worker will see is
read back from Redis exactly as Celery would (the task message LPUSHed to the ``relay`` queue).
"""

from __future__ import annotations

import gzip
import io
import json
import uuid
from datetime import datetime
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from tests.conftest import WRITE_KEY, basic, settings_for

QUEUE = "relay"
DEAD_REDIS = "redis://127.0.0.1:1/0"


# --------------------------------------------------------------------------------------------- helpers


def without_code(response: Any) -> Any:
    """An error body minus Segment's ``code``/``message`` pair, after checking that pair is there."""
    body = response.get_json()
    assert isinstance(body.pop("code"), str) and body.pop("message")
    return body


def post(
    client: FlaskClient,
    path: str,
    payload: Any = None,
    *,
    data: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    auth: bool = True,
    content_type: str = "application/json",
) -> Any:
    body = data if data is not None else json.dumps(payload)
    return client.post(
        path,
        data=body,
        headers={**(basic() if auth else {}), **(headers or {})},
        content_type=content_type,
    )


def status(r: redis.Redis, message_id: str) -> dict[str, str]:
    record: dict[str, str] = r.hgetall(f"relay:msg:{{{message_id}}}")
    return record


def queued(r: redis.Redis) -> list[dict[str, Any]]:
    """The events inside the task messages on the queue, oldest first."""
    events = []
    for raw in reversed(r.lrange(QUEUE, 0, -1)):
        message = json.loads(raw)
        args, kwargs, _embed = json.loads(message["body"])
        assert kwargs == {}
        assert len(args) == 1
        events.append(args[0])
    return events


def task_names(r: redis.Redis) -> list[str]:
    return [json.loads(raw)["headers"]["task"] for raw in reversed(r.lrange(QUEUE, 0, -1))]


def status_keys(r: redis.Redis) -> list[str]:
    return [k for k in r.keys("relay:msg:*") if not k.endswith((":log", ":payload"))]


def assert_nothing_stored(r: redis.Redis) -> None:
    assert r.llen(QUEUE) == 0
    assert status_keys(r) == []


def mid() -> str:
    return f"m-{uuid.uuid4()}"


def identify(user: str = "u1", email: str | None = "ann@example.com", **extra: Any) -> dict[str, Any]:
    traits: dict[str, Any] = {"email": email} if email else {}
    return {"userId": user, "traits": traits, "messageId": mid(), **extra}


def track(user: str = "u1", event: str = "NPS", **extra: Any) -> dict[str, Any]:
    return {"userId": user, "event": event, "properties": {"plan": "pro"}, "messageId": mid(), **extra}


def seed_known(r: redis.Redis, user_id: str, email: str = "known@example.com") -> None:
    r.hset(f"relay:{{u:{user_id}}}:known", mapping={"email": email})


@pytest.fixture
def survey_client(redis_client: redis.Redis, redis_url: str) -> FlaskClient:
    app = create_app({"TESTING": True, **settings_for(redis_url, survey_events=frozenset({"NPS"}))})
    return app.test_client()


@pytest.fixture
def dead_app() -> Flask:
    return create_app({"TESTING": True, **settings_for(DEAD_REDIS)})


# ----------------------------------------------------------------------------------- 4xx: exact errors

BAD_CAMPAIGN = {"integrations": {"Promoter": {"campaign": ["Not a valid campaign id."]}}}

REJECTIONS: list[Any] = [
    pytest.param(
        "/v1/track",
        b"{",
        {
            "_request": [
                "Invalid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
            ]
        },
        id="invalid-json",
    ),
    pytest.param(
        "/v1/track",
        b'{"userId": "u1", "event": "NPS", "properties": {"x": NaN}}',
        {"_request": ["Invalid JSON: NaN is not valid JSON"]},
        id="nan-literal",
    ),
    pytest.param(
        "/v1/track",
        b'{"userId": "u1", "event": "caf\xe9"}',
        {"_request": ["Body is not valid UTF-8."]},
        id="non-utf8",
    ),
    pytest.param("/v1/track", b"", {"_request": ["Body is empty."]}, id="empty-body"),
    pytest.param("/v1/identify", b" \r\n\t ", {"_request": ["Body is empty."]}, id="blank-body"),
    pytest.param(
        "/v1/track",
        b"[" * 70 + b"]" * 70,
        {"_request": ["JSON nests deeper than 64 levels."]},
        id="too-deep",
    ),
    pytest.param(
        "/v1/track",
        b'"just a string"',
        {"_schema": ["Each message must be a JSON object."]},
        id="single-not-object",
    ),
    pytest.param(
        "/v1/identify",
        {"traits": {"email": "ann@example.com"}},
        {"userId": ["Missing data for required field."]},
        id="identify-no-userId",
    ),
    pytest.param(
        "/v1/identify",
        {"userId": "u1", "traits": {"email": "not-an-email"}},
        {"traits": {"email": ["Not a valid email address."]}},
        id="identify-invalid-email",
    ),
    pytest.param(
        "/v1/identify",
        {"userId": "u1", "traits": {"email": 42}},
        {"traits": {"email": ["Not a valid string."]}},
        id="identify-email-not-string",
    ),
    pytest.param(
        "/v1/identify",
        {"userId": "stranger", "traits": {"firstName": "Ann"}},
        {"traits": {"email": ["Missing data for required field (user not known yet)."]}},
        id="identify-no-email-unknown-user",
    ),
    pytest.param(
        "/v1/track",
        {"userId": "u1", "properties": {}},
        {"event": ["Missing data for required field."]},
        id="track-no-event",
    ),
    pytest.param(
        "/v1/track",
        {"userId": "u1", "event": "   "},
        {"event": ["Missing data for required field."]},
        id="track-blank-event",
    ),
    pytest.param(
        "/v1/track",
        {"event": "NPS", "anonymousId": None},
        {"userId": ["userId or anonymousId is required."]},
        id="track-no-identity",
    ),
    pytest.param(
        "/v1/track",
        {"userId": True, "event": "NPS"},
        {"userId": ["Must be a non-empty string or a number."]},
        id="userId-boolean",
    ),
    pytest.param(
        "/v1/track",
        {"userId": "u1", "event": "NPS", "timestamp": "yesterday"},
        {"timestamp": ["Not a valid datetime."]},
        id="bad-timestamp",
    ),
    pytest.param(
        "/v1/track",
        {"userId": "u1", "event": "NPS", "integrations": {"Promoter": {"campaign": "abc"}}},
        BAD_CAMPAIGN,
        id="campaign-text",
    ),
    pytest.param(
        "/v1/track",
        {"userId": "u1", "event": "NPS", "integrations": {"Promoter": {"campaign": 0}}},
        BAD_CAMPAIGN,
        id="campaign-zero",
    ),
    pytest.param(
        "/v1/track",
        {"userId": "u1", "event": "NPS", "integrations": {"Promoter": {"campaign": -3}}},
        BAD_CAMPAIGN,
        id="campaign-negative",
    ),
    pytest.param(
        "/v1/track",
        {"userId": "u1", "event": "NPS", "integrations": {"Promoter": {"campaign": True}}},
        BAD_CAMPAIGN,
        id="campaign-boolean",
    ),
    pytest.param(
        "/v1/identify",
        {"userId": "u1", "traits": {"email": "a@b.co"}, "integrations": {"Promoter.io": {"campaign": 1.5}}},
        {"integrations": {"Promoter.io": {"campaign": ["Not a valid campaign id."]}}},
        id="campaign-float-promoter-io",
    ),
    pytest.param(
        "/v1/batch",
        {"batch": "nope"},
        {"batch": ["Must be a list of messages."]},
        id="batch-not-list",
    ),
    pytest.param(
        "/v1/batch",
        {"context": {}},
        {"batch": ["Must be a list of messages."]},
        id="batch-missing",
    ),
    pytest.param(
        "/v1/batch",
        [{"type": "track", "userId": "u1", "event": "NPS"}],
        {"_schema": ["A batch must be a JSON object."]},
        id="batch-body-not-object",
    ),
    pytest.param(
        "/v1/batch",
        {"batch": [{"type": "track", "userId": "u1", "event": "NPS"}] * 2501},
        {"batch": ["At most 2500 events per batch."]},
        id="batch-too-many-events",
    ),
]


@pytest.mark.parametrize(("path", "body", "errors"), REJECTIONS)
def test_bad_input_is_400_with_field_errors(
    client: FlaskClient, redis_client: redis.Redis, path: str, body: Any, errors: dict[str, Any]
) -> None:
    response = post(client, path, data=body) if isinstance(body, bytes | str) else post(client, path, body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert without_code(response) == {"success": False, "errors": errors}
    assert_nothing_stored(redis_client)


@pytest.mark.parametrize(
    ("item", "errors"),
    [
        pytest.param(
            {"userId": "u1", "event": "NPS"}, {"type": ["Missing data for required field."]}, id="no-type"
        ),
        pytest.param(
            {"type": "purchase", "userId": "u1"},
            {"type": ["Must be one of: identify, track, page, screen, group, alias."]},
            id="unknown-type",
        ),
        pytest.param(
            {"type": "track", "userId": "u1"}, {"event": ["Missing data for required field."]}, id="no-event"
        ),
        pytest.param("track", {"_schema": ["Each message must be a JSON object."]}, id="not-an-object"),
    ],
)
def test_batch_of_only_invalid_items_is_400_with_indexed_errors(
    client: FlaskClient, redis_client: redis.Redis, item: Any, errors: dict[str, Any]
) -> None:
    response = post(client, "/v1/batch", {"batch": [item]})
    assert response.status_code == 400
    assert without_code(response) == {
        "success": False,
        "accepted": 0,
        "duplicates": 0,
        "rejected": [{"index": 0, "errors": errors}],
    }
    assert_nothing_stored(redis_client)


def test_unknown_type_on_the_webhook_is_rejected(client: FlaskClient, redis_client: redis.Redis) -> None:
    response = post(client, "/segment", {"type": "purchase", "userId": "u1"})
    assert response.status_code == 400
    assert without_code(response) == {
        "success": False,
        "errors": {"type": ["Must be one of: identify, track, page, screen, group, alias."]},
    }
    assert_nothing_stored(redis_client)


def test_batch_with_some_invalid_items_accepts_the_rest(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    good_identify = {"type": "identify", **identify("b1", "b1@example.com")}
    good_track = {"type": "track", **track("b1")}
    items = [
        good_identify,
        {"userId": "b1", "event": "NPS"},
        good_track,
        {"type": "checkout", "userId": "b1"},
        {"type": "track", "userId": "b1"},
        {"type": "identify", "userId": "b1", "traits": {"email": "nope"}},
    ]
    response = post(client, "/v1/batch", {"batch": items})
    assert response.status_code == 200
    assert response.get_json() == {
        "success": True,
        "accepted": 2,
        "duplicates": 0,
        "rejected": [
            {"index": 1, "errors": {"type": ["Missing data for required field."]}},
            {
                "index": 3,
                "errors": {"type": ["Must be one of: identify, track, page, screen, group, alias."]},
            },
            {"index": 4, "errors": {"event": ["Missing data for required field."]}},
            {"index": 5, "errors": {"traits": {"email": ["Not a valid email address."]}}},
        ],
    }
    assert [e["messageId"] for e in queued(redis_client)] == [
        good_identify["messageId"],
        good_track["messageId"],
    ]
    assert task_names(redis_client) == ["relay.identify", "relay.track"]
    assert sorted(status_keys(redis_client)) == sorted(
        f"relay:msg:{{{m['messageId']}}}" for m in (good_identify, good_track)
    )


def test_empty_batch_is_acknowledged(client: FlaskClient, redis_client: redis.Redis) -> None:
    response = post(client, "/v1/batch", {"batch": []})
    assert response.status_code == 200
    assert response.get_json() == {"success": True, "accepted": 0, "duplicates": 0, "rejected": []}
    assert_nothing_stored(redis_client)


def test_get_on_an_ingest_route_is_405_json(client: FlaskClient) -> None:
    response = client.get("/v1/track", headers=basic())
    assert response.status_code == 405
    assert response.get_json()["success"] is False


# -------------------------------------------------------------------------------------- known users


def test_identify_without_email_for_known_user_is_a_trait_update(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    seed_known(redis_client, "known-1")
    message = {"userId": "known-1", "traits": {"first_name": "Kim"}, "messageId": mid()}
    response = post(client, "/v1/identify", message)
    assert response.status_code == 200
    assert response.get_json() == {"success": True}
    [event] = queued(redis_client)
    assert event["userId"] == "known-1"
    assert event["traits"] == {"firstName": "Kim"}
    assert status(redis_client, message["messageId"])["state"] == "received"


def test_identify_without_email_after_one_with_email_in_the_same_batch(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    first = {"type": "identify", **identify("new-1", "new@example.com")}
    update = {"type": "identify", "userId": "new-1", "traits": {"lastName": "Novak"}, "messageId": mid()}
    stranger = {"type": "identify", "userId": "new-2", "traits": {"lastName": "X"}, "messageId": mid()}
    response = post(client, "/v1/batch", {"batch": [first, update, stranger]})
    assert response.status_code == 200
    body = response.get_json()
    assert body["accepted"] == 2
    assert body["rejected"] == [
        {
            "index": 2,
            "errors": {"traits": {"email": ["Missing data for required field (user not known yet)."]}},
        }
    ]
    assert [e["messageId"] for e in queued(redis_client)] == [first["messageId"], update["messageId"]]


# -------------------------------------------------------------------------------------------- limits


def _padded_track(total_bytes: int) -> dict[str, Any]:
    """A track whose compact UTF-8 JSON is exactly ``total_bytes`` long."""
    message = {"userId": "big", "event": "NPS", "messageId": mid(), "properties": {"pad": ""}}
    base = len(json.dumps(message, separators=(",", ":")).encode())
    message["properties"] = {"pad": "x" * (total_bytes - base)}
    assert len(json.dumps(message, separators=(",", ":")).encode()) == total_bytes
    return message


def test_event_of_exactly_32kb_is_accepted(client: FlaskClient, redis_client: redis.Redis) -> None:
    message = _padded_track(32 * 1024)
    response = post(client, "/v1/track", data=json.dumps(message, separators=(",", ":")))
    assert response.status_code == 200
    assert len(queued(redis_client)) == 1


def test_event_over_32kb_is_413(client: FlaskClient, redis_client: redis.Redis) -> None:
    message = _padded_track(32 * 1024 + 1)
    response = post(client, "/v1/track", data=json.dumps(message, separators=(",", ":")))
    assert response.status_code == 413
    assert without_code(response) == {
        "success": False,
        "errors": {"_request": ["Event exceeds 32768 bytes."]},
    }
    assert_nothing_stored(redis_client)


def test_oversized_event_in_a_batch_is_rejected_alone(client: FlaskClient, redis_client: redis.Redis) -> None:
    big = {"type": "track", **_padded_track(40 * 1024)}
    small = {"type": "track", **track("small")}
    response = post(client, "/v1/batch", {"batch": [small, big]})
    assert response.status_code == 200
    assert response.get_json() == {
        "success": True,
        "accepted": 1,
        "duplicates": 0,
        "rejected": [{"index": 1, "errors": {"_schema": ["Event exceeds 32768 bytes."]}}],
    }
    assert [e["messageId"] for e in queued(redis_client)] == [small["messageId"]]
    assert status(redis_client, big["messageId"]) == {}


def test_body_over_500kb_is_413(client: FlaskClient, redis_client: redis.Redis) -> None:
    items = [{"type": "track", **_padded_track(20 * 1024)} for _ in range(26)]
    data = json.dumps({"batch": items})
    assert len(data) > 500 * 1024
    response = post(client, "/v1/batch", data=data)
    assert response.status_code == 413
    assert without_code(response) == {
        "success": False,
        "errors": {"_request": ["Request body exceeds 512000 bytes."]},
    }
    assert_nothing_stored(redis_client)


@pytest.mark.parametrize(
    ("padding", "expected"),
    [pytest.param(10, 200, id="small"), pytest.param(500 * 1024, 413, id="over-500kb")],
)
def test_body_limit_holds_without_content_length(
    client: FlaskClient, redis_client: redis.Redis, padding: int, expected: int
) -> None:
    """The limit holds on the bytes read (chunked upload), not on what the sender declared."""
    item = json.dumps({"type": "track", **track("chunked")})
    data = ('{"batch": [' + " " * padding + item + "]}").encode()
    response = client.post(
        "/v1/batch",
        headers={**basic(), "Content-Type": "application/json"},
        environ_overrides={"wsgi.input": io.BytesIO(data), "wsgi.input_terminated": True},
    )
    assert response.request.content_length is None
    assert response.status_code == expected
    if expected == 413:
        assert response.get_json()["errors"] == {"_request": ["Request body exceeds 512000 bytes."]}
        assert_nothing_stored(redis_client)
    else:
        assert response.get_json()["accepted"] == 1


def test_gzip_body_is_accepted(client: FlaskClient, redis_client: redis.Redis) -> None:
    message = track("gz")
    response = post(
        client,
        "/v1/track",
        data=gzip.compress(json.dumps(message).encode()),
        headers={"Content-Encoding": "gzip"},
    )
    assert response.status_code == 200
    assert [e["messageId"] for e in queued(redis_client)] == [message["messageId"]]


def test_gzip_bomb_is_413(client: FlaskClient, redis_client: redis.Redis) -> None:
    inflated = b'{"batch": [' + b" " * (2 * 1024 * 1024) + b"]}"
    bomb = gzip.compress(inflated, compresslevel=9)
    assert len(bomb) < 8 * 1024
    response = post(client, "/v1/batch", data=bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert without_code(response) == {
        "success": False,
        "errors": {"_request": ["Decompressed body exceeds 512000 bytes."]},
    }
    assert_nothing_stored(redis_client)


_GZIPPED_TRACK = gzip.compress(json.dumps({"userId": "gz-2", "event": "NPS", "messageId": "gz-2"}).encode())


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"userId": "u1", "event": "NPS"}', id="plain-json-labelled-gzip"),
        pytest.param(b"\x1f\x8b\x08\x00garbage", id="gzip-header-cut-short"),
        pytest.param(_GZIPPED_TRACK[:-8], id="gzip-without-crc-trailer"),
        pytest.param(_GZIPPED_TRACK[:-8] + b"\0" * 8, id="gzip-with-wrong-crc"),
    ],
)
def test_invalid_gzip_is_400(client: FlaskClient, redis_client: redis.Redis, data: bytes) -> None:
    """A gzip stream that does not end with a matching CRC and length is not a complete body."""
    response = post(client, "/v1/track", data=data, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 400
    assert without_code(response) == {"success": False, "errors": {"_request": ["Body is not valid gzip."]}}
    assert_nothing_stored(redis_client)


def test_unsupported_content_encoding_is_415(client: FlaskClient, redis_client: redis.Redis) -> None:
    response = post(client, "/v1/track", track(), headers={"Content-Encoding": "br"})
    assert response.status_code == 415
    assert without_code(response) == {
        "success": False,
        "errors": {"_request": ["Unsupported Content-Encoding 'br'."]},
    }
    assert_nothing_stored(redis_client)


# ---------------------------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    ("headers", "body_key", "message"),
    [
        pytest.param({}, None, "Missing write key (HTTP Basic username or writeKey).", id="none"),
        pytest.param(basic("wrong-key"), None, "Invalid write key.", id="wrong-basic"),
        pytest.param({}, "wrong-key", "Invalid write key.", id="wrong-body-key"),
        pytest.param(
            {}, 12345, "Missing write key (HTTP Basic username or writeKey).", id="body-key-not-string"
        ),
        pytest.param({}, "", "Missing write key (HTTP Basic username or writeKey).", id="empty-body-key"),
        pytest.param(
            {"Authorization": "Bearer " + WRITE_KEY},
            None,
            "Missing write key (HTTP Basic username or writeKey).",
            id="bearer-is-not-basic",
        ),
        pytest.param(
            {"Authorization": "Basic !!!not-base64"},
            None,
            "Missing write key (HTTP Basic username or writeKey).",
            id="garbled-basic",
        ),
    ],
)
@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_missing_or_wrong_write_key_is_401(
    client: FlaskClient,
    redis_client: redis.Redis,
    path: str,
    headers: dict[str, str],
    body_key: Any,
    message: str,
) -> None:
    payload: dict[str, Any] = {"batch": [{"type": "track", **track()}]} if path.endswith("batch") else track()
    if body_key is not None:
        payload["writeKey"] = body_key
    response = post(client, path, payload, headers=headers, auth=False)
    assert response.status_code == 401
    assert without_code(response) == {"success": False, "errors": {"_auth": [message]}}
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert_nothing_stored(redis_client)


def test_relay_without_configured_write_keys_refuses_everything(
    redis_client: redis.Redis, redis_url: str
) -> None:
    app = create_app({"TESTING": True, **settings_for(redis_url, segment_write_keys=())})
    response = post(app.test_client(), "/v1/track", {**track(), "writeKey": WRITE_KEY})
    assert response.status_code == 401
    assert without_code(response) == {
        "success": False,
        "errors": {"_auth": ["No write keys are configured on this relay (SEGMENT_WRITE_KEYS)."]},
    }
    assert_nothing_stored(redis_client)


@pytest.mark.parametrize("how", ["basic", "body", "both"])
@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_basic_and_body_write_key_are_both_accepted(
    client: FlaskClient, redis_client: redis.Redis, how: str, path: str
) -> None:
    message = track("auth-user")
    payload: dict[str, Any] = {"batch": [{"type": "track", **message}]} if path.endswith("batch") else message
    if how in ("body", "both"):
        payload["writeKey"] = WRITE_KEY
    response = post(client, path, payload, auth=how in ("basic", "both"))
    assert response.status_code == 200
    assert response.get_json()["success"] is True
    assert [e["messageId"] for e in queued(redis_client)] == [message["messageId"]]


def test_any_of_several_write_keys_is_accepted(redis_client: redis.Redis, redis_url: str) -> None:
    app = create_app({"TESTING": True, **settings_for(redis_url, segment_write_keys=("old-key", WRITE_KEY))})
    response = post(app.test_client(), "/v1/track", {**track(), "writeKey": "old-key"}, auth=False)
    assert response.status_code == 200
    assert len(queued(redis_client)) == 1


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "text/plain", "text/plain;charset=UTF-8"],
)
def test_json_and_text_plain_content_types_are_accepted(
    client: FlaskClient, redis_client: redis.Redis, content_type: str
) -> None:
    message = track("ct-user")
    response = post(client, "/v1/track", message, content_type=content_type)
    assert response.status_code == 200
    assert [e["messageId"] for e in queued(redis_client)] == [message["messageId"]]


# --------------------------------------------------------------------------------------------- routes


@pytest.mark.parametrize(
    ("path", "kind", "payload"),
    [
        ("/v1/i", "identify", {"userId": "s1", "traits": {"email": "s1@example.com"}}),
        ("/v1/t", "track", {"userId": "s1", "event": "NPS"}),
        ("/v1/p", "page", {"userId": "s1", "name": "Home"}),
        ("/v1/s", "screen", {"userId": "s1", "name": "Home"}),
        ("/v1/g", "group", {"userId": "s1", "groupId": "g1"}),
        ("/v1/a", "alias", {"userId": "s1", "previousId": "anon-1"}),
        ("/v1/identify", "identify", {"userId": "s1", "traits": {"email": "s1@example.com"}}),
        ("/v1/track", "track", {"userId": "s1", "event": "NPS"}),
    ],
)
def test_routes_set_the_message_type(
    client: FlaskClient, redis_client: redis.Redis, path: str, kind: str, payload: dict[str, Any]
) -> None:
    message_id = mid()
    # The path decides the type, whatever the body claims.
    response = post(client, path, {**payload, "type": "bogus", "messageId": message_id})
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"success": True}
    record = status(redis_client, message_id)
    assert record["type"] == kind
    assert record["user"] == "u:s1"


@pytest.mark.parametrize("path", ["/v1/x", "/v1/purchase", "/v1/batches"])
def test_unknown_tracking_route_is_404(client: FlaskClient, redis_client: redis.Redis, path: str) -> None:
    response = post(client, path, track())
    assert response.status_code == 404
    assert without_code(response) == {"success": False, "errors": {"_path": [f"Unknown endpoint {path}."]}}
    assert_nothing_stored(redis_client)


# ------------------------------------------------------------------------------ what lands in Redis


def test_identify_lands_as_status_record_and_task(client: FlaskClient, redis_client: redis.Redis) -> None:
    message = identify("rec-1", "rec@example.com")
    response = post(client, "/v1/identify", message)
    assert response.status_code == 200
    record = status(redis_client, message["messageId"])
    assert record["type"] == "identify"
    assert record["user"] == "u:rec-1"
    assert record["event"] == ""
    assert record["state"] == "received"
    assert record["detail"] == ""
    assert float(record["received"]) > 1.6e9
    [event] = queued(redis_client)
    assert event["messageId"] == message["messageId"]
    assert event["type"] == "identify"
    assert event["traits"]["email"] == "rec@example.com"
    assert event["receivedAt"].endswith("Z")
    assert task_names(redis_client) == ["relay.identify"]
    [raw] = redis_client.lrange(QUEUE, 0, -1)
    assert json.loads(raw)["properties"]["delivery_info"]["routing_key"] == QUEUE


def test_anonymous_track_is_keyed_by_anonymous_id(client: FlaskClient, redis_client: redis.Redis) -> None:
    message = {"anonymousId": "anon-9", "event": "NPS", "messageId": mid(), "userId": None}
    response = post(client, "/v1/track", message)
    assert response.status_code == 200
    record = status(redis_client, message["messageId"])
    assert (record["type"], record["user"], record["event"]) == ("track", "a:anon-9", "NPS")
    [event] = queued(redis_client)
    assert event["anonymousId"] == "anon-9"
    assert event["userId"] is None


def test_numeric_user_id_becomes_a_string(client: FlaskClient, redis_client: redis.Redis) -> None:
    message = {"userId": 1234, "event": "NPS", "messageId": mid()}
    assert post(client, "/v1/track", message).status_code == 200
    assert status(redis_client, message["messageId"])["user"] == "u:1234"
    assert queued(redis_client)[0]["userId"] == "1234"


def test_duplicate_message_id_is_acknowledged_and_queued_once(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    message = track("dup")
    first = post(client, "/v1/track", message)
    second = post(client, "/v1/track", message)
    third = post(client, "/v1/batch", {"batch": [{"type": "track", **message}]})
    assert first.status_code == 200
    assert first.get_json() == {"success": True}
    assert second.status_code == 200
    assert second.get_json() == {"success": True, "duplicate": True}
    assert third.status_code == 200
    assert third.get_json() == {"success": True, "accepted": 0, "duplicates": 1, "rejected": []}
    assert redis_client.llen(QUEUE) == 1
    assert [e["messageId"] for e in queued(redis_client)] == [message["messageId"]]


def test_duplicate_message_id_within_one_batch_is_queued_once(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    message = {"type": "track", **track("dup2")}
    response = post(client, "/v1/batch", {"batch": [message, dict(message)]})
    assert response.status_code == 200
    assert response.get_json() == {"success": True, "accepted": 1, "duplicates": 1, "rejected": []}
    assert redis_client.llen(QUEUE) == 1


def test_batch_context_and_integrations_merge_into_items(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    plain = {"type": "track", **track("m1")}
    own = {
        "type": "track",
        **track("m2"),
        "context": {"ip": "10.0.0.2", "locale": "fr-FR"},
        "integrations": {"Promoter": True},
    }
    body = {
        "batch": [plain, own],
        "context": {"ip": "10.0.0.1", "library": {"name": "analytics-python", "version": "2.3.6"}},
        "integrations": {"All": False},
    }
    response = post(client, "/v1/batch", body)
    assert response.status_code == 200
    assert response.get_json()["accepted"] == 2
    # plain inherited All: false -> skipped; own re-enabled Promoter and keeps its own context values.
    assert status(redis_client, plain["messageId"])["state"] == "skipped"
    [event] = queued(redis_client)
    assert event["messageId"] == own["messageId"]
    assert event["context"] == {
        "ip": "10.0.0.2",
        "locale": "fr-FR",
        "library": {"name": "analytics-python", "version": "2.3.6"},
    }


def test_batch_context_fills_items_without_context(client: FlaskClient, redis_client: redis.Redis) -> None:
    item = {"type": "track", **track("m3"), "context": None}
    body = {"batch": [item], "context": {"traits": {"email": "ctx@example.com"}, "ip": "10.1.1.1"}}
    assert post(client, "/v1/batch", body).status_code == 200
    [event] = queued(redis_client)
    assert event["context"] == {"traits": {"email": "ctx@example.com"}, "ip": "10.1.1.1"}
    # A track carries the user's traits from context.traits (analytics.js does that).
    assert event["traits"] == {"email": "ctx@example.com"}


@pytest.mark.parametrize(
    "integrations",
    [
        {"Promoter": False},
        {"Promoter.io": False},
        {"All": False},
        {"All": False, "Segment.io": True, "Mixpanel": True},
        {"All": True, "Promoter": False},
    ],
)
@pytest.mark.parametrize("kind", ["identify", "track"])
def test_promoter_disabled_by_integrations_is_skipped(
    client: FlaskClient, redis_client: redis.Redis, integrations: dict[str, Any], kind: str
) -> None:
    message = (identify if kind == "identify" else track)("off-1", integrations=integrations)
    response = post(client, f"/v1/{kind}", message)
    assert response.status_code == 200
    assert response.get_json() == {"success": True}
    record = status(redis_client, message["messageId"])
    assert record["state"] == "skipped"
    assert record["detail"] == "Promoter disabled by the integrations object"
    assert redis_client.llen(QUEUE) == 0


@pytest.mark.parametrize(
    "integrations",
    [
        pytest.param({}, id="none"),
        pytest.param({"All": True}, id="all-true"),
        pytest.param({"All": False, "Promoter": True}, id="all-false-promoter-true"),
        pytest.param({"All": False, "Promoter.io": True}, id="all-false-promoter-io-true"),
        pytest.param({"All": False, "Promoter": {"campaign": 12}}, id="all-false-promoter-options"),
        pytest.param({"Mixpanel": False}, id="other-destination-off"),
        # Segment's integrations object enables a destination with an options object, even an empty one.
        pytest.param({"Promoter": {}}, id="promoter-empty-options"),
    ],
)
def test_promoter_enabled_by_integrations_is_queued(
    client: FlaskClient, redis_client: redis.Redis, integrations: dict[str, Any]
) -> None:
    message = track("on-1", integrations=integrations)
    response = post(client, "/v1/track", message)
    assert response.status_code == 200
    assert status(redis_client, message["messageId"])["state"] == "received"
    assert [e["messageId"] for e in queued(redis_client)] == [message["messageId"]]


@pytest.mark.parametrize(
    ("integrations", "campaign"),
    [
        ({"Promoter": {"campaign": 42}}, 42),
        ({"Promoter": {"campaign": "43"}}, 43),
        ({"Promoter.io": {"campaign": 44}}, 44),
        ({"Promoter": {"campaign": None}}, None),
        ({}, None),
    ],
)
def test_campaign_override_lands_as_campaign_id(
    client: FlaskClient, redis_client: redis.Redis, integrations: dict[str, Any], campaign: int | None
) -> None:
    message = track("camp-1", integrations=integrations)
    assert post(client, "/v1/track", message).status_code == 200
    [event] = queued(redis_client)
    assert event["campaignId"] == campaign


def test_explicit_nulls_are_tolerated(client: FlaskClient, redis_client: redis.Redis) -> None:
    message = {
        "type": "track",
        "userId": "null-1",
        "anonymousId": None,
        "event": "NPS",
        "messageId": None,
        "timestamp": None,
        "originalTimestamp": None,
        "sentAt": None,
        "traits": None,
        "context": None,
        "properties": None,
        "integrations": None,
    }
    response = post(client, "/v1/track", message)
    assert response.status_code == 200, response.get_json()
    [event] = queued(redis_client)
    assert event["userId"] == "null-1"
    assert event["anonymousId"] is None
    assert event["traits"] == {}
    assert event["properties"] == {}
    assert event["context"] == {}
    assert event["timestamp"] is None
    assert event["messageId"]


def test_explicit_null_traits_are_dropped_on_identify(client: FlaskClient, redis_client: redis.Redis) -> None:
    message = {
        "userId": "null-2",
        "anonymousId": None,
        "traits": {"email": "nul@example.com", "firstName": None, "last_name": None, "phone": None},
        "context": None,
        "integrations": None,
        "messageId": mid(),
    }
    assert post(client, "/v1/identify", message).status_code == 200
    [event] = queued(redis_client)
    assert event["traits"] == {"email": "nul@example.com"}


def test_identify_with_null_traits_for_known_user(client: FlaskClient, redis_client: redis.Redis) -> None:
    seed_known(redis_client, "null-3")
    message = {"userId": "null-3", "traits": None, "messageId": mid()}
    assert post(client, "/v1/identify", message).status_code == 200
    assert queued(redis_client)[0]["traits"] == {}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timestamp", "2024-05-01T12:30:00Z"),
        ("timestamp", "2024-05-01T12:30:00+00:00"),
        ("timestamp", "2024-05-01T12:30:00.000Z"),
        ("timestamp", "2024-05-01T14:30:00+02:00"),
        ("timestamp", "2024-05-01T07:30:00-05:00"),
        ("originalTimestamp", "2024-05-01T12:30:00+00:00"),
    ],
)
def test_timestamps_with_z_and_offsets_are_normalized_to_utc(
    client: FlaskClient, redis_client: redis.Redis, field: str, value: str
) -> None:
    message = track("ts-1", **{field: value})
    response = post(client, "/v1/track", message)
    assert response.status_code == 200, response.get_json()
    [event] = queued(redis_client)
    stamp = event["timestamp"]
    assert stamp.endswith("Z")
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")) == datetime.fromisoformat(
        "2024-05-01T12:30:00+00:00"
    )


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("0001-01-01T00:00:00+01:00", id="before-year-1-in-utc"),
        pytest.param("9999-12-31T23:30:00-01:00", id="after-year-9999-in-utc"),
    ],
)
def test_timestamp_outside_the_utc_range_is_a_400_not_a_500(
    client: FlaskClient, redis_client: redis.Redis, value: str
) -> None:
    response = post(client, "/v1/track", track("ts-2", timestamp=value))
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["success"] is False
    assert "timestamp" in response.get_json()["errors"]
    assert_nothing_stored(redis_client)


@pytest.mark.parametrize(
    ("traits", "expected"),
    [
        pytest.param(
            {"email": "a@example.com", "first_name": "Ann", "last_name": "Lee"},
            {"email": "a@example.com", "firstName": "Ann", "lastName": "Lee"},
            id="snake-case",
        ),
        pytest.param(
            {"email": "a@example.com", "firstName": " Ann ", "lastName": "Lee"},
            {"email": "a@example.com", "firstName": "Ann", "lastName": "Lee"},
            id="camel-case-trimmed",
        ),
        pytest.param(
            {"email": "a@example.com", "name": "Ann Marie Lee"},
            {"email": "a@example.com", "name": "Ann Marie Lee", "firstName": "Ann", "lastName": "Marie Lee"},
            id="name-split",
        ),
        pytest.param(
            {"email": "a@example.com", "name": "Cher"},
            {"email": "a@example.com", "name": "Cher", "firstName": "Cher", "lastName": ""},
            id="single-name",
        ),
        pytest.param(
            {"email": "a@example.com", "name": "Ann Lee", "first_name": "Annie"},
            {"email": "a@example.com", "name": "Ann Lee", "firstName": "Annie"},
            id="name-not-split-when-first-given",
        ),
        pytest.param(
            {"Email": " a@example.com ", "plan": "pro"},
            {"email": "a@example.com", "plan": "pro"},
            id="capitalized-email",
        ),
        pytest.param(
            {"email": "a@example.com", "firstName": "", "first_name": "Ann"},
            {"email": "a@example.com", "firstName": "Ann"},
            id="empty-camel-falls-back-to-snake",
        ),
    ],
)
def test_traits_are_normalized(
    client: FlaskClient, redis_client: redis.Redis, traits: dict[str, Any], expected: dict[str, Any]
) -> None:
    message = {"userId": "tr-1", "traits": traits, "messageId": mid()}
    response = post(client, "/v1/identify", message)
    assert response.status_code == 200, response.get_json()
    [event] = queued(redis_client)
    assert event["traits"] == expected


@pytest.mark.parametrize("message_id", [None, "absent"])
def test_missing_message_id_gets_one(client: FlaskClient, redis_client: redis.Redis, message_id: Any) -> None:
    message: dict[str, Any] = {"userId": "nomid", "event": "NPS"}
    if message_id != "absent":
        message["messageId"] = message_id
    response = post(client, "/v1/track", message)
    assert response.status_code == 200
    [event] = queued(redis_client)
    assert isinstance(event["messageId"], str) and event["messageId"]
    record = status(redis_client, event["messageId"])
    assert record["id"] == event["messageId"]
    assert record["user"] == "u:nomid"


def test_two_messages_without_id_are_two_events(client: FlaskClient, redis_client: redis.Redis) -> None:
    for _ in range(2):
        response = post(client, "/v1/track", {"userId": "nomid", "event": "NPS"})
        assert response.get_json() == {"success": True}
    events = queued(redis_client)
    assert len(events) == 2
    assert events[0]["messageId"] != events[1]["messageId"]


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("page", {"userId": "sk-1", "name": "Pricing", "properties": {"url": "https://example.com/pricing"}}),
        ("screen", {"userId": "sk-1", "name": "Settings"}),
        ("group", {"userId": "sk-1", "groupId": "acme", "traits": {"name": "Acme"}}),
        ("alias", {"userId": "sk-1", "previousId": "anon-77"}),
    ],
)
@pytest.mark.parametrize("via", ["single", "batch"])
def test_types_not_sent_to_promoter_are_recorded_as_skipped(
    client: FlaskClient, redis_client: redis.Redis, kind: str, payload: dict[str, Any], via: str
) -> None:
    message = {**payload, "messageId": mid()}
    if via == "single":
        response = post(client, f"/v1/{kind}", message)
        assert response.get_json() == {"success": True}
    else:
        response = post(client, "/v1/batch", {"batch": [{"type": kind, **message}]})
        assert response.get_json() == {"success": True, "accepted": 1, "duplicates": 0, "rejected": []}
    assert response.status_code == 200
    record = status(redis_client, message["messageId"])
    assert record["type"] == kind
    assert record["state"] == "skipped"
    assert record["detail"] == f"{kind} messages are not sent to Promoter"
    assert redis_client.llen(QUEUE) == 0


@pytest.mark.parametrize(
    ("event_name", "delivered"),
    [
        ("NPS", True),
        ("Order Completed", True),
        ("Completed Order", True),
        ("Signed Up", False),
        ("nps", False),
    ],
)
def test_survey_events_filter_tracks(
    survey_client: FlaskClient, redis_client: redis.Redis, event_name: str, delivered: bool
) -> None:
    message = track("sv-1", event_name)
    response = post(survey_client, "/v1/track", message)
    assert response.status_code == 200
    assert response.get_json() == {"success": True}
    record = status(redis_client, message["messageId"])
    assert record["event"] == event_name
    if delivered:
        assert record["state"] == "received"
        assert [e["event"] for e in queued(redis_client)] == [event_name]
    else:
        assert record["state"] == "skipped"
        assert record["detail"] == "not a survey event (SURVEY_EVENTS)"
        assert redis_client.llen(QUEUE) == 0


def test_identify_is_queued_whatever_the_survey_events(
    survey_client: FlaskClient, redis_client: redis.Redis
) -> None:
    message = identify("sv-2", "sv2@example.com")
    assert post(survey_client, "/v1/identify", message).status_code == 200
    assert [e["messageId"] for e in queued(redis_client)] == [message["messageId"]]


def test_event_name_is_trimmed(client: FlaskClient, redis_client: redis.Redis) -> None:
    message = track("trim", "  NPS  ")
    assert post(client, "/v1/track", message).status_code == 200
    assert queued(redis_client)[0]["event"] == "NPS"


# ------------------------------------------------------------------- never a 500 on odd but valid JSON


@pytest.mark.parametrize(
    ("path", "data"),
    [
        pytest.param(
            "/v1/track", '{"userId":"sur-1","event":"NPS","properties":{"note":"\\ud800"}}', id="property"
        ),
        pytest.param("/v1/track", '{"userId":"sur-1","event":"NPS \\udfff"}', id="event-name"),
        pytest.param("/v1/track", '{"userId":"\\ud83d","event":"NPS"}', id="user-id"),
        pytest.param(
            "/v1/track", '{"userId":"sur-1","event":"NPS","messageId":"m-\\ud800"}', id="message-id"
        ),
        pytest.param("/v1/track", '{"userId":"sur-1","event":"NPS","writeKey":"\\ud800"}', id="write-key"),
        pytest.param(
            "/v1/batch",
            '{"batch":[{"type":"track","userId":"sur-1","event":"NPS","properties":{"n":"\\ud800"}}]}',
            id="batch-property",
        ),
    ],
)
def test_lone_surrogate_escapes_are_not_a_500(
    client: FlaskClient, redis_client: redis.Redis, path: str, data: str
) -> None:
    """``"\\ud800"`` is valid JSON text but no valid UTF-8 string: answer 4xx (or store it safely)."""
    assert "\\ud" in data
    response = post(client, path, data=data)
    assert response.status_code in (200, 400), response.get_data(as_text=True)
    assert isinstance(response.get_json()["success"], bool)


def test_out_of_range_number_does_not_put_infinity_in_the_queue(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    """``1e999`` parses to ``inf`` in Python; the task message must stay standard JSON."""
    data = '{"userId":"inf-1","event":"NPS","messageId":"inf-1","properties":{"big":1e999}}'
    response = post(client, "/v1/track", data=data)
    assert response.status_code in (200, 400)

    def strict(token: str) -> Any:
        raise ValueError(f"non-standard JSON constant {token}")

    for raw in redis_client.lrange(QUEUE, 0, -1):
        json.loads(json.loads(raw)["body"], parse_constant=strict)


# ------------------------------------------------------------------------------- Redis unavailable


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/identify", identify("down-1", "down@example.com")),
        ("/v1/identify", {"userId": "down-1", "traits": {"firstName": "No Email"}}),
        ("/v1/track", track("down-1")),
        ("/v1/page", {"userId": "down-1", "name": "Home"}),
        ("/v1/batch", {"batch": [{"type": "track", **track("down-1")}]}),
        ("/segment", {"type": "track", **track("down-1")}),
    ],
)
def test_redis_down_is_503_with_retry_after(dead_app: Flask, path: str, payload: dict[str, Any]) -> None:
    response = post(dead_app.test_client(), path, payload)
    assert response.status_code == 503
    assert without_code(response) == {
        "success": False,
        "errors": {"_service": ["Temporarily unable to store events."]},
    }
    assert int(response.headers["Retry-After"]) > 0


def test_invalid_input_is_still_400_while_redis_is_down(dead_app: Flask) -> None:
    response = post(dead_app.test_client(), "/v1/track", {"userId": "down-2"})
    assert response.status_code == 400
    assert without_code(response) == {
        "success": False,
        "errors": {"event": ["Missing data for required field."]},
    }


def test_healthz_and_readyz(client: FlaskClient, dead_app: Flask) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ok", "redis": "ok"}

    dead = dead_app.test_client()
    assert dead.get("/healthz").status_code == 200
    not_ready = dead.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.get_json()["status"] == "unavailable"
