"""The Webhooks destination (``POST /segment``): signatures over the raw bytes Segment sent.

Bodies are written by hand, never with ``json.dumps``: the point is that the signed bytes contain
``1e-7`` while any re-serialization of the same value in Python writes ``1e-07``.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from app import create_app
from tests.conftest import SHARED_SECRET, SOURCE, WRITE_KEY, basic, ref, settings_for
from tests.factories import queued_events, queued_refs, status

HOOK = "hook"

SINGLE = (
    '{"type":"track","userId":"wh-1","event":"NPS","messageId":"wh-single",'
    '"properties":{"score":9,"tiny":1e-7,"ratio":0.5},"timestamp":"2024-05-01T12:00:00.000Z"}'
)
FIRST = (
    '{"type": "identify", "userId": "wh-2", "messageId": "wh-batch-1",\n'
    '   "traits": {"email": "wh2@example.com", "first_name": "Wen", "weight": 1e-7}}'
)
SECOND = '{"type":"track","userId":"wh-2","event":"NPS","messageId":"wh-batch-2","properties":{"x":2.5E+3}}'
BATCH = "[\n  " + FIRST + " ,\n  " + SECOND + "\n]"


def without_code(response: Any) -> Any:
    """An error body minus Segment's ``code``/``message`` pair, after checking that pair is there."""
    body = response.get_json()
    assert isinstance(body.pop("code"), str)
    assert body.pop("message")
    return body


def sign(data: bytes | str, secret: str = SHARED_SECRET) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return hmac.new(secret.encode(), raw, hashlib.sha1).hexdigest()


def reserialized(text: str) -> bytes:
    """What a relay that re-serialized the parsed JSON would check the signature against."""
    return json.dumps(json.loads(text)).encode()


def hook_ref(message_id: str) -> str:
    return ref(message_id, HOOK)


def assert_nothing_stored(r: redis.Redis) -> None:
    assert [r.llen(queue) for queue in ("relay", "relay.low")] == [0, 0]
    assert r.keys("relay:msg:*") == []


def hook(client: FlaskClient, body: str | bytes, signature: str | None, **headers: str) -> Any:
    sent = {"Content-Type": "application/json", **headers}
    if signature is not None:
        sent["X-Signature"] = signature
    return client.post("/segment", data=body, headers=sent)


@pytest.fixture
def signed(redis_client: redis.Redis, redis_url: str) -> FlaskClient:
    app = create_app({"TESTING": True, **settings_for(redis_url, segment_shared_secret=SHARED_SECRET)})
    return app.test_client()


def test_bodies_really_contain_the_short_exponent() -> None:
    """Guard for the tests below: the raw text and its re-serialization differ in bytes."""
    assert "1e-7" in SINGLE
    assert "1e-07" not in SINGLE
    assert b"1e-07" in reserialized(SINGLE)
    assert "1e-7" in FIRST
    assert b"1e-07" in reserialized(FIRST)
    assert json.loads(BATCH)[0] == json.loads(FIRST)


def test_single_message_signed_over_raw_body(signed: FlaskClient, redis_client: redis.Redis) -> None:
    response = hook(signed, SINGLE, sign(SINGLE))
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"success": True}
    record = status(redis_client, hook_ref("wh-single"))
    assert (record["type"], record["user"], record["event"], record["state"]) == (
        "track",
        "u:wh-1",
        "NPS",
        "received",
    )
    assert queued_refs(redis_client) == [hook_ref("wh-single")]
    [event] = queued_events(redis_client)
    assert (event["ref"], event["source"], event["messageId"]) == (hook_ref("wh-single"), HOOK, "wh-single")
    assert event["properties"] == {"score": 9, "tiny": 1e-7, "ratio": 0.5}
    assert event["timestamp"] == "2024-05-01T12:00:00.000Z"


def test_batch_signed_over_raw_bytes_of_first_element(signed: FlaskClient, redis_client: redis.Redis) -> None:
    response = hook(signed, BATCH, sign(FIRST), **basic())
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"success": True, "accepted": 2, "duplicates": 0, "rejected": []}
    assert status(redis_client, hook_ref("wh-batch-1"))["type"] == "identify"
    assert status(redis_client, hook_ref("wh-batch-2"))["type"] == "track"
    assert queued_refs(redis_client) == [hook_ref("wh-batch-1"), hook_ref("wh-batch-2")]
    identify, track = queued_events(redis_client)
    assert identify["traits"] == {"email": "wh2@example.com", "firstName": "Wen", "weight": 1e-7}
    assert track["properties"] == {"x": 2500.0}


