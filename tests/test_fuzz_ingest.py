"""Property tests: whatever arrives at an ingest endpoint, the answer is JSON with ``success`` and never 5xx.

Segment retries every 5xx for hours, so a body that crashes ingest would come back again and again;
bad input must be a 4xx. Examples are posted through the Flask test client to a real Redis.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any, cast

import pytest
import redis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app import create_app
from tests.conftest import SHARED_SECRET, SOURCE, WRITE_KEY, basic, settings_for
from tests.factories import queued_refs, status
from worker import keys
from worker.events import WEBHOOK_SOURCE, split_ref
from worker.messages import event_of

ENDPOINTS = ["/v1/identify", "/v1/track", "/v1/page", "/v1/batch", "/v1/t", "/segment"]
TYPES = ["identify", "track", "page", "screen", "group", "alias"]

FUZZ = settings(
    max_examples=75,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def _quiet_app_logger() -> Iterator[None]:
    """Hundreds of examples: a logged traceback per failing one would swamp the report."""
    logger = logging.getLogger("app")
    was = logger.disabled
    logger.disabled = True
    yield
    logger.disabled = was


def check(response: Any) -> dict[str, Any]:
    """The ingest contract for any input: not 5xx, JSON, ``success`` true exactly on 200."""
    assert response.status_code < 500, (response.status_code, response.get_data(as_text=True)[:500])
    event(f"HTTP {response.status_code}")
    body = response.get_json(silent=True)
    assert isinstance(body, dict), response.get_data()[:200]
    assert isinstance(body.get("success"), bool), body
    assert body["success"] is (response.status_code == 200), (response.status_code, body)
    return body


def check_queued(r: redis.Redis, source: str) -> None:
    """Whatever was accepted is queued by ref alone, under the source that sent it, with its status
    record and its stored event (the worker's contract, which has no ``context``) beside it; what was
    recorded as skipped has no stored event."""
    refs = queued_refs(r)
    event("something queued so far" if refs else "nothing queued yet")
    for queued in refs:
        assert split_ref(queued)[0] == source, queued
        record = status(r, queued)
        assert record.get("state") == "received", (queued, record)
        stored_event = event_of(r, queued)
        assert stored_event is not None, queued
        assert stored_event["ref"] == queued
        assert stored_event["source"] == source
        assert stored_event["type"] == record["type"]
        assert "context" not in stored_event
    for recorded in cast(list[str], r.lrange(keys.RECENT, 0, -1)):
        assert split_ref(recorded)[0] == source, recorded
        if status(r, recorded).get("state") == "skipped":
            event("a skipped message")
            assert r.exists(keys.event(recorded)) == 0, recorded


# -------------------------------------------------------------------------------------- strategies


def json_values(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    scalars = (
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text
    )
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
        max_leaves=20,
    )


def timestamps(years: tuple[int, int]) -> st.SearchStrategy[str]:
    offsets = st.sampled_from(["Z", "+00:00", "+05:30", "-08:00", "+14:00", "-12:00", ""])
    first, last = datetime(years[0], 1, 1), datetime(years[1], 12, 31, 23, 59)
    moments = st.datetimes(min_value=first, max_value=last) | st.sampled_from([first, last])
    return st.builds(lambda moment, offset: moment.isoformat() + offset, moments, offsets)


def segment_messages(
    text: st.SearchStrategy[str], years: tuple[int, int] = (1970, 2100), kind: str | None = None
) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts shaped like Segment messages: right field names, values right, wrong or null."""
    anything = json_values(text)
    scalar = (
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text
    )
    ids = scalar | st.just("") | st.just("   ")
    names = st.sampled_from(["NPS", "Order Completed", "Signed Up", "", "  "]) | text | scalar
    emails = st.emails() | st.sampled_from(["", "not-an-email", " a@b.co ", "a@b"]) | text | scalar
    traits = (
        st.none()
        | anything
        | st.fixed_dictionaries(
            {},
            optional={
                "email": emails,
                "Email": emails,
                "firstName": scalar,
                "first_name": scalar,
                "lastName": scalar,
                "last_name": scalar,
                "name": scalar,
            },
        )
    )
    options = st.none() | st.booleans() | anything | st.fixed_dictionaries({}, optional={"campaign": scalar})
    integrations = (
        st.none()
        | anything
        | st.dictionaries(
            st.sampled_from(["All", "Promoter", "Promoter.io", "Segment.io"]), options, max_size=3
        )
    )
    context = st.none() | anything | st.fixed_dictionaries({}, optional={"traits": traits, "ip": text})
    stamps = st.none() | text | scalar | timestamps(years)
    chaotic = st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(TYPES) | scalar,
            "userId": ids,
            "anonymousId": ids,
            "messageId": st.none() | text | st.integers(),
            "event": names,
            "traits": traits,
            "properties": st.none() | anything,
            "context": context,
            "integrations": integrations,
            "timestamp": stamps,
            "originalTimestamp": stamps,
            "sentAt": stamps,
            "writeKey": st.just(WRITE_KEY) | text,
        },
    )
    # Messages whose required fields are right, so that examples reach Redis and the task message.
    good_ids = text.filter(lambda value: value.strip() != "") | st.integers()
    simple_emails = st.from_regex(r"[a-z0-9._+-]{1,10}@[a-z]{1,10}\.(com|io|co\.uk)", fullmatch=True)
    shapes = {
        "identify": st.fixed_dictionaries(
            {
                "type": st.just("identify"),
                "userId": good_ids,
                "traits": st.fixed_dictionaries({"email": simple_emails | st.emails()}),
            }
        ),
        "track": st.fixed_dictionaries(
            {
                "type": st.just("track"),
                "userId": good_ids,
                "event": st.sampled_from(["NPS", "Order Completed"]),
            }
        )
        | st.fixed_dictionaries(
            {"type": st.just("track"), "anonymousId": good_ids, "event": text.filter(str.strip)}
        ),
        "page": st.fixed_dictionaries({"type": st.sampled_from(TYPES[2:]), "userId": good_ids}),
    }
    required = shapes[kind] if kind else st.one_of(*shapes.values())
    extras = st.fixed_dictionaries(
        {},
        optional={
            "messageId": st.none() | text.filter(bool),
            "properties": st.none() | anything,
            "context": context,
            "integrations": integrations,
            "timestamp": st.none() | timestamps(years),
            "originalTimestamp": st.none() | timestamps(years),
            "traits": traits,
        },
    )
    valid = st.builds(lambda base, extra: {**extra, **base}, required, extras)
    return valid | chaotic


