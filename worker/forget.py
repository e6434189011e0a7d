"""Forgetting a person (DESIGN.md, "Personal data"; issue 21): erasure everywhere, then suppression.

``Forgetter.forget`` runs ``people.forget`` (one atomic step: the persons reached by the userIds and
emails, every identity they are known by, every message filed under any of them, their indexes and
markers; see ``lua/people.forget.lua``), then sweeps the status records and dead letters for messages
filed before the identity indexes existed, and drops the survey cooldown markers of their emails.
A message in flight meanwhile finds its record ``forgotten`` when its call returns, and the scripts
it calls then write nothing personal.

The suppression markers are computed here (``worker/suppression.py``): the script names the
identities it found that have none yet, and is called again with them, so it never needs the key.

A forget is a *job* (``relay:forget:job:{<id>}``): what it found and did, counted, never whom; and,
with ``at_promoter``, the removal of the contacts at Promoter (``POST /contacts/remove/``), through the
shared budget and retried like any call. Only while that removal is pending does the job hold the
emails it must remove; they go as soon as it is settled.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from worker import keys, taskmessages
from worker.events import user_identity
from worker.promoter import AccountError, PermanentError, PromoterClient, ThrottledError, TransientError
from worker.schedule import backoff
from worker.scripts import Scripts, encode
from worker.states import State
from worker.suppression import email_identity, marker

JOB_TTL = 7 * 86400
# The Celery task that removes a job's contacts at Promoter (worker/tasks.py), on the control queue.
REMOVE_TASK = "relay.forget_at_promoter"
SWEEP_BATCH = 500
_GLOB_SPECIAL = "\\*?[]"


@dataclass(frozen=True)
class Forgotten:
    """What a forget found and erased. ``emails`` (the persons' and their surveys') is for the removal
    at Promoter and the caller's eyes only: it is never logged, nor kept but while a removal is pending."""

    persons: int
    identities: int
    messages: int
    unknown_users: list[str]
    unknown_emails: list[str]
    suppressed: bool
    emails: list[str] = field(default_factory=list, repr=False)

    @property
    def found(self) -> bool:
        return self.persons > 0 or self.messages > 0


def _glob(text: str) -> str:
    return "".join("\\" + char if char in _GLOB_SPECIAL else char for char in text)


