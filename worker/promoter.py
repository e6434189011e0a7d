"""A typed Promoter.io client, and the classification of its answers into what the relay does next.

No official client exists. The API is Django REST Framework: errors are JSON field maps, 429 carries
``Retry-After``, and "Contact is not eligible for survey." is a 400 that means "Promoter decided not
to survey this contact now", a final outcome rather than something to fix and retry.

``classify`` is pure so every row of that table is tested without a network. The client never retries
by itself (retries belong to the task, with backoff and a budget shared by all workers), never follows
redirects (requests would turn a POST into a GET), and never lets the API key reach an exception
message, a repr or a log line: bodies and messages are scrubbed of it and transport exceptions are not
chained, since they carry the prepared request and its ``Authorization`` header.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

USER_AGENT = "promoter-relay/0.1"
DEFAULT_RETRY_AFTER = 60.0
# A Retry-After beyond this is a bug somewhere; obeying it would stop every worker for days.
MAX_RETRY_AFTER = 3600.0
MAX_BODY = 2000
TRANSIENT_STATUSES: frozenset[int] = frozenset({408, 425})
_EXPECTED_IN = re.compile(r"available in (\d+(?:\.\d+)?) seconds", re.IGNORECASE)
_REDACTED = "[redacted]"

ResponseHook = Callable[[str, int | None, float], None]

log = logging.getLogger(__name__)


class PromoterError(Exception):
    """Anything that kept a Promoter call from succeeding; ``body`` is kept for the dead letter."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body[:MAX_BODY]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, status={self.status!r})"


class TransientError(PromoterError):
    """Connection trouble, timeouts, 408, 425 and 5xx: the same request may well succeed later."""


class UncertainError(TransientError):
    """The request may have reached Promoter (read timeout, connection lost mid-answer).

    Retrying is right for an idempotent contact upsert and wrong for a survey, which would reach a
    person twice; the caller decides.
    """


class ThrottledError(TransientError):
    """429: every worker must wait ``retry_after`` seconds, not only the one that was told."""

    def __init__(self, message: str, retry_after: float, status: int | None = 429, body: str = "") -> None:
        super().__init__(message, status, body)
        self.retry_after = retry_after


class IneligibleError(PromoterError):
    """Promoter chose not to survey this contact (surveyed recently, unsubscribed...): a final outcome."""


class PermanentError(PromoterError):
    """The request, our configuration or the answer is wrong: repeating it cannot help."""


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
    status: int, headers: Mapping[str, str], body: str, now: float | None = None
) -> PromoterError | None:
    """What an HTTP answer means for delivery; ``None`` for any 2xx (the body is the caller's concern)."""
    if 200 <= status < 300:
        return None
    message = f"HTTP {status}: {_summary(body)}"
    if status == 429:
        return ThrottledError(message, retry_after_seconds(headers, body, now), status, body)
    if status in TRANSIENT_STATUSES or 500 <= status < 600:
        return TransientError(message, status, body)
    if status == 400 and _is_ineligible(body):
        return IneligibleError(message, status, body)
    # Other 4xx, and 1xx/3xx which Promoter never sends to a client that does not follow redirects.
    return PermanentError(message, status, body)


def _never_sent(error: Exception) -> bool:
    """Connection refused, DNS failure or connect timeout: the request never left this host."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    pending: list[object] = [error]
    seen: set[int] = set()
    while pending:
        cause = pending.pop()
        if not isinstance(cause, BaseException) or id(cause) in seen:
            continue
        seen.add(id(cause))
        if isinstance(cause, urllib3.exceptions.NewConnectionError | urllib3.exceptions.NameResolutionError):
            return True
        pending += [cause.__cause__, cause.__context__, getattr(cause, "reason", None), *cause.args]
    return False


class PromoterClient:
    """One pooled HTTP session per process; a call either returns the JSON object or raises."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float = 10.0,
        session: requests.Session | None = None,
        on_response: ResponseHook | None = None,
    ) -> None:
        # A header value with whitespace or control characters makes requests raise an error that
        # quotes the whole header, key included; refuse it here, without echoing it.
        if any(char.isspace() or not char.isprintable() for char in api_key):
            raise ValueError("PROMOTER_API_KEY contains whitespace or control characters")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.on_response = on_response
        self._api_key = api_key
        self._headers = {
            "Authorization": f"Token {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if session is None:
            session = requests.Session()
            # Celery threads/greenlets share it; retries stay ours (max_retries=0).
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=100, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self._session = session

    def __repr__(self) -> str:
        return f"PromoterClient(base_url={self._redact(self.base_url)!r}, timeout={self.timeout!r})"

    def upsert_contact(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /contacts/``: create or update by email; returns the contact object."""
        return self._post("contacts", "/contacts/", body)

    def survey(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v2/survey/``: ask Promoter to survey one contact for one campaign."""
        return self._post("survey", "/v2/survey/", body)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, _REDACTED) if self._api_key else text

    def _post(self, endpoint: str, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        url = self.base_url + path
        started = time.perf_counter()
        try:
            response = self._session.post(
                url, json=body, headers=self._headers, timeout=self.timeout, allow_redirects=False
            )
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            self._observe(endpoint, None, started)
            kind = "timed out" if isinstance(exc, requests.Timeout) else "connection failed"
            detail = self._redact(str(exc))[:300]
            message = f"{kind} calling {endpoint} ({type(exc).__name__}): {detail}"
            if _never_sent(exc):
                raise TransientError(message) from None
            raise UncertainError(message) from None
        except requests.RequestException as exc:
            self._observe(endpoint, None, started)
            raise PermanentError(f"cannot call {endpoint}: {type(exc).__name__}") from None
        self._observe(endpoint, response.status_code, started)
        text = self._redact(response.text)
        problem = classify(response.status_code, response.headers, text)
        if problem is not None:
            raise problem
        if not text.strip():
            return {}
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            # Maybe Promoter answering oddly (then the call took effect), maybe a proxy or captive
            # portal in between (then it did not): either way, not known.
            raise UncertainError(
                f"HTTP {response.status_code} from {endpoint} without a JSON object: {_summary(text)}",
                response.status_code,
                text,
            )
        return payload

    def _observe(self, endpoint: str, status: int | None, started: float) -> None:
        """Report latency; a broken metrics hook must never fail a delivery."""
        if self.on_response is None:
            return
        try:
            self.on_response(endpoint, status, time.perf_counter() - started)
        except Exception:
            log.warning("on_response hook failed for %s", endpoint, exc_info=True)
