"""marshmallow schemas for the Segment spec, and the reduction of a message to a worker ``Event``.

Segment's libraries disagree on details (snake_case vs camelCase traits, ``Z`` vs ``+00:00``,
explicit ``null`` everywhere, numeric user ids), so the schemas are lenient where the spec is and
strict where delivery depends on it: a message that would only fail later in the worker is
rejected here with a field error, because Segment never retries a 4xx but does retry a 5xx.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)

from worker.events import Event, iso, make_ref, parse_iso

MESSAGE_TYPES = ("identify", "track", "page", "screen", "group", "alias")
SHORT_TYPES = {"i": "identify", "t": "track", "p": "page", "s": "screen", "g": "group", "a": "alias"}
PROMOTER_KEYS = ("Promoter", "Promoter.io")
MAX_ID = 512
# ``|`` joins a ref to other fields where both are stored (held items, orders). ``\Z``, not ``$``,
# which would let one trailing newline through.
MESSAGE_ID = re.compile(r"[^|\x00-\x1f]*\Z")
_email = validate.Email(error="Not a valid email address.")


class Identifier(fields.Field[str]):
    """A user or anonymous id: Segment allows strings, and many senders send numbers."""

    default_error_messages = {"invalid": "Must be a non-empty string or a number."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:  # noqa: ARG002
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.make_error("invalid")
        text = str(value).strip()
        if not text or len(text) > MAX_ID:
            raise self.make_error("invalid")
        return text


class Mapping(fields.Dict):
    """An object that may also arrive as an explicit null, which means empty."""

    def deserialize(self, value: Any, attr: str | None = None, data: Any = None, **kwargs: Any) -> Any:
        if value is None:
            return {}
        return super().deserialize(value, attr, data, **kwargs)


class Timestamp(fields.DateTime):
    """Both ``...Z`` and ``...+00:00`` come in; one UTC spelling goes out."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        parsed: datetime = super()._deserialize(value, attr, data, **kwargs)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        try:
            return iso(parsed)
        except OverflowError:
            raise self.make_error("invalid", input=value, obj_type=self.OBJ_TYPE) from None


class MessageSchema(Schema):
    """Fields every Segment message may carry; anything else (version, channel, ...) is ignored."""

    class Meta:
        unknown = EXCLUDE

    type = fields.String(required=True, validate=validate.OneOf(MESSAGE_TYPES))
    messageId = fields.String(
        load_default=None,
        allow_none=True,
        validate=[
            validate.Length(0, MAX_ID),
            validate.Regexp(MESSAGE_ID, error="May not contain '|' or control characters."),
        ],
    )
    userId = Identifier(load_default=None, allow_none=True)
    anonymousId = Identifier(load_default=None, allow_none=True)
    timestamp = Timestamp(load_default=None, allow_none=True)
    originalTimestamp = Timestamp(load_default=None, allow_none=True)
    sentAt = Timestamp(load_default=None, allow_none=True)
    receivedAt = Timestamp(load_default=None, allow_none=True)
    context = Mapping(load_default=dict, allow_none=True)
    integrations = Mapping(load_default=dict, allow_none=True)
    traits = Mapping(load_default=dict, allow_none=True)
    properties = Mapping(load_default=dict, allow_none=True)
    event = fields.String(load_default=None, allow_none=True)
    previousId = Identifier(load_default=None, allow_none=True)
    writeKey = fields.String(load_default=None, allow_none=True, load_only=True)

    @validates_schema
    def _check_type_rules(self, data: dict[str, Any], **_: Any) -> None:
        rule = TYPE_RULES.get(data.get("type") or "")
        if rule is not None:
            rule(data)
        campaign_override(data.get("integrations") or {})


def _someone(data: dict[str, Any]) -> None:
    if not data.get("userId") and not data.get("anonymousId"):
        raise ValidationError("userId or anonymousId is required.", "userId")


def _required(data: dict[str, Any], *names: str) -> None:
    for name in names:
        if not data.get(name) or not str(data[name]).strip():
            raise ValidationError("Missing data for required field.", name)


def _identify_rules(data: dict[str, Any]) -> None:
    """Without an email it is a trait update: accepted, and held until the person's email is known
    (Segment never retries a 4xx, so refusing it would lose the traits)."""
    _someone(data)
    email = _find_email(data.get("traits") or {})
    if email is not None:
        try:
            _email(email)
        except ValidationError as error:
            raise ValidationError({"traits": {"email": error.messages}}) from None


def _track_rules(data: dict[str, Any]) -> None:
    _required(data, "event")
    _someone(data)


TYPE_RULES: dict[str, Any] = {
    "identify": _identify_rules,
    "track": _track_rules,
    "alias": lambda data: _required(data, "previousId", "userId"),
    "page": _someone,
    "screen": _someone,
    "group": _someone,
}


# How senders spell the email trait; the canonical spelling first.
EMAIL_KEYS = ("email", "Email", "EMAIL")


