"""Who the contact is: persons, the identities that reach them, their contact updates and surveys.

The rules (docs/delivery.md, "Who is one person") live in the Lua scripts (``lua/people.*.lua`` and
``lua/lib/persons.lua``): resolving, merging, holding and releasing must be atomic, or a track could
be held just after its person's release ran. This module carries their arguments, reads their JSON
answers into typed decisions, and shows a person to the admin API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import redis

from worker import keys
from worker.events import USER_PREFIX, user_identity
from worker.mapping import Order
from worker.promoter import NO_CALL, Call
from worker.scripts import Scripts, encode
from worker.states import Claim, Plan, SurveyOutcome, SyncFailure


@dataclass(frozen=True)
class SyncPlan:
    """Send the person's desired contact at revision ``rev`` (this message's run holds the lease)."""

    person: str
    rev: int
    fingerprint: str
    fields: dict[str, str]
    wait_seconds: float
    why: str


@dataclass(frozen=True)
class SurveyClaim:
    """What a survey claim answered (``Claim``), with the contact to survey when it is ``GO``."""

    outcome: Claim
    email: str = ""
    first_name: str = ""
    last_name: str = ""
    resend: bool = False
    wait_seconds: float = 0.0
    why: str = ""
    cause: str = ""
    surveyed_at: float = 0.0
    started: float = 0.0
    state: str = ""


@dataclass(frozen=True)
class Decision:
    """What a contact, alias or track script decided (``Plan``), and the state it left the message in."""

    action: Plan
    state: str = ""
    person: str = ""
    sync: SyncPlan | None = None
    coalesced_with: str = ""
    survey: SurveyClaim | None = None
    wait_seconds: float = 0.0
    why: str = ""


def _pairs(flat: Any) -> dict[str, str]:
    # cjson writes an empty Lua table as {}: no fields.
    if not isinstance(flat, list):
        return {}
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _sync(data: dict[str, Any]) -> SyncPlan:
    return SyncPlan(
        person=str(data["person"]),
        rev=int(data["rev"]),
        fingerprint=data["fp"],
        fields=_pairs(data.get("fields")),
        wait_seconds=float(data.get("wait_ms") or 0) / 1000,
        why=data.get("why") or "",
    )


def _claim(data: dict[str, Any]) -> SurveyClaim:
    return SurveyClaim(
        outcome=Claim(data["survey"]),
        email=data.get("email") or "",
        first_name=data.get("first_name") or "",
        last_name=data.get("last_name") or "",
        resend=bool(data.get("resend")),
        wait_seconds=float(data.get("wait_ms") or 0) / 1000,
        why=data.get("why") or "",
        cause=data.get("cause") or "",
        surveyed_at=float(data.get("at") or 0),
        started=float(data.get("started") or 0),
        state=data.get("state") or "",
    )


def decision(raw: str) -> Decision:
    data = json.loads(raw)
    action = Plan(data["action"])
    state = data.get("state") or ""
    wait = float(data.get("wait_ms") or 0) / 1000
    if action is Plan.SYNC:
        return Decision(action, state, str(data["person"]), sync=_sync(data))
    if action is Plan.COALESCED:
        return Decision(action, state, coalesced_with=data.get("holder", ""))
    if action is not Plan.GO:
        return Decision(action, state, wait_seconds=wait, why=data.get("why") or "")
    sync = data.get("sync") or {}
    return Decision(
        action,
        state,
        str(data["person"]),
        sync=_sync(sync) if sync.get("action") == Plan.SYNC else None,
        coalesced_with=sync.get("holder", "") if sync.get("action") == Plan.COALESCED else "",
        survey=_claim(data["survey"]) if data.get("survey") else None,
    )


class People:
    def __init__(self, client: redis.Redis, *, scripts: Scripts, lease_seconds: float) -> None:
        self.client = client
        self.lease_seconds = lease_seconds
        self._contact = scripts("contact")
        self._alias = scripts("alias")
        self._track = scripts("track")
        self._synced = scripts("synced")
        self._failed = scripts("failed")
        self._resume = scripts("resume")
        self._claim = scripts("claim_survey")
        self._settle = scripts("settle_survey")
        self._show = scripts("show")

    def contact_plan(
        self,
        ref: str,
        token: str,
        user: str,
        anonymous: str,
        fields: dict[str, str] | None,
        version: str,
        priority: str,
        force: bool = False,
    ) -> Decision:
        """An identify (its identities as ``u:``/``a:`` or "", its fields or None when it has no traits)
        reaches its person, merges newest-wins and plans the contact update."""
        raw = self._contact(
            ref, token, user, anonymous, "" if fields is None else encode(fields), version, priority,
            self.lease_seconds, "1" if force else "",
        )  # fmt: skip
        return decision(raw)

    def alias_plan(
        self, ref: str, token: str, user_id: str, previous_id: str, priority: str, force: bool = False
    ) -> Decision:
        raw = self._alias(
            ref,
            token,
            user_identity(user_id),
            previous_id,
            priority,
            self.lease_seconds,
            "1" if force else "",
        )
        return decision(raw)

    def track_plan(
        self,
        ref: str,
        token: str,
        user: str,
        anonymous: str,
        order: tuple[Order, str] | None,
        survey: bool,
        campaign: int,
        priority: str,
    ) -> Decision:
        raw = self._track(
            ref, token, user, anonymous, encode(order[0].as_json(order[1])) if order else "",
            "1" if survey else "", campaign, priority, self.lease_seconds, self.lease_seconds,
        )  # fmt: skip
        return decision(raw)

    def synced(
        self,
        plan: SyncPlan,
        holder: str,
        token: str,
        body: dict[str, Any],
        contact_id: str,
        call: Call,
        priority: str,
    ) -> tuple[SyncPlan | None, str]:
        """Promoter took ``body``: settle what it carried. Another plan when the person changed since,
        and the holder's state."""
        raw = self._synced(
            plan.person, holder, token, plan.rev, plan.fingerprint, body["email"],
            body.get("first_name", ""), body.get("last_name", ""), contact_id, priority,
            self.lease_seconds, *call.args(),
        )  # fmt: skip
        data = json.loads(raw)
        return (_sync(data) if data["action"] == Plan.SYNC else None), data.get("state") or ""

    def failed(
        self,
        plan: SyncPlan,
        holder: str,
        token: str,
        how: SyncFailure,
        *,
        reason: str = "",
        response: str = "",
        seconds: float = 0.0,
        call: Call | None = None,
    ) -> str:
        """Record a failed (or not made) contact update; returns the holder's state (see the script)."""
        state: str = self._failed(
            plan.person, holder, token, plan.rev, how.value, reason, response, seconds,
            *(call or NO_CALL).args(),
        )  # fmt: skip
        return state

    def resume(self, plan: SyncPlan, holder: str, token: str, priority: str) -> SyncPlan | None:
        """After a wait for budget: the newest state to send (None if the lease went to another)."""
        data = json.loads(self._resume(plan.person, holder, token, priority, self.lease_seconds))
        return _sync(data) if data["action"] == Plan.SYNC else None

    def claim_survey(self, ref: str, person: str, campaign: int) -> SurveyClaim:
        return _claim(json.loads(self._claim(ref, person, campaign, self.lease_seconds)))

    def settle_survey(
        self,
        ref: str,
        outcome: SurveyOutcome | str,
        detail: str,
        email: str,
        campaign: int,
        call: Call | None = None,
    ) -> str:
        state: str = self._settle(
            ref, SurveyOutcome(outcome).value, detail, email, campaign, *(call or NO_CALL).args()
        )
        return state

    def user_of_email(self, email: str) -> str | None:
        """The userId of the person whose contact Promoter has under ``email`` now, if the relay knows one.

        The index (written when Promoter accepts a contact) may be stale: the person may have merged
        into another since, or changed email, so the person's own record has the last word.
        """
        bucket, field = keys.email_slot(email)
        entry = cast(str | None, self.client.hget(bucket, field))
        # Schema 2's key per email, until it expires (it is no longer written).
        person = (
            entry.rsplit(" ", 1)[0]
            if entry
            else cast(str | None, self.client.get(keys.email(keys.email_digest(email))))
        )
        view = self.person_of(person) if person else None
        if view is None or not view["at_promoter"]:
            return None
        if view["at_promoter"]["email"].encode().lower() != email.encode().lower():
            return None
        ref: str = view["person"]
        return ref[len(USER_PREFIX) :] if ref.startswith(USER_PREFIX) else None

    def person_of(self, identity: str) -> dict[str, Any] | None:
        """A person as the admin API shows it: the contact as merged, as Promoter has it, its orders.
        The scripts resolve the identity, so the view follows exactly the rules delivery follows."""
        raw = self._show(identity)
        if not raw:
            return None
        data = json.loads(raw)
        desired = _pairs(data["desired"])
        orders: dict[str, Any] = {name[2:]: value for name, value in desired.items() if name.startswith("o:")}
        if "order_count" in orders:
            orders["order_count"] = int(orders["order_count"])
        contact = data["contact"] if isinstance(data["contact"], dict) else {}
        at_promoter = data["at_promoter"] if data["at_promoter"]["email"] else {}
        return {
            "person": data["person"],
            "identities": sorted(data["identities"]),
            "contact": {
                name[2:] if name.startswith("a:") else name: value for name, value in contact.items()
            },
            "order_attributes": orders,
            "at_promoter": at_promoter,
            "contact_id": data["contact_id"] or None,
            "known_to_promoter": bool(at_promoter),
            "refused": data["refused"] or None,
            "orders": data["orders"],
            "waiting_for_update": data["waiting"] if isinstance(data["waiting"], list) else [],
        }
