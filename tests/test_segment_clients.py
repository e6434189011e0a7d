"""The real ``segment-analytics-python`` clients against the running relay over HTTP.

2.4.x (installed in the venv) sends the write key as HTTP Basic *and* in the body; 2.3.x (installed
with ``pip --target .venv/segment-2.3``) sends it only in the body. 2.3 runs in a subprocess whose
``PYTHONPATH`` puts that directory first, so ``segment`` is 2.3 while requests & co. come from the venv.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import segment.analytics as analytics
from segment.analytics.request import APIError
from segment.analytics.version import VERSION as CLIENT_VERSION
from werkzeug.serving import make_server

from app import create_app
from tests.conftest import ROOT, SOURCE, WRITE_KEY, ref, settings_for, wait_until
from tests.factories import queued_refs
from tests.factories import status as status_of
from worker import keys
from worker.events import parse_iso, source_of_key
from worker.messages import event_of

QUEUES = ("relay", "relay.low")
SEGMENT_23 = ROOT / ".venv" / "segment-2.3"
EVENT_FIELDS = {
    "ref", "messageId", "source", "type", "userId", "anonymousId", "traits", "event", "properties",
    "previousId", "timestamp", "campaignId",
}  # fmt: skip
MILLISECOND_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@dataclass
class LiveRelay:
    url: str
    seen: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
def live(redis_client: redis.Redis, redis_url: str) -> Iterator[LiveRelay]:
    """The app served by werkzeug on an ephemeral port, recording each request's headers."""
    assert redis_client.dbsize() == 0  # every test starts from an empty database
    app = create_app({"TESTING": True, **settings_for(redis_url)})
    relay = LiveRelay("")
    inner = app.wsgi_app

    def recording(environ: dict[str, Any], start_response: Any) -> Any:
        relay.seen.append(
            {
                "path": environ.get("PATH_INFO", ""),
                "authorization": environ.get("HTTP_AUTHORIZATION", ""),
                "encoding": environ.get("HTTP_CONTENT_ENCODING", ""),
                "agent": environ.get("HTTP_USER_AGENT", ""),
            }
        )
        return inner(environ, start_response)

    app.wsgi_app = recording  # type: ignore[method-assign]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="live-relay", daemon=True
    )
    thread.start()
    relay.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield relay
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def status(r: redis.Redis, message_id: str) -> dict[str, str]:
    """The status record of a message this suite's write key sent."""
    return status_of(r, ref(message_id))


def queued(r: redis.Redis) -> dict[str, dict[str, Any]]:
    """Queued task messages (both queues), by message id: each carries only its ref, and the event
    it names is the one stored beside the status record."""
    events = {}
    for queue in QUEUES:
        for raw in r.lrange(queue, 0, -1):
            message = json.loads(raw)
            args, kwargs, _embed = json.loads(message["body"])
            assert kwargs == {}
            [message_ref] = args
            whole = event_of(r, message_ref)
            assert whole is not None, message_ref
            event: dict[str, Any] = dict(whole)
            assert event["ref"] == message_ref
            assert message["headers"]["task"] == f"relay.{event['type']}"
            events[str(event["messageId"])] = event
    return events


def nothing_stored(r: redis.Redis) -> bool:
    """No task queued and no status record or event stored, under any source."""
    return queued_refs(r, *QUEUES) == [] and not list(r.scan_iter(f"{keys.PREFIX}:msg:*"))


def refused_401(r: redis.Redis) -> int:
    """Requests refused before any message was read are counted by status."""
    return int(r.hget(keys.STATS, "refused:401") or 0)


def assert_landed(r: redis.Redis, prefix: str, user: str, traits: dict[str, Any]) -> None:
    """identify + track queued (on the high queue) with normalized traits; page recorded as skipped."""
    identify = status(r, f"{prefix}-identify")
    assert (identify["type"], identify["user"], identify["state"]) == ("identify", f"u:{user}", "received")
    assert identify["ref"] == ref(f"{prefix}-identify")
    track = status(r, f"{prefix}-track")
    assert (track["type"], track["user"], track["event"], track["state"]) == (
        "track",
        f"u:{user}",
        "NPS",
        "received",
    )
    page = status(r, f"{prefix}-page")
    assert (page["type"], page["user"], page["state"]) == ("page", f"u:{user}", "skipped")
    # A skipped message never stores its event.
    assert r.exists(keys.event(ref(f"{prefix}-page"))) == 0

    events = queued(r)
    assert set(events) == {f"{prefix}-identify", f"{prefix}-track"}
    assert queued_refs(r, "relay") == [ref(f"{prefix}-identify"), ref(f"{prefix}-track")]
    identify_event = events[f"{prefix}-identify"]
    assert set(identify_event) == EVENT_FIELDS  # the worker's Event contract, no raw context
    assert identify_event["source"] == SOURCE == source_of_key(WRITE_KEY)
    assert identify_event["userId"] == user
    for name, value in traits.items():
        assert identify_event["traits"][name] == value
    assert "first_name" not in identify_event["traits"]
    assert "last_name" not in identify_event["traits"]
    # The client stamps "+00:00"; the relay hands the worker UTC with milliseconds and "Z", the event
    # time never later than when it was received.
    for event in events.values():
        assert MILLISECOND_UTC.fullmatch(event["timestamp"]), event["timestamp"]
        received = float(r.hget(f"relay:msg:{{{event['ref']}}}", "received") or 0)
        assert parse_iso(event["timestamp"]) <= datetime.fromtimestamp(received, UTC)
    track_event = events[f"{prefix}-track"]
    assert set(track_event) == EVENT_FIELDS
    assert track_event["event"] == "NPS"
    assert track_event["properties"] == {"score": 9, "comment": "ok"}


