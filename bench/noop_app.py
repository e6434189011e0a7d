"""Reference Celery tasks, configured like ``worker:celery`` and sharing its broker.

``celery -A bench.noop_app worker`` consumes ``bench-noop``; the messages are the relay's own task
messages (``worker.taskmessages``, a ref as argument), so the only difference from a relay task is the
task body (our delivery path) and our signal handlers.

* ``bench.noop`` does nothing: the cost of Celery itself.
* ``bench.floor`` makes one Promoter call (the relay's own client) and one Redis write recording it:
  the least any delivery does, whatever its design, so the relay's task is also shown beside it.
"""

from __future__ import annotations

import threading
from functools import cache

import redis
from celery import Celery

from worker.celery_app import create_celery
from worker.promoter import PromoterClient
from worker.settings import Settings, load

settings: Settings = load()
relay_celery = create_celery(settings)

QUEUE = "bench-noop"
TASK = "bench.noop"
FLOOR_TASK = "bench.floor"

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


_lock = threading.Lock()


@cache
def _handles() -> tuple[redis.Redis, PromoterClient]:
    client = redis.Redis.from_url(settings.redis_url)
    return client, PromoterClient(settings.promoter_api_url, settings.promoter_api_key)


@celery.task(name=FLOOR_TASK, ignore_result=True)
def floor(ref: str) -> None:
    with _lock:  # the first call of each thread must not build a second pool
        client, promoter = _handles()
    promoter.upsert_contact({"email": "floor@example.com", "attributes": {"ref": ref}})
    client.set(f"bench-floor:{{{ref}}}", "delivered", ex=900)
