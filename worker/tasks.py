"""Celery tasks: load the message, call a plain function from ``delivery``, classify what went wrong.

``deliver`` owns the retry policy for every delivery task so the rules live in one place: transient
failures are retried with backoff through our Redis schedule within the retry window, throttling
pauses every worker, final answers end in a state, and anything else is a dead letter rather than an
endless loop. Only Redis errors escape, since no state can be written then: Celery drops that
message, but its ``relay:pending`` entry stays, and the reconciler queues it again once the
visibility timeout (plus a margin) has passed.

The task functions are thin and registered on the app by ``register``; tests call ``deliver`` directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery, Task

from worker import delivery, feedback, taskmessages
from worker.events import Event
from worker.messages import Start
from worker.promoter import AccountError, PermanentError, ThrottledError, TransientError
from worker.runtime import Runtime, RuntimeSlot
from worker.schedule import backoff
from worker.scripts import PROBE_SECONDS
from worker.states import StartKind, State

log = logging.getLogger("relay.delivery")
housekeeping_log = logging.getLogger("relay.housekeeping")

Handler = Callable[[Event, Start, Runtime], delivery.Outcome]
HANDLERS: dict[str, Handler] = {
    taskmessages.IDENTIFY_TASK: delivery.identify,
    taskmessages.TRACK_TASK: delivery.track,
    taskmessages.ALIAS_TASK: delivery.alias,
}
DISPATCH_TASK = "relay.dispatch_due"
RECONCILE_TASK = "relay.reconcile"
EXPIRE_TASK = "relay.expire_holds"
PRUNE_TASK = "relay.prune_dead_letters"
ACCOUNT_TASK = "relay.watch_account"
FEEDBACK_TASK = "relay.poll_feedback"
HOUSEKEEPING = (DISPATCH_TASK, RECONCILE_TASK, EXPIRE_TASK, PRUNE_TASK, ACCOUNT_TASK, FEEDBACK_TASK)


def deliver(ref: str, handler: Handler, rt: Runtime, task_id: str = "-") -> str:
    """Run one delivery attempt of ``ref``; returns the state it left the message in (for logs/tests)."""
    context = {"message_id": ref, "task_id": task_id}
    start = rt.stores.messages.start(ref)
    if start.kind is not StartKind.GO or start.event is None:
        log.info("nothing to do: %s %s", start.kind.value, start.state, extra=context)
        return start.state or start.kind.value
    try:
        outcome = handler(start.event, start, rt)
    except redis.RedisError:
        log.warning("redis unavailable; the reconciler will queue this message again", extra=context)
        raise
    except Exception as error:  # every other failure is classified by the policy
        return FailurePolicy(ref, start, rt, context).handle(error)
    log.info("%s%s", outcome.state, f": {outcome.detail}" if outcome.detail else "", extra=context)
    return outcome.state


@dataclass(frozen=True)
class FailurePolicy:
    """What happens after a failed attempt, by kind of failure (subclasses before their bases: a 429
    is a transient error too)."""

    ref: str
    start: Start
    rt: Runtime
    context: dict[str, str]

    def handle(self, error: Exception) -> str:
        match error:
            case delivery.Wait():
                return self.wait(error)
            case delivery.Settled():
                log.warning("%s: %s", error.state, error.detail, extra=self.context)
                return error.state
            case ThrottledError():
                self.rt.stores.budget.pause(error.retry_after)
                return self.retry(error.retry_after, "throttled by Promoter (429)")
            case AccountError():
                return self.account(error)
            case TransientError():
                return self.transient(error)
            case delivery.OutcomeUnknown():
                return self.bury(str(error), evidence=error.evidence)
            case PermanentError():
                return self.bury(f"Promoter rejected it: {error}", error.body)
            case delivery.ConfigurationError():
                return self.bury(str(error))
        log.exception("unexpected error", extra=self.context, exc_info=error)
        return self.bury(f"internal error: {type(error).__name__}")

    def wait(self, error: delivery.Wait) -> str:
        state = self.rt.stores.schedule.later(
            self.ref, error.seconds, f"waiting: {error.reason}", attempts_delta=-1
        )
        log.info("waiting %.1fs: %s", error.seconds, error.reason, extra=self.context)
        return state

    def transient(self, error: TransientError) -> str:
        settings = self.rt.settings
        delay = backoff(self.start.attempts, settings.retry_base_seconds, settings.retry_max_delay_seconds)
        return self.retry(max(delay, getattr(error, "min_delay", 0.0)), f"transient: {error}")

    def account(self, error: AccountError) -> str:
        """Promoter refuses the account: every worker pauses (one probe a minute), this message waits."""
        if self.rt.stores.budget.refused_account(str(error)):
            log.error("Promoter refuses the account (%s): delivery paused until a probe call succeeds",
                      error, extra=self.context)  # fmt: skip
        return self.retry(PROBE_SECONDS, f"paused: Promoter refuses the account ({error})")

    def retry(self, delay: float, reason: str) -> str:
        """Retry after ``delay``, or at the window's end for a last try; past the window, bury."""
        window_end = self.start.since + self.rt.settings.retry_window_seconds
        now = self.rt.clock()
        if now >= window_end:
            return self.bury(
                f"retry window of {self.rt.settings.retry_window_seconds}s exhausted; last: {reason}"
            )
        wait = min(delay, window_end - now)
        state = self.rt.stores.schedule.later(self.ref, wait, reason)
        log.info("retrying in %.1fs: %s", wait, reason, extra=self.context)
        return state

    def bury(self, reason: str, response: str = "", evidence: dict[str, Any] | None = None) -> str:
        state = self.rt.stores.dead.bury(self.ref, reason, response, evidence)
        if state == State.DEAD:
            log.warning("dead letter: %s", reason, extra=self.context)
        return state


