"""Ingest over the Tracking API (``/v1/...``): every 4xx path, what lands in Redis, and Redis trouble.

Everything here goes through the Flask test client against a real Redis; what the worker will see is
read back from Redis exactly as Celery would: the task message LPUSHed to the ``relay`` or
``relay.low`` queue carries the message's ref, and the event itself is stored beside its status record.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.ingest import MISSING_KEY
from tests.conftest import SOURCE, WRITE_KEY, basic, ref, settings_for
from tests.factories import queued_events, queued_refs, status, text, text_map, texts
from worker import keys
from worker.events import source_of_key

HIGH, LOW = "relay", "relay.low"
QUEUES = (HIGH, LOW)
DEAD_REDIS = "redis://127.0.0.1:1/0"
MILLIS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


# --------------------------------------------------------------------------------------------- helpers


def seconds_before_received(r: redis.Redis, event: dict[str, Any]) -> float:
    """How long before its status record's ``received`` time the event happened (its timestamp)."""
    received = float(status(r, event["ref"])["received"])
    return received - parse(event["timestamp"]).timestamp()


def without_code(response: Any) -> Any:
    """An error body minus Segment's ``code``/``message`` pair, after checking that pair is there."""
    body = response.get_json()
    assert isinstance(body.pop("code"), str)
    assert body.pop("message")
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


def queued_ids(r: redis.Redis, *queues: str) -> list[str]:
    """The messageIds of the stored events the queued task messages name, oldest first."""
    return [event["messageId"] for event in queued_events(r, *queues)]


def task_names(r: redis.Redis, *queues: str) -> list[str]:
    return [
        json.loads(raw)["headers"]["task"] for q in queues or QUEUES for raw in reversed(r.lrange(q, 0, -1))
    ]


def status_keys(r: redis.Redis) -> list[str]:
    return [k for k in texts(r.keys("relay:msg:*")) if not k.endswith((":log", ":event"))]


def assert_nothing_stored(r: redis.Redis) -> None:
    assert [r.llen(queue) for queue in QUEUES] == [0, 0]
    assert r.keys("relay:msg:*") == []