def _find_email(traits: dict[str, Any]) -> str | None:
    for key in EMAIL_KEYS:
        value = traits.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise ValidationError({"traits": {"email": ["Not a valid string."]}})
            return value.strip()
    return None


def normalize_traits(traits: dict[str, Any]) -> dict[str, Any]:
    """Canonical ``email``/``firstName``/``lastName`` out of whichever spelling the sender used."""
    out = {k: v for k, v in traits.items() if v is not None}
    email = _find_email(out)
    for key in EMAIL_KEYS[1:]:
        out.pop(key, None)
    if email:
        out["email"] = email
    for canonical, snake in (("firstName", "first_name"), ("lastName", "last_name")):
        value = out.pop(snake, None)
        if not out.get(canonical) and value:
            out[canonical] = value
        if canonical in out:
            out[canonical] = str(out[canonical]).strip()
    name = out.get("name")
    if isinstance(name, str) and name.strip() and not out.get("firstName") and not out.get("lastName"):
        first, _, last = name.strip().partition(" ")
        out["firstName"], out["lastName"] = first, last.strip()
    return out


def promoter_enabled(integrations: dict[str, Any]) -> bool:
    """Segment's rule: a destination explicitly off is off; ``All: false`` turns off the unnamed."""
    for key in PROMOTER_KEYS:
        value = integrations.get(key)
        if value is not None:
            return value is not False
    return integrations.get("All", True) is not False


def campaign_override(integrations: dict[str, Any]) -> int | None:
    for key in PROMOTER_KEYS:
        options = integrations.get(key)
        if isinstance(options, dict) and options.get("campaign") is not None:
            campaign = options["campaign"]
            try:
                number = int(str(campaign))
            except ValueError:
                number = 0
            if isinstance(campaign, bool) or number <= 0:
                raise ValidationError({"integrations": {key: {"campaign": ["Not a valid campaign id."]}}})
            return number
    return None


def derived_message_id(raw: dict[str, Any]) -> str:
    """A messageId for a message sent without one, from its content: a resend of the same body is
    then a duplicate. What changes between two sends of one message (sentAt, the write key) is left out.
    """
    content = {k: v for k, v in raw.items() if k not in ("messageId", "sentAt", "writeKey", "receivedAt")}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":"), default=str).encode())
    return "relay-" + digest.hexdigest()[:32]


def event_time(message: dict[str, Any], received: datetime, corrected: bool) -> str:
    """When it happened. ``timestamp``, else ``originalTimestamp``, else when it was received; for
    messages straight from a client (``corrected``), shifted by the client's clock error the way Segment
    does it: received - (sentAt - timestamp), unless that leaves the calendar. Never later than when it
    was received."""
    received_text = iso(received)
    stamp = message.get("timestamp") or message.get("originalTimestamp")
    if not stamp:
        stamp = message.get("receivedAt") if not corrected else None
    if not stamp:
        return received_text
    sent = message.get("sentAt")
    if corrected and sent:
        try:
            return iso(min(received - (parse_iso(sent) - parse_iso(stamp)), received))
        except OverflowError:
            pass  # a skew that leaves the calendar cannot be applied: the timestamp as sent
    # The schema wrote both in one spelling (UTC, milliseconds, Z): they compare as text.
    return min(str(stamp), received_text)


def _context_traits(message: dict[str, Any]) -> dict[str, Any]:
    """What the sender knew of the user when it sent a track. Only informational: an email in it that
    is not text is left out rather than refusing the track (Segment never sends a 4xx again)."""
    traits = (message.get("context") or {}).get("traits") or {}
    if not isinstance(traits, dict):
        return {}
    try:
        _find_email(traits)
    except ValidationError:
        return {k: v for k, v in traits.items() if k not in EMAIL_KEYS}
    return traits


def to_event(message: dict[str, Any], source: str, received: datetime, corrected: bool) -> Event:
    """Reduce a validated message to the worker's ``Event`` contract."""
    kind = message["type"]
    traits = message.get("traits") or {}
    if kind == "track" and not traits:
        traits = _context_traits(message)
    message_id = message["messageId"]
    return Event(
        ref=make_ref(source, message_id),
        messageId=message_id,
        source=source,
        type=kind,
        userId=message.get("userId"),
        anonymousId=message.get("anonymousId"),
        traits=normalize_traits(traits) if isinstance(traits, dict) else {},
        event=(message.get("event") or "").strip() or None,
        properties=message.get("properties") or {},
        previousId=message.get("previousId"),
        timestamp=event_time(message, received, corrected),
        campaignId=campaign_override(message.get("integrations") or {}),
    )


_schema = MessageSchema()


def schema_load(raw: Any, default_type: str | None = None) -> dict[str, Any]:
    """marshmallow alone (the schema of record)."""
    if not isinstance(raw, dict):
        raise ValidationError({"_schema": ["Each message must be a JSON object."]})
    if default_type is not None:
        raw = {**raw, "type": default_type}
    result: dict[str, Any] = _schema.load(raw)
    return result
