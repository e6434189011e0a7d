"""Segment-compatible ingest: the Tracking API (``/v1/...``) and the Webhooks destination (``/segment``).

A request is answered 200 only after its events are recorded and queued in Redis by one atomic
script; anything that cannot be used is answered 4xx with field errors (Segment never retries a 4xx,
so nothing is lost by refusing early); Redis trouble is a 503 with ``Retry-After`` so that Segment
retries later instead of dropping events.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify, request
from marshmallow import ValidationError

from app.auth import header_write_key, key_matches, signature_matches
from app.payload import (
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    PayloadError,
    event_size,
    first_element_bytes,
    parse_json,
    read_body,
)
from app.relay import relay
from app.schemas import MESSAGE_TYPES, SHORT_TYPES, load_message, promoter_enabled, to_event
from worker import broker, keys
from worker.events import DELIVERED_TYPES, ORDER_EVENTS, Event, user_key
from worker.ledger import Admission
from worker.settings import Settings

bp = Blueprint("ingest", __name__)
log = logging.getLogger("relay.ingest")

RETRY_AFTER_SECONDS = 5
BATCH_NEEDS_KEY = (
    "A webhook batch needs a write key in a header (HTTP Basic username or X-Write-Key) as well as "
    "X-Signature: Segment signs a batch by its first element only."
)


@dataclass
class Outcome:
    admissions: list[Admission] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)


class Unauthorized(Exception):
    pass


_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    413: "payload_too_large",
    415: "unsupported_encoding",
    503: "unavailable",
}


def _first_message(errors: Any) -> str:
    while isinstance(errors, dict | list) and errors:
        errors = next(iter(errors.values())) if isinstance(errors, dict) else errors[0]
    return str(errors)


def failure(status: int, errors: dict[str, Any]) -> tuple[Response, int]:
    """Field errors plus Segment's own ``code``/``message`` pair, which its Python client reads."""
    body = {"success": False, "code": _CODES.get(status, "error"), "message": _first_message(errors)}
    return jsonify(**body, errors=errors), status


@bp.errorhandler(PayloadError)
def _payload_error(error: PayloadError) -> tuple[Response, int]:
    return failure(error.status, error.errors)


@bp.errorhandler(Unauthorized)
def _unauthorized(error: Unauthorized) -> tuple[Response, int]:
    response, status = failure(401, {"_auth": [str(error)]})
    response.headers["WWW-Authenticate"] = 'Basic realm="promoter-relay"'
    return response, status


@bp.errorhandler(redis.RedisError)
def _redis_down(error: redis.RedisError) -> tuple[Response, int]:
    current_app.logger.warning("redis unavailable, answering 503: %s", type(error).__name__)
    response, status = failure(503, {"_service": ["Temporarily unable to store events."]})
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response, status


@bp.post("/v1/<kind>")
def tracking_api(kind: str) -> tuple[Response, int]:
    kind = SHORT_TYPES.get(kind, kind)
    if kind not in MESSAGE_TYPES and kind != "batch":
        return failure(404, {"_path": [f"Unknown endpoint /v1/{kind}."]})
    body = read_body(request)
    document = parse_json(body)
    body_key = document.get("writeKey") if isinstance(document, dict) else None
    _require_write_key(header_write_key(request) or (body_key if isinstance(body_key, str) else None))
    if kind != "batch":
        return _single(document, kind)
    if not isinstance(document, dict):
        raise PayloadError(400, {"_schema": ["A batch must be a JSON object."]})
    shared = {name: document.get(name) for name in ("context", "integrations")}
    return _batch(document.get("batch"), shared, len(body))


@bp.post("/segment")
def webhook() -> tuple[Response, int]:
    """Segment's Webhooks destination: one message, or an array (Actions batching).

    A header credential, when sent, is checked before the body is read or inflated. Segment signs an
    array by its first element only, so a captured signed event could lead any array of forged ones:
    an array therefore also needs a write key in a header, unless the operator opted into the unsafe
    signature-only mode, and an array whose signed element is refused is refused whole.
    """
    settings = relay().settings
    header_key = header_write_key(request)
    if header_key is not None:
        _require_write_key(header_key)
    body = read_body(request)
    document = parse_json(body)
    is_batch = isinstance(document, list)
    if settings.segment_shared_secret:
        signed = first_element_bytes(body.decode("utf-8")) if is_batch and document else body
        if not signature_matches(settings.segment_shared_secret, signed, request.headers.get("X-Signature")):
            raise Unauthorized("Missing or invalid X-Signature.")
        if is_batch and header_key is None and not settings.segment_signature_only_batches_unsafe:
            raise Unauthorized(BATCH_NEEDS_KEY)
    elif header_key is None:
        body_key = document.get("writeKey") if isinstance(document, dict) else None
        _require_write_key(body_key if isinstance(body_key, str) else None)
    if is_batch:
        return _batch(document, {}, len(body), signed_first=bool(settings.segment_shared_secret))
    return _single(document, None)