PLAIN_TEXT = st.text(max_size=20)
# Lone surrogates: valid JSON text (``"\ud800"``) that is no valid Unicode string.
SURROGATE_TEXT = st.text(alphabet=st.characters(categories=["Cs", "Lu", "Ll", "Nd"]), min_size=1, max_size=8)


def batches(messages: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    anything = json_values(PLAIN_TEXT)
    return st.fixed_dictionaries(
        {"batch": st.lists(messages | anything, max_size=5)},
        optional={
            "context": st.none() | anything,
            "integrations": st.none()
            | anything
            | st.just({"All": False})
            | st.just({"Promoter": {"campaign": 3}}),
            "writeKey": st.just(WRITE_KEY) | PLAIN_TEXT,
        },
    )


KIND_OF_PATH = {"/v1/identify": "identify", "/v1/track": "track", "/v1/t": "track", "/v1/page": "page"}


def body_for(path: str, text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    messages = segment_messages(text, kind=KIND_OF_PATH.get(path))
    if path == "/v1/batch":
        return batches(messages)
    if path == "/segment":
        return messages | st.lists(messages, max_size=4)
    return messages


auths = st.sampled_from([True, True, True, False])


# ----------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("path", ENDPOINTS)
@FUZZ
@given(value=json_values(PLAIN_TEXT), auth=auths)
def test_random_json_never_5xx(client: FlaskClient, path: str, value: Any, auth: bool) -> None:
    response = client.post(path, data=json.dumps(value), headers=basic() if auth else {})
    check(response)


@pytest.mark.parametrize("path", ENDPOINTS)
@FUZZ
@given(data=st.data(), auth=auths)
def test_segment_shaped_messages_never_5xx(
    client: FlaskClient, redis_client: redis.Redis, path: str, data: st.DataObject, auth: bool
) -> None:
    document = data.draw(body_for(path, PLAIN_TEXT))
    response = client.post(path, data=json.dumps(document), headers=basic() if auth else {})
    body = check(response)
    if response.status_code == 200 and "accepted" in body:
        assert body["accepted"] + body["duplicates"] + len(body["rejected"]) == len(
            document["batch"] if path == "/v1/batch" else document
        )
    check_queued(redis_client, WEBHOOK_SOURCE if path == "/segment" else SOURCE)


@FUZZ
@given(
    path=st.sampled_from(ENDPOINTS),
    raw=st.binary(max_size=600),
    encoding=st.sampled_from(["", "gzip", "identity"]),
    compress=st.booleans(),
    content_type=st.sampled_from(["application/json", "text/plain", "application/octet-stream"]),
)
def test_random_bytes_never_5xx(
    client: FlaskClient,
    redis_client: redis.Redis,
    path: str,
    raw: bytes,
    encoding: str,
    compress: bool,
    content_type: str,
) -> None:
    data = gzip.compress(raw) if compress and encoding == "gzip" else raw
    headers = {**basic(), "Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    refused_before = int(redis_client.hget(keys.STATS, "refused:400") or 0)
    response = client.post(path, data=data, headers=headers)
    check(response)
    if raw.strip() == b"" and encoding != "gzip":
        assert response.status_code == 400
        # Refused before any message was read: counted by status.
        assert int(redis_client.hget(keys.STATS, "refused:400") or 0) == refused_before + 1


@FUZZ
@given(
    path=st.sampled_from(ENDPOINTS),
    value=json_values(PLAIN_TEXT),
    mangle=st.sampled_from(["truncate", "prefix", "suffix"]),
    junk=st.binary(min_size=1, max_size=8),
)
def test_mangled_json_never_5xx(client: FlaskClient, path: str, value: Any, mangle: str, junk: bytes) -> None:
    text = json.dumps(value).encode()
    data = {
        "truncate": text[: max(len(text) - len(junk), 0)],
        "prefix": junk + text,
        "suffix": text + junk,
    }[mangle]
    check(client.post(path, data=data, headers=basic()))


@FUZZ
@given(
    value=json_values(PLAIN_TEXT)
    | segment_messages(PLAIN_TEXT)
    | st.lists(segment_messages(PLAIN_TEXT), max_size=4)
)
def test_correctly_signed_webhook_never_5xx_nor_401(
    redis_client: redis.Redis, redis_url: str, value: Any
) -> None:
    """Arrays carry the header write key too (Segment signs only their first element)."""
    app = create_app({"TESTING": True, **settings_for(redis_url, segment_shared_secret=SHARED_SECRET)})
    body = json.dumps(value)
    signed = json.dumps(value[0]) if isinstance(value, list) and value else body
    signature = hmac.new(SHARED_SECRET.encode(), signed.encode(), hashlib.sha1).hexdigest()
    headers = {"X-Signature": signature, **(basic() if isinstance(value, list) else {})}
    response = app.test_client().post("/segment", data=body, headers=headers)
    check(response)
    assert response.status_code != 401
    check_queued(redis_client, WEBHOOK_SOURCE)


SURROGATE_FIELDS = [
    ("userId",),
    ("anonymousId",),
    ("event",),
    ("messageId",),
    ("writeKey",),
    ("properties", "note"),
    ("properties", "note", "nested"),
    ("traits", "lastName"),
    ("context", "traits", "email"),
    ("integrations", "Promoter", "campaign"),
]


@FUZZ
@given(
    path=st.sampled_from(["/v1/track", "/v1/batch", "/segment"]),
    where=st.sampled_from(SURROGATE_FIELDS),
    value=SURROGATE_TEXT,
)
def test_strings_with_lone_surrogates_never_5xx(
    client: FlaskClient, path: str, where: tuple[str, ...], value: str
) -> None:
    message: dict[str, Any] = {"type": "track", "userId": "fuzz-sur", "event": "NPS"}
    node = message
    for name in where[:-1]:
        node = node.setdefault(name, {})
    node[where[-1]] = value
    document = {"batch": [message]} if path == "/v1/batch" else message
    check(client.post(path, data=json.dumps(document), headers=basic()))


@FUZZ
@given(stamp=timestamps((1, 9999)), field=st.sampled_from(["timestamp", "originalTimestamp", "sentAt"]))
def test_any_iso_timestamp_never_5xx(client: FlaskClient, stamp: str, field: str) -> None:
    message = {"userId": "fuzz-ts", "event": "NPS", field: stamp}
    check(client.post("/v1/track", data=json.dumps(message), headers=basic()))


@FUZZ
@given(stamp=timestamps((1, 9999)), sent=timestamps((1, 9999)))
def test_any_clock_skew_never_5xx(client: FlaskClient, stamp: str, sent: str) -> None:
    message = {"userId": "fuzz-skew", "event": "NPS", "timestamp": stamp, "sentAt": sent}
    check(client.post("/v1/track", data=json.dumps(message), headers=basic()))
