"""What delivering one message means, as plain functions over a ``Runtime``.

Tasks stay thin: they call these functions and turn the exceptions into retry decisions. The
functions decide *what* to call at Promoter and in which order; the person scripts (``people``) decide
who the contact is and make each step safe to repeat, since any of them may run again after a crash
or a redelivery. Every outcome reports the state the scripts wrote, never a guess.

- identify: the identities meet, its fields merge into the person; if the merged contact differs from
  what Promoter has, send it (or ride along with the update already in flight for this person).
- alias: previousId becomes another name of userId's person; send the merged contact if it changed.
- track: once Promoter knows the person, record an order (once per order_id) and send the order
  attributes, and/or survey the person; before that, the track is held.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from worker import mapping
from worker.events import (
    Event,
    anonymous_identity,
    iso,
    track_work,
    user_identity,
    version,
)
from worker.messages import Start
from worker.people import Decision, SurveyClaim, SyncPlan
from worker.promoter import (
    AccountError,
    IneligibleError,
    PermanentError,
    PromoterError,
    TransientError,
    UncertainError,
)
from worker.runtime import Runtime
from worker.states import Claim, Plan, Priority, State, SurveyOutcome, SyncFailure

MAX_INLINE_WAIT_SECONDS = 2.0
MAX_SYNC_ROUNDS = 5
WORKER = f"{socket.gethostname()}:{os.getpid()}"
log = logging.getLogger("relay.delivery")


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
    """The outcome is already recorded by a script (e.g. a refused contact update buried its message)."""

    def __init__(self, state: str, detail: str) -> None:
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
    """What a delivery function did: the state the scripts left the message in, and why, for the log."""

    state: str
    detail: str = ""


@dataclass(frozen=True)
class Run:
    """One run of one message: its ref, its run token (the lease holder's name) and its priority."""

    ref: str
    token: str
    priority: Priority


def run_of(event: Event, start: Start, rt: Runtime) -> Run:
    level = Priority.LOW if start.queue == rt.settings.low_queue else Priority.HIGH
    return Run(event["ref"], f"{event['ref']}#{start.run}", level)


# --- identify and alias ----------------------------------------------------------------------------


def identify(event: Event, start: Start, rt: Runtime) -> Outcome:
    only = mapping.TraitFilter(rt.settings.traits_allow, rt.settings.traits_deny)
    fields = mapping.contact_fields(event["traits"], only)
    run = run_of(event, start, rt)
    user = user_identity(str(event["userId"])) if event.get("userId") else ""
    anonymous = anonymous_identity(str(event["anonymousId"])) if event.get("anonymousId") else ""
    plan = rt.stores.people.contact_plan(
        run.ref, run.token, user, anonymous, fields or None, version(event), run.priority, start.force
    )
    return _follow(plan, run, rt)


def alias(event: Event, start: Start, rt: Runtime) -> Outcome:
    run = run_of(event, start, rt)
    plan = rt.stores.people.alias_plan(
        run.ref,
        run.token,
        str(event["userId"]),
        str(event.get("previousId") or ""),
        run.priority,
        start.force,
    )
    return _follow(plan, run, rt)


def _follow(plan: Decision, run: Run, rt: Runtime) -> Outcome:
    if plan.sync is not None:
        return sync_contact(plan.sync, run, rt)
    if plan.action is Plan.WAIT:
        raise Wait(plan.wait_seconds, plan.why)
    if plan.action is Plan.COALESCED:
        return Outcome(plan.state, f"rides along with the contact update of {plan.coalesced_with}")
    return Outcome(plan.state)


def sync_contact(plan: SyncPlan, run: Run, rt: Runtime) -> Outcome:
    """Send the person's newest contact, again while it keeps changing (this run holds the lease)."""
    people = rt.stores.people
    for _ in range(MAX_SYNC_ROUNDS):
        if plan.wait_seconds > 0:
            resumed = _wait_for_budget(plan, run, rt)
            if resumed is None:
                return Outcome(State.RECEIVED, "the contact update went to another message meanwhile")
            plan = resumed
        body = mapping.contact_body(plan.fields, rt.settings.promoter_contact_list_ids)
        try:
            reply = rt.promoter.upsert_contact(body)
        except UncertainError as error:
            people.failed(
                plan, run.ref, run.token, SyncFailure.UNCERTAIN, seconds=rt.promoter.deadline, call=error.call
            )
            reason = f"contact update of unknown outcome: {error}"
            raise Quarantined(reason, rt.promoter.deadline) from None
        except AccountError as error:
            people.failed(plan, run.ref, run.token, SyncFailure.TRANSIENT, call=error.call)
            raise
        except PermanentError as error:
            reason = str(error)
            state = people.failed(
                plan,
                run.ref,
                run.token,
                SyncFailure.PERMANENT,
                reason=reason,
                response=error.body,
                call=error.call,
            )
            raise Settled(state, f"Promoter refused the contact update: {reason}") from None
        except PromoterError as error:
            people.failed(plan, run.ref, run.token, SyncFailure.TRANSIENT, call=error.call)
            raise
        except Exception as error:
            # Not Promoter's answer: a fault of ours or of a library, maybe after the upsert landed. An
            # upsert can be repeated; like a timeout, it waits until a stalled request would have landed.
            log.exception(
                "unexpected error during a contact update", extra={"message_id": run.ref, "task_id": "-"}
            )
            people.failed(plan, run.ref, run.token, SyncFailure.UNCERTAIN, seconds=rt.promoter.deadline)
            raise Quarantined(
                f"contact update of unknown outcome: {type(error).__name__}", rt.promoter.deadline
            ) from None
        contact_id = str(reply.data.get("id", ""))
        following, state = people.synced(plan, run.ref, run.token, body, contact_id, reply.call, run.priority)
        if following is None:
            return Outcome(state, f"contact {contact_id or '?'} upserted")
        plan = following
    state = people.failed(plan, run.ref, run.token, SyncFailure.TRANSIENT)
    return Outcome(state, f"contact upserted; still changing after {MAX_SYNC_ROUNDS} updates")


def _wait_for_budget(plan: SyncPlan, run: Run, rt: Runtime) -> SyncPlan | None:
    """Sleep briefly for a budget slot, each time taking the newest state (updates that arrived while
    this message waited ride along); a longer wait is handed back and the person's lease let go, so
    that a more urgent update of this person may go meanwhile (and carry this one)."""
    waited = 0.0
    current: SyncPlan | None = plan
    while current is not None and current.wait_seconds > 0:
        if waited + current.wait_seconds > MAX_INLINE_WAIT_SECONDS:
            rt.stores.people.failed(current, run.ref, run.token, SyncFailure.WAIT)
            raise Wait(current.wait_seconds, current.why)
        rt.sleep(current.wait_seconds)
        waited += current.wait_seconds
        current = rt.stores.people.resume(current, run.ref, run.token, run.priority)
    return current


# --- track -------------------------------------------------------------------------------------------


def track(event: Event, start: Start, rt: Runtime) -> Outcome:
    survey, is_order = track_work(event.get("event") or "", rt.settings.survey_events)
    order = None
    if is_order:
        found = mapping.order_of(event.get("properties") or {}, event["messageId"], event["timestamp"])
        order = (found, version(event))
    campaign = event.get("campaignId") or rt.settings.promoter_campaign_id
    if survey and campaign is None:
        raise ConfigurationError("no campaign: set PROMOTER_CAMPAIGN_ID or integrations.Promoter.campaign")
    run = run_of(event, start, rt)
    user = user_identity(str(event["userId"])) if event.get("userId") else ""
    anonymous = anonymous_identity(str(event["anonymousId"])) if event.get("anonymousId") else ""
    plan = rt.stores.people.track_plan(
        run.ref, run.token, user, anonymous, order, survey, int(campaign or 0), run.priority
    )
    if plan.action is not Plan.GO:
        return Outcome(plan.state)
    done = ""
    if plan.sync is not None:
        done = sync_contact(plan.sync, run, rt).detail
    if not survey:
        rides = plan.coalesced_with and f"rides along with {plan.coalesced_with}"
        return Outcome(rt.stores.messages.state(run.ref) or plan.state, done or rides)
    claim = plan.survey or rt.stores.people.claim_survey(run.ref, plan.person, int(campaign or 0))
    return survey_person(event, start, claim, int(campaign or 0), plan.person, rt)


def survey_person(
    event: Event, start: Start, claim: SurveyClaim, campaign: int, person: str, rt: Runtime
) -> Outcome:
    claim = _settled_claim(event["ref"], start, claim, campaign, person, rt)
    if claim.outcome is Claim.HELD:
        return Outcome(claim.state, "waiting for a newer identify of this person to be delivered")
    if claim.outcome is Claim.SENT:
        return Outcome(rt.stores.messages.state(event["ref"]) or State.DELIVERED, "survey already sent")
    if claim.outcome is Claim.COOLDOWN:
        days = max(0, int((rt.clock() - claim.surveyed_at) // 86400))
        detail = f"surveyed {days} days ago (SURVEY_COOLDOWN_DAYS={rt.settings.survey_cooldown_days})"
        state = rt.stores.people.settle_survey(event["ref"], SurveyOutcome.COOLDOWN, detail, "", campaign)
        return Outcome(state, detail)
    return _call_survey(event, start, claim, campaign, rt)


def _settled_claim(
    ref: str, start: Start, claim: SurveyClaim, campaign: int, person: str, rt: Runtime
) -> SurveyClaim:
    """The claim once nobody else holds it: waits briefly for budget or another worker's call, and
    turns an unknown outcome into ``OutcomeUnknown`` when the policy is to dead-letter it."""
    waited = 0.0
    while claim.outcome in (Claim.WAIT, Claim.BUSY):
        if waited + claim.wait_seconds > MAX_INLINE_WAIT_SECONDS:
            raise Wait(claim.wait_seconds, claim.why or "survey call for this message in flight elsewhere")
        rt.sleep(claim.wait_seconds)
        waited += claim.wait_seconds
        claim = rt.stores.people.claim_survey(ref, person, campaign)
    if claim.outcome is Claim.UNKNOWN:
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
        state = people.settle_survey(ref, SurveyOutcome.INELIGIBLE, detail, claim.email, campaign, error.call)
        return Outcome(state, detail)
    except UncertainError as error:
        people.settle_survey(ref, SurveyOutcome.UNKNOWN, error.cause, claim.email, campaign, error.call)
        _unknown(error.cause, start, started, rt, str(error), error.call.seconds)
    except PromoterError as error:
        people.settle_survey(ref, SurveyOutcome.FAILED, "", claim.email, campaign, error.call)
        raise
    except Exception as error:
        # Not Promoter's answer: a fault of ours or of a library, after the request may have gone out.
        log.exception("unexpected error during a survey call", extra={"message_id": ref, "task_id": "-"})
        cause = f"unexpected {type(error).__name__}"
        people.settle_survey(ref, SurveyOutcome.UNKNOWN, cause, claim.email, campaign)
        _unknown(cause, start, started, rt, str(error)[:300], 0.0)
    state = people.settle_survey(
        ref, SurveyOutcome.SENT, f"survey sent (campaign {campaign})", claim.email, campaign, reply.call
    )
    resent = " (resent after an unknown outcome)" if claim.resend else ""
    return Outcome(state, f"survey sent{resent}")


def _unknown(cause: str, start: Start, started: str, rt: Runtime, error: str, seconds: float) -> NoReturn:
    """A survey call of unknown outcome: send once more (``resend`` policy) or dead-letter it."""
    if rt.settings.unknown_survey_outcome == "resend":
        raise Quarantined(f"survey outcome unknown ({cause}); sending once more", rt.promoter.deadline)
    evidence = {
        "call_started": started,
        "call_seconds": round(seconds, 3),
        "attempts": start.attempts,
        "worker": WORKER,
        "error": error,
    }
    raise OutcomeUnknown(cause, evidence)
