"""Who the contact is: persons, the identities that point to them, and their contact updates.

A *person* is one Redis hash that every identity of it points to: its userId, an anonymousId for
``ANONYMOUS_ID_TTL_SECONDS`` after they were last seen together, an alias's previousId. Each contact
field remembers the version (Segment timestamp, then ref) of the identify that set it, and the
newest always wins, whatever the order in which identifies arrive or are retried. What is sent to
Promoter is always the merged newest state, under a per-person lease, so two updates of one person
are never in flight at once; identifies that arrive while one is in flight ride along with the next.

All of it happens inside the Lua scripts (``lua/people.*.lua`` and the prelude): resolving, merging,
holding and releasing must be atomic, or a track could be held just after its person's release ran.
This module only carries their arguments and reads their JSON plans.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from worker import keys
from worker.mapping import Order
from worker.promoter import NO_CALL, Call
from worker.scripts import Lua, encode


@dataclass(frozen=True)
class SyncPlan:
    """Send the person's desired contact at revision ``rev`` (this message holds the lease)."""

    pid: str
    rev: int
    fingerprint: str
    fields: dict[str, str]
    wait_seconds: float
    why: str


@dataclass(frozen=True)
class SurveyClaim:
    """``go`` (call now; ``resend`` after an unknown outcome), ``sent``, ``unknown``, ``busy``
    (another worker is calling), ``wait`` (no budget yet), ``cooldown`` (surveyed recently) or
    ``held`` (an identify that may change the contact is on its way: the message waits for it)."""

    outcome: str
    email: str = ""
    first_name: str = ""
    last_name: str = ""
    resend: bool = False
    wait_seconds: float = 0.0
    why: str = ""
    cause: str = ""
    surveyed_at: float = 0.0
    started: float = 0.0


@dataclass(frozen=True)
class Plan:
    """What a contact or track plan decided: ``sync`` (call now), ``coalesced`` (another message's
    call will carry it), ``held``, ``done``, ``dead``, ``final`` (nothing to do), or ``go`` (a track
    with its parts: a contact update and/or a survey)."""

    action: str
    pid: str = ""
    sync: SyncPlan | None = None
    coalesced_with: str = ""
    survey: SurveyClaim | None = None


def _pairs(flat: Any) -> dict[str, str]:
    # cjson writes an empty Lua table as {}: no fields.
    if not isinstance(flat, list):
        return {}
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _sync(data: dict[str, Any]) -> SyncPlan:
    return SyncPlan(
        pid=str(data["pid"]),
        rev=int(data["rev"]),
        fingerprint=data["fp"],
        fields=_pairs(data.get("fields")),
        wait_seconds=float(data.get("wait_ms") or 0) / 1000,
        why=data.get("why") or "",
    )


def _claim(data: dict[str, Any]) -> SurveyClaim:
    return SurveyClaim(
        outcome=data["survey"],
        email=data.get("email") or "",
        first_name=data.get("first_name") or "",
        last_name=data.get("last_name") or "",
        resend=bool(data.get("resend")),
        wait_seconds=float(data.get("wait_ms") or 0) / 1000,
        why=data.get("why") or "",
        cause=data.get("cause") or "",
        surveyed_at=float(data.get("at") or 0),
        started=float(data.get("started") or 0),
    )


def _plan(raw: str) -> Plan:
    data = json.loads(raw)
    action = data["action"]
    if action == "sync":
        return Plan("sync", pid=str(data["pid"]), sync=_sync(data))
    if action == "coalesced":
        return Plan("coalesced", coalesced_with=data.get("holder", ""))
    if action != "go":
        return Plan(action)
    sync = data.get("sync") or {}
    return Plan(
        "go",
        pid=str(data["pid"]),
        sync=_sync(sync) if sync.get("action") == "sync" else None,
        coalesced_with=sync.get("holder", "") if sync.get("action") == "coalesced" else "",
        survey=_claim(data["survey"]) if data.get("survey") else None,
    )


