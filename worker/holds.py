"""Held messages: a track waits until Promoter knows its person (and no newer identify is on its way).

Holding and releasing happen inside the person scripts (``lua/lib/holds.lua``: ``hold``,
``release_person``), atomically with the decision that calls for them. A held item is stored as
``<held-at>|<ref>`` under the identity it arrived with, so scripts read its age without decoding JSON;
what the message needs to run again (its type and queue) is in its status record.

This module expires what waited too long, in bounded batches until nothing due is left: a track of a
user never identified becomes a dead letter ("never identified"); one of an anonymous visitor, by
default, ends ``skipped``, since most anonymous visitors never sign up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

import redis

from worker import keys
from worker.scripts import Scripts

BATCH = 200


class Holds:
    def __init__(
        self,
        client: redis.Redis,
        *,
        scripts: Scripts,
        user_ttl: int,
        anonymous_ttl: int,
        anonymous_outcome: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self._expire = scripts("expire")
        self.user_ttl = user_ttl
        self.anonymous_ttl = anonymous_ttl
        self.anonymous_outcome = "skip" if anonymous_outcome == "skip" else "dead-letter"
        self.clock = clock

    def expire(self, time_budget: float = 20.0) -> int:
        """Expire everything due, ``BATCH`` identities per script call, within ``time_budget`` seconds."""
        started = time.monotonic()
        expired = 0
        for kind, ttl, outcome in (
            ("u", self.user_ttl, "dead-letter"),
            ("a", self.anonymous_ttl, self.anonymous_outcome),
        ):
            more = 1
            while more and time.monotonic() - started < time_budget:
                count, more = self._expire(kind, f"{self.clock() - ttl:.3f}", BATCH, outcome)
                expired += int(count)
        return expired

    def held_messages(self, identity: str, limit: int = 100) -> list[dict[str, str]]:
        items = cast(list[str], self.client.lrange(keys.held(identity), 0, limit - 1))
        out = []
        for item in items:
            at, ref = item.split("|", 1)
            out.append({"ref": ref, "held_at": at})
        return out

    def held_count(self, identity: str) -> int:
        return int(self.client.llen(keys.held(identity)))
