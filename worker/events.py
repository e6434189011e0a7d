"""The one contract between ingest and delivery: a normalized Segment message.

The Flask side validates whatever Segment sent and reduces it to this shape; the worker side never
sees raw Segment JSON. Keeping the shape small and explicit is what lets ``app`` and ``worker`` evolve
separately (and lets a dead letter be replayed months later by a newer worker).
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

EventType = Literal["identify", "track", "page", "screen", "group", "alias"]

DELIVERED_TYPES: frozenset[str] = frozenset({"identify", "track"})
ORDER_EVENTS: frozenset[str] = frozenset({"Order Completed", "Completed Order"})


class Event(TypedDict):
    messageId: str
    type: EventType
    userId: str | None
    anonymousId: str | None
    # identify: traits with email/firstName/lastName already normalized (camelCase, name split).
    traits: dict[str, Any]
    # track: event name and properties; None/{} for other types.
    event: NotRequired[str | None]
    properties: dict[str, Any]
    context: dict[str, Any]
    timestamp: str | None
    receivedAt: str
    # integrations.Promoter.campaign, when the sender overrides the campaign for this message.
    campaignId: int | None


def user_key(event: Event) -> str:
    """The identity a message is held and delivered under: the userId, else the anonymousId."""
    if event.get("userId"):
        return f"u:{event['userId']}"
    return f"a:{event['anonymousId']}"
