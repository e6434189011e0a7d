"""How records are shown to operators: times as ISO-8601 UTC with milliseconds, numbers as numbers."""

from __future__ import annotations

from typing import Any

import pytest

from app import records
from tests.conftest import SOURCE, ref


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (1_800_000_000, "2027-01-15T08:00:00.000Z"),
        ("1800000000.5", "2027-01-15T08:00:00.500Z"),
        (1_800_000_000.1234, "2027-01-15T08:00:00.123Z"),
        ("2026-11-29T10:00:00.123+00:00", "2026-11-29T10:00:00.123Z"),
        ("2026-11-29T12:00:00+02:00", "2026-11-29T10:00:00.000Z"),
        ("2026-11-29T10:00:00Z", "2026-11-29T10:00:00.000Z"),
        ("2026-11-29T10:00:00", "2026-11-29T10:00:00.000Z"),
        (None, None),
        ("", None),
        ("soon", None),
        (True, None),
        (1e20, None),
    ],
)
def test_times_are_iso_utc_with_milliseconds(value: Any, shown: str | None) -> None:
    assert records.when(value) == shown


@pytest.mark.parametrize(("value", "number"), [("3", 3), (2.0, 2), ("", 0), (None, 0), ("x", 0), ("4.0", 4)])
def test_counters_are_integers(value: Any, number: int) -> None:
    assert records.integer(value) == number


def test_message_record() -> None:
    record = {
        "ref": ref("m1"), "type": "track", "user": "u:u1", "state": "retrying", "attempts": "2",
        "received": "1800000000", "updated": "1800000001.25", "since": "1800000000", "run": "3",
        "sync": "wait", "person": "u:u1", "survey": "inflight:1800000030.5",
        "survey_started": "1800000000.5",
        "history": [{"at": 1800000001.25, "state": "retrying", "detail": "transient: 503"}],
    }  # fmt: skip
    shown = records.message(record)
    assert shown == {
        "ref": ref("m1"), "source": SOURCE, "messageId": "m1", "type": "track", "user": "u:u1",
        "state": "retrying", "detail": "", "attempts": 2, "received": "2027-01-15T08:00:00.000Z",
        "updated": "2027-01-15T08:00:01.250Z", "since": "2027-01-15T08:00:00.000Z",
        "survey": "inflight", "survey_deadline": "2027-01-15T08:00:30.500Z",
        "survey_started": "2027-01-15T08:00:00.500Z",
        "history": [
            {"at": "2027-01-15T08:00:00.000Z", "state": "received", "detail": "accepted by ingest"},
            {"at": "2027-01-15T08:00:01.250Z", "state": "retrying", "detail": "transient: 503"},
        ],
    }  # fmt: skip
    assert records.message({"ref": "x", "survey": "sent"})["survey"] == "sent"


def test_dead_letter_with_evidence() -> None:
    letter: dict[str, Any] = {
        "id": ref("d1"), "reason": "survey outcome unknown", "attempts": 2.0, "at": 1800000000.5,
        "received": 1800000000, "type": "track", "user": "u:u1", "event_name": "NPS", "last_response": "",
        "evidence": {"cause": "worker stopped mid-call", "attempts": 2.0, "noticed_by": "h:1",
                     "call_started": "2027-01-15T08:00:00.000+00:00", "call_seconds": 1.5},
        "event": None,
    }  # fmt: skip
    shown = records.dead_letter(letter)
    assert shown["attempts"] == 2
    assert isinstance(shown["attempts"], int)
    assert (shown["at"], shown["received"]) == ("2027-01-15T08:00:00.500Z", "2027-01-15T08:00:00.000Z")
    assert (shown["source"], shown["messageId"]) == (SOURCE, "d1")
    assert shown["evidence"] == {
        "cause": "worker stopped mid-call", "attempts": 2, "noticed_by": "h:1",
        "call_started": "2027-01-15T08:00:00.000Z", "call_seconds": 1.5,
    }  # fmt: skip
    assert letter["evidence"]["attempts"] == 2.0, "the stored record is not changed"


def test_person_and_held() -> None:
    assert records.person(None) is None
    person = records.person(
        {"orders": "2", "order_attributes": {"order_count": "2", "last_order_total": "9.90"}}
    )
    assert person == {"orders": 2, "order_attributes": {"order_count": 2, "last_order_total": "9.90"}}
    item = {"ref": ref("h1"), "held_at": "1800000000.25"}
    assert records.held(item, {}) == {
        "ref": ref("h1"), "source": SOURCE, "messageId": "h1", "held_at": "2027-01-15T08:00:00.250Z",
        "type": None, "event": None, "state": None, "detail": None,
    }  # fmt: skip
    found = records.held(item, {"type": "track", "event": "NPS", "state": "held", "detail": "waiting"})
    assert (found["type"], found["event"], found["state"], found["detail"]) == (
        "track",
        "NPS",
        "held",
        "waiting",
    )


def test_every_field_the_admin_view_hides_or_formats_is_one_the_scripts_write() -> None:
    """A name here that no script writes is dead code, or a field renamed in Lua and forgotten here."""
    from worker.messages import STATUS_FIELDS

    named = set(records._HIDDEN) | set(records._TIMES) | set(records._NUMBERS)
    assert named - {"at"} <= set(STATUS_FIELDS), sorted(named - set(STATUS_FIELDS) - {"at"})
