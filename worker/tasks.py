"""Celery tasks: deserialize, call a plain function from ``delivery``, classify what went wrong.

``DeliveryTask`` owns the retry policy for every delivery task so the rules live in one place:
transient failures are retried with backoff through our Redis schedule within the retry window,
throttling pauses every worker, final answers end in a state, and anything else is a dead letter
rather than an endless loop. Only Redis errors escape, since no state can be written then: Celery
drops that message, but its ``relay:pending`` entry stays, and the reconciler queues it again once
the visibility timeout (plus a margin) has passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Task

from worker import broker, delivery
from worker.celery_app import celery
from worker.events import Event
from worker.ledger import FINAL_STATES, Attempt
from worker.promoter import PermanentError, ThrottledError, TransientError
from worker.reconcile import MARGIN_SECONDS, Reconciler
from worker.runtime import Runtime, runtime
from worker.schedule import backoff

log = logging.getLogger("relay.delivery")


class DeliveryTask(Task):  # type: ignore[misc]
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True

    def deliver(self, event: Event, work: Callable[[Event, Runtime], delivery.Result]) -> str:
        rt = runtime()
        message_id = event["messageId"]
        context = {"message_id": message_id, "task_id": self.request.id, "event_type": event["type"]}
        attempt = rt.ledger.begin(message_id)
        if attempt.state in FINAL_STATES:
            log.info("already %s, nothing to do", attempt.state, extra=context)
            return attempt.state
        log.info("attempt %d", attempt.number, extra=context)
        try:
            result = work(event, rt)
        except delivery.Wait as wait:
            return self._later(
                rt, event, wait.seconds, f"waiting: {wait.reason}", attempt.number - 1, context
            )
        except ThrottledError as error:
            rt.rate.pause(error.retry_after)
            return self._retry(rt, event, attempt, error.retry_after, "throttled by Promoter (429)", context)
        except TransientError as error:
            delay = backoff(
                attempt.number, rt.settings.retry_base_seconds, rt.settings.retry_max_delay_seconds
            )
            return self._retry(rt, event, attempt, delay, f"transient: {error}", context, error.body)
        except delivery.OutcomeUnknown as error:
            return self._bury(rt, event, attempt.number, str(error), context)
        except PermanentError as error:
            return self._bury(
                rt, event, attempt.number, f"Promoter rejected it: {error}", context, error.body
            )
        except delivery.ConfigurationError as error:
            return self._bury(rt, event, attempt.number, str(error), context)
        except redis.RedisError:
            log.warning("redis unavailable; the reconciler will queue this message again", extra=context)
            raise
        except Exception as error:
            log.exception("unexpected error", extra=context)
            return self._bury(rt, event, attempt.number, f"internal error: {type(error).__name__}", context)
        if result.state != "held":
            rt.ledger.transition(message_id, result.state, result.detail)
        log.info("%s: %s", result.state, result.detail, extra=context)
        return result.state

    def _retry(
        self,
        rt: Runtime,
        event: Event,
        attempt: Attempt,
        delay: float,
        reason: str,
        context: dict[str, Any],
        response: str = "",
    ) -> str:
        """Retry after ``delay``, or at the window's end for a last try; past the window, bury."""
        window_end = attempt.since + rt.settings.retry_window_seconds
        now = time.time()
        if now >= window_end:
            window = f"retry window of {rt.settings.retry_window_seconds}s exhausted"
            return self._bury(rt, event, attempt.number, f"{window}; last: {reason}", context, response)
        return self._later(rt, event, min(delay, window_end - now), reason, attempt.number, context)

    def _later(
        self, rt: Runtime, event: Event, delay: float, reason: str, attempts: int, context: dict[str, Any]
    ) -> str:
        message = broker.envelope(event, rt.settings.queue_name, retries=attempts)
        rt.schedule.later(event["messageId"], message, delay, reason, attempts)
        log.info("retrying in %.1fs: %s", delay, reason, extra=context)
        return "retrying"

    def _bury(
        self,
        rt: Runtime,
        event: Event,
        attempts: int,
        reason: str,
        context: dict[str, Any],
        response: str = "",
    ) -> str:
        rt.dead.bury(event, reason, attempts, response)
        log.warning("dead letter: %s", reason, extra=context)
        return "dead"


@celery.task(bind=True, base=DeliveryTask, name=broker.IDENTIFY_TASK)
def identify(self: DeliveryTask, event: Event) -> str:
    return self.deliver(event, delivery.identify)


@celery.task(bind=True, base=DeliveryTask, name=broker.TRACK_TASK)
def track(self: DeliveryTask, event: Event) -> str:
    return self.deliver(event, delivery.track)


@celery.task(name="relay.dispatch_due", ignore_result=True)
def dispatch_due() -> int:
    """Move retries whose time has come from our schedule into the Celery queue."""
    return runtime().schedule.dispatch_due()


@celery.task(name="relay.reconcile", ignore_result=True)
def reconcile() -> int:
    """Queue again any message whose task message the broker lost (see ``worker.reconcile``)."""
    rt = runtime()
    grace = rt.settings.visibility_timeout + MARGIN_SECONDS
    requeued = Reconciler(
        rt.redis, rt.settings.queue_name, rt.settings.status_ttl_seconds, grace
    ).requeue_stale()
    if requeued:
        log.warning("re-queued %d messages whose task message was lost", requeued)
    return requeued


@celery.task(name="relay.expire_holds", ignore_result=True)
def expire_holds() -> int:
    """Dead-letter tracks held longer than HOLD_TTL_SECONDS (their user was never identified)."""
    rt = runtime()
    expired = rt.holds.expire(rt.settings.hold_ttl_seconds)
    if expired:
        log.warning("%d held tracks expired into dead letters (never identified)", expired)
    return expired
