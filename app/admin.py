"""Inspection for operators: a JSON API under ``/admin/api/`` and a dashboard page over it.

Everything under ``/admin/api/`` needs ``Authorization: Bearer <ADMIN_TOKEN>``. The dashboard page
itself is a static shell with no data in it; its script asks for the token and sends it as that
header, so the token never travels in a URL (and never lands in an access log). The API is described
by ``/admin/api/openapi.json``.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import redis
from flask import Blueprint, Response, jsonify, render_template, request

from app import records
from app.auth import bearer_matches
from app.services import services
from worker import feedback
from worker.events import WEBHOOK_SOURCE, anonymous_identity, split_ref, user_identity
from worker.nps_store import DAYS_KEPT, NpsStore
from worker.scripts import RECENT_LIMIT
from worker.stats import KEPT_MINUTES, per_minute, snapshot

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.errorhandler(redis.RedisError)
def _redis_down(error: redis.RedisError) -> tuple[Response, int]:
    return jsonify(error="Redis unavailable", kind=type(error).__name__), 503


@bp.before_request
def _require_token() -> tuple[Response, int] | None:
    if request.endpoint in ("admin.dashboard", "admin.openapi"):
        return None
    token = services().settings.admin_token
    if not token:
        return jsonify(error="The admin API is disabled: set ADMIN_TOKEN."), 403
    if not bearer_matches(request, token):
        return jsonify(error="Missing or invalid bearer token."), 401
    return None


@bp.get("/")
def dashboard() -> str:
    return render_template("dashboard.html")


@bp.get("/api/openapi.json")
def openapi() -> Response:
    text = resources.files("app").joinpath("openapi.json").read_text(encoding="utf-8")
    return Response(text, mimetype="application/json")


def candidate_refs(text: str) -> list[str]:
    """A ref as given, or a bare messageId under every source this relay has."""
    source, _ = split_ref(text)
    if source:
        return [text]
    sources = [WEBHOOK_SOURCE, *services().sources.values()]
    return [f"{name}:{text}" for name in sources]


def find_message(text: str) -> tuple[str, dict[str, Any]] | None:
    messages = services().stores.messages
    for ref in candidate_refs(text):
        record = messages.status(ref)
        if record is not None:
            return ref, record
    return None


@bp.get("/api/stats")
def stats() -> Response:
    rt = services()
    return jsonify(snapshot(rt.stores.redis, rt.settings))


@bp.get("/api/stats/minutes")
def stats_minutes() -> Response:
    """Received, delivered, dead (every state) per minute, for the dashboard's chart."""
    minutes = _int_arg("minutes", 60, 1, KEPT_MINUTES - 1)
    series = per_minute(services().stores.redis, minutes)
    shown = [
        {"at": records.when(m["minute"]), **{k: v for k, v in m.items() if k != "minute"}} for m in series
    ]
    return jsonify(minutes=shown, kept_minutes=KEPT_MINUTES)


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    """A whole-number query argument, clamped to ``[low, high]``; the default when absent or unreadable."""
    value = request.args.get(name, default, type=int)
    return max(low, min(high, default if value is None else value))


@bp.get("/api/messages")
def recent_messages() -> Response:
    """Recent messages; ``q`` narrows them to a ref, a messageId or a userId (or anonymousId)."""
    limit = _int_arg("limit", 50, 1, RECENT_LIMIT)
    query = (request.args.get("q") or "").strip()
    recent = _recent()
    if not query:
        return jsonify(messages=[records.message(r) for r in recent[:limit]])
    found = find_message(query)
    matches = [found[1]] if found else []
    wanted = (user_identity(query), anonymous_identity(query))
    matches += [r for r in recent if r.get("user") in wanted and not _same(r, found)]
    return jsonify(messages=[records.message(_without_history(r)) for r in matches[:limit]])


def _recent() -> list[dict[str, Any]]:
    """The most recent status records, each once (a message accepted again after its status record
    expired is on the list twice)."""
    seen: set[str] = set()
    unique = []
    for record in services().stores.messages.recent(RECENT_LIMIT):
        if record.get("ref") not in seen:
            seen.add(str(record.get("ref")))
            unique.append(record)
    return unique


def _same(record: dict[str, Any], found: tuple[str, dict[str, Any]] | None) -> bool:
    return found is not None and record.get("ref") == found[0]


def _without_history(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "history"}


@bp.get("/api/messages/<path:message_id>")
def message(message_id: str) -> Response | tuple[Response, int]:
    """A message's status record and history, its stored event while it has one, its dead letter."""
    found = find_message(message_id)
    if found is None:
        return jsonify(error=f"No status record for message {message_id!r}."), 404
    ref, record = found
    stores = services().stores
    dead = stores.dead.get(ref)
    return jsonify(
        message=records.message(record),
        event=dead["event"] if dead else stores.messages.event(ref),
        dead_letter=records.dead_letter(dead) if dead else None,
    )


