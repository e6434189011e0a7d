"""gunicorn settings for the ingest API, overridable through GUNICORN_* environment variables.

Ingest handlers spend most of their time waiting on one Redis round trip, so a few threads per
process beat more processes; two processes per core keep a slow request from stalling the rest.
"""

from __future__ import annotations

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", str(max(2, multiprocessing.cpu_count()))))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
# Segment's webhook gives up after 5 s: never queue a request longer than that behind a busy worker.
backlog = 512
