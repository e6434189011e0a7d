"""A scripted Promoter: the same interface as ``PromoterClient``, answers chosen by the seed.

Every call is two step boundaries for the scheduler: the request leaving the worker, and its answer
arriving. What happens in between is drawn per call: a 200 (the effect is applied), a field error,
"not eligible", 401, 429 with Retry-After, 503, a gateway's 502, a timeout before the request took
effect, or a timeout after it did (the effect may even land later than the answer: a stalled request).
It is also a small model of Promoter itself: contacts keyed by lower-cased email whose attributes merge,
and its own eligibility window per contact and campaign.

Everything it applied is recorded (``contacts``, ``surveys``), so the oracle reads Promoter's side of
the story without trusting the relay's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from worker.promoter import (
    AccountError,
    Call,
    IneligibleError,
    PermanentError,
    PromoterError,
    Reply,
    ThrottledError,
    TransientError,
    UncertainError,
)

POISON = "POISON"
OUTCOMES = (
    "ok",
    "transient",
    "gateway",
    "throttle",
    "unauthorized",
    "timeout_before",
    "timeout_after",
    "late",
    "ineligible",
    "crash_after",
)


class Switchboard(Protocol):
    """What the scripted Promoter needs from the world."""

    def boundary(self, what: str) -> None: ...

    def sleep(self, seconds: float) -> None: ...

    def now(self) -> float: ...

    def draw(self) -> float: ...

    def at(self, when: float, effect: Callable[[], None]) -> None: ...

    def note(self, line: str) -> None: ...

    def person_of_caller(self) -> str | None:
        """The person the calling worker's message belonged to at its last script call (the call's plan)."""
        ...

    def planned_at(self) -> float:
        """When the calling worker made its last script call (the plan of the call it is making)."""
        ...

    def mark(self) -> int:
        """The step of the calling worker's last script call (its survey claim, before a survey)."""
        ...


class UnexpectedClientError(RuntimeError):
    """A bug in a client library, raised after the request took effect."""


@dataclass
class Faults:
    """Chances per call of each answer but a plain 200 (the rest)."""

    chances: dict[str, float] = field(default_factory=dict)
    retry_after: tuple[float, float] = (1.0, 30.0)

    def pick(self, draw: float, survey: bool) -> str:
        for outcome in OUTCOMES[1:]:
            if outcome == "ineligible" and not survey:
                continue
            chance = self.chances.get(outcome, 0.0)
            if draw < chance:
                return outcome
            draw -= chance
        return "ok"


@dataclass
class Survey:
    at: float
    email: str
    campaign: int
    ref: str
    call: int
    claimed_at_step: int


