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
from typing import Any

from marshmallow import ValidationError

from app.schemas import promoter_enabled, to_event
from worker import mapping
from worker.events import DELIVERED_TYPES, Event, parse_iso, track_work
from worker.messages import Admission
from worker.settings import Settings
from worker.states import Route, State


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
        return Admission(event, route=Route.HIGH if survey else Route.LOW)
    if kind == "identify":
        compare = mapping.contact_identity(event["traits"])
        return Admission(event, route=Route.CONTACT if compare else Route.LOW, compare=compare)
    return Admission(event, route=Route.CONTACT)


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
