"""Status records: one small Redis hash per message, its history, and the global counters.

The status record doubles as the dedup marker: a ref whose record exists has been accepted before,
so a Segment retry is acknowledged without being queued again. It is written in the same Lua step
that stores the event and queues its task, which is what makes "answered 200" equal "queued".

Every later state change goes through ``set_state`` in ``lua/lib/core.lua``, so history, counters and
TTLs cannot drift apart between code paths, and a final state is never left but by a replay.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from worker import keys
from worker.events import Event, loaded, primary_identity, stored, user_identity, version
from worker.scripts import Scripts, encode
from worker.states import Route, StartKind, State

# Every field of a status record (relay:msg:{<ref>}), and what it holds. docs/records.md is made from
# this table (``python -m worker.messages``), and a test keeps the scripts to these names.
STATUS_FIELDS: dict[str, str] = {
    "type": "identify, track or alias",
    "user": "the identity it was accepted under (u:<userId> or a:<anonymousId>)",
    "event": "a track's event name",
    "received": "when ingest accepted it (epoch seconds)",
    "state": "its state (worker/states.py: received, waiting, held, retrying, delivered, ineligible, "
    "skipped, dead, forgotten)",
    "detail": "why it is in that state, in words",
    "updated": "when the state last changed (absent: received)",
    "since": "when its current retry window started (absent: received)",
    "attempts": "delivery attempts in this retry window (absent: 0)",
    "queue": "the queue it runs on (absent: the high one)",
    "requeued": "how many task messages were queued for it after the first (ids <ref>|<n>)",
    "run": "how many times a task of it started; <ref>#<run> names the run that holds a person's lease",
    "barrier": "the identities this contact change is filed under, while pending (JSON list)",
    "repeats": "the identities this repeat is filed under (an identify that changed nothing when accepted)",
    "repeat": "a repeat's contact fields, to tell whether a change accepted since makes it a change again",
    "version": "an identify's version (events.version): newest wins, and a refused one's fields leave",
    "person": "the person it reached (u:<userId> or a:<anonymousId>)",
    "held_under": "the identity whose hold list it is in, while held",
    "sync": "'wait' while it owes a contact update",
    "sync_detail": "how its contact update was settled",
    "force": "'1' after a replay: its contact update is sent even if unchanged",
    "solo": "'1' while it is sent again alone after an update that carried it was refused",
    "survey": "the survey guard: '', inflight:<deadline>, sent or unknown",
    "survey_need": "'1' while it owes a survey",
    "survey_state": "the state its survey settled it in",
    "survey_detail": "how its survey was settled",
    "survey_unknown": "why its survey call's outcome is unknown",
    "survey_unknown_at": "when that was noticed",
    "survey_started": "when its last survey call started",
    "survey_email": "the email its survey was claimed for (a resend goes there or nowhere)",
    "survey_first": "the first name its survey was claimed with",
    "survey_last": "the last name its survey was claimed with",
    "duplicate_order": "'1' when its order was counted from an earlier report",
}


def records_table() -> str:
    """docs/records.md: the status record's fields."""
    rows = "\n".join(f"| `{name}` | {meaning} |" for name, meaning in STATUS_FIELDS.items())
    return (
        "# Status records\n\n"
        "One small Redis hash per message, `relay:msg:{<ref>}`, written only by the Lua scripts "
        "(`worker/lua/`). A fresh record holds only what differs from the defaults. Generated from "
        "`worker/messages.py` (`python -m worker.messages > docs/records.md`).\n\n"
        "| Field | Holds |\n|---|---|\n" + rows + "\n"
    )


@dataclass(frozen=True)
class Admission:
    """One validated message on its way in.

    ``route`` picks the queue: ``high`` (surveys), ``low`` (trait and order updates), or ``contact``
    for an identify carrying contact fields or an alias, which the accept script sends ahead (and
    lets hold back this person's surveys) only when it may change who the contact is.
    """

    event: Event
    state: State = State.RECEIVED
    detail: str = ""
    route: Route = Route.HIGH
    compare: dict[str, str] = field(default_factory=dict)

    def changes(self) -> list[str]:
        """The identities whose person this message may change (where its pending change is filed)."""
        event = self.event
        if event["type"] == "alias":
            return [user_identity(str(event["userId"])), user_identity(str(event.get("previousId") or ""))]
        return [primary_identity(event)]


