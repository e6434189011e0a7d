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
    USER_AGENT,
    AccountError,
    Call,
    IneligibleError,
    PermanentError,
    PromoterClient,
    PromoterError,
    Reply,
    ThrottledError,
    TransientError,
    UncertainError,
    classify,
    transport_problem,
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
        (401, {}, '{"detail": "Invalid token."}', AccountError),
        (403, {}, "{}", AccountError),
        (404, {}, "{}", AccountError),
        (405, {}, "{}", AccountError),
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
    assert error.status == status
    assert error.body == body
    assert f"HTTP {status}" in str(error)


@pytest.mark.parametrize("status", [502, 504])
def test_a_gateway_answer_to_a_survey_is_uncertain(status: int) -> None:
    """A gateway may have given up on a request Promoter still carried out: for a call that must not
    be repeated once it took effect, 502/504 mean "may have been created"."""
    error = classify(status, {}, "<html>Bad Gateway</html>", acts_once=True)
    assert type(error) is UncertainError
    assert error.cause == f"gateway {status}"
    assert error.status == status
    assert error.body == "<html>Bad Gateway</html>"
    assert f"HTTP {status}" in str(error)
    # The same answer to a call that may be repeated stays an ordinary transient failure.
    again = classify(status, {}, "", acts_once=False)
    assert type(again) is TransientError


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind"),
    [
        (500, {}, "<html>oops</html>", TransientError),
        (503, {}, '{"detail": "Service unavailable"}', TransientError),
        (408, {}, "", TransientError),
        (429, {"Retry-After": "3"}, THROTTLED, ThrottledError),
        (400, {}, INELIGIBLE, IneligibleError),
        (404, {}, "{}", AccountError),
        (200, {}, "{}", None),
    ],
)
def test_acts_once_changes_only_gateway_answers(
    status: int, headers: dict[str, str], body: str, kind: type[PromoterError] | None
) -> None:
    """500 and 503 are Promoter saying it failed or was not taking requests: not done, retryable."""
    error = classify(status, headers, body, acts_once=True)
    if kind is None:
        assert error is None
    else:
        assert type(error) is kind


