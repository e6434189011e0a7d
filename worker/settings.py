"""Every knob of promoter-relay, read once from the environment.

Both the Flask app and the Celery worker build their configuration from :func:`load`, so the two
sides can never disagree about, say, which events trigger a survey. Parsing is strict: a typo in an
operator's ``.env`` must stop the process at start-up with a message naming the variable, not turn
into a silently ignored setting discovered weeks later.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlparse

DEFAULT_PROMOTER_API_URL = "https://app.promoter.io/api"


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
    survey_events: frozenset[str] = frozenset()
    hold_ttl_seconds: int = 604800
    promoter_rate_limit: float = 10.0
    retry_window_seconds: int = 14400
    retry_base_seconds: float = 2.0
    retry_max_delay_seconds: float = 900.0
    status_ttl_seconds: int = 259200
    visibility_timeout: int = 300
    promoter_timeout_seconds: float = 10.0
    log_format: str = "text"
    log_level: str = "INFO"
    queue_name: str = "relay"

    def is_survey_event(self, event: str) -> bool:
        return not self.survey_events or event in self.survey_events


def _text(value: str) -> str:
    return value.strip()


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {value!r}") from None
    if number <= 0:
        raise SettingsError(f"{name} must be greater than zero, got {number}")
    return number


def _positive_float(name: str, value: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise SettingsError(f"{name} must be a finite number greater than zero, got {value!r}")
    return number


def _optional_int(name: str, value: str) -> int | None:
    return _positive_int(name, value) if value.strip() else None


def _token(name: str, value: str) -> str:
    """A credential sent in an HTTP header: no spaces or control characters (never echoed back)."""
    token = value.strip()
    if any(char.isspace() or not char.isprintable() for char in token):
        raise SettingsError(f"{name} contains spaces or control characters")
    return token


def _bool(name: str, value: str) -> bool:
    picked = value.strip().lower()
    if picked in ("1", "true", "yes", "on"):
        return True
    if picked in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {value!r}")


def _words(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _int_list(name: str, value: str) -> tuple[int, ...]:
    return tuple(_positive_int(name, part) for part in _words(value))


def _url(name: str, value: str, schemes: tuple[str, ...]) -> str:
    parsed = urlparse(value.strip())
    if parsed.scheme not in schemes or not (parsed.hostname or parsed.path):
        raise SettingsError(f"{name} must be a {' or '.join(schemes)} URL, got {value!r}")
    return value.strip().rstrip("/") if "http" in schemes else value.strip()


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    picked = value.strip().lower()
    if picked not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return picked


_PARSERS: dict[str, Any] = {
    "REDIS_URL": ("redis_url", lambda n, v: _url(n, v, ("redis", "rediss", "unix"))),
    "PROMOTER_API_URL": ("promoter_api_url", lambda n, v: _url(n, v, ("http", "https"))),
    "PROMOTER_API_KEY": ("promoter_api_key", _token),
    "PROMOTER_CAMPAIGN_ID": ("promoter_campaign_id", _optional_int),
    "PROMOTER_CONTACT_LIST_IDS": ("promoter_contact_list_ids", _int_list),
    "SEGMENT_WRITE_KEYS": ("segment_write_keys", lambda n, v: _words(v)),
    "SEGMENT_SHARED_SECRET": ("segment_shared_secret", lambda n, v: _text(v)),
    "SEGMENT_SIGNATURE_ONLY_BATCHES_UNSAFE": ("segment_signature_only_batches_unsafe", _bool),
    "ADMIN_TOKEN": ("admin_token", _token),
    "SURVEY_EVENTS": ("survey_events", lambda n, v: frozenset(_words(v))),
    "HOLD_TTL_SECONDS": ("hold_ttl_seconds", _positive_int),
    "PROMOTER_RATE_LIMIT": ("promoter_rate_limit", _positive_float),
    "RETRY_WINDOW_SECONDS": ("retry_window_seconds", _positive_int),
    "RETRY_BASE_SECONDS": ("retry_base_seconds", _positive_float),
    "RETRY_MAX_DELAY_SECONDS": ("retry_max_delay_seconds", _positive_float),
    "STATUS_TTL_SECONDS": ("status_ttl_seconds", _positive_int),
    "VISIBILITY_TIMEOUT": ("visibility_timeout", _positive_int),
    "PROMOTER_TIMEOUT_SECONDS": ("promoter_timeout_seconds", _positive_float),
    "LOG_FORMAT": ("log_format", lambda n, v: _choice(n, v, ("text", "json"))),
    "LOG_LEVEL": ("log_level", lambda n, v: _choice(n, v, ("debug", "info", "warning", "error")).upper()),
    "RELAY_QUEUE": ("queue_name", lambda n, v: _text(v) or "relay"),
}

ENV_VARS: tuple[str, ...] = tuple(_PARSERS)


def load(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from ``environ`` (default ``os.environ``), then apply keyword overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, (attr, parse) in _PARSERS.items():
        raw = env.get(name)
        if raw is not None and raw.strip() != "":
            values[attr] = parse(name, raw)
    settings = Settings(**values)
    known = {f.name for f in fields(Settings)}
    unknown = set(overrides) - known
    if unknown:
        raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    settings = replace(settings, **overrides)
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
