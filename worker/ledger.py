"""Status records: one small Redis hash per message, its history, and the global counters.

The status record doubles as the dedup marker: a ref whose record exists has been accepted before,
so a Segment retry is acknowledged without being queued again. It is written in the same Lua step
that stores the event and queues its task, which is what makes "answered 200" equal "queued".

Every later state change goes through ``set_state`` in ``lua/prelude.lua``, so history, counters and
TTLs cannot drift apart between code paths, and a final state is never left but by a replay.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from worker import keys
from worker.events import Event, identities, loaded, primary_identity, stored
from worker.scripts import Lua, encode
from worker.states import State


@dataclass(frozen=True)
class Admission:
    """One validated message on its way in.

    ``route`` picks the queue: ``high`` (surveys, aliases), ``low`` (trait and order updates), or
    ``contact`` for an identify carrying contact fields, which the accept script sends ahead (and
    lets hold back this person's surveys) only when it may change who the contact is.
    """

    event: Event
    state: State = State.RECEIVED
    detail: str = ""
    route: str = "high"
    compare: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Start:
    """What a task finds when it begins: ``go`` with the event, or why there is nothing to do."""

    kind: str
    state: str = ""
    attempts: int = 0
    since: float = 0.0
    event: Event | None = None
    force: bool = False
    queue: str = ""


class Ledger:
    def __init__(self, client: redis.Redis, *, lua: Lua) -> None:
        self.client = client
        self.lua = lua

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
            contact = item.route == "contact"
            items.append(
                [
                    event["ref"],
                    event["type"],
                    item.state.value,
                    item.detail,
                    item.route,
                    primary_identity(event),
                    identities(event) if contact else [],
                    event.get("event") or "",
                    "" if item.state is State.SKIPPED else encode(stored(event)),
                    item.compare if contact else {},
                ]
            )
        answers: list[str] = self.lua.accept(encode(items))
        return answers

    def begin(self, ref: str) -> Start:
        """A task starts: count the attempt and load the event (or say why there is nothing to do)."""
        answer = self.lua.begin(ref)
        if answer[0] != "go":
            return Start(kind=answer[0], state=answer[1])
        _, attempts, since, event, force, queue, kind, name = answer
        return Start(
            kind="go",
            attempts=int(attempts),
            since=float(since),
            event=loaded(ref, json.loads(event), kind, name),
            force=force == "1",
            queue=queue,
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
