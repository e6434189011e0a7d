"""Every state and verdict the Lua scripts write or answer, defined once here and generated into Lua.

A message is *final* once it is delivered, ineligible, skipped, dead or forgotten; nothing but an
explicit replay moves it out of a final state, however late a retry or a redelivered task arrives.
The other enums are the answers of the scripts: Python reads them back into these types, and the
scripts name them through the generated tables (``STATE.HELD``, ``PLAN.SYNC``...), never as literals
(``tests/test_scripts.py`` checks that no such literal creeps back into the Lua).
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Where a message is. ``received``: queued to run (first time, released, retried or replayed);
    ``waiting``: its contact update rides along with another message's call, which will settle it."""

    RECEIVED = "received"
    WAITING = "waiting"
    HELD = "held"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    INELIGIBLE = "ineligible"
    SKIPPED = "skipped"
    DEAD = "dead"
    FORGOTTEN = "forgotten"


FINAL: frozenset[State] = frozenset(
    {State.DELIVERED, State.INELIGIBLE, State.SKIPPED, State.DEAD, State.FORGOTTEN}
)


class StartKind(StrEnum):
    """What a task finds when it begins (``messages.start``)."""

    GO = "go"
    MISSING = "missing"
    FINAL = "final"
    HELD = "held"


class Plan(StrEnum):
    """What a person script decided for a message's contact update or track."""

    SYNC = "sync"  # send the person's contact now (this message holds the lease)
    COALESCED = "coalesced"  # another message's call carries it
    HELD = "held"  # it waits for the person to be known, or for a contact change to be delivered
    DONE = "done"  # nothing (more) to send
    DEAD = "dead"  # buried by the script
    FINAL = "final"  # the message was final already
    GO = "go"  # a track with its parts: a contact update and/or a survey
    LOST = "lost"  # after a wait, the lease went to another message meanwhile
    WAIT = "wait"  # the lease is taken and this message may not ride along: come back later


class Claim(StrEnum):
    """The answer to a survey claim."""

    GO = "go"  # call now (resend after an unknown outcome when ``resend`` is set)
    SENT = "sent"  # settled already
    UNKNOWN = "unknown"  # an earlier call may have reached Promoter (dead-letter policy)
    BUSY = "busy"  # a call for this message, or this contact's cooldown claim, is in flight elsewhere
    WAIT = "wait"  # no budget yet
    COOLDOWN = "cooldown"  # surveyed within SURVEY_COOLDOWN_DAYS
    HELD = "held"  # a contact change of this person is on its way: the message waits for it


class SurveyOutcome(StrEnum):
    """How a survey call ended, as ``people.settle_survey`` records it."""

    SENT = "sent"
    INELIGIBLE = "ineligible"
    UNKNOWN = "unknown"  # it may have reached Promoter
    FAILED = "failed"  # it certainly did not
    COOLDOWN = "cooldown"  # not made: surveyed recently


class Replay(StrEnum):
    """What replaying a dead letter answered."""

    REPLAYED = "replayed"
    MISSING = "missing"  # no such dead letter
    SURVEYED = "surveyed"  # its survey is known sent: a replay would survey the person twice
    CALLING = "calling"  # its survey call is still being made: whether it reached Promoter is not known yet
    EXPIRED = "expired"  # its stored event is gone


class SyncFailure(StrEnum):
    """How a contact update failed, as ``people.failed`` records it."""

    TRANSIENT = "transient"
    UNCERTAIN = "uncertain"
    WAIT = "wait"
    PERMANENT = "permanent"


class Priority(StrEnum):
    HIGH = "high"
    LOW = "low"


# A status record's 'sync' field while the message owes a contact update (see docs/records.md).
SYNC_OWED = "wait"


class Route(StrEnum):
    """Where ingest sends a message: a queue, or ``contact`` (the accept script decides)."""

    HIGH = "high"
    LOW = "low"
    CONTACT = "contact"


# Every enum the Lua scripts get as a table of the same name.
LUA_ENUMS: dict[str, type[StrEnum]] = {
    "STATE": State,
    "START": StartKind,
    "PLAN": Plan,
    "CLAIM": Claim,
    "SURVEY": SurveyOutcome,
    "FAILURE": SyncFailure,
    "REPLAY": Replay,
    "PRIORITY": Priority,
    "ROUTE": Route,
}
