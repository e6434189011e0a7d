"""Segment-compatible ingest: the Tracking API (``/v1/...``) and the Webhooks destination (``/segment``).

A request is answered 200 only after its messages are recorded and queued in Redis by one atomic
script; anything that cannot be used is answered 4xx with field errors (Segment never retries a 4xx,
so nothing is lost by refusing early); Redis trouble is a 503 with ``Retry-After`` so that Segment
retries later instead of dropping events. What each message becomes is ``admission``'s decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify, request
from marshmallow import ValidationError

from app import processmetrics
from app.admission import admission_of
from app.auth import header_write_key, key_matches, signature_matches
from app.fastpath import load_message
from app.payload import (
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    PayloadError,
    event_size,
    first_element_bytes,
    parse_json,
    read_body,
)
from app.schemas import MESSAGE_TYPES, SHORT_TYPES
from app.services import services
from worker import keys
from worker.events import WEBHOOK_SOURCE
from worker.messages import Admission
from worker.settings import Settings
from worker.states import State

bp = Blueprint("ingest", __name__)
log = logging.getLogger("relay.ingest")

RETRY_AFTER_SECONDS = 5
MISSING_KEY = "Missing write key (HTTP Basic username, X-Write-Key header, or writeKey in the body)."
BATCH_NEEDS_KEY = (
    "A webhook batch needs a write key in a header (HTTP Basic username or X-Write-Key) as well as "
    "X-Signature: Segment signs a batch by its first element only."
)
_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_encoding",
    503: "unavailable",
}


@dataclass
class Validated:
    """A request's messages: admitted, and refused with field errors."""

    admitted: list[Admission] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)


class Unauthorized(Exception):
    pass


# The answers to a stored single message, serialized once.
ACCEPTED = b'{"success":true}\n'
DUPLICATE = b'{"duplicate":true,"success":true}\n'


def _answer(body: bytes) -> Response:
    return Response(body, mimetype="application/json")


def _first_message(errors: Any) -> str:
    """The first error, prefixed with the field it is about (``event: Missing data ...``); keys such
    as ``_schema`` or ``_auth`` name no field."""
    path = []
    while isinstance(errors, dict | list) and errors:
        if isinstance(errors, dict):
            name, errors = next(iter(errors.items()))
            if not str(name).startswith("_"):
                path.append(str(name))
        else:
            errors = errors[0]
    return f"{'.'.join(path)}: {errors}" if path else str(errors)


def failure(status: int, errors: dict[str, Any]) -> tuple[Response, int]:
    """Field errors plus Segment's own ``code``/``message`` pair, which its Python client reads."""
    body = {"success": False, "code": _CODES.get(status, "error"), "message": _first_message(errors)}
    return jsonify(**body, errors=errors), status


def count_refused(status: int) -> None:
    """Requests refused before any message was read (401, 413, 400 bodies): counted, best effort."""
    try:
        services().stores.redis.hincrby(keys.STATS, f"refused:{status}", 1)
    except redis.RedisError:
        current_app.logger.warning("could not count a refused request (%d)", status)


@bp.errorhandler(PayloadError)
def _payload_error(error: PayloadError) -> tuple[Response, int]:
    count_refused(error.status)
    return failure(error.status, error.errors)


@bp.errorhandler(Unauthorized)
def _unauthorized(error: Unauthorized) -> tuple[Response, int]:
    count_refused(401)
    response, status = failure(401, {"_auth": [str(error)]})
    response.headers["WWW-Authenticate"] = 'Basic realm="promoter-relay"'
    return response, status


@bp.errorhandler(redis.RedisError)
def _redis_down(error: redis.RedisError) -> tuple[Response, int]:
    current_app.logger.warning("redis unavailable, answering 503: %s", type(error).__name__)
    processmetrics.count_unavailable(error)
    response, status = failure(503, {"_service": ["Temporarily unable to store events."]})
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response, status


@bp.post("/v1/<kind>")
def tracking_api(kind: str) -> tuple[Response, int]:
    kind = SHORT_TYPES.get(kind, kind)
    if kind not in MESSAGE_TYPES and kind != "batch":
        return failure(404, {"_path": [f"Unknown endpoint /v1/{kind}."]})
    header_key = header_write_key(request)
    if header_key is not None:
        _require_write_key(header_key)
    body = read_body(request)
    document = parse_json(body)
    if header_key is None:
        body_key = document.get("writeKey") if isinstance(document, dict) else None
        header_key = _require_write_key(body_key if isinstance(body_key, str) else None)
    source = services().sources[header_key]
    if kind != "batch":
        return _single(document, kind, source, len(body), webhook=False)
    if not isinstance(document, dict):
        raise PayloadError(400, {"_schema": ["A batch must be a JSON object."]})
    return _batch(document.get("batch"), batch_shared(document), len(body), source, webhook=False)


