"""NPS responses back into Segment: the beat task that polls Promoter's feedback list.

Promoter has no webhook for responses, so the relay reads ``GET /feedback/`` page by page. A *run* reads
every response posted since ``since`` (a day), newest first; ``since`` is the day before the previous
run started, so a response edited up to a day after the last run is read again (the overlap window) and
sent again if its content changed (``nps_store`` remembers what was sent). Each page costs one request of
Promoter's budget at low priority, so the poll stops at ``1 - PROMOTER_DAILY_RESERVE`` of a daily limit
like other low-priority calls, and a 429 pauses every worker as it does for deliveries.

The cursor (``relay:feedback:cursor``) moves to the next page only after Segment took every message of
the page, so a crash, a 429, a 5xx or a Segment outage costs a re-read, never a response. Beat sends the
task every few seconds; it does nothing until the cursor is due (``next_at``: the poll interval after a
finished run, a backoff or ``Retry-After`` after a failure), and a lock keeps polls from overlapping.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

import redis

from worker import keys, nps
from worker.nps_store import NpsStore, Sent
from worker.promoter import PermanentError, ThrottledError, TransientError
from worker.runtime import Runtime
from worker.schedule import backoff
from worker.settings import Settings

log = logging.getLogger("relay.feedback")

OVERLAP_DAYS = 1
# A wait for a budget slot shorter than this is slept in the task; a longer one ends the attempt.
MAX_SLEEP_SECONDS = 2.0
MAX_SLEEPS = 10
# One task keeps polling at most this long; a longer run goes on at the next beat tick.
TIME_BUDGET_SECONDS = 20.0
BEAT_SECONDS = 5.0


class SendFailed(Exception):
    """Some messages of a page did not reach Segment (the page is read again later)."""


class Sender(Protocol):
    def send(self, messages: Sequence[nps.Message]) -> int: ...


@dataclass(frozen=True)
class Cursor:
    """Where the poll stands: the run's first day and next page, when to try next, what happened last."""

    since: str = ""
    page: int = 1
    run_started: float = 0.0
    next_at: float = 0.0
    failures: int = 0
    last_error: str = ""
    last_run_at: float = 0.0
    sent_total: int = 0

    @classmethod
    def load(cls, raw: dict[str, str]) -> Cursor:
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if spec.name in raw:
                kind = type(getattr(cls(), spec.name))
                values[spec.name] = kind(raw[spec.name])
        return cls(**values)

    def dump(self) -> dict[str, str]:
        return {name: str(value) for name, value in asdict(self).items()}


@dataclass(frozen=True)
class Outcome:
    """What one task run did: ``off``, ``not due``, ``busy`` (another poll holds the lock), ``done``
    (a run finished), ``continuing`` (more pages next tick), ``waiting`` (for budget), ``failed``."""

    status: str
    pages: int = 0
    sent: int = 0


def enabled(settings: Settings) -> bool:
    return bool(settings.feedback_segment_write_key)


def load_cursor(client: redis.Redis) -> Cursor:
    return Cursor.load(cast(dict[str, str], client.hgetall(keys.FEEDBACK_CURSOR)))


def _day(moment: float, days_before: int = 0) -> str:
    return (datetime.fromtimestamp(moment, UTC).date() - timedelta(days=days_before)).isoformat()