@dataclass(frozen=True)
class Start:
    """What a task finds when it begins: ``GO`` with the event and its run number, or why there is
    nothing to do."""

    kind: StartKind
    state: str = ""
    attempts: int = 0
    since: float = 0.0
    event: Event | None = None
    force: bool = False
    queue: str = ""
    run: int = 0


class Messages:
    def __init__(self, client: redis.Redis, *, scripts: Scripts) -> None:
        self.client = client
        self._accept = scripts("accept")
        self._start = scripts("start")

    def accept(self, admissions: Sequence[Admission]) -> list[str]:
        """Record and queue every admission in one atomic round trip.

        Returns, per admission, the task id it was queued with, ``-`` when it was recorded but needs
        no task (skipped), or ``""`` for a duplicate.
        """
        if not admissions:
            return []
        items: list[list[Any]] = []
        for item in admissions:
            event = item.event
            route = Route(item.route)
            contact = route is Route.CONTACT
            items.append(
                [
                    event["ref"],
                    event["type"],
                    item.state.value,
                    item.detail,
                    route.value,
                    primary_identity(event),
                    item.changes() if contact else [],
                    event.get("event") or "",
                    "" if item.state is State.SKIPPED else encode(stored(event)),
                    item.compare if contact else {},
                    version(event) if contact else "",
                ]
            )
        answers: list[str] = self._accept(encode(items))
        return answers

    def start(self, ref: str) -> Start:
        """A task starts: count the attempt and load the event (or say why there is nothing to do)."""
        answer = self._start(ref)
        if answer[0] != StartKind.GO:
            return Start(kind=StartKind(answer[0]), state=answer[1])
        _, attempts, since, event, force, queue, kind, name, run = answer
        return Start(
            kind=StartKind.GO,
            attempts=int(attempts),
            since=float(since),
            event=loaded(ref, json.loads(event), kind, name),
            force=force == "1",
            queue=queue,
            run=int(run),
        )

    def status(self, ref: str) -> dict[str, Any] | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(keys.message(ref))
        pipe.lrange(keys.history(ref), 0, -1)
        record, log = pipe.execute()
        if not record:
            return None
        result: dict[str, Any] = {"ref": ref, **record}
        result["history"] = [json.loads(entry) for entry in log]
        return result

    def state(self, ref: str) -> str | None:
        value = self.client.hget(keys.message(ref), "state")
        return str(value) if value is not None else None

    def recent(self, limit: int) -> list[dict[str, str]]:
        refs = cast(list[str], self.client.lrange(keys.RECENT, 0, limit - 1))
        found = self.records(refs)
        return [{"ref": ref, **record} for ref, record in zip(refs, found, strict=True) if record]

    def records(self, refs: list[str]) -> list[dict[str, str]]:
        """The status records of ``refs`` in one round trip, ``{}`` for those that are gone."""
        if not refs:
            return []
        pipe = self.client.pipeline(transaction=False)
        for ref in refs:
            pipe.hgetall(keys.message(ref))
        found: list[dict[str, str]] = pipe.execute()
        return found

    def event(self, ref: str) -> Event | None:
        return event_of(self.client, ref)


def event_of(client: redis.Redis, ref: str) -> Event | None:
    """The stored event of ``ref``, whole (None once it is gone)."""
    (event,) = events_of(client, [ref])
    return event


def events_of(client: redis.Redis, refs: list[str]) -> list[Event | None]:
    """The stored events of ``refs`` in one round trip."""
    pipe = client.pipeline(transaction=False)
    for ref in refs:
        pipe.get(keys.event(ref))
        pipe.hmget(keys.message(ref), "type", "event")
    answers = pipe.execute() if refs else []
    found: list[Event | None] = []
    for ref, raw, (kind, name) in zip(refs, answers[::2], answers[1::2], strict=True):
        found.append(loaded(ref, json.loads(raw), kind, name) if raw and kind else None)
    return found


if __name__ == "__main__":
    print(records_table(), end="")
