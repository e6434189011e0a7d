"""What delivering one message means, as plain functions over a ``Runtime``.

Tasks stay thin: they call these functions and turn the exceptions into retry decisions. The
functions decide *what* to call at Promoter and in which order; the person scripts (``people``) decide
who the contact is and make each step safe to repeat, since any of them may run again after a crash
or a redelivery.

- identify: merge its fields into the person; if the merged contact differs from what Promoter has,
  send it (or ride along with the update already in flight for this person).
- alias: link previousId to userId's person, and send the merged contact if the merge changed it.
- track: once Promoter knows the person, record an order (once per order_id) and send the order
  attributes, and/or survey the person; before that, the track is held.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker import mapping
from worker.events import (
    Event,
    anonymous_identity,
    identities,
    iso,
    track_work,
    user_identity,
    version,
)
from worker.ledger import Start
from worker.people import SurveyClaim, SyncPlan
from worker.promoter import (
    IneligibleError,
    PermanentError,
    PromoterError,
    TransientError,
    UncertainError,
)
from worker.runtime import Runtime
from worker.states import State

MAX_INLINE_WAIT_SECONDS = 2.0
MAX_SYNC_ROUNDS = 5
WORKER = f"{socket.gethostname()}:{os.getpid()}"


class Wait(Exception):
    """Not now, and not a failure: come back after ``seconds`` (budget, 429 pause, call in flight)."""

    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(reason)
        self.seconds = seconds
        self.reason = reason


class OutcomeUnknown(Exception):
    """A survey call may have reached Promoter; sending it again could survey a person twice."""

    def __init__(self, cause: str, evidence: dict[str, Any]) -> None:
        super().__init__(
            f"survey outcome unknown: the call may have reached Promoter ({cause}); "
            "check Promoter before replaying"
        )
        self.evidence = {"cause": cause, **evidence}


class ConfigurationError(Exception):
    """The relay itself lacks what the message needs (e.g. no campaign id): dead-letter and tell."""


class Settled(Exception):
    """The outcome is already recorded by a script (e.g. a refused contact update buried all it carried)."""

    def __init__(self, state: State, detail: str) -> None:
        super().__init__(detail)
        self.state = state
        self.detail = detail


class Quarantined(TransientError):
    """A contact update whose outcome is unknown: retry no sooner than ``min_delay`` seconds, so a
    request stalled at Promoter lands before a newer one does."""

    def __init__(self, message: str, min_delay: float) -> None:
        super().__init__(message)
        self.min_delay = min_delay


@dataclass(frozen=True)
class Outcome:
    """What a delivery function did, for the log line (the state itself is written by the scripts)."""

    state: str
    detail: str = ""


def priority(start: Start, rt: Runtime) -> str:
    return "low" if start.queue == rt.settings.low_queue else "high"


# --- identify and alias ----------------------------------------------------------------------------


def identify(event: Event, start: Start, rt: Runtime) -> Outcome:
    only = mapping.TraitFilter(rt.settings.traits_allow, rt.settings.traits_deny)
    fields = mapping.contact_fields(event["traits"], only)
    plan = rt.stores.people.contact_plan(
        event["ref"], identities(event), fields, version(event), priority(start, rt), start.force
    )
    return _follow(plan.action, plan.sync, plan.coalesced_with, event["ref"], start, rt)


def alias(event: Event, start: Start, rt: Runtime) -> Outcome:
    previous = str(event.get("previousId") or "")
    linked = [user_identity(str(event["userId"])), user_identity(previous), anonymous_identity(previous)]
    plan = rt.stores.people.contact_plan(
        event["ref"], linked, None, version(event), priority(start, rt), start.force
    )
    return _follow(plan.action, plan.sync, plan.coalesced_with, event["ref"], start, rt)


def _follow(action: str, sync: SyncPlan | None, holder: str, ref: str, start: Start, rt: Runtime) -> Outcome:
    if sync is not None:
        return sync_contact(sync, ref, priority(start, rt), rt)
    if action == "coalesced":
        return Outcome("received", f"rides along with the contact update of {holder}")
    return Outcome(action)


def sync_contact(plan: SyncPlan, ref: str, level: str, rt: Runtime) -> Outcome:
    """Send the person's newest contact, again while it keeps changing (this message holds the lease)."""
    people = rt.stores.people
    for _ in range(MAX_SYNC_ROUNDS):
        if plan.wait_seconds > 0:
            resumed = _wait_for_budget(plan, ref, level, rt)
            if resumed is None:
                return Outcome("received", "the contact update went to another message meanwhile")
            plan = resumed
        body = mapping.contact_body(plan.fields, rt.settings.promoter_contact_list_ids)
        try:
            reply = rt.promoter.upsert_contact(body)
        except UncertainError as error:
            quarantine = rt.promoter.deadline
            people.failed(plan, ref, "uncertain", seconds=quarantine, call=error.call)
            raise Quarantined(f"contact update of unknown outcome: {error}", quarantine) from None
        except PermanentError as error:
            reason = str(error)
            people.failed(plan, ref, "permanent", reason=reason, response=error.body, call=error.call)
            raise Settled(State.DEAD, f"Promoter refused the contact update: {reason}") from None
        except PromoterError as error:
            people.failed(plan, ref, "transient", call=error.call)
            raise
        contact_id = str(reply.data.get("id", ""))
        following = people.synced(plan, ref, body, contact_id, reply.call, level)
        if following is None:
            return Outcome("delivered", f"contact {contact_id or '?'} upserted")
        plan = following
    people.failed(plan, ref, "transient")
    return Outcome("delivered", f"contact upserted; still changing after {MAX_SYNC_ROUNDS} updates")


