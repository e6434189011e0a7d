"""The fast path accepts and refuses exactly what the marshmallow schema does (hypothesis over both)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from app.fastpath import fast_load
from app.schemas import MESSAGE_TYPES, _schema, schema_load

TIMESTAMPS = st.sampled_from(
    [
        "2024-05-01T12:00:00Z",
        "2024-05-01T12:00:00.123Z",
        "2024-05-01T12:00:00+02:00",
        "2024-05-01T12:00:00",
        "2024-05-01",
        "not a time",
        "",
        "9999-12-31T23:59:59-23:59",
        "2024-13-01T00:00:00Z",
    ]
)
TEXT = st.text(max_size=20) | st.sampled_from(["", " ", " u1 ", "a|b", "x\x01", "x\n", "é", "u" * 513])
SCALARS = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | TEXT
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
FIELD_VALUES: dict[str, Any] = {
    "type": st.sampled_from([*MESSAGE_TYPES, "batch", "Track", ""]) | SCALARS,
    "messageId": TEXT | SCALARS,
    "userId": TEXT | SCALARS,
    "anonymousId": TEXT | SCALARS,
    "previousId": TEXT | SCALARS,
    "event": st.sampled_from(["NPS", " ", "Order Completed"]) | SCALARS,
    "writeKey": TEXT | SCALARS,
    "timestamp": TIMESTAMPS | SCALARS,
    "originalTimestamp": TIMESTAMPS | SCALARS,
    "sentAt": TIMESTAMPS | SCALARS,
    "receivedAt": TIMESTAMPS | SCALARS,
    "context": JSONISH,
    "traits": st.dictionaries(st.sampled_from(["email", "Email", "name", "plan"]), SCALARS) | JSONISH,
    "properties": JSONISH,
    "integrations": st.dictionaries(
        st.sampled_from(["All", "Promoter", "Promoter.io"]),
        st.booleans() | st.none() | st.fixed_dictionaries({"campaign": SCALARS}),
    )
    | JSONISH,
    "version": SCALARS,
}


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.sets(st.sampled_from(sorted(FIELD_VALUES)), max_size=len(FIELD_VALUES)))
    return {name: draw(FIELD_VALUES[name]) for name in names}


PLAIN = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["identify", "track", "alias", "page"]),
        "messageId": st.uuids().map(str),
        "userId": st.text(min_size=1, max_size=10).filter(str.strip),
        "event": st.just("NPS"),
        "previousId": st.just("old-id"),
        "timestamp": TIMESTAMPS,
        "traits": st.fixed_dictionaries({"email": st.just("ada@example.com"), "plan": st.text(max_size=5)}),
        "properties": st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
        "context": st.just({"library": {"name": "analytics-python", "version": "2.4.0"}}),
    }
)


@st.composite
def perturbed(draw: st.DrawFn) -> dict[str, Any]:
    """A plain message with one field replaced by an edge value: the cases a fast path gets wrong."""
    message = dict(draw(PLAIN))
    name = draw(st.sampled_from(sorted(FIELD_VALUES)))
    if draw(st.booleans()):
        message.pop(name, None)
    else:
        message[name] = draw(FIELD_VALUES[name])
    return message


def slow(raw: Any, default_type: str | None) -> dict[str, Any] | None:
    try:
        return schema_load(raw, default_type)
    except ValidationError:
        return None


@settings(max_examples=1500, deadline=None)
@given(raw=messages() | perturbed() | JSONISH, default_type=st.none() | st.sampled_from(MESSAGE_TYPES))
def test_the_fast_path_never_accepts_what_the_schema_refuses_nor_differs(
    raw: Any, default_type: str | None
) -> None:
    fast = fast_load(raw, default_type, _schema)
    if fast is not None:
        assert fast == slow(raw, default_type)


@settings(max_examples=300, deadline=None)
@given(raw=PLAIN, default_type=st.none() | st.sampled_from(MESSAGE_TYPES))
def test_plain_messages_take_the_fast_path(raw: dict[str, Any], default_type: str | None) -> None:
    """What Segment's libraries send is handled without marshmallow, with the same result."""
    expected = slow(raw, default_type)
    fast = fast_load(raw, default_type, _schema)
    if expected is None:
        assert fast is None
    elif raw["timestamp"] in (
        "2024-05-01T12:00:00Z",
        "2024-05-01T12:00:00.123Z",
        "2024-05-01T12:00:00+02:00",
    ):
        assert fast == expected


def test_a_numeric_user_id_goes_the_long_way_with_the_same_result() -> None:
    raw = {"type": "track", "userId": 42, "event": "NPS"}
    assert fast_load(raw, None, _schema) is None
    assert slow(raw, None) is not None
    assert slow(raw, None)["userId"] == "42"  # type: ignore[index]