def test_gzipped_webhook_is_signed_over_the_decompressed_bytes(
    signed: FlaskClient, redis_client: redis.Redis
) -> None:
    response = hook(signed, gzip.compress(SINGLE.encode()), sign(SINGLE), **{"Content-Encoding": "gzip"})
    assert response.status_code == 200
    assert status(redis_client, hook_ref("wh-single"))["state"] == "received"


@pytest.mark.parametrize(
    ("body", "signed_bytes"),
    [
        pytest.param(SINGLE, reserialized(SINGLE), id="single-reserialized"),
        pytest.param(BATCH, reserialized(FIRST), id="batch-first-element-reserialized"),
        pytest.param(BATCH, BATCH.encode(), id="batch-signed-over-whole-body"),
        pytest.param(BATCH, FIRST.strip().encode() + b" ", id="batch-first-element-plus-space"),
        pytest.param(BATCH, SECOND.encode(), id="batch-signed-over-second-element"),
        pytest.param(SINGLE, SINGLE.encode() + b"\n", id="single-with-extra-newline"),
    ],
)
def test_signature_over_other_bytes_is_rejected(
    signed: FlaskClient, redis_client: redis.Redis, body: str, signed_bytes: bytes
) -> None:
    response = hook(signed, body, sign(signed_bytes))
    assert response.status_code == 401
    assert without_code(response) == {
        "success": False,
        "errors": {"_auth": ["Missing or invalid X-Signature."]},
    }
    assert_nothing_stored(redis_client)


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("0" * 40, id="zeros"),
        pytest.param(sign(SINGLE, secret="another-secret"), id="other-secret"),
        pytest.param(sign(SINGLE)[:-1], id="truncated"),
        pytest.param(
            hmac.new(SHARED_SECRET.encode(), SINGLE.encode(), hashlib.sha256).hexdigest(), id="sha256"
        ),
        pytest.param("sha1=" + sign(SINGLE), id="prefixed"),
        pytest.param("not hex at all \u00e9", id="garbage"),
    ],
)
def test_wrong_or_missing_signature_is_401(
    signed: FlaskClient, redis_client: redis.Redis, signature: str | None
) -> None:
    response = hook(signed, SINGLE, signature)
    assert response.status_code == 401
    assert without_code(response) == {
        "success": False,
        "errors": {"_auth": ["Missing or invalid X-Signature."]},
    }
    assert_nothing_stored(redis_client)


def test_a_non_ascii_basic_header_is_no_credential_not_a_500(
    signed: FlaskClient, redis_client: redis.Redis
) -> None:
    response = hook(signed, SINGLE, sign(SINGLE), Authorization="Basic dGVzdDo\u00ff")
    assert response.status_code == 200, response.get_json()
    assert queued_refs(redis_client) == [hook_ref("wh-single")]


def test_write_key_does_not_replace_the_signature(signed: FlaskClient, redis_client: redis.Redis) -> None:
    body = SINGLE[:-1] + ',"writeKey":"' + WRITE_KEY + '"}'
    response = hook(signed, body, None, **basic())
    assert response.status_code == 401
    assert_nothing_stored(redis_client)


def test_signature_checked_before_the_body_is_validated(
    signed: FlaskClient, redis_client: redis.Redis
) -> None:
    body = '{"type":"track","userId":"wh-3"}'
    assert hook(signed, body, sign(body + " ")).status_code == 401
    response = hook(signed, body, sign(body))
    assert response.status_code == 400
    assert without_code(response) == {
        "success": False,
        "errors": {"event": ["Missing data for required field."]},
    }


