"""A Celery app whose one task does nothing, configured like ``worker:celery`` and sharing its broker.

``celery -A bench.noop_app worker`` consumes ``bench-noop``; the messages are built by
``worker.broker.envelope`` with the same event as argument, so the only difference from a relay task is
the task body (our delivery path) and our signal handlers.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from worker.celery_app import celery as relay_celery

QUEUE = "bench-noop"
TASK = "bench.noop"

celery = Celery("bench_noop")
# Everything as the relay's worker has it (acks, prefetch, visibility, events...), but its own queue.
celery.conf.update(
    {
        key: value
        for key, value in relay_celery.conf.items()
        if not key.startswith(("task_routes", "task_queues"))
    }
)
celery.conf.update(task_default_queue=QUEUE, task_queues=None, task_routes=None, beat_schedule={})


@celery.task(name=TASK, ignore_result=True)
def noop(event: dict[str, Any]) -> None:
    return None