def _require_write_key(candidate: str | None) -> None:
    allowed = relay().settings.segment_write_keys
    if not allowed:
        raise Unauthorized("No write keys are configured on this relay (SEGMENT_WRITE_KEYS).")
    if not candidate:
        raise Unauthorized("Missing write key (HTTP Basic username or writeKey).")
    if not key_matches(candidate, allowed):
        raise Unauthorized("Invalid write key.")


def _single(document: Any, kind: str | None) -> tuple[Response, int]:
    if isinstance(document, dict) and event_size(document) > MAX_EVENT_BYTES:
        raise PayloadError(413, {"_request": [f"Event exceeds {MAX_EVENT_BYTES} bytes."]})
    outcome = _admit([document], kind, {})
    if outcome.rejected:
        _count_rejected([{"type": kind} if kind else document], outcome)
        return failure(400, outcome.rejected[0]["errors"])
    fresh = _accept(outcome.admissions)
    if not fresh[0]:
        return jsonify(success=True, duplicate=True), 200
    return jsonify(success=True), 200


def _batch(
    items: Any, shared: dict[str, Any], body_bytes: int, signed_first: bool = False
) -> tuple[Response, int]:
    if not isinstance(items, list):
        raise PayloadError(400, {"batch": ["Must be a list of messages."]})
    if len(items) > MAX_BATCH_EVENTS:
        raise PayloadError(400, {"batch": [f"At most {MAX_BATCH_EVENTS} events per batch."]})
    # No item can be over the per-event limit when the whole body is not: skip measuring each one.
    outcome = _admit(items, None, shared, check_sizes=body_bytes > MAX_EVENT_BYTES)
    if signed_first and outcome.rejected and outcome.rejected[0]["index"] == 0:
        _count_rejected(items, outcome)
        errors = {"batch": ["The signed first element is invalid, so nothing was accepted."]}
        return failure(400, {**errors, "0": outcome.rejected[0]["errors"]})
    fresh = _accept(outcome.admissions)
    if outcome.rejected:
        _count_rejected(items, outcome)
    accepted = sum(fresh)
    counts = {"accepted": accepted, "duplicates": len(fresh) - accepted, "rejected": outcome.rejected}
    if items and not outcome.admissions:
        response, status = failure(400, {"batch": ["No message in the batch is valid."]})
        body = {k: v for k, v in (response.get_json() or {}).items() if k != "errors"}
        return jsonify(**body, **counts), status
    return jsonify(success=True, **counts), 200


def _accept(admissions: list[Admission]) -> list[bool]:
    """Store and queue (one Lua step), then log one line per event with its message and task id."""
    fresh = relay().ledger.accept(admissions)
    if log.isEnabledFor(logging.INFO):
        for admission, new in zip(admissions, fresh, strict=True):
            event = admission.event
            context = {"message_id": event["messageId"], "task_id": admission.task_id or "-"}
            if not new:
                log.info("duplicate %s, acknowledged", event["type"], extra=context)
            elif admission.state == "skipped":
                log.info("%s skipped: %s", event["type"], admission.detail, extra=context)
            else:
                log.info("%s accepted and queued", event["type"], extra=context)
    return fresh


def _merge(item: Any, shared: dict[str, Any]) -> Any:
    """Batch-level context/integrations apply to every item; the item's own values win."""
    if not isinstance(item, dict):
        return item
    merged = dict(item)
    for name, value in shared.items():
        if isinstance(value, dict) and value:
            own = item.get(name)
            merged[name] = {**value, **own} if isinstance(own, dict) else value
    return merged


