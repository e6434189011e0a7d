"""The whole relay as an operator runs it, for the sections that count Promoter calls: the Promoter
sandbox, the API under gunicorn (``app:create_app()``), ``celery -A worker beat`` and a ``celery -A
worker worker`` (threads pool) that can be stopped and started again with another rate limit.

Events go in over HTTP with the bench write key; progress is read from the admin API (``ADMIN_TOKEN``)
and what reached Promoter from the sandbox's own record of calls."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import requests

from app.devtools.sandbox import SandboxControl
from bench.infra import PY, Proc, Procs, base_env, configure_sandbox
from bench.load import auth_header
from worker import events
from worker.states import FINAL, State

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"  # noqa: S105 - a throwaway token of the bench's own relay
WORKER_THREADS = 32  # docker-compose.yml's worker
FINAL_STATES = tuple(state.value for state in State if state in FINAL)
JSON = dict[str, Any]


def iso(epoch: float) -> str:
    return events.iso(datetime.fromtimestamp(epoch, UTC))


def outstanding(stats: JSON) -> int:
    """Messages not final yet, as the admin API counts them (queued, reserved, waiting to retry, held)."""
    queue = stats["queue"]
    return int(queue["queued"] + queue["in_flight"] + queue["retry_scheduled"] + queue["held"])


def unfinished(stats: JSON) -> int:
    """Accepted messages that have not reached a final state."""
    accepted = sum(int(n) for n in stats["accepted"].values())
    return accepted - sum(int(stats["totals"].get(state, 0)) for state in FINAL_STATES)


class Stack:
    """One relay, started by ``procs`` (so stopped with everything else if the bench is interrupted)."""

    def __init__(self, procs: Procs, redis_url: str, queue: str, rate_limit: float) -> None:
        self.procs = procs
        self.sandbox_proc, self.sandbox = procs.sandbox(0.0)
        self.env = base_env(redis_url, self.sandbox, queue=queue)
        self.env.update(
            ADMIN_TOKEN=ADMIN_TOKEN, SURVEY_EVENTS="NPS Survey", PROMOTER_RATE_LIMIT=f"{rate_limit:g}"
        )
        self.api_proc, self.api = procs.gunicorn("relay-api", "app:create_app()", self.env)
        beat = [PY, "-m", "celery", "-A", "worker", "beat", "--loglevel", "WARNING"]
        self.beat = procs.start("beat", [*beat, "--schedule", str(procs.dir / f"beat-{queue}")], self.env)
        self.worker: Proc | None = None
        self.http = requests.Session()
        self.write_auth = {"Authorization": auth_header("batch")}

    # --- processes --------------------------------------------------------------------------------

    def start_worker(self, rate_limit: float) -> Proc:
        env = {**self.env, "PROMOTER_RATE_LIMIT": f"{rate_limit:g}"}
        self.worker = self.procs.celery("relay-worker", "worker", "threads", WORKER_THREADS, env)
        return self.worker

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.procs.stop(self.worker)
            self.worker = None

    def stop(self) -> None:
        self.stop_worker()
        for proc in (self.beat, self.api_proc, self.sandbox_proc):
            self.procs.stop(proc)

    def check_alive(self) -> None:
        for proc in (self.worker, self.beat, self.api_proc, self.sandbox_proc):
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} died:\n{proc.tail()}")

    # --- ingest -----------------------------------------------------------------------------------

    def post(self, path: str, body: JSON) -> None:
        answer = self.http.post(f"{self.api}{path}", json=body, headers=self.write_auth, timeout=30)
        if answer.status_code != 200:
            raise RuntimeError(f"POST {path} answered {answer.status_code}: {answer.text[:300]}")

    def post_batches(self, messages: list[JSON], size: int = 100) -> float:
        """``/v1/batch`` requests of ``size``, one after another; returns the seconds it took."""
        started = time.monotonic()
        for start in range(0, len(messages), size):
            self.post("/v1/batch", {"batch": messages[start : start + size]})
        return time.monotonic() - started

    # --- observation ------------------------------------------------------------------------------

    def stats(self) -> JSON:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        answer = self.http.get(f"{self.api}/admin/api/stats", headers=headers, timeout=10)
        answer.raise_for_status()
        stats: JSON = answer.json()
        return stats

    def wait_final(self, timeout: float, poll: float = 0.5) -> JSON:
        """Until every accepted message is final and nothing is queued, in flight, scheduled or held,
        twice in a row; raises with the last stats if that does not happen within ``timeout``."""
        deadline, settled = time.monotonic() + timeout, 0
        stats = self.stats()
        while settled < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"messages not final after {timeout:.0f} s: {stats['queue']}")
            self.check_alive()
            time.sleep(poll)
            stats = self.stats()
            settled = settled + 1 if outstanding(stats) == 0 and unfinished(stats) == 0 else 0
        return stats

    def calls(self) -> list[JSON]:
        return SandboxControl(self.sandbox, timeout=60).calls()

    def contacts(self) -> list[JSON]:
        return SandboxControl(self.sandbox, timeout=60).contacts()

    def reset_calls(self) -> None:
        configure_sandbox(self.sandbox, latency_ms=0.0)