# --------------------------------------------------------------------------------------- 2.4.x


def test_installed_client_is_2_4() -> None:
    assert CLIENT_VERSION.startswith("2.4")


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_client_2_4_sync_mode(live: LiveRelay, redis_client: redis.Redis, gzip: bool) -> None:
    prefix = f"py24-sync-{'gz' if gzip else 'plain'}"
    client = analytics.Client(WRITE_KEY, host=live.url, gzip=gzip, sync_mode=True, max_retries=0)
    user = f"{prefix}-user"
    traits = {"email": f"{prefix}@example.com", "first_name": "Ada", "last_name": "Lovelace", "plan": "pro"}
    assert client.identify(user_id=user, traits=traits, message_id=f"{prefix}-identify")[0]
    assert client.track(
        user_id=user, event="NPS", properties={"score": 9, "comment": "ok"}, message_id=f"{prefix}-track"
    )[0]
    assert client.page(user_id=user, category="Docs", name="Install", message_id=f"{prefix}-page")[0]

    assert_landed(
        redis_client,
        prefix,
        user,
        {"email": f"{prefix}@example.com", "firstName": "Ada", "lastName": "Lovelace", "plan": "pro"},
    )
    assert [r["path"] for r in live.seen] == ["/v1/batch"] * 3
    assert all(r["authorization"].startswith("Basic ") for r in live.seen)
    assert {r["encoding"] for r in live.seen} == {"gzip" if gzip else ""}
    assert all(r["agent"] == f"analytics-python/{CLIENT_VERSION}" for r in live.seen)


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_client_2_4_background_consumer_with_flush(
    live: LiveRelay, redis_client: redis.Redis, gzip: bool
) -> None:
    prefix = f"py24-async-{'gz' if gzip else 'plain'}"
    errors: list[Any] = []
    client = analytics.Client(
        WRITE_KEY,
        host=live.url,
        gzip=gzip,
        upload_interval=0.05,
        on_error=lambda error, batch: errors.append((error, batch)),
    )
    user = f"{prefix}-user"
    try:
        client.identify(
            user_id=user,
            traits={"email": f"{prefix}@example.com", "name": "Grace Hopper"},
            message_id=f"{prefix}-identify",
        )
        client.track(
            user_id=user, event="NPS", properties={"score": 9, "comment": "ok"}, message_id=f"{prefix}-track"
        )
        client.page(user_id=user, name="Pricing", message_id=f"{prefix}-page")
        client.flush()
    finally:
        client.join()
    assert errors == []
    wait_until(lambda: status(redis_client, f"{prefix}-page"), timeout=5)
    assert_landed(
        redis_client,
        prefix,
        user,
        {
            "email": f"{prefix}@example.com",
            "name": "Grace Hopper",
            "firstName": "Grace",
            "lastName": "Hopper",
        },
    )
    assert live.seen
    assert all(r["authorization"].startswith("Basic ") for r in live.seen)


def test_client_2_4_wrong_write_key_sync_raises_401(live: LiveRelay, redis_client: redis.Redis) -> None:
    client = analytics.Client("not-the-key", host=live.url, sync_mode=True, max_retries=0)
    with pytest.raises(APIError) as raised:
        client.track(user_id="intruder", event="NPS", properties={}, message_id="py24-wrong-sync")
    assert raised.value.status == 401
    assert raised.value.code == "unauthorized"
    assert status(redis_client, "py24-wrong-sync") == {}
    assert nothing_stored(redis_client)
    assert refused_401(redis_client) == 1