class People:
    def __init__(self, client: redis.Redis, *, lua: Lua, lease_seconds: float) -> None:
        self.client = client
        self.lua = lua
        self.lease_seconds = lease_seconds

    def contact_plan(
        self,
        ref: str,
        identities: Sequence[str],
        fields: dict[str, str] | None,
        version: str,
        priority: str,
        force: bool = False,
    ) -> Plan:
        """Merge an identify's fields (``None`` for an alias: link only) and plan its contact update."""
        raw = self.lua.contact(
            ref,
            encode(list(identities)),
            "" if fields is None else encode(fields),
            version,
            priority,
            self.lease_seconds,
            "1" if force else "",
        )
        return _plan(raw)

    def track_plan(
        self,
        ref: str,
        identities: Sequence[str],
        order: tuple[Order, int] | None,
        survey: bool,
        campaign: int,
        priority: str,
    ) -> Plan:
        raw = self.lua.track(
            ref,
            encode(list(identities)),
            encode(order[0].as_json(order[1])) if order else "",
            "1" if survey else "",
            campaign,
            priority,
            self.lease_seconds,
            self.lease_seconds,
        )
        return _plan(raw)

    def synced(
        self, plan: SyncPlan, holder: str, body: dict[str, Any], contact_id: str, call: Call, priority: str
    ) -> SyncPlan | None:
        """Promoter took ``body``: settle what it carried; another plan when the person changed since."""
        raw = self.lua.synced(
            plan.pid,
            holder,
            plan.rev,
            plan.fingerprint,
            body["email"],
            body.get("first_name", ""),
            body.get("last_name", ""),
            contact_id,
            priority,
            self.lease_seconds,
            *call.args(),
        )
        data = json.loads(raw)
        return _sync(data) if data["action"] == "sync" else None

    def failed(
        self,
        plan: SyncPlan,
        holder: str,
        how: str,
        *,
        reason: str = "",
        response: str = "",
        seconds: float = 0.0,
        call: Call | None = None,
    ) -> None:
        """``transient``, ``uncertain`` (quarantine ``seconds``), ``wait`` (no call made; the lease is
        let go) or ``permanent`` (the messages it carried, and a never-known person's holds, die)."""
        self.lua.failed(plan.pid, holder, plan.rev, how, reason, response, seconds, *(call or NO_CALL).args())

    def resume(self, plan: SyncPlan, holder: str, priority: str) -> SyncPlan | None:
        """After a wait for budget: the newest state to send (None if the lease went to another)."""
        data = json.loads(self.lua.resume(plan.pid, holder, priority, self.lease_seconds))
        return _sync(data) if data["action"] == "sync" else None

    def claim_survey(self, ref: str, pid: str, campaign: int) -> SurveyClaim:
        return _claim(json.loads(self.lua.claim_survey(ref, pid, campaign, self.lease_seconds)))

    def settle_survey(
        self, ref: str, outcome: str, detail: str, email: str, campaign: int, call: Call | None = None
    ) -> None:
        self.lua.settle_survey(ref, outcome, detail, email, campaign, *(call or NO_CALL).args())

    def user_of_email(self, email: str) -> str | None:
        """The userId of the person whose contact Promoter has under ``email`` now, if the relay knows one.

        The index (written when Promoter accepts a contact) may be stale: the person may have merged
        into another since, or changed email, so the person's own ``s:email`` has the last word.
        """
        pid = cast(str | None, self.client.get(keys.email(keys.email_digest(email))))
        record: dict[str, str] = {}
        for _ in range(8):
            if not pid:
                return None
            record = cast(dict[str, str], self.client.hgetall(keys.person(pid)))
            if "merged_into" not in record:
                break
            pid = record["merged_into"]
        if record.get("s:email", "").encode().lower() != email.encode().lower():
            return None
        users = sorted(
            i[2:]
            for i in cast(set[str], self.client.smembers(keys.person_ids(str(pid))))
            if i.startswith("u:")
        )
        return users[0] if users else None

    def person_of(self, identity: str) -> dict[str, Any] | None:
        """A person as the admin API shows it: contact as merged, as Promoter has it, orders."""
        pid = cast(str | None, self.client.get(keys.identity(identity)))
        for _ in range(8):
            if not pid:
                return None
            record = cast(dict[str, str], self.client.hgetall(keys.person(pid)))
            if "merged_into" not in record:
                break
            pid = record["merged_into"]
        pid = str(pid)
        pipe = self.client.pipeline(transaction=False)
        pipe.smembers(keys.person_ids(pid))
        pipe.hgetall(keys.person_orders(pid))
        pipe.zrange(keys.person_waiting(pid), 0, -1)
        ids, orders, waiting = pipe.execute()
        fields = {name[2:]: value for name, value in record.items() if name.startswith("f:")}
        return {
            "person": pid,
            "identities": sorted(ids),
            "contact": fields,
            "order_attributes": {n[2:]: v for n, v in record.items() if n.startswith("o:")},
            "at_promoter": {n[2:]: v for n, v in record.items() if n.startswith("s:")},
            "contact_id": record.get("contact_id") or None,
            "known_to_promoter": bool(record.get("s:email")),
            "refused": record.get("refused") or None,
            "orders": len(orders),
            "waiting_for_update": list(waiting),
        }
