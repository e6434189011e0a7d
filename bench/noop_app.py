"""A Celery app whose one task does nothing, configured like ``worker:celery`` and sharing its broker.

``celery -A bench.noop_app worker`` consumes ``bench-noop``; the messages are the relay's own task
messages (``worker.taskmessages``, a ref as argument), so the only difference from a relay task is the
task body (our delivery path) and our signal handlers.
"""

from __future__ import annotations

from celery import Celery

from worker.celery_app import create_celery
from worker.settings import load

relay_celery = create_celery(load())

QUEUE = "bench-noop"
TASK = "bench.noop"

celery = Celery("bench_noop")
# Everything as the relay's worker has it (acks, prefetch, visibility, events...), but its own queue.
celery.conf.update(
    {
        key: value
        for key, value in relay_celery.conf.items()
        if not key.startswith(("task_routes", "task_queues", "beat_"))
    }
)
celery.conf.update(task_default_queue=QUEUE, task_queues=None, task_routes=None, beat_schedule={})


@celery.task(name=TASK, ignore_result=True)
def noop(ref: str) -> None:  # noqa: ARG001 - a task that does nothing with its argument
    return None