def test_client_2_4_wrong_write_key_reaches_on_error(
    live: LiveRelay, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[tuple[Exception, list[dict[str, Any]]]] = []
    client = analytics.Client(
        "not-the-key",
        host=live.url,
        upload_interval=0.05,
        max_retries=3,
        on_error=lambda error, batch: errors.append((error, batch)),
    )
    with caplog.at_level(logging.ERROR, logger="segment"):
        try:
            client.identify(
                user_id="intruder", traits={"email": "x@example.com"}, message_id="py24-wrong-async"
            )
            client.flush()
        finally:
            client.join()
    assert len(errors) == 1
    error, batch = errors[0]
    assert isinstance(error, APIError)
    assert error.status == 401
    assert [m["messageId"] for m in batch] == ["py24-wrong-async"]
    # A 401 is final: the client must not have retried it.
    assert len(live.seen) == 1
    assert any(record.name == "segment" and record.levelno >= logging.ERROR for record in caplog.records)
    assert status(redis_client, "py24-wrong-async") == {}
    assert nothing_stored(redis_client)
    assert refused_401(redis_client) == 1


# --------------------------------------------------------------------------------------- 2.3.x

SCRIPT_23 = r"""
import json, sys

import requests
import segment.analytics as analytics
from segment.analytics.request import APIError
from segment.analytics.version import VERSION

url, key, gzip, prefix = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
client = analytics.Client(key, host=url, gzip=gzip, sync_mode=True)
user = prefix + "-user"
calls = [
    lambda: client.identify(
        user_id=user,
        traits={"email": prefix + "@example.com", "first_name": "Bea", "last_name": "Stone"},
        message_id=prefix + "-identify",
    ),
    lambda: client.track(
        user_id=user, event="NPS", properties={"score": 9, "comment": "ok"}, message_id=prefix + "-track"
    ),
    lambda: client.page(user_id=user, category="Docs", name="Install", message_id=prefix + "-page"),
]
results = []
for call in calls:
    try:
        ok, _ = call()
        results.append({"ok": ok})
    except APIError as error:
        results.append({"ok": False, "error": "APIError", "status": error.status})
    except Exception as error:
        results.append({"ok": False, "error": type(error).__name__, "detail": repr(error)})
print(json.dumps({
    "version": VERSION,
    "segment": analytics.__file__,
    "requests": requests.__file__,
    "results": results,
}))
"""


def run_client_23(url: str, key: str, gzip: bool, prefix: str, tmp_path: Path) -> dict[str, Any]:
    assert (SEGMENT_23 / "segment" / "analytics").is_dir(), (
        f"segment-analytics-python 2.3 missing at {SEGMENT_23}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(SEGMENT_23)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT_23, url, key, "1" if gzip else "0", prefix],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["version"].startswith("2.3"), report
    assert Path(report["segment"]).resolve().is_relative_to(SEGMENT_23.resolve()), report
    assert Path(report["requests"]).resolve().is_relative_to(Path(sys.prefix).resolve()), report
    assert not Path(report["requests"]).resolve().is_relative_to(SEGMENT_23.resolve()), report
    return report


@pytest.mark.integration
@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_client_2_3_body_write_key_only(
    live: LiveRelay, redis_client: redis.Redis, gzip: bool, tmp_path: Path
) -> None:
    prefix = f"py23-{'gz' if gzip else 'plain'}"
    report = run_client_23(live.url, WRITE_KEY, gzip, prefix, tmp_path)
    assert report["results"] == [{"ok": True}] * 3
    assert_landed(
        redis_client,
        prefix,
        f"{prefix}-user",
        {"email": f"{prefix}@example.com", "firstName": "Bea", "lastName": "Stone"},
    )
    assert [r["path"] for r in live.seen] == ["/v1/batch"] * 3
    # 2.3 authenticates only with the writeKey in the body.
    assert [r["authorization"] for r in live.seen] == [""] * 3
    assert {r["encoding"] for r in live.seen} == {"gzip" if gzip else ""}
    assert {r["agent"] for r in live.seen} == {f"analytics-python/{report['version']}"}


@pytest.mark.integration
def test_client_2_3_wrong_write_key_is_a_401_api_error(
    live: LiveRelay, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """2.3 reads ``code`` and ``message`` from an error body; anything else it does not treat as
    an API error (so its background consumer would retry a 401 like a network failure)."""
    report = run_client_23(live.url, "not-the-key", False, "py23-wrong", tmp_path)
    assert [r["authorization"] for r in live.seen] == [""] * 3
    assert nothing_stored(redis_client)
    assert status(redis_client, "py23-wrong-identify") == {}
    # The body write key is checked after the body is read, and still counted as refused.
    assert refused_401(redis_client) == 3
    assert report["results"] == [{"ok": False, "error": "APIError", "status": 401}] * 3, report["results"]
