"""A local fake of the Promoter.io API: as strict as the real one, controllable, and observable.

Tests, benchmarks and `promoter-relay dev` need a Promoter that can be made slow, down, throttled or picky
on demand, and that remembers what it was sent, so delivery can be asserted from outside the relay (even from
another process, through the `/_sandbox/` control routes). Answers follow the DRF shapes described in
DESIGN.md so the relay's error classification is exercised against what it will meet in production.

Both API routes answer 200, for a new contact as for an updated one: the relay must not depend on 201.
"""

from __future__ import annotations

import hmac
import json
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, NamedTuple, Self, TypeGuard
from urllib.parse import urlencode

import flask
import requests
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

JSON = dict[str, Any]
CONTROL_PREFIX = "/_sandbox"

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_EMAIL_RE = re.compile(
    rf"{_ATEXT}(?:\.{_ATEXT})*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?\.)+[A-Za-z]{{2,63}}"
)
_ATTRIBUTE_NAME_RE = re.compile(r"[A-Za-z0-9_ ]+")
_INELIGIBLE = {"non_field_errors": ["Contact is not eligible for survey."]}
CAMPAIGN_PAGE = 10
FEEDBACK_PAGE = 100
# Roughly what NPS surveys get: many 8-10s, a tail of detractors.
_SCORE_WEIGHTS = (2, 1, 1, 2, 2, 4, 5, 9, 14, 16, 14)
_COMMENTS = {
    "promoter": ("Love it, keep going!", "Support answered in minutes.", ""),
    "passive": ("Good, but the reports are slow.", "Does the job.", ""),
    "detractor": ("Too expensive for what it does.", "The export keeps failing.", ""),
}


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _not_a_dict(value: Any) -> list[str]:
    return [f"Invalid data. Expected a dictionary, but got {type(value).__name__}."]


def _items(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, list | tuple | set | frozenset) and all(check(v) for v in value)


# Config field -> (what a valid value is, validity check, normaliser). Shared by the constructor and the
# control route so a Python-side and an HTTP-side configuration cannot drift apart.
_CONFIG: dict[str, tuple[str, Callable[[Any], bool], Callable[[Any], Any]]] = {
    "api_key": ("a non-empty string", lambda v: isinstance(v, str) and v != "", str),
    "latency_ms": ("a number >= 0", _is_number, float),
    "failure_rate": ("a number from 0 to 1", lambda v: _is_number(v) and v <= 1, float),
    "timeout_rate": ("a number from 0 to 1", lambda v: _is_number(v) and v <= 1, float),
    "timeout_seconds": ("a number >= 0", _is_number, float),
    "down": ("true or false", lambda v: isinstance(v, bool), bool),
    "ineligible_emails": (
        "a list of strings",
        _items(lambda v: isinstance(v, str)),
        lambda v: {e.lower() for e in v},
    ),
    "campaigns": (
        "null or a list of integers",
        lambda v: v is None or _items(_is_int)(v),
        lambda v: None if v is None else set(v),
    ),
    "seed": ("null or an integer", lambda v: v is None or _is_int(v), lambda v: v),
    "fail_next": ("a list of HTTP status codes", _items(lambda v: _is_int(v) and 100 <= v <= 599), list),
    "throttle_next": ("an integer >= 0", lambda v: _is_int(v) and v >= 0, int),
    "retry_after": ("an integer >= 0", lambda v: _is_int(v) and v >= 0, int),
    "delay_next": ("a list of numbers >= 0", _items(_is_number), lambda v: [float(x) for x in v]),
    "survey_cooldown_seconds": ("a number >= 0", _is_number, float),
    "feedback_rate": ("a number from 0 to 1", lambda v: _is_number(v) and v <= 1, float),
    "feedback_page_size": ("an integer >= 1", lambda v: _is_int(v) and v >= 1, int),
}


def _normalise(name: str, value: Any) -> Any:
    if name not in _CONFIG:
        raise ValueError(f"unknown config field {name!r}; known: {', '.join(sorted(_CONFIG))}")
    expected, valid, convert = _CONFIG[name]
    if not valid(value):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return convert(value)


class _Plan(NamedTuple):
    record: JSON
    sleep: float
    failure: int | None
    retry_after: int


