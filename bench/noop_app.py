"""A Celery app whose one task does nothing, configured like ``worker:celery`` and sharing its broker.

``celery -A bench.noop_app worker`` consumes ``bench-noop``; the messages are built by
``worker.broker.envelope`` with the same event as argument, so the only difference from a relay task is
the task body (our delivery path) and our signal handlers.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

QUEUE = "bench-noop"
TASK = "bench.noop"

celery = Celery("bench_noop")
celery.conf.update(
    broker_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": 60},
    task_default_queue=QUEUE,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_send_task_events=True,
    worker_hijack_root_logger=False,
)


@celery.task(name=TASK, ignore_result=True)
def noop(event: dict[str, Any]) -> None:
    return None
