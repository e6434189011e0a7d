"""``promoter-relay dev`` (what ``make run`` starts): the whole relay on one machine, one command.

An embedded redis-server keeps its append-only file in a project-local data folder
(``.promoter-relay/``), so data survives a restart (``--fresh`` starts empty); so does the sandbox's
state (its contacts and their ids). The folder is locked while an instance runs: a second one on the
same folder would start a second Redis on the same append-only file. ``dev.json`` there, and a file
per running instance in a per-user folder (``running_instances``), tell ``promoter-relay status`` and
``dead-letters`` which Redis to read, from any folder. Ctrl-C, SIGTERM and SIGHUP all stop every
process it started.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any

import click

from app.devtools.processes import Children, EmbeddedRedis, free_port, port_in_use, wait_for_port
from app.devtools.segment_receiver import ReceiverServer, ReceiverState, describe
from worker.settings import SettingsError, load_for_service

DEV_WRITE_KEY = "dev-write-key"
DEV_ADMIN_TOKEN = "dev-admin-token"  # noqa: S105 - printed on purpose, dev only
DEV_SANDBOX_KEY = "sandbox-key"
DEV_CAMPAIGN = "1"
DEV_FEEDBACK_KEY = "dev-feedback-write-key"
# The sandbox answers surveys at once: poll often, so the loop shows within seconds.
DEV_FEEDBACK_POLL_SECONDS = "10"
DATA_DIR = Path(".promoter-relay")
STATE_FILE = "dev.json"
LOCK_FILE = "lock"
SANDBOX_STATE = "sandbox.json"


class Shutdown(Exception):
    """SIGTERM or SIGHUP: stop like Ctrl-C does."""


def _on_signal(signum: int, _: FrameType | None) -> None:
    raise Shutdown(signal.Signals(signum).name)


def read_state(data_dir: Path = DATA_DIR) -> dict[str, Any] | None:
    """What a running ``dev`` wrote about itself, if anything."""
    try:
        state: dict[str, Any] = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state


def registry_dir() -> Path:
    """Where running instances announce themselves: per user, cleared at reboot."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"promoter-relay-{os.getuid()}"


