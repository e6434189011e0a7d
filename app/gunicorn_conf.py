"""gunicorn settings for the ingest API, overridable through GUNICORN_* environment variables.

Ingest handlers spend most of their time waiting on one Redis round trip, so a few threads per
process beat more processes: one process per core (at least two, so one slow request cannot stall
the rest), four threads each. The relay's own settings are checked here, when gunicorn starts, so a
bad value stops it with one line instead of a traceback per worker.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

from worker.settings import SettingsError, load_for_service

try:
    load_for_service()
except SettingsError as _error:
    print(f"promoter-relay: {_error}", file=sys.stderr)
    raise SystemExit(2) from None

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", str(max(2, multiprocessing.cpu_count()))))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
# gunicorn's default format logs the HTTP Basic user name, which is a write key here: never log it.
access_log_format = '%(h)s %(t)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'
# Segment's webhook gives up after 5 s: never queue a request longer than that behind a busy worker.
backlog = 512
