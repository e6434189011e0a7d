"""Dead letters: messages the relay gave up on, kept so an operator can read, replay or discard them.

A record holds why it died, how many attempts were made, Promoter's last answer and, for a survey of
unknown outcome, the evidence (when each attempt started, whether the call timed out or its worker
died); the event itself stays beside the status record. Replay queues the same ref again with a
fresh retry window, so idempotency still holds; it refuses a message whose survey is known to have
been sent. Dead letters expire after ``DEAD_LETTER_TTL_SECONDS`` and are capped at ``DEAD_LETTER_MAX``
(oldest dropped first), both counted in ``relay_dead_letters_dropped_total``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import redis

from worker import keys
from worker.events import split_ref
from worker.messages import event_of, events_of
from worker.scripts import Scripts, encode

BATCH = 500


class DeadLetters:
    def __init__(
        self,
        client: redis.Redis,
        *,
        scripts: Scripts,
        ttl: int,
        cap: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self._bury = scripts("bury")
        self._replay = scripts("replay")
        self._discard = scripts("discard")
        self.ttl = ttl
        self.cap = cap
        self.clock = clock

    def bury(self, ref: str, reason: str, response: str = "", evidence: dict[str, Any] | None = None) -> str:
        """The message's state afterwards: a late failure never overwrites a final outcome."""
        state: str = self._bury(ref, reason, response[:2000], encode(evidence) if evidence else "")
        return state

    def count(self) -> int:
        return int(self.client.zcard(keys.DEAD_INDEX))

    def get(self, ref: str) -> dict[str, Any] | None:
        raw = self.client.hget(keys.DEAD, ref)
        return self._public(json.loads(raw)) if raw else None

    def resolve(self, text: str) -> str:
        """A ref as given, or the ref of the dead letter whose messageId is ``text`` (any source, also
        a write key since removed); ``text`` itself when there is none. An operator's lookup: it
        reads the index, which ``DEAD_LETTER_MAX`` bounds."""
        if split_ref(text)[0]:
            return text
        for ref in cast(list[str], self.client.zrange(keys.DEAD_INDEX, 0, -1)):
            if split_ref(ref)[1] == text:
                return ref
        return text

    def list(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        refs = cast(list[str], self.client.zrevrange(keys.DEAD_INDEX, offset, offset + limit - 1))
        if not refs:
            return []
        records = [json.loads(raw) for raw in self.client.hmget(keys.DEAD, refs) if raw]
        found = events_of(self.client, [record["id"] for record in records])
        return [{**record, "event": event} for record, event in zip(records, found, strict=True)]

    def _public(self, record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "event": event_of(self.client, record["id"])}

    def replay(self, ref: str) -> str:
        """``replayed``, or why not: ``missing``, ``surveyed`` (would survey twice), ``calling`` (its
        survey call is still being made), ``expired``."""
        answer: str = self._replay(ref)
        return answer

    def replay_all(self) -> dict[str, int]:
        """Replay the dead letters there are now; those that die again stay for the next look."""
        outcomes: dict[str, int] = {}
        for ref in cast(list[str], self.client.zrange(keys.DEAD_INDEX, 0, -1)):
            outcome = self.replay(ref)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        return outcomes

    def discard(self, refs: Iterable[str], why: str = "discarded") -> int:
        dropped, batch = 0, []
        for ref in refs:
            batch.append(ref)
            if len(batch) == BATCH:
                dropped += int(self._discard(why, *batch))
                batch = []
        if batch:
            dropped += int(self._discard(why, *batch))
        return dropped

    def discard_all(self, older_than: float | None = None) -> int:
        """Every dead letter, or those buried more than ``older_than`` seconds ago."""
        cutoff = "+inf" if older_than is None else f"{self.clock() - older_than:.3f}"
        return self.discard(cast(list[str], self.client.zrangebyscore(keys.DEAD_INDEX, "-inf", cutoff)))

    def prune(self) -> dict[str, int]:
        """Retention: drop what is older than the TTL, then the oldest beyond the cap."""
        cutoff = f"{self.clock() - self.ttl:.3f}"
        expired = self.discard(
            cast(list[str], self.client.zrangebyscore(keys.DEAD_INDEX, "-inf", cutoff)), why="expired"
        )
        excess = self.count() - self.cap
        capped = 0
        if excess > 0:
            capped = self.discard(
                cast(list[str], self.client.zrange(keys.DEAD_INDEX, 0, excess - 1)), why="cap"
            )
        return {"expired": expired, "cap": capped}