@bp.get("/api/users/<path:user_id>")
def user(user_id: str) -> Response:
    """``/users/42`` looks up a userId; ``/users/42?anonymous=1`` an anonymousId."""
    anonymous = request.args.get("anonymous", "") not in ("", "0", "false")
    identity = anonymous_identity(user_id) if anonymous else user_identity(user_id)
    stores = services().stores
    person = records.person(stores.people.person_of(identity))
    items = stores.holds.held_messages(identity)
    found = stores.messages.records([item["ref"] for item in items])
    held = [records.held(item, record) for item, record in zip(items, found, strict=True)]
    return jsonify(
        identity=identity,
        known=bool(person and person["known_to_promoter"]),
        person=person,
        held=held,
        held_count=stores.holds.held_count(identity),
    )


@bp.get("/api/dead-letters")
def dead_letters() -> Response:
    dead = services().stores.dead
    limit = _int_arg("limit", 50, 1, 500)
    offset = _int_arg("offset", 0, 0, 10**9)
    return jsonify(
        total=dead.count(), dead_letters=[records.dead_letter(r) for r in dead.list(limit, offset)]
    )


_REPLAY_REFUSED = {
    "missing": (404, "No dead letter {ref!r}."),
    "surveyed": (409, "The survey of {ref!r} is known to have been sent; replaying would survey twice."),
    "calling": (409, "A survey call of {ref!r} is still being made; replay it once that call has ended."),
    "expired": (410, "The event of {ref!r} has expired; it cannot be replayed."),
}


@bp.post("/api/dead-letters/<path:message_id>/replay")
def replay_one(message_id: str) -> tuple[Response, int]:
    dead = services().stores.dead
    ref = dead.resolve(message_id)
    outcome = dead.replay(ref)
    if outcome != "replayed":
        status, text = _REPLAY_REFUSED[outcome]
        return jsonify(replayed=0, error=text.format(ref=ref), reason=outcome), status
    return jsonify(replayed=1), 200


@bp.post("/api/dead-letters/replay")
def replay_all() -> Response:
    outcomes = services().stores.dead.replay_all()
    return jsonify(
        replayed=outcomes.get("replayed", 0), refused={k: v for k, v in outcomes.items() if k != "replayed"}
    )


@bp.post("/api/dead-letters/<path:message_id>/discard")
def discard_one(message_id: str) -> tuple[Response, int]:
    dead = services().stores.dead
    ref = dead.resolve(message_id)
    if not dead.discard([ref]):
        return jsonify(discarded=0, error=f"No dead letter {ref!r}."), 404
    return jsonify(discarded=1), 200


@bp.post("/api/dead-letters/discard")
def discard_many() -> tuple[Response, int]:
    """``{"refs": [...]}``, or ``{"all": true}`` with an optional ``"older_than_seconds"``."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return jsonify(error='Expected {"refs": [...]} or {"all": true}.'), 400
    dead = services().stores.dead
    if body.get("all") is True:
        older = body.get("older_than_seconds")
        if older is not None and (not isinstance(older, int | float) or isinstance(older, bool) or older < 0):
            return jsonify(error="older_than_seconds must be a number >= 0."), 400
        return jsonify(discarded=dead.discard_all(older)), 200
    refs = body.get("refs")
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        return jsonify(error='Expected {"refs": [...]} or {"all": true}.'), 400
    return jsonify(discarded=dead.discard([dead.resolve(r) for r in refs])), 200


@bp.get("/api/nps")
def nps() -> tuple[Response, int]:
    """NPS per day or week over the last ``days`` days, the latest responses (emails masked), and where
    the poll of Promoter's feedback stands."""
    by = request.args.get("by", "day")
    if by not in ("day", "week"):
        return jsonify(error="by must be day or week.", errors={"by": ["Must be one of: day, week."]}), 400
    days = _int_arg("days", 90, 1, DAYS_KEPT)
    rt = services()
    cursor = feedback.load_cursor(rt.stores.redis)
    poll = {
        "since": cursor.since or None,
        "page": cursor.page,
        "last_run_at": records.when(cursor.last_run_at or None),
        "next_at": records.when(cursor.next_at or None),
        "failures": cursor.failures,
        "last_error": cursor.last_error or None,
        "sent_total": cursor.sent_total,
    }
    summary = NpsStore(rt.stores.redis).summary(days, by, latest=_int_arg("latest", 20, 0, 100))
    return jsonify(
        enabled=feedback.enabled(rt.settings), event=rt.settings.feedback_event, poll=poll, **summary
    ), 200