def _wait_for_budget(plan: SyncPlan, ref: str, level: str, rt: Runtime) -> SyncPlan | None:
    """Sleep briefly for a budget slot, each time taking the newest state (updates that arrived while
    this message waited ride along); a longer wait is handed back and the person's lease let go, so
    that a more urgent update of this person may go meanwhile (and carry this one)."""
    waited = 0.0
    current: SyncPlan | None = plan
    while current is not None and current.wait_seconds > 0:
        if waited + current.wait_seconds > MAX_INLINE_WAIT_SECONDS:
            rt.stores.people.failed(current, ref, "wait")
            raise Wait(current.wait_seconds, current.why)
        rt.sleep(current.wait_seconds)
        waited += current.wait_seconds
        current = rt.stores.people.resume(current, ref, level)
    return current


# --- track -------------------------------------------------------------------------------------------


def track(event: Event, start: Start, rt: Runtime) -> Outcome:
    survey, is_order = track_work(event.get("event") or "", rt.settings.survey_events)
    order = None
    if is_order:
        found = mapping.order_of(event.get("properties") or {}, event["messageId"], event["timestamp"])
        order = (found, int(version(event).split("|", 1)[0]))
    campaign = event.get("campaignId") or rt.settings.promoter_campaign_id
    if survey and campaign is None:
        raise ConfigurationError("no campaign: set PROMOTER_CAMPAIGN_ID or integrations.Promoter.campaign")
    level = priority(start, rt)
    plan = rt.stores.people.track_plan(
        event["ref"], identities(event), order, survey, int(campaign or 0), level
    )
    if plan.action != "go":
        return Outcome(plan.action)
    done = ""
    if plan.sync is not None:
        done = sync_contact(plan.sync, event["ref"], level, rt).detail
    if not survey:
        return Outcome(
            "delivered", done or (plan.coalesced_with and f"rides along with {plan.coalesced_with}")
        )
    claim = plan.survey or rt.stores.people.claim_survey(event["ref"], plan.pid, int(campaign or 0))
    return survey_person(event, start, claim, int(campaign or 0), plan.pid, rt)


def survey_person(
    event: Event, start: Start, claim: SurveyClaim, campaign: int, pid: str, rt: Runtime
) -> Outcome:
    claim = _settled_claim(event["ref"], start, claim, campaign, pid, rt)
    if claim.outcome == "held":
        return Outcome("held", "waiting for a newer identify of this person to be delivered")
    if claim.outcome == "sent":
        return Outcome("delivered", "survey already sent")
    if claim.outcome == "cooldown":
        days = max(0, int((rt.clock() - claim.surveyed_at) // 86400))
        detail = f"surveyed {days} days ago (SURVEY_COOLDOWN_DAYS={rt.settings.survey_cooldown_days})"
        rt.stores.people.settle_survey(event["ref"], "cooldown", detail, "", campaign)
        return Outcome("ineligible", detail)
    return _call_survey(event, start, claim, campaign, rt)


def _settled_claim(
    ref: str, start: Start, claim: SurveyClaim, campaign: int, pid: str, rt: Runtime
) -> SurveyClaim:
    """The claim once nobody else holds it: waits briefly for budget or another worker's call, and
    turns an unknown outcome into ``OutcomeUnknown`` when the policy is to dead-letter it."""
    waited = 0.0
    while claim.outcome in ("wait", "busy"):
        if waited + claim.wait_seconds > MAX_INLINE_WAIT_SECONDS:
            raise Wait(claim.wait_seconds, claim.why or "survey call for this message in flight elsewhere")
        rt.sleep(claim.wait_seconds)
        waited += claim.wait_seconds
        claim = rt.stores.people.claim_survey(ref, pid, campaign)
    if claim.outcome == "unknown":
        evidence: dict[str, Any] = {"attempts": start.attempts, "noticed_by": WORKER}
        if claim.started:
            evidence["call_started"] = iso(datetime.fromtimestamp(claim.started, UTC))
        raise OutcomeUnknown(claim.cause, evidence)
    return claim


def _call_survey(event: Event, start: Start, claim: SurveyClaim, campaign: int, rt: Runtime) -> Outcome:
    ref, people = event["ref"], rt.stores.people
    body = mapping.survey_body(
        campaign,
        {"email": claim.email, "first_name": claim.first_name, "last_name": claim.last_name},
        event.get("properties") or {},
        event.get("event") or "",
    )
    started = iso(datetime.fromtimestamp(rt.clock(), UTC))
    try:
        reply = rt.promoter.survey(body)
    except IneligibleError as error:
        detail = "Promoter: contact is not eligible for survey"
        people.settle_survey(ref, "ineligible", detail, claim.email, campaign, error.call)
        return Outcome("ineligible")
    except UncertainError as error:
        people.settle_survey(ref, "unknown", error.cause, claim.email, campaign, error.call)
        if rt.settings.unknown_survey_outcome == "resend":
            reason = f"survey outcome unknown ({error.cause}); sending once more"
            raise Quarantined(reason, rt.promoter.deadline) from None
        evidence = {
            "call_started": started,
            "call_seconds": round(error.call.seconds, 3),
            "attempts": start.attempts,
            "worker": WORKER,
            "error": str(error)[:300],
        }
        raise OutcomeUnknown(error.cause, evidence) from None
    except PromoterError as error:
        people.settle_survey(ref, "failed", "", claim.email, campaign, error.call)
        raise
    people.settle_survey(ref, "sent", f"survey sent (campaign {campaign})", claim.email, campaign, reply.call)
    resent = " (resent after an unknown outcome)" if claim.resend else ""
    return Outcome("delivered", f"survey sent{resent}")