class Forgetter:
    def __init__(
        self,
        client: redis.Redis,
        *,
        scripts: Scripts,
        suppression_key: str,
        suppression_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.clock = clock
        self._key = suppression_key
        self._seconds = suppression_seconds if suppression_key else 0
        self._forget = scripts("forget")
        self._forget_messages = scripts("forget_messages")

    @property
    def suppressing(self) -> bool:
        return self._seconds > 0

    def forget(self, user_ids: Iterable[str], emails: Iterable[str] = ()) -> Forgotten:
        """Erase the persons these userIds and emails reach; suppress them while suppression is on."""
        users, addresses = sorted(set(user_ids)), sorted({e.strip() for e in emails if e.strip()})
        asked = [user_identity(u) for u in users] + [email_identity(e) for e in addresses]
        markers = {identity: marker(self._key, identity) for identity in asked} if self.suppressing else {}
        for _ in range(5):
            request = {"users": users, "emails": addresses, "markers": markers, "suppress": self._seconds}
            answer = json.loads(self._forget(encode(request)))
            if "retry" not in answer:
                break
            markers.update({identity: marker(self._key, identity) for identity in answer["retry"]})
        else:
            raise RuntimeError("people.forget kept finding new identities; try again")
        persons = [str(ref) for ref in answer.get("persons") or []]
        identities = {str(i) for i in answer.get("identities") or []}
        swept, survey_emails = self._sweep(identities, set(persons))
        self._drop_email_index(set(persons))
        found_emails = list(answer.get("emails") or []) + survey_emails
        self._drop_cooldowns(found_emails)
        unique: dict[str, str] = {}
        for email in found_emails:
            unique.setdefault(email.lower(), email)
        return Forgotten(
            persons=len(persons),
            identities=len(identities),
            messages=int(answer.get("messages") or 0) + swept,
            unknown_users=list(answer.get("unknown_users") or []),
            unknown_emails=list(answer.get("unknown_emails") or []),
            suppressed=self.suppressing,
            emails=sorted(unique.values()),
        )

    def _sweep(self, identities: set[str], persons: set[str]) -> tuple[int, list[str]]:
        """Messages of these identities the indexes do not name (accepted before they existed)."""
        if not identities:
            return 0, []
        found = self._unindexed(identities, persons)
        for ref, raw in self.client.hscan_iter(keys.DEAD, count=1000):
            if json.loads(raw).get("user") in identities and ref not in found:
                found.append(str(ref))
        erased, emails = 0, []
        for start in range(0, len(found), SWEEP_BATCH):
            answer = json.loads(self._forget_messages(*found[start : start + SWEEP_BATCH]))
            erased += int(answer.get("messages") or 0)
            emails += list(answer.get("emails") or [])
        return erased, emails

    def _unindexed(self, identities: set[str], persons: set[str]) -> list[str]:
        """Refs of status records (not forgotten yet) filed under these identities or persons."""
        prefix, suffix = keys.message("\x00").split("\x00")
        pattern = _glob(prefix) + "*" + _glob(suffix)
        names = [str(n) for n in self.client.scan_iter(match=pattern, count=1000, _type="hash")]
        found = []
        for start in range(0, len(names), SWEEP_BATCH):
            batch = names[start : start + SWEEP_BATCH]
            pipe = self.client.pipeline(transaction=False)
            for name in batch:
                pipe.hmget(name, "user", "person", "state")
            for name, (user, person, state) in zip(batch, pipe.execute(), strict=True):
                if state != State.FORGOTTEN and (user in identities or person in persons):
                    found.append(name[len(prefix) : len(name) - len(suffix)])
        return found

    def _drop_email_index(self, persons: set[str]) -> None:
        """Email index entries still naming these persons: those of emails their records no longer hold
        (an email replaced since Promoter took it), which the script cannot name."""
        if not persons:
            return
        prefix, suffix = keys.email("\x00").split("\x00")
        names = [str(n) for n in self.client.scan_iter(match=_glob(prefix) + "*" + _glob(suffix), count=1000)]
        for start in range(0, len(names), SWEEP_BATCH):
            batch = names[start : start + SWEEP_BATCH]
            owners = cast(list[str | None], self.client.mget(batch))
            doomed = [name for name, owner in zip(batch, owners, strict=True) if owner in persons]
            if doomed:
                self.client.delete(*doomed)

    def _drop_cooldowns(self, emails: Iterable[str]) -> None:
        """The survey cooldown markers of these emails, for every campaign (``relay:surveyed:{e|c}``)."""
        prefix, suffix = keys.surveyed("\x00").split("\x00")
        for email in {e.encode().lower().decode() for e in emails}:
            pattern = _glob(prefix + email + "|") + "*" + _glob(suffix)
            doomed = list(self.client.scan_iter(match=pattern, count=1000))
            if doomed:
                self.client.delete(*doomed)


# Jobs ---------------------------------------------------------------------------------------------


class Removal:
    """What the removal at Promoter says in a job."""

    NONE = ""
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class Jobs:
    """Forget jobs: their progress, readable by the admin API and the CLI."""

    def __init__(self, client: redis.Redis, *, queue: str, clock: Callable[[], float] = time.time) -> None:
        """``queue``: the control queue, where a job's removal at Promoter is queued."""
        self.client = client
        self.queue = queue
        self.clock = clock

    def create(self, result: Forgotten, at_promoter: bool, *, enqueue: bool = True) -> str:
        """Record a forget's outcome; with ``at_promoter`` and emails to remove, queue their removal
        (``enqueue``; the CLI makes it itself) in the same step."""
        job = secrets.token_hex(8)
        now = self.clock()
        fields: dict[str, str | int | float] = {
            "created": now, "updated": now, "persons": result.persons, "identities": result.identities,
            "messages": result.messages, "unknown": len(result.unknown_users) + len(result.unknown_emails),
            "suppressed": "1" if result.suppressed else "0",
            "state": "done", "at_promoter": Removal.NONE,
        }  # fmt: skip
        if at_promoter:
            fields["at_promoter"] = Removal.PENDING if result.emails else Removal.DONE
            fields["at_promoter_detail"] = "" if result.emails else "no email known: nothing to remove"
            if result.emails:
                fields["state"] = "running"
                fields["remove"] = json.dumps(result.emails)
        pipe = self.client.pipeline()
        pipe.hset(keys.forget_job(job), mapping=cast(dict[Any, Any], fields))
        pipe.expire(keys.forget_job(job), JOB_TTL)
        if enqueue and fields["at_promoter"] == Removal.PENDING:
            pipe.lpush(self.queue, taskmessages.render_task(REMOVE_TASK, job, self.queue, f"forget-{job}"))
        pipe.execute()
        return job

    def get(self, job: str) -> dict[str, Any] | None:
        raw = cast(dict[str, str], self.client.hgetall(keys.forget_job(job)))
        if not raw:
            return None
        return {
            "id": job,
            "state": raw.get("state", ""),
            "created": float(raw.get("created", 0)),
            "updated": float(raw.get("updated", 0)),
            "persons": int(raw.get("persons", 0)),
            "identities": int(raw.get("identities", 0)),
            "messages": int(raw.get("messages", 0)),
            "unknown": int(raw.get("unknown", 0)),
            "suppressed": raw.get("suppressed") == "1",
            "atPromoter": {
                "state": raw.get("at_promoter", ""),
                "removed": int(raw.get("removed", 0)),
                "notFound": int(raw.get("not_found", 0)),
                "attempts": int(raw.get("attempts", 0)),
                "detail": raw.get("at_promoter_detail", ""),
            },
        }

    def pending_emails(self, job: str) -> list[str]:
        raw = cast(str | None, self.client.hget(keys.forget_job(job), "remove"))
        return list(json.loads(raw)) if raw else []

    def progress(self, job: str, remaining: list[str], **counts: int | str) -> None:
        """Record a removal attempt; the emails left to remove, and none once it is settled."""
        key = keys.forget_job(job)
        pipe = self.client.pipeline()
        for name, value in counts.items():
            if isinstance(value, int):
                pipe.hincrby(key, name, value)
            else:
                pipe.hset(key, name, value)
        pipe.hset(key, "updated", self.clock())
        if remaining:
            pipe.hset(key, "remove", json.dumps(remaining))
        else:
            pipe.hdel(key, "remove")
        pipe.execute()


@dataclass(frozen=True)
class Attempt:
    """One round of removals at Promoter: done, or when to try again and why."""

    done: bool
    retry_in: float = 0.0
    why: str = ""


def remove_at_promoter(
    jobs: Jobs,
    job: str,
    promoter: PromoterClient,
    wait_for_budget: Callable[[], tuple[float, str]],
    pause: Callable[[float], None],
    *,
    attempt: int,
    give_up: bool,
    base_delay: float = 2.0,
    max_delay: float = 900.0,
) -> Attempt:
    """Remove the job's pending contacts at Promoter, each call through the shared budget. A 404 is
    "not there" (done); 429 pauses every worker and is retried after Retry-After; transient failures
    are retried with backoff; ``give_up`` (the retry window is over) settles the job as failed."""
    remaining = jobs.pending_emails(job)
    while remaining:
        wait, why = wait_for_budget()
        if wait > 0:
            return Attempt(False, wait, why)
        try:
            promoter.remove_contact(remaining[0])
            counts: dict[str, int | str] = {"removed": 1, "attempts": 1}
        except ThrottledError as error:
            pause(error.retry_after)
            return _retry(jobs, job, remaining, error, error.retry_after, give_up)
        except (TransientError, AccountError) as error:
            if isinstance(error, AccountError) and error.status == 404:
                counts = {"not_found": 1, "attempts": 1}
            else:
                return _retry(jobs, job, remaining, error, backoff(attempt, base_delay, max_delay), give_up)
        except PermanentError as error:
            detail = f"Promoter refused the removal: HTTP {error.status}"
            jobs.progress(job, [], at_promoter=Removal.FAILED, at_promoter_detail=detail, state="failed",
                          attempts=1)  # fmt: skip
            return Attempt(True)
        remaining = remaining[1:]
        jobs.progress(job, remaining, **counts)
    jobs.progress(job, [], at_promoter=Removal.DONE, state="done", at_promoter_detail="contacts removed")
    return Attempt(True)


def _retry(
    jobs: Jobs, job: str, remaining: list[str], error: Exception, delay: float, give_up: bool
) -> Attempt:
    """A removal to try again after ``delay``; past the retry window the job fails (returns done)."""
    if give_up:
        detail = f"gave up after the retry window: {error}"[:200]
        jobs.progress(
            job, [], at_promoter=Removal.FAILED, state="failed", attempts=1, at_promoter_detail=detail
        )
        return Attempt(True)
    detail = f"retrying in {delay:.0f}s: {error}"[:200]
    jobs.progress(job, remaining, at_promoter_detail=detail, attempts=1)
    return Attempt(False, delay, detail)
