"""A typed Promoter.io client, and the classification of its answers into what the relay does next.

No official client exists. The API is Django REST Framework: errors are JSON field maps, 429 carries
``Retry-After``, and "Contact is not eligible for survey." is a 400 that means "Promoter decided not
to survey this contact now", a final outcome rather than something to fix and retry.

``classify`` is pure so every row of that table is tested without a network. The client never retries
by itself (retries belong to the task, with backoff and a budget shared by all workers), never follows
redirects (requests would turn a POST into a GET), and never lets the API key reach an exception
message, a repr or a log line: bodies and messages are scrubbed of it and transport exceptions are not
chained, since they carry the prepared request and its ``Authorization`` header.

A call has a *total* deadline, not only a per-read timeout: a response that drips in slowly would
otherwise outlive the lease under which a survey call is made. Every call reports a ``Call`` (endpoint,
status, seconds) so that the script settling it records the latency in the same step.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import urllib3
from requests.utils import get_auth_from_url, get_environ_proxies, select_proxy

USER_AGENT = "promoter-relay/0.2"
CONNECT_TIMEOUT = 5.0
DEFAULT_RETRY_AFTER = 60.0
# A Retry-After beyond this is a bug somewhere; obeying it would stop every worker for days.
MAX_RETRY_AFTER = 3600.0
MAX_BODY = 2000
TRANSIENT_STATUSES: frozenset[int] = frozenset({408, 425})
_EXPECTED_IN = re.compile(r"available in (\d+(?:\.\d+)?) seconds", re.IGNORECASE)
_REDACTED = "[redacted]"

log = logging.getLogger(__name__)
# A gateway in front of Promoter answered: the request may or may not have reached Promoter itself.
GATEWAY_STATUSES: frozenset[int] = frozenset({502, 504})


@dataclass(frozen=True)
class Call:
    """One HTTP call, as the latency metrics see it."""

    endpoint: str
    status: str
    seconds: float

    def args(self) -> list[str]:
        return [self.endpoint, self.status, f"{self.seconds:.6f}"]


NO_CALL = Call("", "", 0.0)


class PromoterError(Exception):
    """Anything that kept a Promoter call from succeeding; ``body`` is kept for the dead letter."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body[:MAX_BODY]
        self.call = NO_CALL

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, status={self.status!r})"


class TransientError(PromoterError):
    """Connection trouble, timeouts, 408, 425 and 5xx: the same request may well succeed later."""


class UncertainError(TransientError):
    """The request may have reached Promoter (read timeout, connection lost mid-answer, a gateway's
    502/504 to a survey). ``cause`` says which, for the evidence an operator reads.

    Retrying is right for an idempotent contact upsert and wrong for a survey, which would reach a
    person twice; the caller decides.
    """

    def __init__(
        self, message: str, status: int | None = None, body: str = "", cause: str = "timeout"
    ) -> None:
        super().__init__(message, status, body)
        self.cause = cause


class ThrottledError(TransientError):
    """429: every worker must wait ``retry_after`` seconds, not only the one that was told."""

    def __init__(self, message: str, retry_after: float, status: int | None = 429, body: str = "") -> None:
        super().__init__(message, status, body)
        self.retry_after = retry_after


class PermanentError(PromoterError):
    """The request, our configuration or the answer is wrong: repeating it cannot help."""


class AccountError(PromoterError):
    """Promoter refused the account, not this request: 401 and 403 (a revoked or rotated API key),
    404 and 405 (a wrong ``PROMOTER_API_URL``). Every call would get the same answer until an operator
    fixes it, so delivery pauses instead of burying a day of traffic as dead letters."""


ACCOUNT_STATUSES: frozenset[int] = frozenset({401, 403, 404, 405})


class IneligibleError(PermanentError):
    """Promoter chose not to survey this contact (surveyed recently, unsubscribed...): a final outcome
    of a survey; to any other call, a refusal like the rest."""


def _header(headers: Mapping[str, str], name: str) -> str:
    return next((value for key, value in headers.items() if key.lower() == name), "").strip()