@dataclass
class ScriptedPromoter:
    world: Switchboard
    faults: Faults
    deadline: float = 9.0
    # Promoter's own throttle: a contact surveyed for a campaign within this window is "not eligible".
    window_seconds: float = 0.0
    enabled: bool = True
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    surveys: list[Survey] = field(default_factory=list)
    calls: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    overlaps: list[str] = field(default_factory=list)
    # Every call: when it was planned (its worker's last script call, epoch seconds), endpoint, email.
    log: list[tuple[float, str, str]] = field(default_factory=list)
    lease_seconds: float = 16.0
    _in_flight: dict[str, list[float]] = field(default_factory=dict)
    _last_survey: dict[tuple[int, str], float] = field(default_factory=dict)
    _marks: dict[int, int] = field(default_factory=dict)

    # --- the client's interface ---------------------------------------------------------------

    def upsert_contact(self, body: Mapping[str, Any]) -> Reply:
        return self._call("contacts", dict(body))

    def survey(self, body: Mapping[str, Any]) -> Reply:
        return self._call("survey", dict(body))

    # --- one call -----------------------------------------------------------------------------

    def _call(self, endpoint: str, body: dict[str, Any]) -> Reply:
        self.world.boundary(f"call {endpoint}")
        self.calls += 1
        number = self.calls
        self._marks[number] = self.world.mark()
        survey = endpoint == "survey"
        email = str((body.get("contact") or {}).get("email") if survey else body.get("email")).lower()
        outcome = self.faults.pick(self.world.draw(), survey) if self.enabled else "ok"
        self.world.note(f"promoter {endpoint} #{number} {email} -> {outcome}")
        self.answers[outcome] = self.answers.get(outcome, 0) + 1
        now = self.world.now()
        planned = self.world.planned_at()
        self.log.append((planned, endpoint, email))
        person = self.world.person_of_caller() or email
        if not survey:
            # The call's lease was taken when it was planned (its worker's last script call) and outlasts
            # any call; only a worker stalled past its lease may see its call overlap another. Two
            # persons that share an email (two userIds before their alias) are two leases.
            live = [at for at in self._in_flight.get(person, []) if at > now - self.lease_seconds]
            if live:
                self.overlaps.append(f"two contact updates of {person} in flight at once (call {number})")
            self._in_flight.setdefault(person, []).append(planned)
        try:
            return self._answer(endpoint, body, email, outcome, number)
        finally:
            if not survey:
                self._in_flight[person].remove(planned)

    def _answer(self, endpoint: str, body: dict[str, Any], email: str, outcome: str, number: int) -> Reply:
        survey = endpoint == "survey"
        took = 0.05 + self.world.draw() * 0.4
        if outcome in ("timeout_before", "timeout_after", "late"):
            took = self.deadline
        result: dict[str, Any] = {}
        status = "200"
        if outcome in ("ok", "timeout_after", "crash_after"):
            status, result = self._effect(endpoint, body, email, number)
        elif outcome == "late":
            self.world.at(
                self.world.now() + took + self.world.draw() * 5,
                lambda: self._late(endpoint, body, email, number),
            )
        self.world.sleep(took)
        self.world.boundary(f"answer {endpoint}")
        call = Call(endpoint, status, took)
        error = self._error(outcome, status, result, survey)
        if error is not None:
            error.call = Call(endpoint, str(error.status or "error"), took)
            raise error
        if outcome == "crash_after":
            raise UnexpectedClientError("simulated: the client library failed after the call")
        return Reply(result, call)

    def _late(self, endpoint: str, body: dict[str, Any], email: str, number: int) -> None:
        self._effect(endpoint, body, email, number)

    def _error(self, outcome: str, status: str, result: dict[str, Any], survey: bool) -> PromoterError | None:
        if outcome in ("timeout_before", "timeout_after", "late"):
            return UncertainError("timed out (simulated)", cause="timeout")
        if status != "200":
            text = json.dumps(result)
            if "not eligible" in text:
                return IneligibleError(f"HTTP 400: {text}", 400, text)
            return PermanentError(f"HTTP {status}: {text}", int(status), text)
        if outcome == "transient":
            return TransientError("HTTP 503: simulated", 503, "")
        if outcome == "gateway":
            if survey:
                return UncertainError("HTTP 502: simulated", 502, "", cause="gateway 502")
            return TransientError("HTTP 502: simulated", 502, "")
        if outcome == "throttle":
            low, high = self.faults.retry_after
            seconds = float(int(low + self.world.draw() * (high - low)))
            return ThrottledError(f"HTTP 429: expected available in {seconds} seconds", seconds)
        if outcome == "unauthorized":
            return AccountError('HTTP 401: {"detail":"Invalid token."}', 401, '{"detail":"Invalid token."}')
        if outcome == "ineligible":
            body = '{"non_field_errors":["Contact is not eligible for survey."]}'
            return IneligibleError(f"HTTP 400: {body}", 400, body)
        return None

    def _effect(
        self, endpoint: str, body: dict[str, Any], email: str, number: int
    ) -> tuple[str, dict[str, Any]]:
        if endpoint == "contacts":
            attributes = body.get("attributes") or {}
            if any(POISON in str(value) for value in attributes.values()):
                return "400", {"attributes": ["Not a valid value."]}
            contact = self.contacts.setdefault(
                email,
                {"id": len(self.contacts) + 1, "email": body["email"], "first_name": "", "last_name": "",
                 "attributes": {}},
            )  # fmt: skip
            for name in ("first_name", "last_name"):
                if body.get(name) is not None:
                    contact[name] = body[name]
            contact["attributes"].update(attributes)
            return "200", {k: v for k, v in contact.items() if k != "attributes"}
        campaign = int(body["campaign_id"])
        last = self._last_survey.get((campaign, email))
        now = self.world.now()
        if last is not None and now - last < self.window_seconds:
            return "400", {"non_field_errors": ["Contact is not eligible for survey."]}
        self._last_survey[(campaign, email)] = now
        ref = str((body.get("attributes") or {}).get("sim_ref", "?"))
        self.surveys.append(Survey(now, email, campaign, ref, number, self._marks.get(number, 0)))
        return "200", {
            "campaign": campaign,
            "contact": body.get("contact"),
            "attributes": body.get("attributes"),
        }