def running_instances() -> list[dict[str, Any]]:
    """Every ``dev`` of this user that is still running (files of dead ones are removed)."""
    found = []
    for path in sorted(registry_dir().glob("*.json")):
        try:
            state: dict[str, Any] = json.loads(path.read_text())
            os.kill(int(state["pid"]), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            continue
        except (OSError, ValueError, KeyError, TypeError):
            continue
        found.append(state)
    return found


@contextlib.contextmanager
def locked(data_dir: Path) -> Iterator[IO[str]]:
    """Hold the data folder for this instance; a second one stops with one line."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = read_state(data_dir) or {}
            where = f" (API {other['api']})" if other.get("api") else ""
            raise click.ClickException(
                f"{data_dir} is in use by another `promoter-relay dev`{where}: stop it, or give this one "
                "its own folder (--data-dir DIR)"
            ) from None
        yield lock


def _empty(data_dir: Path) -> None:
    """--fresh: everything in the data folder but the lock this instance holds."""
    for entry in data_dir.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def run(port: int, workers: int, fresh: bool, data_dir: Path) -> None:
    if port_in_use(port):
        raise click.ClickException(f"port {port} is already in use: stop what runs there, or pick another "
                                   f"port (promoter-relay dev --port N, make run PORT=N)")  # fmt: skip
    env = dict(os.environ)
    env.setdefault("RELAY_ENV", "development")
    if fresh and env.get("REDIS_URL"):
        raise click.ClickException(
            "--fresh empties the embedded Redis only; with REDIS_URL set, the relay's keys would stay in "
            "that Redis: unset REDIS_URL, or clear that Redis yourself"
        )
    data_dir = data_dir.resolve()
    with locked(data_dir):
        if fresh:
            _empty(data_dir)
        _run_locked(env, port, workers, data_dir)


def _planned(env: dict[str, str], data_dir: Path) -> tuple[EmbeddedRedis | None, int | None]:
    """The embedded Redis and the sandbox's port, when the environment names neither; ``env`` is
    completed to point at them."""
    redis_server = None if env.get("REDIS_URL") else EmbeddedRedis(data_dir / "redis", durable=True)
    if redis_server is not None:
        env["REDIS_URL"] = redis_server.url
    sandbox_port = None if env.get("PROMOTER_API_KEY") else free_port()
    if sandbox_port is not None:
        env.update(
            PROMOTER_API_URL=f"http://127.0.0.1:{sandbox_port}",
            PROMOTER_API_KEY=DEV_SANDBOX_KEY,
            PROMOTER_CAMPAIGN_ID=env.get("PROMOTER_CAMPAIGN_ID") or DEV_CAMPAIGN,
        )
    return redis_server, sandbox_port


def _run_locked(env: dict[str, str], port: int, workers: int, data_dir: Path) -> None:
    # Every setting is checked before anything starts, or prints that it started.
    redis_server, sandbox_port = _planned(env, data_dir)
    receiver = _segment_receiver(env, free_port())
    _check(env)
    children = Children()
    announced = registry_dir() / f"{os.getpid()}.json"
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        if redis_server is not None:
            redis_server.start()
        if sandbox_port is not None:
            _start_sandbox(children, env, sandbox_port, data_dir)
        if receiver is not None:
            receiver.start()
        _start_relay(children, env, port, workers, data_dir)
        api = f"http://127.0.0.1:{port}"
        state = {"redis_url": env["REDIS_URL"], "api": api, "pid": os.getpid(), "data_dir": str(data_dir)}
        (data_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
        announced.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        announced.write_text(json.dumps(state, indent=2))
        _banner(env, api, data_dir)
        while not (exited := children.exited()):
            time.sleep(0.5)
        raise click.ClickException(f"{', '.join(exited)} exited; stopping everything")
    except (KeyboardInterrupt, Shutdown):
        click.echo("\nstopping...")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        children.stop()
        if receiver is not None:
            receiver.stop()
        if redis_server is not None:
            redis_server.stop()
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        announced.unlink(missing_ok=True)


def _start_sandbox(children: Children, env: dict[str, str], port: int, data_dir: Path) -> None:
    children.start(
        "sandbox",
        [str(Path(sys.executable).parent / "promoter-relay"), "sandbox", "--port", str(port),
         "--state-file", str(data_dir / SANDBOX_STATE)],
        env,
    )  # fmt: skip
    wait_for_port(port)


def _segment_receiver(env: dict[str, str], port: int) -> ReceiverServer | None:
    """With the sandbox and no Segment write key of the user's, a local Segment (in this process, on
    ``port``) that the sandbox's NPS responses are sent back to; it prints each one. Made, not started:
    the settings are checked first."""
    if env.get("FEEDBACK_SEGMENT_WRITE_KEY") or env.get("PROMOTER_API_KEY") != DEV_SANDBOX_KEY:
        return None  # a real Promoter is not polled unless asked to
    state = ReceiverState(write_key=DEV_FEEDBACK_KEY, on_message=lambda m: click.echo(describe(m)))
    receiver = ReceiverServer(state, port=port)
    env.update(FEEDBACK_SEGMENT_WRITE_KEY=DEV_FEEDBACK_KEY, FEEDBACK_SEGMENT_HOST=f"http://127.0.0.1:{port}")
    env.setdefault("FEEDBACK_POLL_SECONDS", DEV_FEEDBACK_POLL_SECONDS)
    return receiver


def _check(env: dict[str, str]) -> None:
    env.setdefault("SEGMENT_WRITE_KEYS", DEV_WRITE_KEY)
    env.setdefault("ADMIN_TOKEN", DEV_ADMIN_TOKEN)
    try:
        load_for_service(env)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


def _start_relay(children: Children, env: dict[str, str], port: int, workers: int, data_dir: Path) -> None:
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    children.start(
        "api",
        [gunicorn, "--config", "python:app.gunicorn_conf", "--bind", f"127.0.0.1:{port}", "--workers", "2",
         "--threads", "4", "--access-logfile", "-", "app:create_app()"],
        env,
    )  # fmt: skip
    celery = [sys.executable, "-m", "celery", "-A", "worker"]
    children.start(
        "worker",
        [*celery, "worker", "--pool", "threads", "--concurrency", str(workers), "--loglevel", "INFO",
         "--without-gossip", "--without-mingle"],
        env,
    )  # fmt: skip
    children.start(
        "beat", [*celery, "beat", "--loglevel", "WARNING", "--schedule", str(data_dir / "beat-schedule")], env
    )
    _wait_for_api(children, f"http://127.0.0.1:{port}/healthz")


def _wait_for_api(children: Children, url: str, timeout: float = 90.0) -> None:
    """Until the API answers. gunicorn binds its port before its workers load the app, so an open port
    is not a running API: a worker that fails to load stops gunicorn a few seconds later."""
    deadline = time.monotonic() + timeout
    while True:
        if exited := children.exited():
            raise click.ClickException(f"{', '.join(exited)} exited while starting; stopping everything")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - our own API on 127.0.0.1
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise click.ClickException(f"the API did not answer {url} within {timeout:.0f}s")
        time.sleep(0.1)


def _banner(env: dict[str, str], api: str, data_dir: Path) -> None:
    key = env["SEGMENT_WRITE_KEYS"].split(",")[0].strip()
    shown_key = key if key == DEV_WRITE_KEY else "<your write key>"
    shown_token = env["ADMIN_TOKEN"] if env["ADMIN_TOKEN"] == DEV_ADMIN_TOKEN else "<ADMIN_TOKEN>"
    status = Path(sys.executable).parent / "promoter-relay"  # the venv's: often not on PATH
    promoter = env["PROMOTER_API_URL"]
    if env["PROMOTER_API_KEY"] == DEV_SANDBOX_KEY:
        promoter += f"   (sandbox: what it got at {promoter}/_sandbox/calls and /_sandbox/contacts)"
    click.echo(
        f"""