def mid() -> str:
    return f"m-{uuid.uuid4()}"


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def iso_ms(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def identify(user: str = "u1", email: str | None = "ann@example.com", **extra: Any) -> dict[str, Any]:
    traits: dict[str, Any] = {"email": email} if email else {}
    return {"userId": user, "traits": traits, "messageId": mid(), **extra}


def track(user: str = "u1", event: str = "NPS", **extra: Any) -> dict[str, Any]:
    return {"userId": user, "event": event, "properties": {"plan": "pro"}, "messageId": mid(), **extra}


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
        {"traits": {"email": "ann@example.com"}, "anonymousId": None},
        {"userId": ["userId or anonymousId is required."]},
        id="identify-no-identity",
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
        "/v1/alias",
        {"userId": "u1"},
        {"previousId": ["Missing data for required field."]},
        id="alias-no-previousId",
    ),
    pytest.param(
        "/v1/alias",
        {"previousId": "anon-1", "anonymousId": "anon-1"},
        {"userId": ["Missing data for required field."]},
        id="alias-no-userId",
    ),
    pytest.param(
        "/v1/page",
        {"name": "Home"},
        {"userId": ["userId or anonymousId is required."]},
        id="page-no-identity",
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
    *(
        pytest.param(
            "/v1/track",
            {"userId": "u1", "event": "NPS", "messageId": message_id},
            {"messageId": ["May not contain '|' or control characters."]},
            id=name,
        )
        for name, message_id in [
            ("message-id-with-pipe", "a|b"),
            ("message-id-with-control", "a\x01b"),
            ("message-id-ending-in-newline", "abc\n"),  # a bare ``$`` lets one trailing newline through
        ]
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
    good = [ref(good_identify["messageId"]), ref(good_track["messageId"])]
    assert queued_refs(redis_client) == good
    assert task_names(redis_client) == ["relay.identify", "relay.track"]
    assert sorted(status_keys(redis_client)) == sorted(keys.message(r) for r in good)
    assert sorted(redis_client.keys("relay:msg:*:event")) == sorted(keys.event(r) for r in good)


def test_empty_batch_is_acknowledged(client: FlaskClient, redis_client: redis.Redis) -> None:
    response = post(client, "/v1/batch", {"batch": []})
    assert response.status_code == 200
    assert response.get_json() == {"success": True, "accepted": 0, "duplicates": 0, "rejected": []}
    assert_nothing_stored(redis_client)


def test_get_on_an_ingest_route_is_405_json(client: FlaskClient) -> None:
    response = client.get("/v1/track", headers=basic())
    assert response.status_code == 405
    assert response.get_json() == {
        "success": False,
        "code": "method_not_allowed",
        "message": "The method is not allowed for the requested URL.",
        "errors": {"_request": ["The method is not allowed for the requested URL."]},
    }
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize(
    ("path", "message", "expected"),
    [
        ("/v1/track", {"userId": "u1", "event": ""}, "event: Missing data for required field."),
        (
            "/v1/identify",
            {"userId": "u1", "traits": {"email": "nope"}},
            "traits.email: Not a valid email address.",
        ),
        ("/v1/track", {"event": "NPS"}, "userId: userId or anonymousId is required."),
    ],
)
def test_the_top_level_message_names_the_field(
    client: FlaskClient, path: str, message: dict[str, Any], expected: str
) -> None:
    response = post(client, path, message)
    assert response.status_code == 400
    assert response.get_json()["message"] == expected


def test_the_missing_key_message_names_every_way_to_send_one(client: FlaskClient) -> None:
    response = post(client, "/v1/track", track(), auth=False)
    assert response.status_code == 401
    assert response.get_json()["message"] == MISSING_KEY
    for way in ("HTTP Basic username", "X-Write-Key", "writeKey"):
        assert way in MISSING_KEY


def test_a_track_whose_context_traits_hold_an_unreadable_email_is_accepted(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    message = track(context={"traits": {"email": 42, "plan": "pro"}})
    response = post(client, "/v1/track", message)
    assert response.status_code == 200, response.get_json()
    [event] = queued_events(redis_client)
    # A track keeps no traits: context.traits are only informational (minimisation, issue 21).
    assert event["traits"] == {}


# --------------------------------------------------------------------------- identify, alias: new rules


def test_identify_without_email_is_accepted_as_a_trait_update(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    message: dict[str, Any] = {"userId": "stranger-1", "traits": {"first_name": "Kim"}, "messageId": mid()}
    response = post(client, "/v1/identify", message)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"success": True}
    [event] = queued_events(redis_client)
    assert event["userId"] == "stranger-1"
    assert event["traits"] == {"firstName": "Kim"}
    assert status(redis_client, ref(message["messageId"]))["state"] == "received"


def test_identify_without_email_is_accepted_for_any_user_in_a_batch(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    first = {"type": "identify", **identify("new-1", "new@example.com")}
    update = {"type": "identify", "userId": "new-1", "traits": {"lastName": "Novak"}, "messageId": mid()}
    stranger = {"type": "identify", "userId": "new-2", "traits": {"lastName": "X"}, "messageId": mid()}
    response = post(client, "/v1/batch", {"batch": [first, update, stranger]})
    assert response.status_code == 200
    assert response.get_json() == {"success": True, "accepted": 3, "duplicates": 0, "rejected": []}
    assert queued_ids(redis_client) == [first["messageId"], update["messageId"], stranger["messageId"]]


@pytest.mark.parametrize("via", ["single", "batch"])
def test_trait_only_identify_is_accepted_and_queued_on_the_low_queue(
    client: FlaskClient, redis_client: redis.Redis, via: str
) -> None:
    message: dict[str, Any] = {"userId": "plain-1", "traits": {"plan": "pro", "seats": 3}, "messageId": mid()}
    if via == "single":
        response = post(client, "/v1/identify", message)
        assert response.get_json() == {"success": True}
    else:
        response = post(client, "/v1/batch", {"batch": [{"type": "identify", **message}]})
        assert response.get_json() == {"success": True, "accepted": 1, "duplicates": 0, "rejected": []}
    assert response.status_code == 200
    message_ref = ref(message["messageId"])
    assert queued_refs(redis_client, HIGH) == []
    assert queued_refs(redis_client, LOW) == [message_ref]
    assert task_names(redis_client, LOW) == ["relay.identify"]
    record = status(redis_client, message_ref)
    assert (record["type"], record["user"], record["state"], record["queue"]) == (
        "identify",
        "u:plain-1",
        "received",
        LOW,
    )
    [event] = queued_events(redis_client, LOW)
    assert event["traits"] == {"plan": "pro", "seats": 3}


def test_identify_with_an_email_for_a_new_person_goes_on_the_high_queue(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    """Contrast to the trait-only identify: one that may change who the contact is goes first."""
    message = identify("high-1", "high@example.com")
    assert post(client, "/v1/identify", message).status_code == 200
    assert queued_refs(redis_client, HIGH) == [ref(message["messageId"])]
    assert queued_refs(redis_client, LOW) == []
    assert status(redis_client, ref(message["messageId"]))["queue"] == HIGH


@pytest.mark.parametrize(
    "traits",
    [
        pytest.param({"email": "anon@example.com"}, id="with-email"),
        pytest.param({"plan": "pro"}, id="trait-only"),
    ],
)
def test_identify_with_only_an_anonymous_id_is_accepted(
    client: FlaskClient, redis_client: redis.Redis, traits: dict[str, Any]
) -> None:
    message: dict[str, Any] = {
        "anonymousId": "anon-id-1",
        "userId": None,
        "traits": traits,
        "messageId": mid(),
    }
    response = post(client, "/v1/identify", message)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"success": True}
    record = status(redis_client, ref(message["messageId"]))
    assert (record["type"], record["user"], record["state"]) == ("identify", "a:anon-id-1", "received")
    [event] = queued_events(redis_client)
    assert (event["userId"], event["anonymousId"]) == (None, "anon-id-1")
    assert event["traits"] == traits


@pytest.mark.parametrize("via", ["single", "batch"])
def test_alias_is_queued_as_an_alias_task(client: FlaskClient, redis_client: redis.Redis, via: str) -> None:
    message = {"userId": "al-1", "previousId": "anon-al", "messageId": mid()}
    if via == "single":
        response = post(client, "/v1/alias", message)
        assert response.get_json() == {"success": True}
    else:
        response = post(client, "/v1/batch", {"batch": [{"type": "alias", **message}]})
        assert response.get_json() == {"success": True, "accepted": 1, "duplicates": 0, "rejected": []}
    assert response.status_code == 200
    message_ref = ref(message["messageId"])
    record = status(redis_client, message_ref)
    assert (record["type"], record["user"], record["state"], record["queue"]) == (
        "alias",
        "u:al-1",
        "received",
        HIGH,
    )
    assert queued_refs(redis_client, HIGH) == [message_ref]
    assert task_names(redis_client) == ["relay.alias"]
    [event] = queued_events(redis_client)
    assert (event["type"], event["userId"], event["previousId"]) == ("alias", "al-1", "anon-al")


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
    assert len(queued_refs(redis_client)) == 1


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
    assert queued_ids(redis_client) == [small["messageId"]]
    assert status(redis_client, ref(big["messageId"])) == {}


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
    assert queued_ids(redis_client) == [message["messageId"]]


def test_a_gzip_body_of_several_members_is_read_whole(client: FlaskClient, redis_client: redis.Redis) -> None:
    message = track("gz-members")
    text = json.dumps(message).encode()
    data = gzip.compress(text[:20]) + gzip.compress(text[20:])
    response = post(client, "/v1/track", data=data, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.get_json()
    assert queued_ids(redis_client) == [message["messageId"]]


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
        # Not dropped in silence: the sender would take the 200 for all it sent.
        pytest.param(_GZIPPED_TRACK + b"trailing bytes", id="gzip-with-trailing-bytes"),
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
        pytest.param({}, None, MISSING_KEY, id="none"),
        pytest.param(basic("wrong-key"), None, "Invalid write key.", id="wrong-basic"),
        pytest.param({}, "wrong-key", "Invalid write key.", id="wrong-body-key"),
        pytest.param({}, 12345, MISSING_KEY, id="body-key-not-string"),
        pytest.param({}, "", MISSING_KEY, id="empty-body-key"),
        pytest.param(
            {"Authorization": "Bearer " + WRITE_KEY},
            None,
            MISSING_KEY,
            id="bearer-is-not-basic",
        ),
        pytest.param(
            {"Authorization": "Basic !!!not-base64"},
            None,
            MISSING_KEY,
            id="garbled-basic",
        ),
        # Header values arrive as latin-1 text: base64 of anything but ASCII is a ValueError of its own.
        pytest.param(
            {"Authorization": "Basic \u00e9"},
            None,
            MISSING_KEY,
            id="non-ascii-basic",
        ),
        pytest.param({"X-Write-Key": "wrong-key"}, None, "Invalid write key.", id="wrong-x-write-key"),
        # A header credential is the one checked: a valid key in the body does not rescue a wrong one.
        pytest.param(
            {"X-Write-Key": "wrong-key"}, WRITE_KEY, "Invalid write key.", id="wrong-header-right-body"
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
    assert queued_ids(redis_client) == [message["messageId"]]


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_x_write_key_header_is_accepted(client: FlaskClient, redis_client: redis.Redis, path: str) -> None:
    message = track("xwk-user")
    payload: dict[str, Any] = {"batch": [{"type": "track", **message}]} if path.endswith("batch") else message
    response = post(client, path, payload, headers={"X-Write-Key": WRITE_KEY}, auth=False)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["success"] is True
    assert queued_refs(redis_client) == [ref(message["messageId"])]


@pytest.mark.parametrize(
    "credential",
    [
        pytest.param(basic("wrong-key"), id="basic"),
        pytest.param({"X-Write-Key": "wrong-key"}, id="x-write-key"),
    ],
)
def test_a_wrong_header_key_is_refused_before_the_body_is_read(
    client: FlaskClient, redis_client: redis.Redis, credential: dict[str, str]
) -> None:
    """Neither a broken gzip body nor an oversized one is looked at: the answer is the 401."""
    broken = post(
        client,
        "/v1/track",
        data=b"\x1f\x8bnot gzip",
        headers={**credential, "Content-Encoding": "gzip"},
        auth=False,
    )
    oversized = post(
        client, "/v1/batch", data=b"[" + b" " * (600 * 1024) + b"]", headers=credential, auth=False
    )
    for response in (broken, oversized):
        assert response.status_code == 401, response.get_json()
        assert without_code(response) == {"success": False, "errors": {"_auth": ["Invalid write key."]}}
    assert_nothing_stored(redis_client)


def test_requests_refused_before_reading_messages_are_counted(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    assert post(client, "/v1/track", track(), auth=False).status_code == 401
    assert post(client, "/v1/track", data=b"{").status_code == 400
    assert post(client, "/v1/track", data=b"").status_code == 400
    assert post(client, "/v1/batch", data=b'{"batch": [' + b" " * (600 * 1024) + b"]}").status_code == 413
    # A message refused for its fields is counted as a rejected message, not a refused request.
    assert post(client, "/v1/track", {"userId": "u1"}).status_code == 400
    stats = text_map(redis_client.hgetall(keys.STATS))
    refused = {name: int(value) for name, value in stats.items() if name.startswith("refused:")}
    assert refused == {"refused:401": 1, "refused:400": 2, "refused:413": 1}
    assert stats["rejected:track"] == "1"


def test_any_of_several_write_keys_is_accepted(redis_client: redis.Redis, redis_url: str) -> None:
    app = create_app({"TESTING": True, **settings_for(redis_url, segment_write_keys=("old-key", WRITE_KEY))})
    message = track()
    response = post(app.test_client(), "/v1/track", {**message, "writeKey": "old-key"}, auth=False)
    assert response.status_code == 200
    # The message is named by the source of the key that admitted it.
    assert queued_refs(redis_client) == [ref(message["messageId"], source_of_key("old-key"))]


def test_same_message_id_from_two_write_keys_is_two_messages(
    redis_client: redis.Redis, redis_url: str
) -> None:
    other = "other-write-key"
    app = create_app({"TESTING": True, **settings_for(redis_url, segment_write_keys=(WRITE_KEY, other))})
    client = app.test_client()
    message = track("two-keys")
    first = post(client, "/v1/track", message)
    second = post(client, "/v1/track", message, headers=basic(other))
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.get_json() == second.get_json() == {"success": True}
    # Each source still deduplicates its own retries.
    again = post(
        client, "/v1/batch", {"batch": [{"type": "track", **message}]}, headers={"X-Write-Key": other}
    )
    assert again.get_json() == {"success": True, "accepted": 0, "duplicates": 1, "rejected": []}
    other_source = source_of_key(other)
    assert other_source != SOURCE
    refs = [ref(message["messageId"]), ref(message["messageId"], other_source)]
    assert queued_refs(redis_client) == refs
    assert [status(redis_client, r)["state"] for r in refs] == ["received", "received"]
    events = queued_events(redis_client)
    assert [(e["ref"], e["source"], e["messageId"]) for e in events] == [
        (refs[0], SOURCE, message["messageId"]),
        (refs[1], other_source, message["messageId"]),
    ]


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
    assert queued_ids(redis_client) == [message["messageId"]]


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
    record = status(redis_client, ref(message_id))
    assert record["type"] == kind
    assert record["user"] == "u:s1"


@pytest.mark.parametrize("path", ["/v1/x", "/v1/purchase", "/v1/batches"])
def test_unknown_tracking_route_is_404(client: FlaskClient, redis_client: redis.Redis, path: str) -> None:
    response = post(client, path, track())
    assert response.status_code == 404
    assert without_code(response) == {"success": False, "errors": {"_path": [f"Unknown endpoint {path}."]}}
    assert_nothing_stored(redis_client)


# ------------------------------------------------------------------------------ what lands in Redis


def test_identify_lands_as_status_record_stored_event_and_task(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    message = identify("rec-1", "rec@example.com")
    response = post(client, "/v1/identify", message)
    assert response.status_code == 200
    message_ref = ref(message["messageId"])
    record = status(redis_client, message_ref)
    assert record["ref"] == message_ref
    assert record["type"] == "identify"
    assert record["user"] == "u:rec-1"
    assert record["event"] == ""
    assert record["state"] == "received"
    assert record["detail"] == ""
    assert record["queue"] == HIGH
    assert float(record["received"]) > 1.6e9
    # The task message carries only the ref; the event is stored once, beside the status record.
    [raw] = redis_client.lrange(HIGH, 0, -1)
    task = json.loads(raw)
    assert json.loads(task["body"])[:2] == [[message_ref], {}]
    assert task["headers"]["task"] == "relay.identify"
    assert task["properties"]["delivery_info"]["routing_key"] == HIGH
    stored = json.loads(text(redis_client.get(keys.event(message_ref))))
    assert set(stored) == {"userId", "traits", "timestamp"}, (
        "nothing the ref or the record says, nothing empty"
    )
    event = queued_events(redis_client)[0]
    assert (event["ref"], event["source"], event["messageId"]) == (message_ref, SOURCE, message["messageId"])
    assert event["type"] == "identify"
    assert event["traits"]["email"] == "rec@example.com"
    assert "context" not in event
    assert MILLIS_UTC.fullmatch(event["timestamp"]), event["timestamp"]
    received = datetime.fromtimestamp(float(record["received"]), UTC)
    assert (
        abs(datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")) - received).total_seconds() < 1
    )


def test_anonymous_track_is_keyed_by_anonymous_id(client: FlaskClient, redis_client: redis.Redis) -> None:
    message: dict[str, Any] = {"anonymousId": "anon-9", "event": "NPS", "messageId": mid(), "userId": None}
    response = post(client, "/v1/track", message)
    assert response.status_code == 200
    record = status(redis_client, ref(message["messageId"]))
    assert (record["type"], record["user"], record["event"]) == ("track", "a:anon-9", "NPS")
    [event] = queued_events(redis_client)
    assert event["anonymousId"] == "anon-9"
    assert event["userId"] is None


def test_numeric_user_id_becomes_a_string(client: FlaskClient, redis_client: redis.Redis) -> None:
    message: dict[str, Any] = {"userId": 1234, "event": "NPS", "messageId": mid()}
    assert post(client, "/v1/track", message).status_code == 200
    assert status(redis_client, ref(message["messageId"]))["user"] == "u:1234"
    assert queued_events(redis_client)[0]["userId"] == "1234"


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
    assert queued_refs(redis_client) == [ref(message["messageId"])]


def test_duplicate_message_id_within_one_batch_is_queued_once(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    message = {"type": "track", **track("dup2")}
    response = post(client, "/v1/batch", {"batch": [message, dict(message)]})
    assert response.status_code == 200
    assert response.get_json() == {"success": True, "accepted": 1, "duplicates": 1, "rejected": []}
    assert queued_refs(redis_client) == [ref(message["messageId"])]


def test_batch_context_and_integrations_merge_into_items(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    """Batch-level context and integrations apply to every item; the item's own values win.

    The stored event keeps no context, not even a track's ``context.traits`` (minimisation).
    """
    plain = {"type": "track", **track("m1")}
    own = {
        "type": "track",
        **track("m2"),
        "context": {"ip": "10.0.0.2", "traits": {"email": "own@example.com"}},
        "integrations": {"Promoter": True},
    }
    inherits = {
        "type": "track",
        **track("m3"),
        "context": {"ip": "10.0.0.3"},
        "integrations": {"Promoter": True},
    }
    body = {
        "batch": [plain, own, inherits],
        "context": {"ip": "10.0.0.1", "traits": {"email": "batch@example.com"}},
        "integrations": {"All": False},
    }
    response = post(client, "/v1/batch", body)
    assert response.status_code == 200
    assert response.get_json()["accepted"] == 3
    # plain inherited All: false -> skipped; the others re-enabled Promoter.
    assert status(redis_client, ref(plain["messageId"]))["state"] == "skipped"
    own_event, inherited_event = queued_events(redis_client)
    assert own_event["messageId"] == own["messageId"]
    assert own_event["traits"] == {}
    assert inherited_event["messageId"] == inherits["messageId"]
    assert inherited_event["traits"] == {}
    assert "context" not in own_event
    assert "context" not in inherited_event


def test_batch_context_fills_items_without_context(client: FlaskClient, redis_client: redis.Redis) -> None:
    item = {"type": "track", **track("m3"), "context": None}
    body = {"batch": [item], "context": {"traits": {"email": "ctx@example.com"}, "ip": "10.1.1.1"}}
    assert post(client, "/v1/batch", body).status_code == 200
    [event] = queued_events(redis_client)
    # analytics.js puts the user's traits in a track's context.traits: not needed, not kept.
    assert event["traits"] == {}
    assert "context" not in event


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
    record = status(redis_client, ref(message["messageId"]))
    assert record["state"] == "skipped"
    assert record["detail"] == "Promoter disabled by the integrations object"
    assert queued_refs(redis_client) == []
    assert not redis_client.exists(keys.event(ref(message["messageId"])))


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
    assert status(redis_client, ref(message["messageId"]))["state"] == "received"
    assert queued_ids(redis_client) == [message["messageId"]]


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
    [event] = queued_events(redis_client)
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
    [event] = queued_events(redis_client)
    assert event["userId"] == "null-1"
    assert event["anonymousId"] is None
    assert event["traits"] == {}
    assert event["properties"] == {}
    assert "context" not in event
    # No time given: the event happened when it was received.
    assert seconds_before_received(redis_client, event) < 0.5
    assert MILLIS_UTC.fullmatch(event["timestamp"]), event["timestamp"]
    assert event["messageId"].startswith("relay-")


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
    [event] = queued_events(redis_client)
    assert event["traits"] == {"email": "nul@example.com"}


def test_identify_with_null_traits_is_accepted_as_a_trait_update(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    message: dict[str, Any] = {"userId": "null-3", "traits": None, "messageId": mid()}
    assert post(client, "/v1/identify", message).status_code == 200
    assert queued_refs(redis_client, LOW) == [ref(message["messageId"])]
    assert queued_events(redis_client)[0]["traits"] == {}


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
def test_timestamps_with_z_and_offsets_are_normalized_to_utc_with_milliseconds(
    client: FlaskClient, redis_client: redis.Redis, field: str, value: str
) -> None:
    message = track("ts-1", **{field: value})
    response = post(client, "/v1/track", message)
    assert response.status_code == 200, response.get_json()
    [event] = queued_events(redis_client)
    assert event["timestamp"] == "2024-05-01T12:30:00.000Z"


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
    ("timestamp", "sent_at", "skew"),
    [
        pytest.param("2030-01-01T10:00:00.000Z", "2030-01-01T10:00:05.250Z", 5.25, id="client-clock-ahead"),
        pytest.param("2001-01-01T10:00:00.000Z", "2001-01-01T10:01:00.000Z", 60.0, id="client-clock-behind"),
    ],
)
def test_sent_at_corrects_the_event_time_by_the_client_clock_skew(
    client: FlaskClient, redis_client: redis.Redis, timestamp: str, sent_at: str, skew: float
) -> None:
    """Like Segment: the event happened ``sentAt - timestamp`` before the relay received it."""
    message = track("skew-1", timestamp=timestamp, sentAt=sent_at)
    assert post(client, "/v1/track", message).status_code == 200
    [event] = queued_events(redis_client)
    assert abs(seconds_before_received(redis_client, event) - skew) < 0.5


YEAR_1 = "0001-01-01T00:00:00.000Z"
YEAR_9999 = "9999-12-31T00:00:00.000Z"


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
@pytest.mark.parametrize(
    ("timestamp", "sent_at", "expected"),
    [
        pytest.param(YEAR_1, YEAR_9999, YEAR_1, id="year-1"),
        pytest.param(YEAR_9999, YEAR_1, None, id="year-9999"),
    ],
)
def test_a_clock_correction_beyond_the_calendar_keeps_the_timestamp_as_sent(
    client: FlaskClient,
    redis_client: redis.Redis,
    path: str,
    timestamp: str,
    sent_at: str,
    expected: str | None,
) -> None:
    """A skew of ten thousand years cannot be applied (it was a 500, and a batch lost its good items):
    the timestamp is kept as sent, never later than when it was received."""
    message = track("skew-3", timestamp=timestamp, sentAt=sent_at)
    body = {"batch": [{"type": "track", **message}, {"type": "track", **track("skew-4")}]}
    response = post(client, path, body if path == "/v1/batch" else message)
    assert response.status_code == 200, response.get_data(as_text=True)
    events = {event["ref"]: event for event in queued_events(redis_client)}
    assert len(events) == (2 if path == "/v1/batch" else 1)
    event = events[ref(message["messageId"])]
    if expected is None:
        assert 0 <= seconds_before_received(redis_client, event) < 0.5
    else:
        assert event["timestamp"] == expected


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(
            {"timestamp": "2024-05-01T12:00:10.000Z", "sentAt": "2024-05-01T12:00:00.000Z"}, id="sent-first"
        ),
        pytest.param({"timestamp": "2099-01-01T00:00:00.000Z"}, id="future-without-sent-at"),
    ],
)
def test_event_time_is_never_later_than_received(
    client: FlaskClient, redis_client: redis.Redis, extra: dict[str, str]
) -> None:
    assert post(client, "/v1/track", track("skew-2", **extra)).status_code == 200
    [event] = queued_events(redis_client)
    assert 0 <= seconds_before_received(redis_client, event) < 0.5


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
    [event] = queued_events(redis_client)
    assert event["traits"] == expected


@pytest.mark.parametrize("message_id", [None, "absent"])
def test_missing_message_id_gets_one(client: FlaskClient, redis_client: redis.Redis, message_id: Any) -> None:
    message: dict[str, Any] = {"userId": "nomid", "event": "NPS"}
    if message_id != "absent":
        message["messageId"] = message_id
    response = post(client, "/v1/track", message)
    assert response.status_code == 200
    [event] = queued_events(redis_client)
    assert re.fullmatch(r"relay-[0-9a-f]{32}", event["messageId"]), event["messageId"]
    record = status(redis_client, ref(event["messageId"]))
    assert record["ref"] == event["ref"] == ref(event["messageId"])
    assert record["user"] == "u:nomid"


def test_a_message_without_id_sent_again_is_a_duplicate(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    """Its id comes from its content, so a client's retry (sent later: another sentAt) is one message."""
    message = {"userId": "nomid", "event": "NPS", "properties": {"score": 9}}
    first = post(client, "/v1/track", {**message, "sentAt": "2024-05-01T12:00:00.000Z"})
    second = post(client, "/v1/track", {**message, "sentAt": "2024-05-01T12:00:30.000Z"})
    third = post(client, "/v1/batch", {"batch": [{"type": "track", **message}]})
    assert first.status_code == second.status_code == third.status_code == 200
    assert first.get_json() == {"success": True}
    assert second.get_json() == {"success": True, "duplicate": True}
    assert third.get_json() == {"success": True, "accepted": 0, "duplicates": 1, "rejected": []}
    assert len(queued_refs(redis_client)) == 1


def test_two_different_messages_without_id_are_two_events(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    for score in (9, 10):
        response = post(
            client, "/v1/track", {"userId": "nomid", "event": "NPS", "properties": {"score": score}}
        )
        assert response.get_json() == {"success": True}
    events = queued_events(redis_client)
    assert [e["properties"] for e in events] == [{"score": 9}, {"score": 10}]
    assert events[0]["messageId"] != events[1]["messageId"]


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("page", {"userId": "sk-1", "name": "Pricing", "properties": {"url": "https://example.com/pricing"}}),
        ("screen", {"userId": "sk-1", "name": "Settings"}),
        ("group", {"userId": "sk-1", "groupId": "acme", "traits": {"name": "Acme"}}),
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
    record = status(redis_client, ref(message["messageId"]))
    assert record["type"] == kind
    assert record["state"] == "skipped"
    assert record["detail"] == f"{kind} messages are not sent to Promoter"
    assert queued_refs(redis_client) == []
    # A skipped message never stores its event.
    assert not redis_client.exists(keys.event(ref(message["messageId"])))


@pytest.mark.parametrize(
    ("event_name", "queue"),
    [
        ("NPS", HIGH),
        # Order-only tracks (not survey events here) update the contact's order attributes, after surveys.
        ("Order Completed", LOW),
        ("Completed Order", LOW),
        ("Signed Up", None),
        ("nps", None),
    ],
)
def test_survey_events_filter_tracks(
    survey_client: FlaskClient, redis_client: redis.Redis, event_name: str, queue: str | None
) -> None:
    message = track("sv-1", event_name)
    response = post(survey_client, "/v1/track", message)
    assert response.status_code == 200
    assert response.get_json() == {"success": True}
    record = status(redis_client, ref(message["messageId"]))
    assert record["event"] == event_name
    if queue:
        assert record["state"] == "received"
        assert record["queue"] == queue
        assert [e["event"] for e in queued_events(redis_client, queue)] == [event_name]
    else:
        assert record["state"] == "skipped"
        assert record["detail"] == "not a survey event (SURVEY_EVENTS)"
        assert queued_refs(redis_client) == []


def test_identify_is_queued_whatever_the_survey_events(
    survey_client: FlaskClient, redis_client: redis.Redis
) -> None:
    message = identify("sv-2", "sv2@example.com")
    assert post(survey_client, "/v1/identify", message).status_code == 200
    assert queued_ids(redis_client) == [message["messageId"]]


def test_event_name_is_trimmed(client: FlaskClient, redis_client: redis.Redis) -> None:
    message = track("trim", "  NPS  ")
    assert post(client, "/v1/track", message).status_code == 200
    assert queued_events(redis_client)[0]["event"] == "NPS"


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

    for queue in QUEUES:
        for raw in redis_client.lrange(queue, 0, -1):
            json.loads(json.loads(raw)["body"], parse_constant=strict)
    for key in redis_client.keys("relay:msg:*:event"):
        json.loads(text(redis_client.get(key)), parse_constant=strict)


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
