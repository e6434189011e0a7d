"""The one contract between ingest and delivery: a normalized Segment message, and how it is named.

The Flask side validates whatever Segment sent and reduces it to this shape, stored once in Redis;
queued tasks carry only its *ref*. The worker never sees raw Segment JSON. Keeping the shape small
and explicit is what lets ``app`` and ``worker`` evolve separately (and lets a dead letter be replayed
months later by a newer worker).

A ref is ``<source>:<messageId>``: Segment deduplicates per source, so the same messageId sent by two
sources is two messages. A source is ``hook`` (the Webhooks destination) or ``k`` plus the first
eight hex digits of the SHA-256 of the write key that admitted it: stable across restarts and
reorderings of ``SEGMENT_WRITE_KEYS``, and not the key itself.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Literal, NotRequired, TypedDict, cast

EventType = Literal["identify", "track", "page", "screen", "group", "alias"]

DELIVERED_TYPES: frozenset[str] = frozenset({"identify", "track", "alias"})
ORDER_EVENTS: frozenset[str] = frozenset({"Order Completed", "Completed Order"})
WEBHOOK_SOURCE = "hook"


class Event(TypedDict):
    ref: str
    messageId: str
    source: str
    type: EventType
    userId: str | None
    anonymousId: str | None
    # identify: traits with email/firstName/lastName already normalized (camelCase, name split).
    traits: dict[str, Any]
    # track: event name and properties; None/{} for other types.
    event: NotRequired[str | None]
    properties: dict[str, Any]
    # alias: the id being merged into userId.
    previousId: NotRequired[str | None]
    # When it happened: Segment's timestamp, else originalTimestamp, else when it was received.
    timestamp: str
    # integrations.Promoter.campaign, when the sender overrides the campaign for this message.
    campaignId: int | None


# Said by the ref, or kept in the status record (type, event name): not stored twice.
_DERIVED = ("ref", "messageId", "source", "type", "event")
_EMPTY: dict[str, Any] = {"userId": None, "anonymousId": None, "previousId": None, "campaignId": None,
                          "event": None, "traits": {}, "properties": {}}  # fmt: skip


def stored(event: Event) -> dict[str, Any]:
    """What Redis keeps of an event: no field the ref already says, none left at its default."""
    return {k: v for k, v in event.items() if k not in _DERIVED and v != _EMPTY.get(k, ...)}


def loaded(ref: str, data: dict[str, Any], kind: str, name: str | None) -> Event:
    """The whole ``Event`` again from what ``stored`` kept and the status record's type and event name."""
    source, message_id = split_ref(ref)
    whole = {**_EMPTY, **data, "ref": ref, "messageId": message_id, "source": source, "type": kind}
    return cast(Event, {**whole, "event": name or None})


def track_work(name: str, survey_events: frozenset[str]) -> tuple[bool, bool]:
    """``(survey, order)``: whether a track of this name is surveyed, and whether it is an order.

    The one place that reads ``SURVEY_EVENTS`` (empty: every track is a survey event); ingest skips a
    track that is neither, delivery does what is true.
    """
    return (not survey_events or name in survey_events), name in ORDER_EVENTS


def source_of_key(write_key: str) -> str:
    return "k" + hashlib.sha256(write_key.encode("utf-8")).hexdigest()[:8]


def make_ref(source: str, message_id: str) -> str:
    return f"{source}:{message_id}"


def split_ref(ref: str) -> tuple[str, str]:
    """``(source, messageId)``; a bare messageId (no source) comes back with an empty source."""
    source, sep, message_id = ref.partition(":")
    return (source, message_id) if sep and (source == WEBHOOK_SOURCE or _is_key_source(source)) else ("", ref)


def _is_key_source(source: str) -> bool:
    return len(source) == 9 and source[0] == "k" and all(c in "0123456789abcdef" for c in source[1:])


USER_PREFIX = "u:"
ANONYMOUS_PREFIX = "a:"


def user_identity(user_id: str) -> str:
    return USER_PREFIX + user_id


def anonymous_identity(anonymous_id: str) -> str:
    return ANONYMOUS_PREFIX + anonymous_id


def display_identity(identity: str) -> str:
    """An identity as a person reads it: the id without its internal prefix."""
    for prefix in (USER_PREFIX, ANONYMOUS_PREFIX):
        if identity.startswith(prefix):
            return identity[len(prefix) :]
    return identity


def identities(event: Event) -> list[str]:
    """The identities a message speaks for, the one it is held under first."""
    found = []
    if event.get("userId"):
        found.append(user_identity(str(event["userId"])))
    if event.get("anonymousId"):
        found.append(anonymous_identity(str(event["anonymousId"])))
    return found


def primary_identity(event: Event) -> str:
    return identities(event)[0]


def iso(moment: datetime) -> str:
    """One spelling for every timestamp the relay writes: UTC, milliseconds, ``Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    """An ISO-8601 time as Segment and the relay write it (``Z`` or an offset)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(number: int, width: int) -> str:
    out = ""
    while number:
        number, digit = divmod(number, 36)
        out = _DIGITS[digit] + out
    return out.rjust(width, "0")


def event_ms(event: Event) -> int:
    return max(0, int(parse_iso(event["timestamp"]).timestamp() * 1000))


def version(event: Event) -> str:
    """Orders every write to a person: event time in ms, then a digest of the ref, so replays and ties
    agree. Fixed width, so versions compare as text: 9 base-36 digits of milliseconds (until the year
    5138) and 6 hex digits of the ref's SHA-1; 15 characters, stored once per identify in a person."""
    digest = hashlib.sha1(event["ref"].encode("utf-8")).hexdigest()[:6]  # noqa: S324 - an ordering, not security
    return _base36(event_ms(event), 9) + digest