promoter-relay is running.
  Ingest (Segment HTTP API):   {api}/v1/identify, /v1/track, /v1/batch
  Ingest (Webhooks):           {api}/segment
  Dashboard:                   {api}/admin/   (token: {shown_token})
  Metrics / health:            {api}/metrics  {api}/readyz
  Promoter:                    {promoter}
  NPS responses to Segment:    {_feedback_target(env)}
  Redis:                       {env["REDIS_URL"]}
  Data (kept between runs):    {data_dir}   (promoter-relay dev --fresh starts empty)

Try it:
  curl -u {shown_key}: -H 'Content-Type: application/json' {api}/v1/identify \\
    -d '{{"userId": "u1", "traits": {{"email": "ada@example.com", "name": "Ada Lovelace"}}}}'
  curl -u {shown_key}: -H 'Content-Type: application/json' {api}/v1/track \\
    -d '{{"userId": "u1", "event": "Order Completed", "properties": {{"order_id": "o1", "total": 42}}}}'
  {status} status   (or make status: reads this instance's Redis, from any folder)

Ctrl-C stops everything.
""",
        nl=False,
    )


def _feedback_target(env: dict[str, str]) -> str:
    if not env.get("FEEDBACK_SEGMENT_WRITE_KEY"):
        return "off (FEEDBACK_SEGMENT_WRITE_KEY)"
    host = env.get("FEEDBACK_SEGMENT_HOST") or "https://api.segment.io"
    local = env["FEEDBACK_SEGMENT_WRITE_KEY"] == DEV_FEEDBACK_KEY
    return f"{host}/v1/batch" + ("   (local receiver: each response is printed here)" if local else "")