@bp.post("/segment")
def webhook() -> tuple[Response, int]:
    """Segment's Webhooks destination: one message, or an array (Actions batching).

    A header credential, when sent, is checked before the body is read or inflated. Segment signs an
    array by its first element only, so a captured signed event could lead any array of forged ones:
    an array therefore also needs a write key in a header, unless the operator opted into the unsafe
    signature-only mode, and an array whose signed element is refused is refused whole.
    """
    settings = services().settings
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
        return _batch(
            document,
            {},
            len(body),
            WEBHOOK_SOURCE,
            webhook=True,
            signed_first=bool(settings.segment_shared_secret),
        )
    return _single(document, None, WEBHOOK_SOURCE, len(body), webhook=True)


def _require_write_key(candidate: str | None) -> str:
    allowed = services().settings.segment_write_keys
    if not allowed:
        raise Unauthorized("No write keys are configured on this relay (SEGMENT_WRITE_KEYS).")
    if not candidate:
        raise Unauthorized(MISSING_KEY)
    if not key_matches(candidate, allowed):
        raise Unauthorized("Invalid write key.")
    return candidate


def _single(
    document: Any, kind: str | None, source: str, body_bytes: int, *, webhook: bool
) -> tuple[Response, int]:
    # A body within the per-event limit cannot hold a bigger event: no need to measure it.
    if body_bytes > MAX_EVENT_BYTES and isinstance(document, dict) and event_size(document) > MAX_EVENT_BYTES:
        raise PayloadError(413, {"_request": [f"Event exceeds {MAX_EVENT_BYTES} bytes."]})
    validated = _validate([document], kind, {}, source, webhook=webhook, check_sizes=False)
    if validated.refused:
        _count_rejected([{"type": kind} if kind else document], validated)
        return failure(400, validated.refused[0]["errors"])
    (task,) = _accept(validated.admitted)
    return _answer(DUPLICATE if not task else ACCEPTED), 200


def _batch(
    items: Any,
    shared: dict[str, Any],
    body_bytes: int,
    source: str,
    *,
    webhook: bool,
    signed_first: bool = False,
) -> tuple[Response, int]:
    if not isinstance(items, list):
        raise PayloadError(400, {"batch": ["Must be a list of messages."]})
    if len(items) > MAX_BATCH_EVENTS:
        raise PayloadError(400, {"batch": [f"At most {MAX_BATCH_EVENTS} events per batch."]})
    # No item can be over the per-event limit when the whole body is not: skip measuring each one.
    validated = _validate(
        items, None, shared, source, webhook=webhook, check_sizes=body_bytes > MAX_EVENT_BYTES
    )
    if signed_first and validated.refused and validated.refused[0]["index"] == 0:
        _count_rejected(items, validated)
        errors = {"batch": ["The signed first element is invalid, so nothing was accepted."]}
        return failure(400, {**errors, "0": validated.refused[0]["errors"]})
    tasks = _accept(validated.admitted)
    if validated.refused:
        _count_rejected(items, validated)
    accepted = sum(1 for task in tasks if task)
    counts = {"accepted": accepted, "duplicates": len(tasks) - accepted, "rejected": validated.refused}
    if items and not validated.admitted:
        response, status = failure(400, {"batch": ["No message in the batch is valid."]})
        body = {k: v for k, v in (response.get_json() or {}).items() if k != "errors"}
        return jsonify(**body, **counts), status
    return jsonify(success=True, **counts), 200