def retry_after_seconds(headers: Mapping[str, str], body: str, now: float | None = None) -> float:
    """``Retry-After`` (seconds or HTTP date), else DRF's "Expected available in N seconds", else 60."""
    seconds: float | None = None
    if value := _header(headers, "retry-after"):
        try:
            seconds = float(value)
        except ValueError:
            try:
                moment = parsedate_to_datetime(value)
                seconds = moment.timestamp() - (time.time() if now is None else now)
            except (TypeError, ValueError, IndexError):
                seconds = None
    if seconds is None or seconds != seconds:  # also NaN
        match = _EXPECTED_IN.search(body)
        seconds = float(match.group(1)) if match else DEFAULT_RETRY_AFTER
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _summary(body: str) -> str:
    """The human part of a DRF error body, short enough for a status line."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("detail"), str):
        text = data["detail"]
    elif data is not None:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    else:
        text = " ".join(body.split())
    return text[:200] or "(empty body)"


def _is_ineligible(body: str) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    errors = data.get("non_field_errors") if isinstance(data, dict) else None
    if isinstance(errors, str):
        errors = [errors]
    return isinstance(errors, list) and any("not eligible" in str(error).lower() for error in errors)


def classify(
    status: int, headers: Mapping[str, str], body: str, now: float | None = None, *, acts_once: bool = False
) -> PromoterError | None:
    """What an HTTP answer means for delivery; ``None`` for any 2xx (the body is the caller's concern).

    ``acts_once`` marks a call that must not be repeated if it took effect (a survey): a gateway's
    502 or 504 then means "may have been created", since the gateway may have given up on a request
    Promoter was still carrying out. 500 and 503 are taken as "not done" (Promoter answered that it
    failed, or was not taking requests).
    """
    if 200 <= status < 300:
        return None
    message = f"HTTP {status}: {_summary(body)}"
    if status == 429:
        return ThrottledError(message, retry_after_seconds(headers, body, now), status, body)
    if acts_once and status in GATEWAY_STATUSES:
        return UncertainError(message, status, body, cause=f"gateway {status}")
    if status in TRANSIENT_STATUSES or 500 <= status < 600:
        return TransientError(message, status, body)
    if status in ACCOUNT_STATUSES:
        return AccountError(message, status, body)
    if status == 400 and _is_ineligible(body):
        return IneligibleError(message, status, body)
    # Other 4xx, and 1xx/3xx which Promoter never sends to a client that does not follow redirects.
    return PermanentError(message, status, body)


# Failures before the request left this host (refused, DNS, connect timeout, TLS handshake, proxy):
# certainly not done. Anything after (read timeout, connection lost mid-answer): maybe done.
_NEVER_SENT = (
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.ConnectTimeoutError,
    urllib3.exceptions.SSLError,
    urllib3.exceptions.ProxyError,
)
_MAYBE_DONE = (
    urllib3.exceptions.ReadTimeoutError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.DecodeError,
)


Pool = urllib3.PoolManager | urllib3.HTTPConnectionPool


def _pool(base_url: str, connections: int = 100) -> tuple[Pool, str]:
    """One pool per process (Celery threads share it), and what a call's path is appended to.

    The proxy is chosen from HTTP(S)_PROXY / NO_PROXY as ``requests`` chooses it (CIDR and
    ``host:port`` entries in NO_PROXY, a proxy given without a scheme, credentials in its URL), read
    once; through a proxy, calls name the whole URL. Otherwise the pool is bound to Promoter's host
    and calls name only the path, so no URL is parsed and no pool looked up per call. No retries and
    no redirects at this level: retries are the task's. Raises ``ValueError`` for an unusable proxy.
    """
    proxy = select_proxy(base_url, get_environ_proxies(base_url))
    if proxy:
        proxy = proxy if "://" in proxy else f"http://{proxy}"
        user, password = get_auth_from_url(proxy)
        headers = urllib3.util.make_headers(proxy_basic_auth=f"{user}:{password}") if user else None
        manager = urllib3.ProxyManager(proxy, maxsize=connections, retries=False, proxy_headers=headers)
        return manager, base_url
    pool = urllib3.connectionpool.connection_from_url(base_url, maxsize=connections, retries=False)
    return pool, (urllib3.util.parse_url(base_url).path or "").rstrip("/")


def transport_problem(base_url: str) -> str | None:
    """Why calls to ``base_url`` cannot be made as configured (an unusable proxy), checked when a
    worker starts: the pool is otherwise built by the first task, which would fail every task."""
    try:
        _pool(base_url, 1)
    except ValueError as error:
        return f"the proxy for PROMOTER_API_URL is not usable ({type(error).__name__}); check HTTP(S)_PROXY"
    return None


class DeadlineExceeded(Exception):
    """The whole call took longer than its deadline (the answer was still arriving)."""


@dataclass(frozen=True)
class Reply:
    data: dict[str, Any]
    call: Call


class PromoterClient:
    """One connection pool per process; a call either returns a ``Reply`` or raises.

    It speaks to urllib3 directly (the transport ``requests`` uses): ``requests``' per-call machinery
    (environment and netrc lookups, hooks, cookies) cost more CPU than the call itself.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float = 10.0,
    ) -> None:
        # A header value with whitespace or control characters would be refused by the HTTP layer in
        # an error that quotes the whole header, key included; refuse it here, without echoing it.
        if any(char.isspace() or not char.isprintable() for char in api_key):
            raise ValueError("PROMOTER_API_KEY contains whitespace or control characters")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._api_key = api_key
        self._headers = {
            "Authorization": f"Token {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._timeouts = urllib3.Timeout(connect=min(timeout, CONNECT_TIMEOUT), read=timeout)
        self._pool, self._prefix = _pool(self.base_url)

    def __repr__(self) -> str:
        return f"PromoterClient(base_url={self._redact(self.base_url)!r}, timeout={self.timeout!r})"

    @property
    def deadline(self) -> float:
        """When a call stops reading its answer: connect time plus one timeout. The last chunk read
        may still take one read timeout more, so a call never lasts beyond 5 s + 2 x timeout."""
        return min(self.timeout, CONNECT_TIMEOUT) + self.timeout

    def upsert_contact(self, body: Mapping[str, Any]) -> Reply:
        """``POST /contacts/``: create or update by email; returns the contact object."""
        return self._call("contacts", "POST", "/contacts/", body)

    def survey(self, body: Mapping[str, Any]) -> Reply:
        """``POST /v2/survey/``: ask Promoter to survey one contact for one campaign."""
        return self._call("survey", "POST", "/v2/survey/", body, acts_once=True)

    def remove_contact(self, email: str) -> Reply:
        """``POST /contacts/remove/``: Promoter forgets the contact with this email (a forget's
        ``--at-promoter``)."""
        return self._call("contacts_remove", "POST", "/contacts/remove/", {"email": email})

    def campaigns(self, page: int = 1) -> Reply:
        """``GET /campaigns/?page=N`` (DRF pagination: ``results``, ``next``); used by ``check``."""
        return self._call("campaigns", "GET", f"/campaigns/?page={page}", None)

    def feedback(self, page: int = 1, *, posted_since: str = "", campaign: int | None = None) -> Reply:
        """``GET /feedback/?page=N`` (DRF pagination, 100 a page), responses posted from the day
        ``posted_since`` on (``YYYY-MM-DD``: Promoter's ``posted_date_0``), of one campaign
        (``survey__campaign``) when given: the results do not name their campaign."""
        query: dict[str, str | int] = {"page": page}
        if posted_since:
            query["posted_date_0"] = posted_since
        if campaign is not None:
            query["survey__campaign"] = campaign
        return self._call("feedback", "GET", f"/feedback/?{urlencode(query)}", None)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, _REDACTED) if self._api_key else text

    def _call(
        self, endpoint: str, method: str, path: str, body: Mapping[str, Any] | None, acts_once: bool = False
    ) -> Reply:
        started = time.perf_counter()
        try:
            response = self._pool.urlopen(
                method,
                self._prefix + path,
                body=None if body is None else json.dumps(body, separators=(",", ":")).encode(),
                headers=self._headers,
                timeout=self._timeouts,
                retries=False,
                redirect=False,
                preload_content=False,
            )
            try:
                text = self._redact(_read(response, started + self.deadline))
            except BaseException:
                response.close()  # a half-read answer: this connection must not be reused
                raise
            finally:
                response.release_conn()
        except (*_NEVER_SENT, *_MAYBE_DONE, DeadlineExceeded) as exc:
            raise self._failed(endpoint, exc, started) from None
        except urllib3.exceptions.HTTPError as exc:
            error = PermanentError(f"cannot call {endpoint}: {type(exc).__name__}")
            error.call = Call(endpoint, "error", time.perf_counter() - started)
            raise error from None
        call = Call(endpoint, str(response.status), time.perf_counter() - started)
        problem = classify(response.status, response.headers, text, acts_once=acts_once)
        if problem is not None:
            problem.call = call
            raise problem
        return Reply(_payload(endpoint, response.status, text, call), call)

    def _failed(self, endpoint: str, exc: Exception, started: float) -> PromoterError:
        """A call that got no answer: certainly not done (never sent), or maybe done."""
        # urllib3's NewConnectionError is a ConnectTimeoutError too: a refused connection did not time out.
        refused = isinstance(exc, urllib3.exceptions.NewConnectionError)
        timed_out = not refused and isinstance(exc, urllib3.exceptions.TimeoutError | DeadlineExceeded)
        kind = "timed out" if timed_out else "connection failed"
        message = f"{kind} calling {endpoint} ({type(exc).__name__}): {self._redact(str(exc))[:300]}"
        error: PromoterError
        if isinstance(exc, _NEVER_SENT):
            error = TransientError(message)
        else:
            cause = "timeout" if timed_out else "connection lost"
            error = UncertainError(message, cause="deadline" if isinstance(exc, DeadlineExceeded) else cause)
        error.call = Call(endpoint, "error", time.perf_counter() - started)
        return error


def _payload(endpoint: str, status: int, text: str, call: Call) -> dict[str, Any]:
    """The JSON object of a 2xx answer ({} when empty); anything else is an answer of unknown meaning."""
    if not text.strip():
        return {}
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        # Maybe Promoter answering oddly (then the call took effect), maybe a proxy or captive
        # portal in between (then it did not): either way, not known.
        error = UncertainError(
            f"HTTP {status} from {endpoint} without a JSON object: {_summary(text)}", status, text,
            cause="unreadable answer",
        )  # fmt: skip
        error.call = call
        raise error
    return payload


def _read(response: urllib3.BaseHTTPResponse, deadline: float) -> str:
    """The body, given up on at ``deadline``. ``read1`` returns whatever has arrived (each wait bounded
    by the read timeout), so a body dripping in byte by byte cannot hold the call past its deadline,
    Content-Length or not."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_ANSWER:
        if time.perf_counter() > deadline:
            raise DeadlineExceeded("the answer was still arriving at the call's deadline")
        chunk = response.read1(8192)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    charset = response.headers.get("Content-Type", "").partition("charset=")[2].split(";")[0].strip()
    return b"".join(chunks).decode(charset or "utf-8", errors="replace")


MAX_ANSWER = 1024 * 1024