def test_signed_batch_with_invalid_items_reports_them(signed: FlaskClient, redis_client: redis.Redis) -> None:
    body = "[" + FIRST + ',{"type":"track","userId":"wh-2"},{"userId":"wh-2","event":"NPS"}]'
    response = hook(signed, body, sign(FIRST), **basic())
    assert response.status_code == 200
    assert response.get_json() == {
        "success": True,
        "accepted": 1,
        "duplicates": 0,
        "rejected": [
            {"index": 1, "errors": {"event": ["Missing data for required field."]}},
            {"index": 2, "errors": {"type": ["Missing data for required field."]}},
        ],
    }
    assert queued_refs(redis_client) == [hook_ref("wh-batch-1")]


def test_signed_retry_is_a_duplicate(signed: FlaskClient, redis_client: redis.Redis) -> None:
    assert hook(signed, SINGLE, sign(SINGLE)).get_json() == {"success": True}
    again = hook(signed, SINGLE, sign(SINGLE))
    assert again.status_code == 200
    assert again.get_json() == {"success": True, "duplicate": True}
    assert queued_refs(redis_client) == [hook_ref("wh-single")]


@pytest.mark.parametrize("body", ["[]", "[\n]"])
def test_signed_empty_batch_is_not_a_500(signed: FlaskClient, redis_client: redis.Redis, body: str) -> None:
    """An empty array has no first element: the signature is over the whole body."""
    response = hook(signed, body, sign(body), **basic())
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"success": True, "accepted": 0, "duplicates": 0, "rejected": []}
    assert_nothing_stored(redis_client)


def test_signed_webhook_still_enforces_json_and_limits(
    signed: FlaskClient, redis_client: redis.Redis
) -> None:
    broken = '{"type":"track",'
    response = hook(signed, broken, sign(broken))
    assert response.status_code == 400
    assert response.get_json()["errors"]["_request"][0].startswith("Invalid JSON")
    items = ",".join([SECOND] * 2501)
    too_many = "[" + items + "]"
    response = hook(signed, too_many, sign(SECOND), **basic())
    assert response.status_code == 400
    assert without_code(response) == {
        "success": False,
        "errors": {"batch": ["At most 2500 events per batch."]},
    }
    assert_nothing_stored(redis_client)


# ------------------------------------------------------------------------- forged signed batches


def test_forged_batch_led_by_a_captured_signed_event_is_refused_whole(
    signed: FlaskClient, redis_client: redis.Redis
) -> None:
    """A signed single event is byte for byte a valid first element: alone it cannot vouch for more."""
    forged = '{"type":"track","userId":"victim","event":"NPS","messageId":"forged-1"}'
    response = hook(signed, "[" + SINGLE + "," + forged + "]", sign(SINGLE))
    assert response.status_code == 401
    assert "X-Write-Key" in response.get_json()["errors"]["_auth"][0]
    assert_nothing_stored(redis_client)


@pytest.mark.parametrize("header", ["basic", "x-write-key"])
def test_signed_batch_with_a_header_write_key_is_accepted(
    signed: FlaskClient, redis_client: redis.Redis, header: str
) -> None:
    credential = basic() if header == "basic" else {"X-Write-Key": WRITE_KEY}
    response = hook(signed, BATCH, sign(FIRST), **credential)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["accepted"] == 2


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        pytest.param(b"\x1f\x8bnot gzip at all", {"Content-Encoding": "gzip"}, id="broken-gzip"),
        pytest.param(b"[" + b" " * (600 * 1024) + b"]", {}, id="oversized"),
    ],
)
@pytest.mark.parametrize("credential", ["basic", "x-write-key"])
def test_a_wrong_header_key_is_refused_before_the_body_is_read(
    signed: FlaskClient, redis_client: redis.Redis, body: bytes, headers: dict[str, str], credential: str
) -> None:
    wrong = basic("wrong-key") if credential == "basic" else {"X-Write-Key": "wrong-key"}
    response = hook(signed, body, sign(body), **headers, **wrong)
    assert response.status_code == 401, response.get_json()
    assert response.get_json()["errors"] == {"_auth": ["Invalid write key."]}
    assert_nothing_stored(redis_client)