def test_throttled_is_transient_and_others_are_not() -> None:
    assert issubclass(ThrottledError, TransientError)
    assert issubclass(UncertainError, TransientError)
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
    assert error is not None
    assert len(error.body) == MAX_BODY


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
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(promoter: FakePromoter) -> PromoterClient:
    return PromoterClient(promoter.url, API_KEY, timeout=0.2)


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_upsert_and_survey_post_json_with_token(client: PromoterClient, promoter: FakePromoter) -> None:
    promoter.answer(Answer(201, '{"id": 5, "email": "a@b.co"}'), Answer(200, '{"campaign": 7}'))
    contact = client.upsert_contact({"email": "a@b.co"})
    survey = client.survey({"campaign_id": 7})
    assert isinstance(contact, Reply)
    assert isinstance(survey, Reply)
    assert isinstance(contact.call, Call)
    assert isinstance(survey.call, Call)
    assert contact.data == {"id": 5, "email": "a@b.co"}
    assert survey.data == {"campaign": 7}
    first, second = promoter.requests
    assert (first["path"], second["path"]) == ("/api/contacts/", "/api/v2/survey/")
    assert first["json"] == {"email": "a@b.co"}
    assert first["headers"]["Authorization"] == f"Token {API_KEY}"
    assert first["headers"]["Content-Type"] == "application/json"
    assert first["headers"]["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith("promoter-relay/")
    assert [(r.call.endpoint, r.call.status) for r in (contact, survey)] == [
        ("contacts", "201"),
        ("survey", "200"),
    ]
    assert all(0 <= r.call.seconds < 5 for r in (contact, survey))
    assert contact.call.args() == ["contacts", "201", f"{contact.call.seconds:.6f}"]


def _no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for scheme in ("http", "https", "all", "no"):
        monkeypatch.delenv(f"{scheme}_proxy", raising=False)
        monkeypatch.delenv(f"{scheme.upper()}_PROXY", raising=False)


@pytest.mark.parametrize(
    ("proxy", "authorization"),
    [
        pytest.param("http://{address}", None, id="plain"),
        pytest.param("{address}", None, id="without-a-scheme"),
        pytest.param("http://relay:p%40ss@{address}", "Basic cmVsYXk6cEBzcw==", id="with-credentials"),
    ],
)
def test_calls_go_through_the_proxy_the_environment_names(
    promoter: FakePromoter, monkeypatch: pytest.MonkeyPatch, proxy: str, authorization: str | None
) -> None:
    _no_proxy_settings(monkeypatch)
    address = promoter.url.removeprefix("http://").removesuffix("/api/")
    monkeypatch.setenv("http_proxy", proxy.format(address=address))
    client = PromoterClient("http://promoter.invalid/api", API_KEY, timeout=0.5)
    assert client.upsert_contact({"email": "a@b.co"}).call.status == "200"
    (request,) = promoter.requests
    assert request["path"] == "http://promoter.invalid/api/contacts/"
    assert request["headers"]["Authorization"] == f"Token {API_KEY}"
    sent = {name.lower(): value for name, value in request["headers"].items()}
    assert sent.get("proxy-authorization") == authorization


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "127.0.0.0/8", "localhost,127.0.0.0/8"])
def test_no_proxy_is_read_as_requests_reads_it(
    promoter: FakePromoter, monkeypatch: pytest.MonkeyPatch, no_proxy: str
) -> None:
    _no_proxy_settings(monkeypatch)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{dead_port()}")
    monkeypatch.setenv("no_proxy", no_proxy)
    client = PromoterClient(promoter.url, API_KEY, timeout=0.5)
    assert client.upsert_contact({"email": "a@b.co"}).call.status == "200"
    assert [request["path"] for request in promoter.requests] == ["/api/contacts/"]


def test_an_unusable_proxy_is_named_at_start_without_its_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_proxy_settings(monkeypatch)
    monkeypatch.setenv("https_proxy", "socks9://relay:s3cret@127.0.0.1:9")
    problem = transport_problem("https://app.promoter.io/api")
    assert problem is not None
    assert "proxy" in problem
    assert "s3cret" not in problem
    monkeypatch.setenv("no_proxy", "app.promoter.io")
    assert transport_problem("https://app.promoter.io/api") is None


def test_an_empty_success_body_is_an_empty_reply(client: PromoterClient, promoter: FakePromoter) -> None:
    promoter.answer(Answer(204, ""), Answer(200, "  "), Answer(200, "{}"))
    for status in ("204", "200", "200"):
        reply = client.upsert_contact({"email": "a@b.co"})
        assert reply.data == {}
        assert (reply.call.endpoint, reply.call.status) == ("contacts", status)