def _admit(items: list[Any], kind: str | None, shared: dict[str, Any], check_sizes: bool = True) -> Outcome:
    outcome = Outcome()
    events: list[tuple[int, Event, bool]] = []
    for index, raw in enumerate(items):
        item = _merge(raw, shared)
        try:
            if check_sizes and kind is None and event_size(item) > MAX_EVENT_BYTES:
                raise ValidationError({"_schema": [f"Event exceeds {MAX_EVENT_BYTES} bytes."]})
            message = load_message(item, kind)
            _within_dedup_window(message, relay().settings.status_ttl_seconds)
            enabled = promoter_enabled(message.get("integrations") or {})
            events.append((index, to_event(message), enabled))
        except ValidationError as error:
            outcome.rejected.append({"index": index, "errors": _errors(error)})
            log.info(
                "message %d of the request rejected: %s",
                index,
                _first_message(outcome.rejected[-1]["errors"]),
            )
    unknown = _identifies_without_known_email([event for _, event, enabled in events if enabled])
    settings = relay().settings
    for index, event, enabled in events:
        if event["messageId"] in unknown:
            errors = {"traits": {"email": ["Missing data for required field (user not known yet)."]}}
            outcome.rejected.append({"index": index, "errors": errors})
            continue
        outcome.admissions.append(_admission(event, enabled, settings))
    outcome.rejected.sort(key=lambda entry: int(entry["index"]))
    return outcome


def _within_dedup_window(message: dict[str, Any], window_seconds: int) -> None:
    """Refuse what Segment stamped as received longer ago than duplicates are remembered.

    Deduplication by message id lasts as long as the status record (STATUS_TTL_SECONDS); a signed
    webhook captured and replayed after that would otherwise be delivered again.
    """
    received = message.get("receivedAt")
    if not received:
        return
    age = (datetime.now(UTC) - datetime.fromisoformat(received.replace("Z", "+00:00"))).total_seconds()
    if age > window_seconds:
        hours = window_seconds // 3600
        raise ValidationError(
            {"receivedAt": [f"Older than the {hours} h replay window; refused as a replay."]}
        )


def _admission(event: Event, enabled: bool, settings: Settings) -> Admission:
    if not enabled:
        return Admission(event, "skipped", "Promoter disabled by the integrations object")
    if event["type"] not in DELIVERED_TYPES:
        return Admission(event, "skipped", f"{event['type']} messages are not sent to Promoter")
    name = event.get("event") or ""
    if event["type"] == "track" and name not in ORDER_EVENTS and not settings.is_survey_event(name):
        return Admission(event, "skipped", "not a survey event (SURVEY_EVENTS)")
    task_id = str(uuid.uuid4())
    return Admission(
        event, "received", "", broker.envelope(event, settings.queue_name, task_id=task_id), task_id
    )


def _identifies_without_known_email(events: list[Event]) -> set[str]:
    """Identify calls that carry no email are trait updates, valid only for users the relay knows,
    or whose identify with an email it has accepted (it may still be on its way to Promoter)."""
    seen_email: set[str] = set()
    pending: list[Event] = []
    for event in events:
        if event["type"] != "identify":
            continue
        if event["traits"].get("email"):
            seen_email.add(user_key(event))
        elif user_key(event) not in seen_email:
            pending.append(event)
    if not pending:
        return set()
    pipe = relay().redis.pipeline(transaction=False)
    for event in pending:
        pipe.hexists(keys.known(user_key(event)), "email")
        pipe.exists(keys.email_seen(user_key(event)))
    answers = pipe.execute()
    return {
        event["messageId"]
        for event, known, seen in zip(pending, answers[::2], answers[1::2], strict=True)
        if not known and not seen
    }


def _count_rejected(items: list[Any], outcome: Outcome) -> None:
    """Rejections are counted by the type the sender claimed (``unknown`` when it was unusable)."""
    by_type: dict[str, int] = {}
    for entry in outcome.rejected:
        item = items[entry["index"]]
        claimed = item.get("type") if isinstance(item, dict) else None
        kind = claimed if claimed in MESSAGE_TYPES else "unknown"
        by_type[kind] = by_type.get(kind, 0) + 1
    try:
        pipe = relay().redis.pipeline(transaction=False)
        for kind, count in by_type.items():
            pipe.hincrby(keys.STATS, f"rejected:{kind}", count)
        pipe.execute()
    except redis.RedisError:
        current_app.logger.warning("could not count %d rejected events", len(outcome.rejected))


def _errors(error: ValidationError) -> Any:
    messages: Any = error.normalized_messages()  # type: ignore[no-untyped-call]
    return messages
