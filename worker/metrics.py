"""Worker-side measurements kept in Redis, so every worker process and host adds to one set of numbers.

The API's ``/metrics`` reads them back; Prometheus then sees consistent totals no matter how many
gunicorn or Celery processes there are, with no multiprocess directory to share.
"""

from __future__ import annotations

import logging

import redis

from worker import keys

LATENCY_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

log = logging.getLogger(__name__)


def observe_promoter(client: redis.Redis, endpoint: str, status: int | None, seconds: float) -> None:
    """Add one Promoter call to the latency histogram; never let metrics break a delivery."""
    label = f"{endpoint}|{status if status is not None else 'error'}"
    try:
        # One bucket per call (not cumulative): /metrics sums them up, so a call costs 4 commands.
        bucket = next((str(bound) for bound in LATENCY_BUCKETS if seconds <= bound), "+Inf")
        pipe = client.pipeline(transaction=False)
        pipe.hincrby(keys.LATENCY, f"{endpoint}|le|{bucket}", 1)
        pipe.hincrby(keys.LATENCY, f"{endpoint}|count", 1)
        pipe.hincrbyfloat(keys.LATENCY, f"{endpoint}|sum", seconds)
        pipe.hincrby(keys.LATENCY, f"calls|{label}", 1)
        pipe.execute()
    except redis.RedisError:
        log.warning("could not record promoter latency")
