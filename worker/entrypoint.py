"""The Celery app that ``celery -A worker worker|beat|flower`` runs, built from the environment.

It exists so that building the app (reading the environment, refusing unsafe settings) happens only
when a Celery command asks for ``worker.celery``, never on ``import worker`` or ``import app``; and so that
a bad setting stops the process with one line naming the variable instead of a traceback.
"""

from __future__ import annotations

import sys

from worker.celery_app import RelayCelery, create_celery
from worker.promoter import transport_problem
from worker.settings import SettingsError, load_for_service


def _build() -> RelayCelery:
    try:
        settings = load_for_service()
    except SettingsError as error:
        print(f"promoter-relay: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    problem = transport_problem(settings.promoter_api_url)
    if problem:
        print(f"promoter-relay: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return create_celery(settings)


celery = _build()
