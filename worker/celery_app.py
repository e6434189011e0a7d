"""The Celery application, configured for "a killed worker loses nothing".

Late acks plus reject-on-worker-lost put a task back when its process dies; a small prefetch keeps
few messages reserved by any one worker; the visibility timeout is short (minutes, not Celery's hour)
because no task of ours ever waits inside Celery: retries and pauses live in our own Redis schedule,
so a task never holds a message longer than one Promoter call plus a short rate-limit wait.
"""

from __future__ import annotations

from celery import Celery, signals
from kombu.entity import Queue

from worker import logs, runtime
from worker.settings import load

settings = load()
CONTROL_QUEUE = f"{settings.queue_name}.control"
HOUSEKEEPING = ("relay.dispatch_due", "relay.reconcile", "relay.expire_holds")

celery = Celery("promoter_relay", include=["worker.tasks"])
celery.conf.update(
    broker_url=settings.redis_url,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": settings.visibility_timeout,
        # Sweep for messages of dead workers every 5 s instead of kombu's default ~100 s.
        "unacked_restore_interval": 5,
        "unacked_restore_throttle": 1,
    },
    task_default_queue=settings.queue_name,
    # Housekeeping has its own queue so that retries are dispatched even behind an event backlog,
    # and so that the head of the event queue is always an event (see worker.reconcile).
    task_queues=[Queue(settings.queue_name), Queue(CONTROL_QUEUE)],
    task_routes={name: {"queue": CONTROL_QUEUE} for name in HOUSEKEEPING},
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
    beat_schedule={
        "dispatch-due-retries": {"task": "relay.dispatch_due", "schedule": 1.0},
        "expire-holds": {"task": "relay.expire_holds", "schedule": 60.0},
        "reconcile": {"task": "relay.reconcile", "schedule": 15.0},
    },
)


@signals.setup_logging.connect
def _setup_logging(**_: object) -> None:
    logs.configure(settings.log_format, settings.log_level)


@signals.worker_process_init.connect
def _fresh_handles(**_: object) -> None:
    runtime.reset()
