"""Every knob of promoter-relay, read once from the environment.

Both the Flask app and the Celery worker build their configuration from :func:`load`, so the two
sides can never disagree about, say, which events trigger a survey. Parsing is strict: a typo in an
operator's ``.env`` must stop the process at start-up with a message naming the variable, not turn
into a silently ignored setting discovered weeks later. Nothing here runs at import time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DEFAULT_PROMOTER_API_URL = "https://app.promoter.io/api"
DEFAULT_SEGMENT_HOST = "https://api.segment.io"
ENVIRONMENTS = ("production", "development", "test")
UNKNOWN_OUTCOME_POLICIES = ("dead-letter", "resend")
ANONYMOUS_EXPIRY = ("skip", "dead-letter")
DAY = 86400


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    promoter_api_url: str = DEFAULT_PROMOTER_API_URL
    promoter_api_key: str = field(default="", repr=False)
    promoter_campaign_id: int | None = None
    promoter_contact_list_ids: tuple[int, ...] = ()
    segment_write_keys: tuple[str, ...] = field(default=(), repr=False)
    segment_shared_secret: str = field(default="", repr=False)
    # Segment signs a webhook batch by its first element only; accepting arrays on the signature
    # alone lets anyone who captured one signed event append whatever they like after it.
    segment_signature_only_batches_unsafe: bool = False
    admin_token: str = field(default="", repr=False)
    metrics_token: str = field(default="", repr=False)
    survey_events: frozenset[str] = frozenset()
    hold_ttl_seconds: int = 7 * DAY
    anonymous_hold_ttl_seconds: int = DAY
    anonymous_hold_expiry: str = "skip"
    anonymous_id_ttl_seconds: int = DAY
    person_ttl_seconds: int = 365 * DAY
    promoter_rate_limit: float = 10.0
    promoter_daily_limit: int | None = None
    promoter_daily_reserve: float = 0.2
    survey_cooldown_days: int = 0
    unknown_survey_outcome: str = "dead-letter"
    retry_window_seconds: int = 14400
    retry_base_seconds: float = 2.0
    retry_max_delay_seconds: float = 900.0
    status_ttl_seconds: int = 3 * DAY
    dead_letter_ttl_seconds: int = 30 * DAY
    dead_letter_max: int = 100_000
    visibility_timeout: int = 300
    promoter_timeout_seconds: float = 10.0
    traits_allow: tuple[str, ...] = ()
    traits_deny: tuple[str, ...] = ()
    log_format: str = "text"
    log_level: str = "INFO"
    queue_name: str = "relay"
    environment: str = "production"
    # NPS responses back into Segment (worker/feedback.py): off while the write key is empty.
    feedback_segment_write_key: str = field(default="", repr=False)
    feedback_segment_host: str = DEFAULT_SEGMENT_HOST
    feedback_poll_seconds: int = 300
    feedback_event: str = "NPS Survey Responded"
    # Personal data (issue 21): the key of the suppression markers a forget leaves, and how long they
    # last (0: none). Without a key no marker is written: a forget erases, but does not suppress.
    suppression_key: str = field(default="", repr=False)
    suppression_days: int = 30

    @property
    def low_queue(self) -> str:
        return f"{self.queue_name}.low"

    @property
    def control_queue(self) -> str:
        return f"{self.queue_name}.control"

    @property
    def delivery_queues(self) -> tuple[str, str]:
        """Consumed in this order: surveys and contact-defining identifies first."""
        return (self.queue_name, self.low_queue)

    @property
    def survey_lease_seconds(self) -> float:
        """How long a survey call may be in flight before its worker is presumed dead.

        Longer than the longest a call can last (``PromoterClient.deadline`` plus one read timeout:
        5 s + 2 x timeout) with a margin, so a call that is merely slow is never mistaken for a worker
        that died mid-call.
        """
        return self.promoter_timeout_seconds * 3 + 10

    @property
    def suppression_seconds(self) -> int:
        """How long a forgotten person's later events are dropped; 0 when nothing is suppressed (no
        key, or SUPPRESSION_DAYS=0)."""
        return self.suppression_days * DAY if self.suppression_key else 0


def _text(_: str, value: str) -> str:
    return value.strip()


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {value!r}") from None
    if number <= 0:
        raise SettingsError(f"{name} must be greater than zero, got {number}")
    return number


def _whole(name: str, value: str) -> int:
    """A whole number that may be zero (zero turns the feature off)."""
    return 0 if value.strip() == "0" else _positive_int(name, value)


def _positive_float(name: str, value: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise SettingsError(f"{name} must be a finite number greater than zero, got {value!r}")
    return number


def _fraction(name: str, value: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {value!r}") from None
    if not 0 <= number < 1:
        raise SettingsError(f"{name} must be at least 0 and below 1, got {value!r}")
    return number


def _optional_int(name: str, value: str) -> int | None:
    return _positive_int(name, value) if value.strip() else None


def _token(name: str, value: str) -> str:
    """A credential sent in an HTTP header: no spaces or control characters (never echoed back)."""
    token = value.strip()
    if any(char.isspace() or not char.isprintable() for char in token):
        raise SettingsError(f"{name} contains spaces or control characters")
    return token


MIN_KEY_LENGTH = 16


def _secret_key(name: str, value: str) -> str:
    """A key for a keyed hash: long enough that the hashes of guessable ids cannot be tried."""
    key = value.strip()
    if len(key) < MIN_KEY_LENGTH:
        raise SettingsError(f"{name} must be at least {MIN_KEY_LENGTH} characters")
    return key


def _bool(name: str, value: str) -> bool:
    picked = value.strip().lower()
    if picked in ("1", "true", "yes", "on"):
        return True
    if picked in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {value!r}")


def _words(_: str, value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _keys(_: str, value: str) -> tuple[str, ...]:
    """Write keys, separated by commas or line breaks (a secrets file holds one per line)."""
    return tuple(part for part in re.split(r"[,\s]+", value) if part)


def _int_list(name: str, value: str) -> tuple[int, ...]:
    return tuple(_positive_int(name, part) for part in _words(name, value))


_NAME_PATTERN = re.compile(r"^[a-z0-9_*?]+$")


def _name_patterns(name: str, value: str) -> tuple[str, ...]:
    """Attribute names as the relay writes them (lower snake_case), ``*`` and ``?`` allowed."""
    patterns = tuple(word.lower() for word in _words(name, value))
    for pattern in patterns:
        if not _NAME_PATTERN.match(pattern):
            raise SettingsError(f"{name}: {pattern!r} is not a lower snake_case name or pattern")
    return patterns


def _url(name: str, value: str, schemes: tuple[str, ...]) -> str:
    parsed = urlparse(value.strip())
    if parsed.scheme not in schemes or not (parsed.hostname or parsed.path):
        raise SettingsError(f"{name} must be a {' or '.join(schemes)} URL, got {value!r}")
    return value.strip().rstrip("/") if "http" in schemes else value.strip()


def _choice(choices: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(name: str, value: str) -> str:
        picked = value.strip().lower()
        if picked not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return picked

    return parse


_PARSERS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "REDIS_URL": ("redis_url", lambda n, v: _url(n, v, ("redis", "rediss", "unix"))),
    "PROMOTER_API_URL": ("promoter_api_url", lambda n, v: _url(n, v, ("http", "https"))),
    "PROMOTER_API_KEY": ("promoter_api_key", _token),
    "PROMOTER_CAMPAIGN_ID": ("promoter_campaign_id", _optional_int),
    "PROMOTER_CONTACT_LIST_IDS": ("promoter_contact_list_ids", _int_list),
    "SEGMENT_WRITE_KEYS": ("segment_write_keys", _keys),
    "SEGMENT_SHARED_SECRET": ("segment_shared_secret", _text),
    "SEGMENT_SIGNATURE_ONLY_BATCHES_UNSAFE": ("segment_signature_only_batches_unsafe", _bool),
    "ADMIN_TOKEN": ("admin_token", _token),
    "METRICS_TOKEN": ("metrics_token", _token),
    "SURVEY_EVENTS": ("survey_events", lambda n, v: frozenset(_words(n, v))),
    "HOLD_TTL_SECONDS": ("hold_ttl_seconds", _positive_int),
    "ANONYMOUS_HOLD_TTL_SECONDS": ("anonymous_hold_ttl_seconds", _positive_int),
    "ANONYMOUS_HOLD_EXPIRY": ("anonymous_hold_expiry", _choice(ANONYMOUS_EXPIRY)),
    "ANONYMOUS_ID_TTL_SECONDS": ("anonymous_id_ttl_seconds", _positive_int),
    "PERSON_TTL_SECONDS": ("person_ttl_seconds", _positive_int),
    "PROMOTER_RATE_LIMIT": ("promoter_rate_limit", _positive_float),
    "PROMOTER_DAILY_LIMIT": ("promoter_daily_limit", _optional_int),
    "PROMOTER_DAILY_RESERVE": ("promoter_daily_reserve", _fraction),
    "SURVEY_COOLDOWN_DAYS": ("survey_cooldown_days", _whole),
    "UNKNOWN_SURVEY_OUTCOME": ("unknown_survey_outcome", _choice(UNKNOWN_OUTCOME_POLICIES)),
    "RETRY_WINDOW_SECONDS": ("retry_window_seconds", _positive_int),
    "RETRY_BASE_SECONDS": ("retry_base_seconds", _positive_float),
    "RETRY_MAX_DELAY_SECONDS": ("retry_max_delay_seconds", _positive_float),
    "STATUS_TTL_SECONDS": ("status_ttl_seconds", _positive_int),
    "DEAD_LETTER_TTL_SECONDS": ("dead_letter_ttl_seconds", _positive_int),
    "DEAD_LETTER_MAX": ("dead_letter_max", _positive_int),
    "VISIBILITY_TIMEOUT": ("visibility_timeout", _positive_int),
    "PROMOTER_TIMEOUT_SECONDS": ("promoter_timeout_seconds", _positive_float),
    "TRAITS_ALLOW": ("traits_allow", _name_patterns),
    "TRAITS_DENY": ("traits_deny", _name_patterns),
    "LOG_FORMAT": ("log_format", _choice(("text", "json"))),
    "LOG_LEVEL": ("log_level", lambda n, v: _choice(("debug", "info", "warning", "error"))(n, v).upper()),
    "RELAY_QUEUE": ("queue_name", lambda n, v: _text(n, v) or "relay"),
    "RELAY_ENV": ("environment", _choice(ENVIRONMENTS)),
    "FEEDBACK_SEGMENT_WRITE_KEY": ("feedback_segment_write_key", _token),
    "FEEDBACK_SEGMENT_HOST": ("feedback_segment_host", lambda n, v: _url(n, v, ("http", "https"))),
    "FEEDBACK_POLL_SECONDS": ("feedback_poll_seconds", _positive_int),
    "FEEDBACK_EVENT": ("feedback_event", _text),
    "SUPPRESSION_KEY": ("suppression_key", _secret_key),
    "SUPPRESSION_DAYS": ("suppression_days", _whole),
}

ENV_VARS: tuple[str, ...] = tuple(_PARSERS)
# Secrets that may also come from a file (``<NAME>_FILE``), as Docker and Kubernetes secrets are mounted.
FILE_VARIANTS: tuple[str, ...] = (
    "PROMOTER_API_KEY",
    "ADMIN_TOKEN",
    "SEGMENT_WRITE_KEYS",
    "SEGMENT_SHARED_SECRET",
    "METRICS_TOKEN",
    "SUPPRESSION_KEY",
)


def _raw(env: Mapping[str, str], name: str) -> str | None:
    """The text of a variable, or of the file its ``_FILE`` twin names; never both.

    Errors name the variable and the path, never the content: the content is a secret.
    """
    value = env.get(name)
    path = env.get(f"{name}_FILE") if name in FILE_VARIANTS else None
    if not path or not path.strip():
        return value
    if value is not None and value.strip():
        raise SettingsError(f"{name} and {name}_FILE are both set; keep one")
    try:
        return Path(path.strip()).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise SettingsError(f"{name}_FILE: cannot read {path.strip()!r} ({reason})") from None


def load(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from ``environ`` (default ``os.environ``), then apply keyword overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, (attr, parse) in _PARSERS.items():
        raw = _raw(env, name)
        if raw is not None and raw.strip() != "":
            values[attr] = parse(name, raw)
    known = {f.name for f in fields(Settings)}
    unknown = set(overrides) - known
    if unknown:
        raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    settings = replace(Settings(**values), **overrides)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    if settings.visibility_timeout < 10:
        raise SettingsError("VISIBILITY_TIMEOUT must be at least 10 seconds")
    if settings.promoter_timeout_seconds * 3 >= settings.visibility_timeout:
        raise SettingsError(
            "PROMOTER_TIMEOUT_SECONDS must stay well under VISIBILITY_TIMEOUT "
            "(a task still running at the visibility timeout is delivered twice)"
        )
    if settings.retry_max_delay_seconds > settings.retry_window_seconds:
        raise SettingsError("RETRY_MAX_DELAY_SECONDS must not exceed RETRY_WINDOW_SECONDS")


_PLACEHOLDERS = ("change-me", "changeme", "change_me", "secret", "password", "example")
MIN_TOKEN_LENGTH = 16


def production_problems(settings: Settings) -> list[str]:
    """Settings that are fine in development but unsafe or useless in production, one line each."""
    if settings.environment != "production":
        return []
    problems = []
    if not settings.promoter_api_key:
        problems.append("PROMOTER_API_KEY is empty")
    secrets = {
        "ADMIN_TOKEN": settings.admin_token,
        "METRICS_TOKEN": settings.metrics_token,
        "SEGMENT_SHARED_SECRET": settings.segment_shared_secret,
        "SUPPRESSION_KEY": settings.suppression_key,
        **{f"SEGMENT_WRITE_KEYS[{i + 1}]": key for i, key in enumerate(settings.segment_write_keys)},
    }
    for name, value in secrets.items():
        if value and any(word in value.lower() for word in _PLACEHOLDERS):
            problems.append(f"{name} is a placeholder value; set a real one")
    for name in ("ADMIN_TOKEN", "METRICS_TOKEN"):
        value = secrets[name]
        if value and len(value) < MIN_TOKEN_LENGTH and not any(w in value.lower() for w in _PLACEHOLDERS):
            problems.append(f"{name} is shorter than {MIN_TOKEN_LENGTH} characters")
    if not settings.segment_write_keys and not settings.segment_shared_secret:
        problems.append("neither SEGMENT_WRITE_KEYS nor SEGMENT_SHARED_SECRET is set: nothing can be sent")
    return problems


def load_for_service(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """``load`` plus the production checks, for the API, worker and beat entry points."""
    settings = load(environ, **overrides)
    problems = production_problems(settings)
    if problems:
        raise SettingsError(
            "refusing to start with unsafe settings (set RELAY_ENV=development to run anyway): "
            + "; ".join(problems)
        )
    return settings


@dataclass(frozen=True)
class ServerSettings:
    """How gunicorn serves the API (``GUNICORN_*``); ``workers`` None means one per core, at least 2."""

    bind: str = "0.0.0.0:8000"
    workers: int | None = None
    threads: int = 4
    accesslog: str | None = None


def _bind(name: str, value: str) -> str:
    """``host:port``, ``[v6]:port``, ``unix:/path`` or ``fd://N``, as gunicorn's ``--bind`` takes."""
    text = value.strip()
    if text.startswith("unix:") and len(text) > len("unix:"):
        return text
    if re.fullmatch(r"fd://\d+", text):
        return text
    host, sep, port = text.rpartition(":")
    if sep and host and port.isdigit() and 0 < int(port) < 65536 and not any(c.isspace() for c in host):
        return text
    raise SettingsError(f"{name} must be host:port, unix:/path or fd://N, got {value!r}")