@dataclass
class SandboxState:
    """Configuration, recorded calls and contacts of one sandbox, shared by request threads under one lock.

    Every random draw comes from one seeded generator, two per call, so a seeded run fails the same calls
    whatever the rates are changed to. `seq` and contact ids are never reused, even across `reset()`, so a
    stale id held by the relay cannot silently match a different contact.

    With a `state_file`, what Promoter itself would remember (contacts, the next contact id, who was
    surveyed when) is kept there across restarts, as the relay remembers its contacts across restarts of
    `promoter-relay dev`; it is rewritten whole after each change (a dev tool's few thousand contacts).
    The call log is not kept: it describes one run.
    """

    api_key: str = field(default="sandbox-key", repr=False)
    latency_ms: float = 0
    failure_rate: float = 0
    timeout_rate: float = 0
    timeout_seconds: float = 2.0
    down: bool = False
    ineligible_emails: set[str] = field(default_factory=set)
    campaigns: set[int] | None = None
    seed: int | None = None
    fail_next: list[int] = field(default_factory=list)
    throttle_next: int = 0
    retry_after: int = 1
    delay_next: list[float] = field(default_factory=list)
    # Promoter's own throttle: a contact surveyed for a campaign within this window is "not eligible".
    survey_cooldown_seconds: float = 0
    state_file: Path | None = None
    # NPS responses: the share of surveyed contacts who answer at once, and /feedback/'s page size.
    feedback_rate: float = 1.0
    feedback_page_size: int = FEEDBACK_PAGE
    _surveyed: dict[tuple[int, str], float] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _random: random.Random = field(init=False, repr=False, compare=False)
    _calls: list[JSON] = field(default_factory=list, init=False, repr=False)
    _contacts: dict[str, JSON] = field(default_factory=dict, init=False, repr=False)
    _seq: int = field(default=0, init=False, repr=False)
    _next_id: int = field(default=1, init=False, repr=False)
    _feedback: dict[int, JSON] = field(default_factory=dict, init=False, repr=False)
    _next_feedback_id: int = field(default=1, init=False, repr=False)
    # Apart from ``_random``, so answering surveys does not shift which calls a seeded run fails.
    _answers: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in _CONFIG:
            setattr(self, name, _normalise(name, getattr(self, name)))
        self._random = random.Random(self.seed)
        self._answers = random.Random(self.seed)
        if self.state_file is not None and self.state_file.exists():
            kept = json.loads(self.state_file.read_text())
            self._contacts = {c["email"].lower(): c for c in kept["contacts"]}
            self._next_id = int(kept["next_id"])
            self._surveyed = {(int(c), e): float(at) for c, e, at in kept["surveyed"]}
            self._feedback = {int(f["id"]): f for f in kept.get("feedback", [])}
            self._next_feedback_id = int(kept.get("next_feedback_id", 1))

    def _save(self) -> None:
        """Called with the lock held. Written aside, then renamed: a crash never leaves half a file."""
        if self.state_file is None:
            return
        kept = {
            "contacts": list(self._contacts.values()),
            "next_id": self._next_id,
            "surveyed": [[c, e, at] for (c, e), at in self._surveyed.items()],
            "feedback": list(self._feedback.values()),
            "next_feedback_id": self._next_feedback_id,
        }
        partial = self.state_file.with_suffix(".partial")
        partial.write_text(json.dumps(kept))
        partial.replace(self.state_file)

    def configure(self, fields: Mapping[str, Any]) -> JSON:
        """Validate everything before changing anything, so a bad request leaves the config as it was."""
        normalised = {name: _normalise(name, value) for name, value in fields.items()}
        with self._lock:
            for name, value in normalised.items():
                setattr(self, name, value)
            if "seed" in normalised:
                self._random = random.Random(self.seed)
                self._answers = random.Random(self.seed)
        return self.config()

    def config(self) -> JSON:
        """Leaves out api_key: the control routes are unauthenticated and their output ends up in logs."""
        with self._lock:
            values = {name: getattr(self, name) for name in _CONFIG if name != "api_key"}
        return {
            k: sorted(v) if isinstance(v, set) else list(v) if isinstance(v, list) else v
            for k, v in values.items()
        }

    def begin_call(self, method: str, path: str, body: Any) -> _Plan:
        """Records the call and decides its fate in one locked step, so one-shot queues fire exactly once."""
        with self._lock:
            self._seq += 1
            record: JSON = {"seq": self._seq, "at": time.time(), "method": method, "path": path}
            record |= {"json": body, "status": None}
            self._calls.append(record)
            timeout_draw, failure_draw = self._random.random(), self._random.random()
            sleep = (self.delay_next.pop(0) if self.delay_next else 0.0) + self.latency_ms / 1000
            sleep += self.timeout_seconds if timeout_draw < self.timeout_rate else 0.0
            failure: int | None = None
            if self.fail_next:
                failure = self.fail_next.pop(0)
            elif self.throttle_next > 0:
                self.throttle_next -= 1
                failure = 429
            elif self.down or failure_draw < self.failure_rate:
                failure = 503
            return _Plan(record, sleep, failure, self.retry_after)

    def finish_call(self, record: JSON, status: int) -> None:
        with self._lock:
            record["status"] = status

    def calls(self, path: str | None = None) -> list[JSON]:
        """Calls still being answered (sleeping) are listed with status None."""
        with self._lock:
            return [dict(c) for c in self._calls if path is None or c["path"] == path]

    def contacts(self) -> list[JSON]:
        with self._lock:
            return [{**c, "attributes": dict(c["attributes"])} for c in self._contacts.values()]

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()
            self._contacts.clear()
            self._surveyed.clear()
            self._feedback.clear()
            self._save()

    def is_ineligible(self, email: str) -> bool:
        with self._lock:
            return email.lower() in self.ineligible_emails

    def take_survey_slot(self, campaign: int, email: str) -> bool:
        """False while the contact is within the cooldown of an earlier survey of this campaign."""
        key, now = (campaign, email.lower()), time.time()
        with self._lock:
            last = self._surveyed.get(key)
            if last is not None and now - last < self.survey_cooldown_seconds:
                return False
            self._surveyed[key] = now
            self._save()
            return True

    def upsert(self, data: Mapping[str, Any]) -> JSON:
        """Contacts are keyed by lower-cased email, like Promoter; the first spelling seen is kept."""
        with self._lock:
            contact = self._contacts.get(data["email"].lower())
            if contact is None:
                created = datetime.now(UTC).isoformat().replace("+00:00", "Z")
                contact = {"id": self._next_id, "email": data["email"], "first_name": "", "last_name": ""}
                contact |= {"created_date": created, "attributes": {}, "contact_list": []}
                self._contacts[data["email"].lower()] = contact
                self._next_id += 1
            for name in ("first_name", "last_name"):
                if data.get(name) is not None:
                    contact[name] = data[name]
            contact["attributes"].update(data.get("attributes") or {})
            contact["contact_list"] = sorted({*contact["contact_list"], *(data.get("contact_list") or [])})
            self._save()
            return {k: dict(v) if k == "attributes" else v for k, v in contact.items() if k != "contact_list"}

    def remove(self, email: str) -> bool:
        """``POST /contacts/remove/``: the contact goes (with its survey history); False when unknown."""
        with self._lock:
            removed = self._contacts.pop(email.lower(), None) is not None
            self._surveyed = {key: at for key, at in self._surveyed.items() if key[1] != email.lower()}
            self._save()
            return removed

    def answer_survey(self, campaign: int, contact: Mapping[str, Any]) -> JSON | None:
        """A surveyed contact answers at once (with ``feedback_rate``), a score drawn from the seed."""
        with self._lock:
            if self._answers.random() >= self.feedback_rate:
                return None
            score = self._answers.choices(range(11), weights=_SCORE_WEIGHTS)[0]
            comment = self._answers.choice(_COMMENTS[_score_type(score)])
        return self.add_feedback(campaign, contact, score, comment)

    def add_feedback(
        self, campaign: int, contact: Mapping[str, Any], score: int, comment: str, posted: str | None = None
    ) -> JSON:
        with self._lock:
            feedback_id = self._next_feedback_id
            self._next_feedback_id += 1
            record: JSON = {"id": feedback_id, "campaign": campaign, "score": score, "comment": comment}
            record["contact"] = {k: contact.get(k, "") for k in ("id", "email", "first_name", "last_name")}
            record["posted_date"] = posted or _now_iso()
            self._feedback[feedback_id] = record
            self._save()
            return _public_feedback(record)

    def edit_feedback(self, feedback_id: int, changes: Mapping[str, Any]) -> JSON | None:
        """What a respondent does when they come back to change their comment or score."""
        with self._lock:
            record = self._feedback.get(feedback_id)
            if record is None:
                return None
            record.update({k: changes[k] for k in ("score", "comment") if k in changes})
            self._save()
            return _public_feedback(record)

    def feedback_list(
        self, since: datetime | None, until: datetime | None, campaign: int | None
    ) -> list[JSON]:
        """Newest first, as a DRF list ordered by ``-posted_date``."""
        with self._lock:
            records = [dict(r) for r in self._feedback.values()]
        chosen = [
            r
            for r in records
            if (campaign is None or r["campaign"] == campaign)
            and (since is None or _parse_moment(r["posted_date"]) >= since)
            and (until is None or _parse_moment(r["posted_date"]) <= until)
        ]
        chosen.sort(key=lambda r: (_parse_moment(r["posted_date"]), r["id"]), reverse=True)
        return [_public_feedback(r) for r in chosen]