def _accept(admissions: list[Admission]) -> list[str]:
    """Store and queue (one Lua step), then log it.

    A single message gets one INFO line with its ref and task id. A batch gets one INFO line naming
    every message it queued (a message's first task id is its ref, so the refs name both), and a line
    per message at DEBUG: writing a log line costs about as much CPU as validating the message.
    """
    tasks = services().stores.messages.accept(admissions)
    if len(admissions) == 1:
        _log_one(log.info, admissions[0], tasks[0])
    elif admissions and log.isEnabledFor(logging.INFO):
        queued = [a.event["ref"] for a, task in zip(admissions, tasks, strict=True) if task not in ("", "-")]
        skipped, duplicates = tasks.count("-"), tasks.count("")
        ids = ",".join(queued) or "-"
        log.info("batch: %d queued, %d skipped, %d duplicates", len(queued), skipped, duplicates,
                 extra={"message_id": ids, "task_id": ids})  # fmt: skip
        if log.isEnabledFor(logging.DEBUG):
            for admission, task in zip(admissions, tasks, strict=True):
                _log_one(log.debug, admission, task)
    return tasks


def _log_one(write: Any, admission: Admission, task: str) -> None:
    event = admission.event
    context = {"message_id": event["ref"], "task_id": task if task not in ("", "-") else "-"}
    if not task:
        write("duplicate %s, acknowledged", event["type"], extra=context)
    elif admission.state is State.SKIPPED:
        write("%s skipped: %s", event["type"], admission.detail, extra=context)
    else:
        write("%s accepted and queued", event["type"], extra=context)


def _merge(item: Any, shared: dict[str, Any]) -> Any:
    """Batch-level context/integrations apply to every item (the item's own values win), and the
    batch's sentAt to every item that has none."""
    if not shared or not isinstance(item, dict):
        return item
    merged = dict(item)
    for name, value in shared.items():
        if isinstance(value, dict) and value:
            own = item.get(name)
            merged[name] = {**value, **own} if isinstance(own, dict) else value
        elif value is not None and not isinstance(value, dict) and item.get(name) is None:
            merged[name] = value
    return merged


def batch_shared(document: dict[str, Any]) -> dict[str, Any]:
    """What a ``/v1/batch`` body says once for all of its messages. analytics-python puts ``sentAt`` on
    the batch, not on each message: without it there, batched events get no clock correction."""
    shared = {name: document.get(name) for name in ("context", "integrations")}
    if document.get("sentAt") is not None:
        shared["sentAt"] = document["sentAt"]
    return shared


def _validate(
    items: list[Any],
    kind: str | None,
    shared: dict[str, Any],
    source: str,
    *,
    webhook: bool,
    check_sizes: bool = True,
) -> Validated:
    return validate_messages(
        items, kind, shared, source, services().settings, webhook=webhook, now=datetime.now(UTC),
        check_sizes=check_sizes,
    )  # fmt: skip


def validate_messages(
    items: list[Any],
    kind: str | None,
    shared: dict[str, Any],
    source: str,
    settings: Settings,
    *,
    webhook: bool,
    now: datetime,
    check_sizes: bool = True,
) -> Validated:
    """Validate and admit a request's messages, received at ``now``: no Flask, no Redis (the
    simulator calls it with its own clock)."""
    result = Validated()
    for index, raw in enumerate(items):
        item = _merge(raw, shared)
        try:
            message = _load(item, kind, check_size=check_sizes and kind is None)
            result.admitted.append(admission_of(message, source, settings, webhook=webhook, now=now))
        except ValidationError as error:
            result.refused.append({"index": index, "errors": _errors(error)})
            log.info(
                "message %d of the request rejected: %s", index, _first_message(result.refused[-1]["errors"])
            )
    return result


def _load(item: Any, kind: str | None, *, check_size: bool) -> dict[str, Any]:
    if check_size and event_size(item) > MAX_EVENT_BYTES:
        raise ValidationError({"_schema": [f"Event exceeds {MAX_EVENT_BYTES} bytes."]})
    return load_message(item, kind)


def _count_rejected(items: list[Any], validated: Validated) -> None:
    """Rejections are counted by the type the sender claimed (``unknown`` when it was unusable)."""
    by_type: dict[str, int] = {}
    for entry in validated.refused:
        item = items[entry["index"]]
        claimed = item.get("type") if isinstance(item, dict) else None
        kind = claimed if claimed in MESSAGE_TYPES else "unknown"
        by_type[kind] = by_type.get(kind, 0) + 1
    try:
        pipe = services().stores.redis.pipeline(transaction=False)
        for kind, count in by_type.items():
            pipe.hincrby(keys.STATS, f"rejected:{kind}", count)
        pipe.execute()
    except redis.RedisError:
        current_app.logger.warning("could not count %d rejected events", len(validated.refused))


def _errors(error: ValidationError) -> Any:
    messages: Any = error.normalized_messages()  # type: ignore[no-untyped-call]
    return messages
