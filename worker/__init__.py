"""promoter-relay's core: delivery (Celery tasks), the Promoter client, and all state in Redis.

``celery -A worker worker`` and ``celery -A worker beat`` find the Celery app as ``worker.celery``. It
is built on first access (PEP 562), not at import: ``import app`` or ``import worker.settings`` must not
parse the environment or create a Celery app. See ``worker/entrypoint.py``.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "celery":
        from worker.entrypoint import celery

        return celery
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
