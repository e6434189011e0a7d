"""promoter-relay delivery side: ``celery -A worker worker`` and ``celery -A worker beat``.

This package exists so the worker command line stays the one Celery documents; it only exposes the
Celery app. Importing it reads the environment, so a bad setting stops the worker at start-up.
"""

from worker.celery_app import celery

__all__ = ["celery"]
