"""Admission policy: what becomes of each validated message, before anything is stored.

Pure decisions over a message and the settings, kept apart from the HTTP handling in ``ingest``:
which messages go to Promoter at all, which are recorded as ``skipped`` (acknowledged, nothing to
send), and which queue each one starts in. Surveys go first; an identify carrying an email or a name,
and an alias, are routed by the accept script itself (they go first, and hold back the person's
surveys, when they may change who the contact is); trait-only identifies and order updates wait
behind them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from marshmallow import ValidationError

from app.schemas import promoter_enabled, to_event
from worker import mapping
from worker.events import DELIVERED_TYPES, Event, parse_iso, track_work
from worker.mapping import CONTACT_FIELDS, NO_FILTER, TraitFilter, flatten
from worker.messages import Admission
from worker.settings import Settings
from worker.states import Route, State

# What an order-only track keeps of its properties: what ``mapping.order_of`` reads, and of each product
# its price and quantity (its sum is the total when neither ``total`` nor ``revenue`` is given).
ORDER_PROPERTIES = ("order_id", "orderId", "total", "revenue", "currency")
PRODUCT_PROPERTIES = ("price", "quantity")
# Traits that decide who the contact is, whatever TRAITS_ALLOW/TRAITS_DENY say.
CONTACT_TRAITS = ("email", "firstName", "lastName")


def _order_properties(properties: dict[str, Any]) -> dict[str, Any]:
    kept = {name: properties[name] for name in ORDER_PROPERTIES if name in properties}
    products = properties.get("products")
    if isinstance(products, list):
        kept["products"] = [
            {name: product[name] for name in PRODUCT_PROPERTIES if name in product}
            for product in products
            if isinstance(product, dict)
        ]
    return kept


def _kept_traits(traits: dict[str, Any], only: TraitFilter) -> dict[str, Any]:
    """The traits that can reach Promoter: the contact's own, and each other trait with at least one
    attribute TRAITS_ALLOW/TRAITS_DENY let through (decided on the names the relay writes)."""
    kept = {name: traits[name] for name in CONTACT_TRAITS if name in traits}
    for name, value in traits.items():
        if name in kept or name in CONTACT_TRAITS:
            continue
        written = flatten({name: value})
        if any(attribute not in CONTACT_FIELDS and only.keeps(attribute) for attribute in written):
            kept[name] = value
    return kept


def minimal(event: Event, *, survey: bool, order: bool, only: TraitFilter) -> Event:
    """The event as it is stored: per field, only what delivery (and inspecting its record) needs.

    An allowlist, so a field Segment adds tomorrow is not kept by default. ``context`` (IP, user
    agent, page, campaign, library, device) never gets this far; a track keeps no traits (context
    traits are only informational), its properties only when they become survey attributes or, for
    an order, the amounts and ids the order attributes are made from; an identify keeps the traits
    that can reach Promoter; an alias only its two ids.
    """
    kind = event["type"]
    kept: dict[str, Any] = {
        **event,
        "traits": {},
        "properties": {},
        "campaignId": None,
    }
    if kind == "identify":
        kept["traits"] = _kept_traits(event["traits"], only)
    elif kind == "track":
        properties = event.get("properties") or {}
        kept["properties"] = dict(properties) if survey else _order_properties(properties) if order else {}
        kept["campaignId"] = event.get("campaignId") if survey else None
    elif kind == "alias":
        kept["anonymousId"] = None
    return cast(Event, kept)


def admit(event: Event, enabled: bool, settings: Settings) -> Admission:
    if not enabled:
        return Admission(event, State.SKIPPED, "Promoter disabled by the integrations object")
    kind = event["type"]
    if kind not in DELIVERED_TYPES:
        return Admission(event, State.SKIPPED, f"{kind} messages are not sent to Promoter")
    if kind == "track":
        survey, order = track_work(event.get("event") or "", settings.survey_events)
        if not survey and not order:
            return Admission(event, State.SKIPPED, "not a survey event (SURVEY_EVENTS)")
        kept = minimal(event, survey=survey, order=order, only=NO_FILTER)
        return Admission(kept, route=Route.HIGH if survey else Route.LOW)
    only = TraitFilter(settings.traits_allow, settings.traits_deny)
    kept = minimal(event, survey=False, order=False, only=only)
    if kind == "identify":
        compare = mapping.contact_identity(kept["traits"])
        return Admission(kept, route=Route.CONTACT if compare else Route.LOW, compare=compare)
    return Admission(kept, route=Route.CONTACT)


def within_replay_window(message: dict[str, Any], window_seconds: int, now: datetime) -> None:
    """Refuse what Segment stamped as received longer ago than duplicates are remembered.

    Deduplication by message id lasts as long as the status record (STATUS_TTL_SECONDS); a signed
    webhook captured and replayed after that would otherwise be delivered again.
    """
    received = message.get("receivedAt")
    if not received:
        return
    if now - parse_iso(received) > timedelta(seconds=window_seconds):
        hours = window_seconds // 3600
        raise ValidationError(
            {"receivedAt": [f"Older than the {hours} h replay window; refused as a replay."]}
        )


def admission_of(
    message: dict[str, Any], source: str, settings: Settings, *, webhook: bool, now: datetime | None = None
) -> Admission:
    """A validated message as it will be stored (raises ``ValidationError`` for a replay)."""
    now = now or datetime.now(UTC)
    within_replay_window(message, settings.status_ttl_seconds, now)
    event = to_event(message, source, now, corrected=not webhook)
    return admit(event, promoter_enabled(message.get("integrations") or {}), settings)
