"""gunicorn settings for the ingest API, overridable through GUNICORN_* environment variables.

Ingest handlers spend most of their time waiting on one Redis round trip, so a few threads per
process beat more processes: one process per core (at least two, so one slow request cannot stall
the rest), four threads each. The relay's own settings and the ``GUNICORN_*`` ones are checked here,
when gunicorn starts, so a bad value stops it with one line instead of a traceback per worker.

The API's process-local metrics (the 503s ingest answers while Redis refuses writes, which cannot be
counted in Redis) are shared between gunicorn's workers through prometheus_client's multiprocess
directory, made fresh for each start unless ``PROMETHEUS_MULTIPROC_DIR`` names one.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from worker.settings import SettingsError, load_for_service, load_server

try:
    load_for_service()
    _server = load_server()
except SettingsError as _error:
    print(f"promoter-relay: {_error}", file=sys.stderr)
    raise SystemExit(2) from None

bind = _server.bind
workers = _server.workers or max(2, multiprocessing.cpu_count())
threads = _server.threads
worker_class = "gthread"
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = _server.accesslog
# gunicorn's default format logs the HTTP Basic user name, which is a write key here: never log it.
access_log_format = '%(h)s %(t)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'
# Segment's webhook gives up after 5 s: never queue a request longer than that behind a busy worker.
backlog = 512


# Set before any worker imports prometheus_client (it picks its storage at import time); this module
# must not import it, since workers are forked from the process that reads it.
_MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"
_made_dir: str | None = None


def on_starting(_: Any) -> None:
    global _made_dir
    given = os.environ.get(_MULTIPROC)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink()
    else:
        _made_dir = os.environ[_MULTIPROC] = tempfile.mkdtemp(prefix="promoter-relay-metrics-")


def on_exit(_: Any) -> None:
    if _made_dir:
        shutil.rmtree(_made_dir, ignore_errors=True)
