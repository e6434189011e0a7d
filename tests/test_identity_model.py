"""The identity model (``tests/identity_model.py``) through real workers, Redis and the sandbox."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import WSGIRequestHandler, make_server

from app import create_app
from app.devtools.processes import EmbeddedRedis
from app.devtools.sandbox import SandboxServer, SandboxState
from tests import identity_model
from tests.conftest import ADMIN_TOKEN, SANDBOX_KEY, WRITE_KEY, Processes, settings_for, worker_env

pytestmark = pytest.mark.integration


class QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Thousands of status polls: no access line each."""


def run_model(users: int, seed: int) -> dict[str, Any]:
    """Send every person's history first, then let two workers deliver it while Promoter misbehaves."""
    people = identity_model.generate(users, seed)
    with tempfile.TemporaryDirectory(prefix="relay-model-") as work:
        workdir = Path(work)
        redis_server = EmbeddedRedis(workdir / "redis").start()
        state = SandboxState(api_key=SANDBOX_KEY, seed=seed)
        sandbox = SandboxServer(state).start()
        app = create_app(
            {
                "TESTING": True,
                **settings_for(redis_server.url, survey_events=frozenset({identity_model.SURVEY_EVENT})),
            }
        )
        server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env = worker_env(
            redis_server.url,
            sandbox.url,
            SURVEY_EVENTS=identity_model.SURVEY_EVENT,
            PROMOTER_TIMEOUT_SECONDS="1",
        )
        procs = Processes(env, workdir)
        try:
            stack = identity_model.Stack(
                f"http://127.0.0.1:{server.server_port}", WRITE_KEY, ADMIN_TOKEN, state
            )
            sent = identity_model.send(stack, people, seed)
            # 10% of calls answer 503; 3% stall past the client's 1 s timeout, then take effect.
            state.configure({"failure_rate": 0.1, "timeout_rate": 0.03, "timeout_seconds": 1.3})
            procs.worker(concurrency=8)
            procs.worker(concurrency=8)
            procs.beat()
            found = identity_model.states(
                stack, sent["acknowledged"], timeout=float(os.environ.get("MODEL_DRAIN", 180))
            )
            state.configure({"failure_rate": 0, "timeout_rate": 0})
            return identity_model.check(people, sent, found, state)
        finally:
            procs.stop()
            server.shutdown()
            sandbox.stop()
            redis_server.stop()


def test_every_person_ends_as_one_contact_with_the_newest_fields() -> None:
    result = run_model(users=250, seed=20261129)
    assert identity_model.passed(result), result
