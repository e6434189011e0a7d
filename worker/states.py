"""The states a message goes through, in one place for Python and (generated) for Lua.

A message is *final* once it is delivered, ineligible, skipped or dead; nothing but an explicit replay
moves it out of a final state, however late a retry or a redelivered task arrives.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    RECEIVED = "received"
    HELD = "held"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    INELIGIBLE = "ineligible"
    SKIPPED = "skipped"
    DEAD = "dead"


FINAL: frozenset[State] = frozenset({State.DELIVERED, State.INELIGIBLE, State.SKIPPED, State.DEAD})