def _score_type(score: int) -> str:
    return "promoter" if score >= 9 else "passive" if score >= 7 else "detractor"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_moment(text: str, end_of_day: bool = False) -> datetime:
    """A date (the whole day when ``end_of_day``) or an ISO datetime, as django-filter reads them."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if len(text.strip()) == 10 and end_of_day:
        moment = moment.replace(hour=23, minute=59, second=59, microsecond=999999)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _public_feedback(record: JSON) -> JSON:
    """A feedback as Promoter lists it: no campaign in it (``survey__campaign`` filters by it)."""
    return {
        "id": record["id"],
        "href": f"/api/feedback/{record['id']}/",
        "contact": dict(record["contact"]),
        "score": record["score"],
        "score_type": _score_type(record["score"]),
        "comment": record["comment"],
        "posted_date": record["posted_date"],
    }


class _Rejected(Exception):
    def __init__(self, status: int, payload: JSON, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, payload)
        self.status, self.payload, self.headers = status, payload, dict(headers or {})


def _response(status: int, payload: JSON, headers: Mapping[str, str] | None = None) -> flask.Response:
    response = flask.jsonify(payload)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _failure(status: int, retry_after: int) -> flask.Response:
    if status == 429:
        detail = f"Request was throttled. Expected available in {float(retry_after)} seconds."
        return _response(429, {"detail": detail}, {"Retry-After": str(retry_after)})
    if status == 503:
        return _response(503, {"detail": "Service unavailable"})
    try:
        return _response(status, {"detail": HTTPStatus(status).phrase})
    except ValueError:
        return _response(status, {"detail": "Error"})


def _authenticate(header: str | None, api_key: str) -> flask.Response | None:
    """Any scheme other than `Token` counts as a wrong token: the relay never sends another one."""
    challenge = {"WWW-Authenticate": "Token"}
    if not header:
        return _response(401, {"detail": "Authentication credentials were not provided."}, challenge)
    scheme, _, token = header.partition(" ")
    if scheme != "Token" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        return _response(401, {"detail": "Invalid token."}, challenge)
    return None


def _parse(raw: bytes) -> tuple[Any, str | None]:
    if not raw.strip():
        return None, None
    try:
        return json.loads(raw), None
    except ValueError as exc:
        return None, f"JSON parse error - {exc}"


def _body() -> JSON:
    """An empty body reads as `{}`, as in DRF, so it yields field errors rather than a parse error."""
    if flask.g.parse_error is not None:
        raise _Rejected(400, {"detail": flask.g.parse_error})
    body = {} if flask.g.body is None else flask.g.body
    if not isinstance(body, dict):
        raise _Rejected(400, {"non_field_errors": _not_a_dict(body)})
    return body


def _attribute_errors(attributes: Any) -> list[str]:
    if attributes is None:
        return []
    if not isinstance(attributes, dict):
        return [f'Expected a dictionary of items but got type "{type(attributes).__name__}".']
    errors = []
    for name, value in attributes.items():
        if not _ATTRIBUTE_NAME_RE.fullmatch(name):
            errors.append(f"Attribute name {name!r} may only contain letters, digits, underscore and space.")
        if not isinstance(value, str):
            errors.append(f"Attribute {name!r} must be a string.")
    return errors


def _contact_errors(data: JSON) -> JSON:
    errors: JSON = {}
    email = data.get("email")
    if email is None or email == "":
        errors["email"] = ["This field is required."]
    elif not isinstance(email, str) or len(email) > 254 or not _EMAIL_RE.fullmatch(email):
        errors["email"] = ["Enter a valid email address."]
    for name in ("first_name", "last_name"):
        if data.get(name) is not None and not isinstance(data[name], str):
            errors[name] = ["Not a valid string."]
    if data.get("contact_list") is not None and not _items(_is_int)(data["contact_list"]):
        errors["contact_list"] = ["A valid list of integers is required."]
    if attribute_errors := _attribute_errors(data.get("attributes")):
        errors["attributes"] = attribute_errors
    return errors


def _survey_errors(body: JSON, campaigns: set[int] | None) -> JSON:
    errors: JSON = {}
    campaign, contact = body.get("campaign_id"), body.get("contact")
    if not _is_int(campaign):
        errors["campaign_id"] = ["A valid integer is required."]
    elif campaign <= 0 or (campaigns is not None and campaign not in campaigns):
        errors["campaign_id"] = [f'Invalid pk "{campaign}" - object does not exist.']
    if contact is None:
        errors["contact"] = ["This field is required."]
    elif not isinstance(contact, dict):
        errors["contact"] = {"non_field_errors": _not_a_dict(contact)}
    elif contact_errors := _contact_errors(contact):
        errors["contact"] = contact_errors
    if attribute_errors := _attribute_errors(body.get("attributes")):
        errors["attributes"] = attribute_errors
    return errors


def _campaign_page(ids: list[int], page: str, base: str) -> JSON:
    if not page.isdigit() or int(page) < 1 or (int(page) - 1) * CAMPAIGN_PAGE >= max(len(ids), 1):
        raise _Rejected(404, {"detail": "Invalid page."})
    number = int(page)
    chunk = ids[(number - 1) * CAMPAIGN_PAGE : number * CAMPAIGN_PAGE]
    more = number * CAMPAIGN_PAGE < len(ids)
    return {
        "count": len(ids),
        "next": f"{base}?page={number + 1}" if more else None,
        "previous": f"{base}?page={number - 1}" if number > 1 else None,
        "results": [{"id": i, "name": f"Sandbox campaign {i}"} for i in chunk],
    }


def _state() -> SandboxState:
    state: SandboxState = flask.current_app.extensions["promoter_sandbox"]
    return state


def _gate() -> flask.Response | None:
    """Record, sleep, inject the configured failure, then check the token, before any API route."""
    request = flask.request
    if request.path.startswith(CONTROL_PREFIX + "/"):
        return None
    state = _state()
    flask.g.body, flask.g.parse_error = _parse(request.get_data(cache=True))
    plan = state.begin_call(request.method, request.path, flask.g.body)
    flask.g.record = plan.record
    if plan.sleep > 0:
        time.sleep(plan.sleep)
    if plan.failure is not None:
        return _failure(plan.failure, plan.retry_after)
    return _authenticate(request.headers.get("Authorization"), state.api_key)


def _record_status(response: flask.Response) -> flask.Response:
    if (record := flask.g.get("record")) is not None:
        _state().finish_call(record, response.status_code)
    return response


def _http_error(exc: HTTPException) -> flask.Response:
    status = exc.code or 500
    detail = {404: "Not found.", 405: f'Method "{flask.request.method}" not allowed.'}.get(status)
    return _response(status, {"detail": detail or exc.name})


api = flask.Blueprint("promoter_api", __name__)
control = flask.Blueprint("sandbox_control", __name__, url_prefix=CONTROL_PREFIX)


@api.post("/contacts/")
def upsert_contact() -> flask.Response:
    body = _body()
    if errors := _contact_errors(body):
        raise _Rejected(400, errors)
    return _response(200, _state().upsert(body))


@api.post("/contacts/remove/")
def remove_contact() -> flask.Response:
    """Promoter's contact removal by email: 404 (DRF's "Not found.") when no such contact."""
    body = _body()
    email = body.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise _Rejected(400, {"email": ["Enter a valid email address."]})
    if not _state().remove(email):
        raise _Rejected(404, {"detail": "Not found."})
    return _response(200, {"detail": "Contact removed."})


@api.post("/v2/survey/")
def survey() -> flask.Response:
    state, body = _state(), _body()
    errors = _survey_errors(body, state.campaigns)
    campaign, contact = body.get("campaign_id"), body.get("contact")
    if errors or not isinstance(contact, dict) or not _is_int(campaign):
        raise _Rejected(400, errors)
    if state.is_ineligible(contact["email"]) or not state.take_survey_slot(campaign, contact["email"]):
        raise _Rejected(400, _INELIGIBLE)
    surveyed = state.upsert(contact)
    state.answer_survey(campaign, surveyed)
    answer = {"campaign": campaign, "contact": surveyed}
    return _response(200, answer | {"attributes": body.get("attributes") or {}})


@api.get("/campaigns/")
def campaigns() -> flask.Response:
    """DRF-paginated campaign list, as Promoter's ``GET /campaigns/?page=N``; without a configured
    ``campaigns`` set it lists campaigns 1 to 3."""
    state = _state()
    ids = sorted(state.campaigns) if state.campaigns is not None else [1, 2, 3]
    return _response(200, _campaign_page(ids, flask.request.args.get("page", "1"), flask.request.base_url))


def _feedback_filters(args: Mapping[str, str]) -> tuple[datetime | None, datetime | None, int | None]:
    errors: JSON = {}
    bounds: list[datetime | None] = []
    for name, end_of_day in (("posted_date_0", False), ("posted_date_1", True)):
        raw = args.get(name, "").strip()
        try:
            bounds.append(_parse_moment(raw, end_of_day) if raw else None)
        except ValueError:
            errors["posted_date"] = ["Enter a valid date/time."]
    campaign = args.get("survey__campaign", "").strip()
    if campaign and not campaign.isdigit():
        errors["survey__campaign"] = ["Enter a number."]
    if errors:
        raise _Rejected(400, errors)
    return bounds[0], bounds[1], int(campaign) if campaign else None


@api.get("/feedback/")
def feedback() -> flask.Response:
    """NPS responses as Promoter's ``GET /feedback/`` gives them: DRF page-number pagination, newest
    first, filtered by ``posted_date_0`` / ``posted_date_1`` (dates or datetimes) and ``survey__campaign``."""
    state, args = _state(), flask.request.args
    since, until, campaign = _feedback_filters(args)
    found = state.feedback_list(since, until, campaign)
    size, page = state.feedback_page_size, args.get("page", "1")
    if not page.isdigit() or int(page) < 1 or (int(page) - 1) * size >= max(len(found), 1):
        raise _Rejected(404, {"detail": "Invalid page."})
    number = int(page)

    def link(to: int) -> str:
        query = {k: v for k, v in args.items() if k != "page"} | {"page": str(to)}
        return f"{flask.request.base_url}?{urlencode(query)}"

    return _response(
        200,
        {
            "count": len(found),
            "next": link(number + 1) if number * size < len(found) else None,
            "previous": link(number - 1) if number > 1 else None,
            "results": found[(number - 1) * size : number * size],
        },
    )


@control.post("/feedback")
def add_feedback() -> tuple[JSON, int]:
    """A response for a contact the sandbox knows: ``{"email", "campaign", "score", "comment"?,
    "posted_date"?}`` (a posted date in the past fills a chart)."""
    body = flask.request.get_json(silent=True)
    state = _state()
    if not isinstance(body, dict) or not isinstance(body.get("email"), str):
        raise _Rejected(400, {"detail": 'Expected {"email", "campaign", "score", ...}.'})
    contact = next((c for c in state.contacts() if c["email"].lower() == body["email"].lower()), None)
    score, campaign = body.get("score"), body.get("campaign")
    if contact is None or not _is_int(score) or not 0 <= score <= 10 or not _is_int(campaign):
        raise _Rejected(400, {"detail": "Unknown contact, or score not 0-10, or campaign not an integer."})
    posted = body.get("posted_date")
    try:
        if posted is not None:
            _parse_moment(str(posted))
    except ValueError as exc:
        raise _Rejected(400, {"posted_date": ["Enter a valid date/time."]}) from exc
    record = state.add_feedback(campaign, contact, score, str(body.get("comment") or ""), posted)
    return record, 201


@control.patch("/feedback/<int:feedback_id>")
def edit_feedback(feedback_id: int) -> JSON:
    body = flask.request.get_json(silent=True)
    if not isinstance(body, dict):
        raise _Rejected(400, {"detail": 'Expected {"comment": ..., "score": ...}.'})
    score = body.get("score", 0)
    if not _is_int(score) or not 0 <= score <= 10 or not isinstance(body.get("comment", ""), str):
        raise _Rejected(400, {"detail": "score must be 0-10 and comment a string."})
    record = _state().edit_feedback(feedback_id, body)
    if record is None:
        raise _Rejected(404, {"detail": "Not found."})
    return record


@control.get("/calls")
def list_calls() -> JSON:
    return {"calls": _state().calls(flask.request.args.get("path"))}


@control.delete("/calls")
def reset_calls() -> JSON:
    _state().reset()
    return {"calls": []}


@control.get("/config")
def get_config() -> JSON:
    return _state().config()


@control.post("/config")
def set_config() -> JSON:
    fields = flask.request.get_json(silent=True)
    if not isinstance(fields, dict):
        raise _Rejected(400, {"detail": "Expected a JSON object of config fields."})
    try:
        return _state().configure(fields)
    except ValueError as exc:
        raise _Rejected(400, {"detail": str(exc)}) from exc


@control.get("/contacts")
def list_contacts() -> JSON:
    return {"contacts": _state().contacts()}


@control.get("/healthz")
def healthz() -> JSON:
    return {"ok": True}


def create_sandbox(state: SandboxState | None = None) -> flask.Flask:
    """Every non-control request passes the gate (record, sleep, injected failure, auth) before any route,
    so unknown paths and wrong methods are recorded and fail the same way real ones do."""
    app = flask.Flask(__name__)
    app.extensions["promoter_sandbox"] = SandboxState() if state is None else state
    app.before_request(_gate)
    app.after_request(_record_status)
    app.register_error_handler(_Rejected, lambda exc: _response(exc.status, exc.payload, exc.headers))
    app.register_error_handler(HTTPException, _http_error)
    app.register_blueprint(api)
    app.register_blueprint(control)
    return app


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """One access line per test request drowns pytest output; errors still go through `log_error`."""


class SandboxServer:
    """A sandbox on a real socket in a daemon thread, so clients are tested over genuine HTTP."""

    def __init__(self, state: SandboxState | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = SandboxState() if state is None else state
        self.host, self.port = host, port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("SandboxServer is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._server.server_port}"

    def start(self) -> Self:
        if self._server is None:
            app = create_sandbox(self.state)
            self._server = make_server(
                self.host, self.port, app, threaded=True, request_handler=_QuietHandler
            )
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(0.05,), name="promoter-sandbox", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Request threads are daemons, so a call sleeping on an injected delay does not hold up the stop;
        the short poll interval in `start` keeps shutdown from costing half a second per test."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(host: str, port: int, state: SandboxState) -> None:
    """Blocks until interrupted; access lines are kept here because someone is watching this terminal."""
    server = make_server(host, port, create_sandbox(state), threaded=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


class SandboxControl:
    """Drives a sandbox over HTTP, so tests work the same whether it runs in-process or in another process."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, route: str, **kwargs: Any) -> JSON:
        response = requests.request(
            method, f"{self.url}{CONTROL_PREFIX}{route}", timeout=self.timeout, **kwargs
        )
        response.raise_for_status()
        payload: JSON = response.json()
        return payload

    def calls(self, path: str | None = None) -> list[JSON]:
        calls: list[JSON] = self._call("GET", "/calls", params={"path": path} if path else None)["calls"]
        return calls

    def reset(self) -> None:
        self._call("DELETE", "/calls")

    def configure(self, **fields: Any) -> JSON:
        """Sets are sent as lists, since that is all JSON has."""
        body = {k: sorted(v) if isinstance(v, set | frozenset) else v for k, v in fields.items()}
        return self._call("POST", "/config", json=body)

    def config(self) -> JSON:
        return self._call("GET", "/config")

    def surveys(self) -> list[JSON]:
        return [call for call in self.calls("/v2/survey/") if call["status"] == 200]

    def contacts(self) -> list[JSON]:
        contacts: list[JSON] = self._call("GET", "/contacts")["contacts"]
        return contacts

    def add_feedback(self, **fields: Any) -> JSON:
        return self._call("POST", "/feedback", json=fields)

    def edit_feedback(self, feedback_id: int, **changes: Any) -> JSON:
        return self._call("PATCH", f"/feedback/{feedback_id}", json=changes)
