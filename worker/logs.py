"""Log setup shared by the API and the worker: text or JSON, each line of a job carrying its ids.

Delivery log lines carry ``message_id`` (the ref) and ``task_id`` so one grep follows a message from
ingest to Promoter. Secrets never reach a record: they live only in settings fields that are not
logged. Housekeeping that ran every second and did nothing is not worth a line: Celery's own
"received"/"succeeded"/"sending due task" lines for those tasks are dropped, and the tasks log only
when they did something.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

CONTEXT_FIELDS = ("message_id", "task_id")
_CELERY_PER_TASK = ("celery.app.trace", "celery.worker.strategy", "celery.beat")


class ContextDefaults(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name in CONTEXT_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, "-")
        return True


class QuietHousekeeping(logging.Filter):
    """Drops Celery's per-task INFO lines about the given (housekeeping) task names."""

    def __init__(self, names: Iterable[str]) -> None:
        super().__init__()
        self.names = tuple(names)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or not record.name.startswith(_CELERY_PER_TASK):
            return True
        text = f"{record.msg} {record.args!r}"
        return not any(name in text for name in self.names)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, "-")
            if value != "-":
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [msg=%(message_id)s task=%(task_id)s] %(message)s"


def configure(log_format: str = "text", level: str = "INFO", quiet: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextDefaults())
    handler.addFilter(QuietHousekeeping(quiet))
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