def test_http_errors_are_classified(client: PromoterClient, promoter: FakePromoter) -> None:
    promoter.answer(
        Answer(400, INELIGIBLE),
        Answer(429, THROTTLED, {"Retry-After": "7"}),
        Answer(503, '{"detail": "Service unavailable"}'),
        Answer(403, '{"detail": "Forbidden"}'),
        Answer(302, "", {"Location": "/api/login/"}),
        Answer(200, "<html>a captive portal</html>"),
        Answer(200, "[1, 2]"),
    )
    errors: list[PromoterError] = []
    with pytest.raises(IneligibleError) as caught:
        client.survey({})
    errors.append(caught.value)
    with pytest.raises(ThrottledError) as throttled:
        client.survey({})
    assert throttled.value.retry_after == 7.0
    errors.append(throttled.value)
    with pytest.raises(TransientError, match="503") as unavailable:
        client.survey({})
    assert type(unavailable.value) is TransientError  # Promoter said it failed: not uncertain
    errors.append(unavailable.value)
    with pytest.raises(AccountError, match="403: Forbidden") as forbidden:
        client.upsert_contact({})
    errors.append(forbidden.value)
    with pytest.raises(PermanentError, match="302") as redirected:
        client.upsert_contact({})
    errors.append(redirected.value)
    with pytest.raises(UncertainError, match="without a JSON object") as not_json:
        client.upsert_contact({})
    assert not_json.value.status == 200
    assert "captive portal" in not_json.value.body
    assert not_json.value.cause == "unreadable answer"
    errors.append(not_json.value)
    with pytest.raises(UncertainError, match="without a JSON object") as not_object:
        client.survey({})
    assert not_object.value.cause == "unreadable answer"
    errors.append(not_object.value)
    assert len(promoter.requests) == 7  # no retries, no redirect followed
    # Every error says which call it was, with the status it got and how long it took.
    assert [(e.call.endpoint, e.call.status) for e in errors] == [
        ("survey", "400"),
        ("survey", "429"),
        ("survey", "503"),
        ("contacts", "403"),
        ("contacts", "302"),
        ("contacts", "200"),
        ("survey", "200"),
    ]
    assert all(0 <= e.call.seconds < 5 for e in errors)


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_answer_is_uncertain_for_a_survey_only(
    client: PromoterClient, promoter: FakePromoter, status: int
) -> None:
    promoter.answer(Answer(status, "<html>Bad Gateway</html>"), Answer(status, "<html>Bad Gateway</html>"))
    with pytest.raises(UncertainError) as survey:
        client.survey({"campaign_id": 7})
    assert survey.value.cause == f"gateway {status}"
    assert survey.value.status == status
    assert (survey.value.call.endpoint, survey.value.call.status) == ("survey", str(status))
    # An upsert is idempotent: the same answer is an ordinary transient failure, retried.
    with pytest.raises(TransientError) as contact:
        client.upsert_contact({"email": "a@b.co"})
    assert type(contact.value) is TransientError
    assert contact.value.status == status
    assert (contact.value.call.endpoint, contact.value.call.status) == ("contacts", str(status))
    assert [r["path"] for r in promoter.requests] == ["/api/v2/survey/", "/api/contacts/"]


def test_timeout_is_uncertain(client: PromoterClient, promoter: FakePromoter) -> None:
    """A read timeout: the request reached Promoter, which may have acted on it."""
    promoter.answer(Answer(200, "{}", delay=1.0))
    started = time.monotonic()
    with pytest.raises(UncertainError, match="timed out") as caught:
        client.upsert_contact({"email": "a@b.co"})
    assert time.monotonic() - started < 0.9
    assert caught.value.status is None
    assert caught.value.cause == "timeout"
    assert (caught.value.call.endpoint, caught.value.call.status) == ("contacts", "error")
    assert 0.15 < caught.value.call.seconds < 0.9


def test_connection_refused_is_transient() -> None:
    client = PromoterClient(f"http://127.0.0.1:{dead_port()}/api", API_KEY, timeout=0.2)
    with pytest.raises(TransientError, match="connection failed") as caught:
        client.survey({})
    assert type(caught.value) is TransientError  # never sent: certainly not done
    assert caught.value.status is None
    assert (caught.value.call.endpoint, caught.value.call.status) == ("survey", "error")


def test_deadline_covers_the_whole_call() -> None:
    client = PromoterClient("http://127.0.0.1:1/api", API_KEY, timeout=0.3)
    assert client.deadline == pytest.approx(0.6)
    assert PromoterClient("http://127.0.0.1:1/api", API_KEY, timeout=10).deadline == pytest.approx(15.0)


# --- a Promoter whose answer drips in, one byte at a time ---------------------------------------


DRIP_GAP = 0.05  # well below the client's read timeout, so no single read ever times out
DRIP_BODY = b'{"campaign": 7, "note": "' + b"x" * 13 + b'"}'  # 40 bytes: 2 s to send in full


