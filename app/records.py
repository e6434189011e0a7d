"""How records are shown to operators (admin API, dashboard, CLI): numbers as numbers, times as
ISO-8601 in UTC, the ref split into source and messageId, and nothing internal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from worker.events import iso, parse_iso, split_ref

_TIMES = ("received", "updated", "since", "at", "survey_unknown_at", "survey_started")
_NUMBERS = ("attempts",)
# Bookkeeping of the scripts (docs/records.md), and the contact a survey was claimed for (personal data:
# the person view shows the contact).
_HIDDEN = ("barrier", "repeats", "repeat", "version", "person", "force", "sync", "sync_detail",
           "survey_need", "survey_state", "survey_detail", "duplicate_order", "run", "solo",
           "survey_email", "survey_first", "survey_last")  # fmt: skip
# Evidence of an unknown survey outcome: which of its fields are times, which are whole numbers.
_EVIDENCE_TIMES = ("call_started", "at", "survey_started", "survey_unknown_at")
_EVIDENCE_INTEGERS = ("attempts",)
_INFLIGHT = "inflight:"


def when(value: Any) -> str | None:
    """Epoch seconds (number or text), or an ISO-8601 text, as ISO-8601 UTC with milliseconds."""
    if value in (None, "") or isinstance(value, bool):
        return None
    moment = _from_epoch(value) or _from_iso(value)
    return iso(moment) if moment else None


def _from_epoch(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def _from_iso(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = parse_iso(value)
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def integer(value: Any) -> int:
    """A counter stored as text (or a float from Lua) as an int; 0 when absent or unreadable."""
    try:
        return int(float(value or 0))
    except (TypeError, ValueError, OverflowError):
        return 0


def message(record: dict[str, Any]) -> dict[str, Any]:
    # A fresh record leaves out what is at its default (see lua/messages.accept.lua).
    received = record.get("received")
    record = {"attempts": 0, "detail": "", "since": received, "updated": received, **record}
    out: dict[str, Any] = {}
    for name, value in record.items():
        if name in _HIDDEN:
            continue
        if name in _TIMES:
            out[name] = when(value)
        elif name in _NUMBERS:
            out[name] = integer(value)
        elif name == "history":
            out[name] = history(record)
        elif name == "survey":
            out.update(_survey_guard(str(value)))
        else:
            out[name] = value
    ref = str(record.get("ref") or "")
    if ref:
        out["source"], out["messageId"] = split_ref(ref)
    return out


def _survey_guard(value: str) -> dict[str, Any]:
    """The survey guard ``inflight:<deadline>`` as a state and a time; others as they are."""
    if value.startswith(_INFLIGHT):
        return {"survey": "inflight", "survey_deadline": when(value[len(_INFLIGHT) :])}
    return {"survey": value}


def history(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's history, starting with when it was received (not stored as an entry)."""
    entries = [{"at": when(record.get("received")), "state": "received", "detail": "accepted by ingest"}]
    for entry in record.get("history") or []:
        entries.append(
            {"at": when(entry.get("at")), "state": entry.get("state"), "detail": entry.get("detail")}
        )
    return entries


def dead_letter(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k not in ("at", "received")}
    out["at"] = when(record.get("at"))
    out["received"] = when(record.get("received"))
    out["attempts"] = integer(record.get("attempts"))
    out["source"], out["messageId"] = split_ref(str(record.get("id", "")))
    if isinstance(record.get("evidence"), dict):
        out["evidence"] = evidence(record["evidence"])
    return out


def evidence(data: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for name in _EVIDENCE_TIMES:
        if name in out:
            out[name] = when(out[name])
    for name in _EVIDENCE_INTEGERS:
        if name in out:
            out[name] = integer(out[name])
    return out


def person(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """A person as ``People.person_of`` reads it, with its order count as a number."""
    if data is None:
        return None
    orders = dict(data.get("order_attributes") or {})
    if "order_count" in orders:
        orders["order_count"] = integer(orders["order_count"])
    return {**data, "orders": integer(data.get("orders")), "order_attributes": orders}


def held(item: dict[str, str], record: dict[str, Any] | None) -> dict[str, Any]:
    """One held message of an identity, with what its status record says about it."""
    source, message_id = split_ref(item["ref"])
    found = record or {}
    return {
        "ref": item["ref"],
        "source": source,
        "messageId": message_id,
        "held_at": when(item.get("held_at")),
        "type": found.get("type"),
        "event": found.get("event") or None,
        "state": found.get("state"),
        "detail": found.get("detail"),
    }
