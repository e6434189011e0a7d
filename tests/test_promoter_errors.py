"""Promoter answers -> error classes, and the client against a real local HTTP server (no mocks)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from worker.promoter import (
    DEFAULT_RETRY_AFTER,
    MAX_BODY,
    IneligibleError,
    PermanentError,
    PromoterClient,
    PromoterError,
    ThrottledError,
    TransientError,
    UncertainError,
    classify,
)

API_KEY = "sk-test-0123456789abcdef"
INELIGIBLE = '{"non_field_errors": ["Contact is not eligible for survey."]}'
THROTTLED = '{"detail": "Request was throttled. Expected available in 42.0 seconds."}'
NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind"),
    [
        (200, {}, "{}", None),
        (201, {}, "{}", None),
        (204, {}, "", None),
        (400, {}, INELIGIBLE, IneligibleError),
        (400, {}, '{"non_field_errors": "Contact is NOT ELIGIBLE."}', IneligibleError),
        (400, {}, '{"email": ["Enter a valid email address."]}', PermanentError),
        (400, {}, '{"non_field_errors": ["Invalid data."]}', PermanentError),
        (400, {}, '{"detail": "not eligible"}', PermanentError),
        (400, {}, "<html>bad request</html>", PermanentError),
        (401, {}, '{"detail": "Invalid token."}', PermanentError),
        (403, {}, "{}", PermanentError),
        (404, {}, "{}", PermanentError),
        (405, {}, "{}", PermanentError),
        (406, {}, "{}", PermanentError),
        (409, {}, "{}", PermanentError),
        (410, {}, "{}", PermanentError),
        (413, {}, "", PermanentError),
        (422, {}, "{}", PermanentError),
        (301, {"Location": "https://elsewhere/"}, "", PermanentError),
        (302, {}, "", PermanentError),
        (408, {}, "", TransientError),
        (425, {}, "", TransientError),
        (500, {}, "<html>oops</html>", TransientError),
        (502, {}, "", TransientError),
        (503, {"Retry-After": "5"}, '{"detail": "Service unavailable"}', TransientError),
        (504, {}, "", TransientError),
        (429, {"Retry-After": "42"}, THROTTLED, ThrottledError),
    ],
)
def test_classify(status: int, headers: dict[str, str], body: str, kind: type[PromoterError] | None) -> None:
    error = classify(status, headers, body)
    if kind is None:
        assert error is None
        return
    assert type(error) is kind
    assert error.status == status and error.body == body
    assert f"HTTP {status}" in str(error)


def test_throttled_is_transient_and_others_are_not() -> None:
    assert issubclass(ThrottledError, TransientError)
    for final in (IneligibleError, PermanentError):
        assert not issubclass(final, TransientError)


@pytest.mark.parametrize(
    ("headers", "body", "seconds"),
    [
        ({"Retry-After": "42"}, "", 42.0),
        ({"retry-after": " 1.5 "}, "", 1.5),
        ({"Retry-After": formatdate(NOW + 30, usegmt=True)}, "", 30.0),
        ({"Retry-After": formatdate(NOW - 30, usegmt=True)}, "", 0.0),
        ({}, THROTTLED, 42.0),
        ({"Retry-After": "soon"}, THROTTLED, 42.0),
        ({"Retry-After": "nan"}, "", DEFAULT_RETRY_AFTER),
        ({}, '{"detail": "Request was throttled."}', DEFAULT_RETRY_AFTER),
        ({}, "", DEFAULT_RETRY_AFTER),
        ({"Retry-After": "-3"}, "", 0.0),
        ({"Retry-After": "999999"}, "", 3600.0),
    ],
)
def test_retry_after(headers: dict[str, str], body: str, seconds: float) -> None:
    error = classify(429, headers, body, now=NOW)
    assert isinstance(error, ThrottledError)
    assert error.retry_after == pytest.approx(seconds)


def test_body_is_truncated() -> None:
    error = classify(500, {}, "x" * 10_000)
    assert error is not None and len(error.body) == MAX_BODY


# --- a programmable local Promoter ------------------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    body: str = "{}"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class FakePromoter:
    url: str
    answers: list[Answer] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def answer(self, *answers: Answer) -> None:
        self.answers.extend(answers)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fake.requests.append({"path": self.path, "headers": dict(self.headers), "json": json.loads(raw)})
        answer = fake.answers.pop(0) if fake.answers else Answer()
        time.sleep(answer.delay)
        # "{auth}" in a programmed body echoes the Authorization header, as a careless proxy might.
        payload = answer.body.replace("{auth}", self.headers.get("Authorization", "")).encode()
        try:
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up (timeout test)
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakePromoter


@pytest.fixture
def promoter() -> Iterator[FakePromoter]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = FakePromoter(f"http://127.0.0.1:{server.server_address[1]}/api/")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def calls() -> list[tuple[str, int | None, float]]:
    return []


@pytest.fixture
def client(promoter: FakePromoter, calls: list[tuple[str, int | None, float]]) -> PromoterClient:
    return PromoterClient(promoter.url, API_KEY, timeout=0.2, on_response=lambda *call: calls.append(call))


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_upsert_and_survey_post_json_with_token(
    client: PromoterClient, promoter: FakePromoter, calls: list[tuple[str, int | None, float]]
) -> None:
    promoter.answer(Answer(201, '{"id": 5, "email": "a@b.co"}'), Answer(200, '{"campaign": 7}'))
    assert client.upsert_contact({"email": "a@b.co"}) == {"id": 5, "email": "a@b.co"}
    assert client.survey({"campaign_id": 7}) == {"campaign": 7}
    first, second = promoter.requests
    assert (first["path"], second["path"]) == ("/api/contacts/", "/api/v2/survey/")
    assert first["json"] == {"email": "a@b.co"}
    assert first["headers"]["Authorization"] == f"Token {API_KEY}"
    assert first["headers"]["Content-Type"] == "application/json"
    assert first["headers"]["User-Agent"] == "promoter-relay/0.1"
    assert [(name, status) for name, status, _ in calls] == [("contacts", 201), ("survey", 200)]
    assert all(seconds >= 0 for *_, seconds in calls)


def test_http_errors_are_classified(client: PromoterClient, promoter: FakePromoter) -> None:
    promoter.answer(
        Answer(400, INELIGIBLE),
        Answer(429, THROTTLED, {"Retry-After": "7"}),
        Answer(503, '{"detail": "Service unavailable"}'),
        Answer(403, '{"detail": "Forbidden"}'),
        Answer(302, "", {"Location": "/api/login/"}),
        Answer(200, "<html>a captive portal</html>"),
    )
    with pytest.raises(IneligibleError):
        client.survey({})
    with pytest.raises(ThrottledError) as throttled:
        client.survey({})
    assert throttled.value.retry_after == 7.0
    with pytest.raises(TransientError, match="503"):
        client.survey({})
    with pytest.raises(PermanentError, match="403: Forbidden"):
        client.upsert_contact({})
    with pytest.raises(PermanentError, match="302"):
        client.upsert_contact({})
    with pytest.raises(UncertainError, match="without a JSON object") as not_json:
        client.upsert_contact({})
    assert not_json.value.status == 200 and "captive portal" in not_json.value.body
    assert len(promoter.requests) == 6  # no retries, no redirect followed


def test_timeout_is_transient(
    client: PromoterClient, promoter: FakePromoter, calls: list[tuple[str, int | None, float]]
) -> None:
    promoter.answer(Answer(200, "{}", delay=1.0))
    started = time.monotonic()
    with pytest.raises(TransientError, match="timed out") as caught:
        client.upsert_contact({"email": "a@b.co"})
    assert time.monotonic() - started < 0.9
    assert caught.value.status is None
    assert calls[0][:2] == ("contacts", None)


def test_connection_refused_is_transient(calls: list[tuple[str, int | None, float]]) -> None:
    client = PromoterClient(f"http://127.0.0.1:{dead_port()}/api", API_KEY, timeout=0.2)
    with pytest.raises(TransientError, match="connection failed") as caught:
        client.survey({})
    assert caught.value.status is None


def test_a_failing_metrics_hook_does_not_fail_the_call(promoter: FakePromoter) -> None:
    def broken(endpoint: str, status: int | None, seconds: float) -> None:
        raise RuntimeError("metrics down")

    client = PromoterClient(promoter.url, API_KEY, on_response=broken)
    assert client.upsert_contact({"email": "a@b.co"}) == {}


def test_api_key_never_leaks(promoter: FakePromoter) -> None:
    client = PromoterClient(promoter.url, API_KEY, timeout=0.2)
    echo = '{"detail": "bad header {auth}"}'
    promoter.answer(
        Answer(400, echo),
        Answer(400, '{"non_field_errors": ["not eligible {auth}"]}'),
        Answer(429, echo),
        Answer(500, echo),
        Answer(401, echo),
        Answer(200, "not json {auth}"),
        Answer(200, "{}", delay=1.0),
    )
    errors: list[PromoterError] = []
    for _ in range(7):
        with pytest.raises(PromoterError) as caught:
            client.survey({})
        errors.append(caught.value)
    refused = PromoterClient(f"http://user:{API_KEY}@127.0.0.1:{dead_port()}/api", API_KEY, timeout=0.2)
    with pytest.raises(TransientError) as caught:
        refused.survey({})
    errors.append(caught.value)
    assert {type(error) for error in errors} == {
        PermanentError,
        IneligibleError,
        ThrottledError,
        TransientError,
        UncertainError,
    }
    for error in errors:
        for text in (str(error), repr(error), error.body, str(error.args)):
            assert API_KEY not in text
        assert error.__cause__ is None
    assert "[redacted]" in errors[0].body
    for text in (repr(client), str(client), repr(refused)):
        assert API_KEY not in text


def test_api_key_with_control_characters_is_refused_without_echo() -> None:
    with pytest.raises(ValueError) as caught:
        PromoterClient("http://127.0.0.1:1/api", "abc\ndef")
    assert "abc" not in str(caught.value)