class Poll:
    """One task run over the cursor; every exit path saves the cursor it leaves."""

    def __init__(self, rt: Runtime, sender: Sender, sleep: Callable[[float], None]) -> None:
        self.rt = rt
        self.sender = sender
        self.sleep = sleep
        self.store = NpsStore(rt.stores.redis, rt.clock)
        self.cursor = load_cursor(rt.stores.redis)
        self.pages = 0
        self.sent = 0

    def save(self, **changes: Any) -> None:
        self.cursor = replace(self.cursor, **changes)
        self.rt.stores.redis.hset(keys.FEEDBACK_CURSOR, mapping=cast(Mapping[Any, Any], self.cursor.dump()))

    def outcome(self, status: str) -> Outcome:
        return Outcome(status, self.pages, self.sent)

    def run(self) -> Outcome:
        now = self.rt.clock()
        if now < self.cursor.next_at:
            return self.outcome("not due")
        if not self.cursor.run_started:
            # A new run. The first one ever reads the overlap window only, not all of history.
            self.save(since=self.cursor.since or _day(now, OVERLAP_DAYS), page=1, run_started=now)
        started = time.monotonic()
        while time.monotonic() - started < TIME_BUDGET_SECONDS:
            status = self.step()
            if status:
                return self.outcome(status)
        self.save(next_at=0.0)
        return self.outcome("continuing")

    def step(self) -> str:
        """Read and hand over one page; '' to go on with the next one, else how this run ended."""
        waited = self.wait_for_budget()
        if waited:
            return waited
        settings = self.rt.settings
        try:
            reply = self.rt.promoter.feedback(
                self.cursor.page, posted_since=self.cursor.since, campaign=settings.promoter_campaign_id
            )
        except ThrottledError as error:
            self.rt.stores.budget.pause(error.retry_after)
            return self.failed(error.retry_after, "throttled by Promoter (429)")
        except TransientError as error:
            delay = backoff(
                self.cursor.failures + 1, settings.retry_base_seconds, settings.retry_max_delay_seconds
            )
            return self.failed(delay, f"transient: {error}")
        except PermanentError as error:
            if error.status == 404 and self.cursor.page > 1:
                # The list shrank under the run (responses deleted): what is left was read.
                return self.finished()
            return self.failed(float(settings.feedback_poll_seconds), f"Promoter refused the poll: {error}")
        results = reply.data.get("results")
        try:
            self.hand_over(results if isinstance(results, list) else [])
        except SendFailed as error:
            delay = backoff(
                self.cursor.failures + 1, settings.retry_base_seconds, settings.retry_max_delay_seconds
            )
            return self.failed(delay, f"Segment did not take page {self.cursor.page}: {error}")
        self.pages += 1
        if not reply.data.get("next"):
            return self.finished()
        self.save(page=self.cursor.page + 1, failures=0, last_error="")
        return ""

    def wait_for_budget(self) -> str:
        """Take a low-priority slot of Promoter's budget, sleeping a few short waits for one; a long
        wait (a 429's pause, the day's budget used up) ends this attempt until the slot is due."""
        for _ in range(MAX_SLEEPS):
            wait, why = self.rt.stores.budget.wait_seconds("low")
            if wait <= 0:
                return ""
            if wait > MAX_SLEEP_SECONDS:
                break
            self.sleep(wait)
        self.save(next_at=self.rt.clock() + max(wait, 1.0), last_error=f"waiting {wait:.0f}s: {why}")
        return "waiting"

    def hand_over(self, results: list[Any]) -> None:
        campaign = self.rt.settings.promoter_campaign_id
        responses = [r for r in (nps.parse(item, campaign) for item in results) if r is not None]
        if len(responses) < len(results):
            log.warning(
                "%d feedback entries without id, score or date skipped", len(results) - len(responses)
            )
        pending = self.store.unsent(responses)
        people = self.rt.stores.people
        sent: list[Sent] = []
        messages: list[nps.Message] = []
        event = self.rt.settings.feedback_event
        for item in pending:
            user = people.user_of_email(item.response.email) if item.response.email else None
            messages.append(nps.track(item.response, user, event))
            if item.newest:
                messages.append(nps.identify(item.response, user))
            sent.append(Sent(item, user))
        if messages:
            try:
                too_large = self.sender.send(messages)
            except SendFailed:
                raise
            except Exception as error:  # the client's own failures are of many kinds: all mean "not sent"
                raise SendFailed(f"{type(error).__name__}: {str(error)[:200]}") from None
            if too_large:
                log.warning("%d NPS message(s) larger than Segment's 32 KB skipped", too_large)
        self.store.record(sent)
        self.sent += len(sent)
        if sent:
            self.save(sent_total=self.cursor.sent_total + len(sent))

    def finished(self) -> str:
        now = self.rt.clock()
        started = self.cursor.run_started or now
        self.save(
            since=_day(started, OVERLAP_DAYS),
            page=1,
            run_started=0.0,
            next_at=started + self.rt.settings.feedback_poll_seconds,
            failures=0,
            last_error="",
            last_run_at=now,
        )
        return "done"

    def failed(self, delay: float, reason: str) -> str:
        log.warning("feedback poll, page %d: %s; again in %.0fs", self.cursor.page, reason, delay)
        self.save(next_at=self.rt.clock() + delay, failures=self.cursor.failures + 1, last_error=reason[:300])
        return "failed"


def poll(rt: Runtime, sender: Sender, sleep: Callable[[float], None] = time.sleep) -> Outcome:
    """One beat tick's worth of polling (a no-op when off, not due, or another poll is running)."""
    if not enabled(rt.settings):
        return Outcome("off")
    if rt.clock() < load_cursor(rt.stores.redis).next_at:
        return Outcome("not due")
    lock = rt.stores.redis.lock(keys.FEEDBACK_LOCK, timeout=rt.settings.visibility_timeout, blocking=False)
    if not lock.acquire():
        return Outcome("busy")
    try:
        return Poll(rt, sender, sleep).run()
    finally:
        with contextlib.suppress(redis.exceptions.LockError):
            lock.release()


_senders: dict[tuple[int, str, str], Sender] = {}
_senders_lock = threading.Lock()


def sender_for(settings: Settings) -> Sender:
    """This process's Segment client (its upload thread does not survive a fork: one per pid)."""
    key = (os.getpid(), settings.feedback_segment_write_key, settings.feedback_segment_host)
    with _senders_lock:
        if key not in _senders:
            from worker.segment_sender import SegmentSender

            _senders[key] = SegmentSender(settings.feedback_segment_write_key, settings.feedback_segment_host)
        return _senders[key]


def run_task(rt: Runtime) -> int:
    """The beat task's body: how many responses went to Segment."""
    if not enabled(rt.settings):
        return 0
    return poll(rt, sender_for(rt.settings)).sent
