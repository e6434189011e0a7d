"""What delivering one event means, as plain functions over a ``Runtime``.

Tasks stay thin: they call these functions and turn the exceptions into retry decisions. The
functions decide *what* to call at Promoter and in which order; ``holds``, ``ledger`` and ``orders``
make each step safe to repeat, since any of them may run again after a crash or redelivery.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from worker import broker, mapping
from worker.events import ORDER_EVENTS, Event, user_key
from worker.holds import Contact
from worker.promoter import IneligibleError, PromoterError, UncertainError
from worker.runtime import Runtime

MAX_INLINE_WAIT_SECONDS = 2.0
UNKNOWN_OUTCOME = (
    "survey outcome unknown: the call may have reached Promoter (timeout or worker died mid-call); "
    "check Promoter before replaying"
)


class Wait(Exception):
    """Not now, and not a failure: come back after ``seconds`` (rate limit, pause, survey in flight)."""

    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(reason)
        self.seconds = seconds
        self.reason = reason


class OutcomeUnknown(Exception):
    """A survey call may have reached Promoter; sending it again could survey a person twice."""


class ConfigurationError(Exception):
    """The relay itself lacks what the event needs (e.g. no campaign id): dead-letter and tell."""


@dataclass(frozen=True)
class Result:
    state: str
    detail: str


def identify(event: Event, rt: Runtime) -> Result:
    user = user_key(event)
    traits = event["traits"]
    known = rt.holds.contact(user)
    if not traits.get("email") and known is None:
        known = rt.holds.hold(event, broker.envelope(event, rt.settings.queue_name))
        if known is None:
            return Result("held", f"trait update waiting for the first identify of {user}")
    merged: dict[str, Any] = dict(traits)
    if known is not None:
        merged.setdefault("email", known.email)
        merged.setdefault("firstName", known.first_name)
        merged.setdefault("lastName", known.last_name)
    _acquire(rt)
    contact = rt.promoter.upsert_contact(mapping.contact_body(merged, rt.settings.promoter_contact_list_ids))
    identities = [user]
    if event.get("userId") and event.get("anonymousId"):
        identities.append(f"a:{event['anonymousId']}")
    remembered = Contact(
        str(merged["email"]),
        str(merged.get("firstName") or ""),
        str(merged.get("lastName") or ""),
    )
    released = rt.holds.mark_known(identities, remembered, str(contact.get("id", "")))
    return Result("delivered", f"contact {contact.get('id', '?')} upserted; released {released} held")


def track(event: Event, rt: Runtime) -> Result:
    user = user_key(event)
    contact = rt.holds.contact(user)
    if contact is None:
        contact = rt.holds.hold(event, broker.envelope(event, rt.settings.queue_name))
        if contact is None:
            return Result("held", f"waiting for identify of {user}")
    name = event.get("event") or ""
    done: list[str] = []
    if name in ORDER_EVENTS:
        done.append(_record_order(event, contact, rt))
    if rt.settings.is_survey_event(name):
        return _survey(event, contact, rt, done)
    if not done:
        return Result("skipped", "not a survey event (SURVEY_EVENTS)")
    return Result("delivered", "; ".join(done))


def _record_order(event: Event, contact: Contact, rt: Runtime) -> str:
    properties = event.get("properties") or {}
    amount = mapping.order_amount(properties)
    last = mapping.last_order_fields(properties, event.get("timestamp") or event["receivedAt"])
    user = user_key(event)
    totals = rt.orders.record(user, event["messageId"], str(amount), last)
    # Two orders of one user delivered at once could upsert their totals in the wrong order;
    # whoever sees the totals change after its upsert sends the newer ones.
    for _ in range(3):
        attributes = mapping.order_attributes(totals)
        body = mapping.contact_body(
            _contact_traits(contact), rt.settings.promoter_contact_list_ids, attributes
        )
        _acquire(rt)
        rt.promoter.upsert_contact(body)
        latest = rt.orders.totals(user)
        if latest == totals:
            break
        totals = latest
    return f"order attributes updated (order_count {totals.get('order_count', '?')})"


def _survey(event: Event, contact: Contact, rt: Runtime, done: list[str]) -> Result:
    campaign = event.get("campaignId") or rt.settings.promoter_campaign_id
    if campaign is None:
        raise ConfigurationError("no campaign: set PROMOTER_CAMPAIGN_ID or integrations.Promoter.campaign")
    message_id = event["messageId"]
    # The rate-limit slot comes first, so that nothing sits between claiming and calling: a worker
    # that dies holding the claim turns the survey into an unknown outcome.
    _acquire(rt)
    lease = rt.settings.promoter_timeout_seconds * 2 + 5
    claim = rt.ledger.claim_survey(message_id, lease)
    if claim == "sent":
        return Result("delivered", "; ".join([*done, "survey already sent"]))
    if claim == "unknown":
        raise OutcomeUnknown(UNKNOWN_OUTCOME)
    if not isinstance(claim, str):
        raise Wait(claim, "survey call for this message in flight elsewhere")
    body = mapping.survey_body(
        campaign,
        {"email": contact.email, "first_name": contact.first_name, "last_name": contact.last_name},
        event.get("properties") or {},
        event.get("event") or "",
    )
    try:
        rt.promoter.survey(body)
    except IneligibleError:
        rt.ledger.settle_survey(message_id, "sent")
        return Result("ineligible", "; ".join([*done, "Promoter: contact is not eligible for survey"]))
    except UncertainError as error:
        rt.ledger.settle_survey(message_id, "unknown")
        raise OutcomeUnknown(f"{UNKNOWN_OUTCOME} ({error})") from None
    except PromoterError:
        rt.ledger.settle_survey(message_id, "")
        raise
    rt.ledger.settle_survey(message_id, "sent")
    return Result("delivered", "; ".join([*done, f"survey sent (campaign {campaign})"]))


def _contact_traits(contact: Contact) -> dict[str, Any]:
    return {"email": contact.email, "firstName": contact.first_name, "lastName": contact.last_name}


def _acquire(rt: Runtime) -> None:
    """Take a slot of the shared request budget, sleeping briefly or handing the wait back."""
    waited = 0.0
    while (wait := rt.rate.wait_seconds()) > 0:
        if waited + wait > MAX_INLINE_WAIT_SECONDS:
            raise Wait(wait, "Promoter rate limit or 429 pause")
        time.sleep(wait)
        waited += wait
