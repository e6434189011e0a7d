"""A quicker way through the schema for the shapes Segment's libraries send, proven equal to it.

marshmallow stays the schema of record. Walking its 16 fields costs more than everything else ingest
does per event in Python, yet almost every message is plain: string ids, JSON objects, ISO timestamps.
``fast_load`` handles exactly those and returns what ``MessageSchema().load`` would return; for
anything else (a numeric userId, a list where an object belongs, a missing type...) it returns
``None``, and marshmallow runs and writes the field errors. ``load_message``, ingest's entry, does
both in that order. Timestamps go through the schema's own
field, so their parsing cannot drift. ``tests/test_fastpath.py`` checks, with hypothesis, that the
two never disagree and that the fast path never accepts what the schema refuses.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError

from app.schemas import (
    MAX_ID,
    MESSAGE_ID,
    MESSAGE_TYPES,
    TYPE_RULES,
    _schema,
    campaign_override,
    derived_message_id,
    schema_load,
)

_IDS = ("userId", "anonymousId", "previousId")
_MAPS = ("context", "integrations", "traits", "properties")
_TIMES = ("timestamp", "originalTimestamp", "sentAt", "receivedAt")
_STRINGS = ("event", "writeKey")


def load_message(raw: Any, default_type: str | None = None) -> dict[str, Any]:
    """Validate one raw message; raises ``ValidationError`` with field-level messages.

    Plain messages take the fast path (the same result, proven by tests); the schema has the last
    word on everything else, and writes every error."""
    raw = legacy_type(raw, default_type)
    result = fast_load(raw, default_type, _schema)
    if result is None:
        result = schema_load(raw, default_type)
    if not result.get("messageId"):
        # Typed as the endpoint types it: the same message sent alone or in a batch is one message.
        result["messageId"] = derived_message_id({**raw, "type": result["type"]})
    return result


def legacy_type(raw: Any, default_type: str | None) -> Any:
    """Segment's legacy ``action`` key, which the Promoter destination's own documentation examples
    still use, read as ``type`` when ``type`` is absent."""
    if default_type is None and isinstance(raw, dict) and raw.get("type") is None and "action" in raw:
        return {**{k: v for k, v in raw.items() if k != "action"}, "type": raw["action"]}
    return raw


def fast_load(raw: Any, default_type: str | None, schema: Schema) -> dict[str, Any] | None:
    """``schema.load(raw)`` for a plain message, or None when the schema must have the last word."""
    if type(raw) is not dict:
        return None
    kind = default_type if default_type is not None else raw.get("type")
    if kind not in MESSAGE_TYPES:
        return None
    out: dict[str, Any] = {"type": kind}
    if not (_ids(raw, out) and _strings(raw, out) and _maps(raw, out) and _times(raw, out, schema)):
        return None
    try:
        TYPE_RULES[kind](out)
        campaign_override(out["integrations"])
    except ValidationError:
        return None
    return out


def _ids(raw: dict[str, Any], out: dict[str, Any]) -> bool:
    message_id = raw.get("messageId")
    if message_id is not None and (
        type(message_id) is not str or len(message_id) > MAX_ID or not MESSAGE_ID.match(message_id)
    ):
        return False
    out["messageId"] = message_id
    for name in _IDS:
        value = raw.get(name)
        if value is None:
            out[name] = None
            continue
        if type(value) is not str:
            return False
        text = value.strip()
        if not text or len(text) > MAX_ID:
            return False
        out[name] = text
    return True


def _strings(raw: dict[str, Any], out: dict[str, Any]) -> bool:
    for name in _STRINGS:
        value = raw.get(name)
        if value is not None and type(value) is not str:
            return False
        out[name] = value
    return True


def _maps(raw: dict[str, Any], out: dict[str, Any]) -> bool:
    for name in _MAPS:
        value = raw.get(name)
        if value is None:
            out[name] = {}
        elif type(value) is dict:
            out[name] = dict(value)
        else:
            return False
    return True


def _times(raw: dict[str, Any], out: dict[str, Any], schema: Schema) -> bool:
    for name in _TIMES:
        value = raw.get(name)
        if value is None:
            out[name] = None
            continue
        try:
            out[name] = schema.fields[name].deserialize(value, name, raw)
        except ValidationError:
            return False
    return True