@dataclass
class Drip:
    url: str
    chunked: bool
    sent: int = 0
    finished: threading.Event = field(default_factory=threading.Event)


class _DripHandler(BaseHTTPRequestHandler):
    server: _DripServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        drip = self.server.drip
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Connection", "close")
            if drip.chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(len(DRIP_BODY)))
            self.end_headers()
            self.wfile.flush()
            for byte in DRIP_BODY:
                time.sleep(DRIP_GAP)
                piece = bytes([byte])
                self.wfile.write(b"1\r\n" + piece + b"\r\n" if drip.chunked else piece)
                self.wfile.flush()
                drip.sent += 1
            if drip.chunked:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
        except OSError:  # the client gave up
            pass
        finally:
            drip.finished.set()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _DripServer(ThreadingHTTPServer):
    daemon_threads = True
    drip: Drip


@pytest.fixture(params=["content-length", "chunked"])
def drip(request: pytest.FixtureRequest) -> Iterator[Drip]:
    server = _DripServer(("127.0.0.1", 0), _DripHandler)
    server.drip = Drip(
        f"http://127.0.0.1:{server.server_address[1]}/api/", chunked=request.param == "chunked"
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.drip
    server.shutdown()
    server.server_close()


def test_an_answer_dripping_past_the_deadline_is_uncertain(drip: Drip) -> None:
    """Each read gets its byte well within the read timeout, yet the call as a whole must stop at its
    deadline (plus at most one read timeout for the read in progress), or a survey call outlives the
    lease it runs under."""
    client = PromoterClient(drip.url, API_KEY, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(UncertainError) as caught:
        client.survey({"campaign_id": 7})
    elapsed = time.monotonic() - started
    assert caught.value.cause == "deadline"
    assert caught.value.status is None
    assert (caught.value.call.endpoint, caught.value.call.status) == ("survey", "error")
    assert API_KEY not in str(caught.value)
    assert API_KEY not in repr(caught.value)
    assert caught.value.__cause__ is None
    # The answer would take len(DRIP_BODY) * DRIP_GAP = 2 s; the call must give up long before.
    limit = client.deadline + client.timeout + 0.25
    assert elapsed < limit, f"call lasted {elapsed:.2f}s, beyond deadline + one read timeout ({limit:.2f}s)"
    assert caught.value.call.seconds < limit
    drip.finished.wait(3)
    assert drip.sent < len(DRIP_BODY), "the client read the whole answer before giving up"


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
        Answer(502, echo),
        Answer(200, "{}", delay=1.0),
    )
    errors: list[PromoterError] = []
    for _ in range(8):
        with pytest.raises(PromoterError) as caught:
            client.survey({})
        errors.append(caught.value)
    refused = PromoterClient(f"http://user:{API_KEY}@127.0.0.1:{dead_port()}/api", API_KEY, timeout=0.2)
    with pytest.raises(TransientError) as caught:
        refused.survey({})
    errors.append(caught.value)
    assert {type(error) for error in errors} == {
        PermanentError,
        AccountError,
        IneligibleError,
        ThrottledError,
        TransientError,
        UncertainError,
    }
    for error in errors:
        for text in (str(error), repr(error), error.body, str(error.args)):
            assert API_KEY not in text
        assert error.__cause__ is None
        assert error.call.endpoint == "survey"
    assert {error.cause for error in errors if isinstance(error, UncertainError)} == {
        "unreadable answer",
        "gateway 502",
        "timeout",
    }
    assert "[redacted]" in errors[0].body
    for text in (repr(client), str(client), repr(refused)):
        assert API_KEY not in text


def test_api_key_with_control_characters_is_refused_without_echo() -> None:
    with pytest.raises(ValueError, match="whitespace or control characters") as caught:
        PromoterClient("http://127.0.0.1:1/api", "abc\ndef")
    assert "abc" not in str(caught.value)