@pytest.mark.parametrize(
    "first",
    [
        pytest.param('{"type":"track","userId":"wh-9","messageId":"no-event"}', id="invalid"),
        pytest.param(
            '{"type":"track","userId":"wh-9","event":"NPS","messageId":"old",'
            '"receivedAt":"2020-01-01T00:00:00Z"}',
            id="outside-replay-window",
        ),
    ],
)
def test_a_refused_signed_element_refuses_the_whole_batch(
    signed: FlaskClient, redis_client: redis.Redis, first: str
) -> None:
    response = hook(signed, "[" + first + "," + SECOND + "]", sign(first), **basic())
    assert response.status_code == 400
    errors = response.get_json()["errors"]
    assert "signed first element" in errors["batch"][0]
    assert "0" in errors
    assert_nothing_stored(redis_client)


def test_signature_only_batches_need_the_unsafe_opt_in_which_is_logged(
    redis_client: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        app = create_app(
            {
                "TESTING": True,
                **settings_for(
                    redis_url, segment_shared_secret=SHARED_SECRET, segment_signature_only_batches_unsafe=True
                ),
            }
        )
    assert any("SEGMENT_SIGNATURE_ONLY_BATCHES_UNSAFE" in r.getMessage() for r in caplog.records)
    response = hook(app.test_client(), BATCH, sign(FIRST))
    assert response.status_code == 200
    assert response.get_json()["accepted"] == 2


# ------------------------------------------------------------------------------ without a secret


@pytest.mark.parametrize("how", ["basic", "body"])
def test_without_secret_webhook_accepts_the_write_key(
    client: FlaskClient, redis_client: redis.Redis, how: str
) -> None:
    body = SINGLE if how == "basic" else SINGLE[:-1] + ',"writeKey":"' + WRITE_KEY + '"}'
    response = hook(client, body, None, **(basic() if how == "basic" else {}))
    assert response.status_code == 200
    assert response.get_json() == {"success": True}
    assert status(redis_client, hook_ref("wh-single"))["state"] == "received"


def test_without_secret_batch_array_with_basic_key(client: FlaskClient, redis_client: redis.Redis) -> None:
    response = hook(client, BATCH, None, **basic())
    assert response.status_code == 200
    assert response.get_json()["accepted"] == 2
    assert queued_refs(redis_client) == [hook_ref("wh-batch-1"), hook_ref("wh-batch-2")]


def test_same_message_id_from_the_webhook_and_a_write_key_is_two_messages(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    """Deduplication is per source: the webhook is one source, each write key on /v1 another."""
    from_hook = hook(client, SINGLE, None, **basic())
    from_api = client.post("/v1/track", data=SINGLE, headers={"Content-Type": "application/json", **basic()})
    assert from_hook.get_json() == from_api.get_json() == {"success": True}
    assert hook(client, SINGLE, None, **basic()).get_json() == {"success": True, "duplicate": True}
    refs = [hook_ref("wh-single"), ref("wh-single", SOURCE)]
    assert queued_refs(redis_client) == refs
    assert [e["source"] for e in queued_events(redis_client)] == [HOOK, SOURCE]


def test_webhook_event_time_is_segments_not_corrected_by_sent_at(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    """Segment already corrected the clock skew of what it forwards: the relay keeps its timestamp."""
    body = (
        '{"type":"track","userId":"wh-5","event":"NPS","messageId":"wh-time",'
        '"timestamp":"2024-05-01T12:00:00Z","sentAt":"2024-05-01T12:00:30Z"}'
    )
    assert hook(client, body, None, **basic()).status_code == 200
    [event] = queued_events(redis_client)
    assert event["timestamp"] == "2024-05-01T12:00:00.000Z"


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param({}, SINGLE, id="no-key"),
        pytest.param(basic("wrong"), SINGLE, id="wrong-basic"),
        pytest.param({}, SINGLE[:-1] + ',"writeKey":"wrong"}', id="wrong-body-key"),
        pytest.param({"X-Signature": sign(SINGLE)}, SINGLE, id="signature-without-configured-secret"),
        pytest.param({}, BATCH, id="array-cannot-carry-a-key"),
    ],
)
def test_without_secret_webhook_needs_a_valid_write_key(
    client: FlaskClient, redis_client: redis.Redis, headers: dict[str, str], body: str
) -> None:
    response = hook(client, body, None, **headers)
    assert response.status_code == 401
    assert response.get_json()["success"] is False
    assert list(response.get_json()["errors"]) == ["_auth"]
    assert_nothing_stored(redis_client)