def _accesslog(_: str, value: str) -> str | None:
    return value.strip() or None


_SERVER_PARSERS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "GUNICORN_BIND": ("bind", _bind),
    "GUNICORN_WORKERS": ("workers", _positive_int),
    "GUNICORN_THREADS": ("threads", _positive_int),
    "GUNICORN_ACCESSLOG": ("accesslog", _accesslog),
}
# gunicorn reads this one itself (extra command-line arguments); it is not a typo.
_GUNICORN_OWN = ("GUNICORN_CMD_ARGS",)


def load_server(environ: Mapping[str, str] | None = None) -> ServerSettings:
    """``GUNICORN_*`` from the environment. A name the relay does not know is refused too: gunicorn
    would ignore ``GUNICORN_WORKRES=8`` without a word."""
    env = os.environ if environ is None else environ
    known = (*_SERVER_PARSERS, *_GUNICORN_OWN)
    unknown = sorted(name for name in env if name.startswith("GUNICORN_") and name not in known)
    if unknown:
        raise SettingsError(f"unknown setting {unknown[0]} (known: {', '.join(known)})")
    values: dict[str, Any] = {}
    for name, (attr, parse) in _SERVER_PARSERS.items():
        raw = env.get(name)
        if raw is not None and raw.strip() != "":
            values[attr] = parse(name, raw)
    return ServerSettings(**values)