class DeliveryTask(Task[Any, Any]):
    """Late acks and reject-on-worker-lost: a killed worker's message comes back."""

    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True


def register(app: Celery, slot: RuntimeSlot) -> None:
    """Define the relay's tasks on ``app``, each reaching this process's runtime through ``slot``."""

    def delivery_task(name: str, handler: Handler) -> None:
        def run(self: Task[Any, Any], ref: str) -> str:
            return deliver(ref, handler, slot.get(), self.request.id or "-")

        run.__name__ = run.__qualname__ = name.replace(".", "_")
        app.task(bind=True, base=DeliveryTask, name=name)(run)

    for name, handler in HANDLERS.items():
        delivery_task(name, handler)

    def housekeeping(name: str, work: Callable[[Runtime], int | dict[str, int]], what: str) -> None:
        def run() -> int:
            done = work(slot.get())
            total = done if isinstance(done, int) else sum(done.values())
            if total:
                housekeeping_log.info("%s: %s", what, done)
            return total

        run.__name__ = run.__qualname__ = name.replace(".", "_")
        app.task(name=name, ignore_result=True)(run)

    housekeeping(DISPATCH_TASK, lambda rt: rt.stores.schedule.dispatch_due(), "retries due, queued")
    housekeeping(
        RECONCILE_TASK, lambda rt: rt.stores.reconciler.requeue_stale(), "lost task messages re-queued"
    )
    housekeeping(EXPIRE_TASK, lambda rt: rt.stores.holds.expire(), "held messages expired (never identified)")
    housekeeping(PRUNE_TASK, lambda rt: rt.stores.dead.prune(), "dead letters dropped by retention")
    housekeeping(ACCOUNT_TASK, watch_account, "")
    housekeeping(FEEDBACK_TASK, feedback.run_task, "NPS responses sent to Segment")


def watch_account(rt: Runtime) -> int:
    """While Promoter refuses the account, say so once a minute (the dashboard and /metrics show it too)."""
    problem = rt.stores.budget.account_problem()
    if problem is not None:
        minutes = max(0, int((rt.clock() - problem["since"]) // 60))
        housekeeping_log.error(
            "Promoter refuses the account for %d min (%s): delivery is paused; fix PROMOTER_API_KEY or "
            "PROMOTER_API_URL and it resumes by itself", minutes, problem["why"],
        )  # fmt: skip
    return 0
