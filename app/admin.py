"""Inspection for operators: a JSON API under ``/admin/api/`` and a dashboard page over it.

Everything under ``/admin/api/`` needs ``Authorization: Bearer <ADMIN_TOKEN>``. The dashboard page
itself is a static shell with no data in it; its script asks for the token and sends it as that
header, so the token never travels in a URL (and never lands in an access log).
"""

from __future__ import annotations

from typing import Any, cast

import redis
from flask import Blueprint, Response, abort, jsonify, render_template, request

from app.auth import bearer_matches
from app.relay import relay
from worker import keys
from worker.deadletters import DeadLetters
from worker.holds import Holds
from worker.stats import snapshot

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.errorhandler(redis.RedisError)
def _redis_down(error: redis.RedisError) -> tuple[Response, int]:
    return jsonify(error="Redis unavailable", kind=type(error).__name__), 503


@bp.before_request
def _require_token() -> tuple[Response, int] | None:
    if request.endpoint == "admin.dashboard":
        return None
    token = relay().settings.admin_token
    if not token:
        return jsonify(error="The admin API is disabled: set ADMIN_TOKEN."), 403
    if not bearer_matches(request, token):
        return jsonify(error="Missing or invalid bearer token."), 401
    return None


@bp.get("/")
def dashboard() -> str:
    return render_template("dashboard.html")


def _dead() -> DeadLetters:
    rt = relay()
    return DeadLetters(rt.redis, rt.settings.status_ttl_seconds, rt.settings.queue_name)


def _holds() -> Holds:
    rt = relay()
    return Holds(rt.redis, rt.settings.status_ttl_seconds, rt.settings.queue_name)


@bp.get("/api/stats")
def stats() -> Response:
    rt = relay()
    return jsonify(snapshot(rt.redis, rt.settings.queue_name))


@bp.get("/api/messages")
def recent_messages() -> Response:
    rt = relay()
    limit = min(request.args.get("limit", 50, type=int) or 50, 200)
    ids = cast(list[str], rt.redis.lrange(keys.RECENT, 0, limit - 1))
    pipe = rt.redis.pipeline(transaction=False)
    for message_id in ids:
        pipe.hgetall(keys.message(message_id))
    records = [record for record in pipe.execute() if record]
    return jsonify(messages=records)


@bp.get("/api/messages/<path:message_id>")
def message(message_id: str) -> Response:
    record = relay().ledger.status(message_id)
    if record is None:
        abort(404, f"No status record for message {message_id!r}.")
    dead = _dead().get(message_id)
    return jsonify(message=record, dead_letter=dead)


@bp.get("/api/users/<path:user_id>")
def user(user_id: str) -> Response:
    """``/users/42`` looks up a userId; ``/users/42?anonymous=1`` an anonymousId."""
    identity = f"{'a' if request.args.get('anonymous') else 'u'}:{user_id}"
    holds = _holds()
    contact = relay().redis.hgetall(keys.known(identity))
    body: dict[str, Any] = {
        "identity": identity,
        "known": bool(contact.get("email")),
        "contact": contact or None,
        "held": holds.held_messages(identity),
        "held_count": holds.held_count(identity),
        "orders": relay().redis.hgetall(keys.orders(identity)) or None,
    }
    return jsonify(body)


@bp.get("/api/dead-letters")
def dead_letters() -> Response:
    dead = _dead()
    limit = min(request.args.get("limit", 50, type=int) or 50, 500)
    offset = max(request.args.get("offset", 0, type=int) or 0, 0)
    return jsonify(total=dead.count(), dead_letters=dead.list(limit, offset))


@bp.post("/api/dead-letters/<path:message_id>/replay")
def replay_one(message_id: str) -> tuple[Response, int]:
    if not _dead().replay(message_id):
        return jsonify(replayed=0, error=f"No dead letter {message_id!r}."), 404
    return jsonify(replayed=1), 200


@bp.post("/api/dead-letters/replay")
def replay_all() -> Response:
    return jsonify(replayed=_dead().replay_all())
