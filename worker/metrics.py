"""What the relay measures about Promoter calls, kept in Redis by the scripts that settle each call.

The API's ``/metrics`` reads them back; Prometheus then sees consistent totals no matter how many
gunicorn or Celery processes there are, with no multiprocess directory to share. One bucket per call
is incremented (not the cumulative ones): ``/metrics`` sums them up.
"""

from __future__ import annotations

LATENCY_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
