"""The Celery application, built from ``Settings`` for "a killed worker loses nothing".

Late acks plus reject-on-worker-lost put a task back when its process dies; a small prefetch keeps
few messages reserved by any one worker; the visibility timeout is short (minutes, not Celery's hour)
because no task of ours ever waits inside Celery: retries and pauses live in our own Redis schedule,
so a task never holds a message longer than a few Promoter calls plus short budget waits.

Queues are consumed in priority order (kombu's ``priority`` cycle: BRPOP lists them in this order):
housekeeping, then surveys and contact-defining identifies, then trait and order updates, so a new
user's survey never waits behind hours of trait updates.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals
from kombu.entity import Queue

from worker import feedback, logs, tasks
from worker.heartbeat import WorkerHeartbeat
from worker.runtime import RuntimeSlot
from worker.settings import Settings

BEAT_SCHEDULE = {
    "dispatch-due-retries": {"task": tasks.DISPATCH_TASK, "schedule": 1.0},
    "expire-holds": {"task": tasks.EXPIRE_TASK, "schedule": 60.0},
    "reconcile": {"task": tasks.RECONCILE_TASK, "schedule": 15.0},
    "prune-dead-letters": {"task": tasks.PRUNE_TASK, "schedule": 600.0},
    "watch-account": {"task": tasks.ACCOUNT_TASK, "schedule": 60.0},
    # A no-op unless FEEDBACK_SEGMENT_WRITE_KEY is set and the poll is due (worker/feedback.py).
    "poll-feedback": {"task": tasks.FEEDBACK_TASK, "schedule": feedback.BEAT_SECONDS},
}


class RelayCelery(Celery):
    runtime: RuntimeSlot


def create_celery(settings: Settings) -> RelayCelery:
    app = RelayCelery("promoter_relay")
    app.runtime = RuntimeSlot(settings)
    control = settings.control_queue
    app.conf.update(
        broker_url=settings.redis_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "queue_order_strategy": "priority",
            # Sweep for messages of dead workers every 5 s instead of kombu's default ~100 s.
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
        },
        task_default_queue=settings.queue_name,
        task_queues=[Queue(control), Queue(settings.queue_name), Queue(settings.low_queue)],
        task_routes={name: {"queue": control} for name in tasks.HOUSEKEEPING},
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A task that raised (only Redis errors do) stays unacked and returns after the visibility timeout.
        task_acks_on_failure_or_timeout=False,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        # Task events cost ~0.7 ms of worker CPU per task; compose turns them on (-E) for Flower.
        worker_send_task_events=False,
        task_send_sent_event=False,
        beat_schedule=BEAT_SCHEDULE,
        beat_scheduler="worker.beat:HeartbeatScheduler",
    )
    tasks.register(app, app.runtime)
    app.steps["worker"].add(WorkerHeartbeat)

    def setup_logging(**_: Any) -> None:
        logs.configure(settings.log_format, settings.log_level, quiet=tasks.HOUSEKEEPING)

    def fresh_handles(**_: Any) -> None:
        app.runtime.reset()

    signals.setup_logging.connect(setup_logging, weak=False, dispatch_uid="relay-logging")
    signals.worker_process_init.connect(fresh_handles, weak=False, dispatch_uid="relay-fork")
    return app
