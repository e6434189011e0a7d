"""``promoter-relay dev`` (what ``make run`` starts): one command, events delivered, data kept between
runs, the CLI finds its Redis, and any stopping signal leaves no process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from app.devtools.dev import DEV_ADMIN_TOKEN, DEV_WRITE_KEY
from app.devtools.processes import free_port
from tests.conftest import wait_until

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
AUTH = (DEV_WRITE_KEY, "")


def _env(work: Path, **extra: str) -> dict[str, str]:
    """The environment without the relay's settings, and with a registry of running instances of
    this test's own (another ``make run`` on this machine must not be found)."""
    prefixes = ("PROMOTER_", "SEGMENT_", "REDIS_", "ADMIN_", "GUNICORN_", "RELAY_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return {**env, "XDG_RUNTIME_DIR": str(work / "run"), **extra}


def _process_groups() -> dict[int, int]:
    """pid -> process group of every live (non-zombie) process."""
    groups: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            groups[int(entry.name)] = int(fields[2])
    return groups


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            if ppid == pid:
                found.add(int(entry.name))
    return found


def _stop_signals_as_a_terminal_has_them() -> None:
    """A shell's background job (``make test &``, ``nohup``) inherits SIGINT and SIGHUP ignored, and
    Python then never turns SIGINT into Ctrl-C: the instance gets them as a terminal would send them."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


@contextmanager
def dev(
    work: Path, *args: str, stop: int = signal.SIGINT
) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    port = free_port()
    log_path = work / f"dev-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(BIN / "promoter-relay"), "dev", "--port", str(port), "--workers", "4", *args],
            cwd=work, env=_env(work), stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_stop_signals_as_a_terminal_has_them,
        )  # fmt: skip
        try:
            wait_until(lambda: "Ctrl-C stops everything" in log_path.read_text(), timeout=90)
            yield f"http://127.0.0.1:{port}", log_path, process
        except BaseException:
            # pytest shows this under "Captured stdout": why the instance stopped, if it did.
            print(f"--- promoter-relay dev (exit code {process.poll()}), last lines of its output:")
            print("\n".join(log_path.read_text(errors="replace").splitlines()[-60:]))
            raise
        finally:
            if process.poll() is None:
                process.send_signal(stop)
            process.wait(timeout=60)


def delivered(api: str) -> int:
    bearer = {"Authorization": f"Bearer {DEV_ADMIN_TOKEN}"}
    stats = requests.get(f"{api}/admin/api/stats", headers=bearer, timeout=5).json()
    return int(stats["totals"]["delivered"])


def cli(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "promoter-relay"), *args], cwd=work, env=_env(work), capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["INT", "TERM", "HUP"])
def test_dev_runs_everything_and_any_stop_signal_leaves_no_process(tmp_path: Path, stop: int) -> None:
    with dev(tmp_path, stop=stop) as (api, log, process):
        banner = log.read_text()
        assert f"curl -u {DEV_WRITE_KEY}:" in banner
        assert f"{api}/admin/" in banner
        [status] = [
            line.split()[0] for line in banner.splitlines() if line.strip().endswith("from any folder)")
        ]
        assert os.access(status, os.X_OK), f"{status}: the banner names a command that runs (not on PATH)"
        assert "/_sandbox/contacts" in banner
        assert requests.post(
            f"{api}/v1/track", json={"userId": "dev1", "event": "NPS"}, auth=AUTH, timeout=5
        ).ok
        identify = {"userId": "dev1", "traits": {"email": "dev1@example.com"}}
        assert requests.post(f"{api}/v1/identify", json=identify, auth=AUTH, timeout=5).ok
        wait_until(lambda: delivered(api) == 2, timeout=60)
        children = _children(process.pid)
        groups = {_process_groups().get(child) for child in children} - {None}
        assert len(groups) == 5, "redis-server, sandbox, api, worker and beat, each in its own group"
        assert any(b"redis-server" in Path(f"/proc/{p}/cmdline").read_bytes() for p in children)
    leftovers = [pid for pid, group in _process_groups().items() if group in groups]
    assert leftovers == [], f"processes left behind: {leftovers}"
    assert process.returncode == 0, log.read_text()[-2000:]
    assert not (tmp_path / ".promoter-relay" / "dev.json").exists()


def test_data_survives_a_restart_and_fresh_starts_empty(tmp_path: Path) -> None:
    with dev(tmp_path) as (api, log, _):
        identify = {"userId": "keep", "traits": {"email": "keep@example.com"}}
        assert requests.post(f"{api}/v1/identify", json=identify, auth=AUTH, timeout=5).ok
        wait_until(lambda: delivered(api) == 1, timeout=60)
        status = cli(tmp_path, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert "the running `promoter-relay dev`" in status.stderr
        assert '"delivered": 1' in status.stdout
        access = [line for line in log.read_text().splitlines() if "POST /v1/identify" in line]
        assert access, "the access log is on"
        assert all(DEV_WRITE_KEY not in line for line in access), "no write key in the access log"
    with dev(tmp_path) as (api, log, _):
        assert delivered(api) == 1, "kept between runs"
        [promoter] = [
            line.split()[1] for line in log.read_text().splitlines() if line.startswith("  Promoter:")
        ]
        [contact] = requests.get(f"{promoter}/_sandbox/contacts", timeout=5).json()["contacts"]
        assert (contact["id"], contact["email"]) == (1, "keep@example.com"), "so does the sandbox"
    with dev(tmp_path, "--fresh") as (api, _, _):
        assert delivered(api) == 0
    stopped = cli(tmp_path, "status")
    assert "the default: no `promoter-relay dev` is running" in stopped.stderr, "says which Redis it reads"


def test_a_busy_port_fails_at_once_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(BIN / "promoter-relay"), "dev", "--port", str(port)],
            cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert result.returncode != 0
    assert f"port {port} is already in use" in result.stderr
    assert "is running" not in result.stdout
    assert "Traceback" not in result.stderr


def test_a_second_instance_on_the_same_data_folder_refuses_with_one_line(tmp_path: Path) -> None:
    """Before, it started a second Redis on the same append-only file, and deleted the first one's
    dev.json when it stopped."""
    with dev(tmp_path) as (api, _, _):
        second = subprocess.Popen(
            [str(BIN / "promoter-relay"), "dev", "--port", str(free_port())],
            cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, preexec_fn=_stop_signals_as_a_terminal_has_them,
        )  # fmt: skip
        try:
            out, err = second.communicate(timeout=60)
        finally:
            if second.poll() is None:  # it started: SIGINT makes it stop what it started, too
                second.send_signal(signal.SIGINT)
                second.wait(timeout=60)
        assert second.returncode == 1
        [line] = err.strip().splitlines()
        assert f"is in use by another `promoter-relay dev` (API {api})" in line
        assert "--data-dir" in line
        assert "is running" not in out
        assert (tmp_path / ".promoter-relay" / "dev.json").exists(), "the first one's state is intact"
        assert "the running `promoter-relay dev` of this folder" in cli(tmp_path, "status").stderr
        assert delivered(api) == 0


def run_dev_quickly(work: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A ``promoter-relay dev`` expected to stop at once; killed (with what it started) if it does not."""
    process = subprocess.Popen(
        [str(BIN / "promoter-relay"), "dev", "--port", str(free_port()), *args],
        cwd=work, env=_env(work, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=_stop_signals_as_a_terminal_has_them,
    )  # fmt: skip
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=60)
        pytest.fail(f"it started instead of stopping at once:\n{out[-1500:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_fresh_with_an_external_redis_refuses_and_deletes_nothing(tmp_path: Path) -> None:
    """Before, --fresh deleted the local folder while the relay's keys stayed in the external Redis,
    and the banner said it started empty."""
    kept = tmp_path / ".promoter-relay" / "keep-me"
    kept.parent.mkdir()
    kept.write_text("data")
    result = run_dev_quickly(tmp_path, "--fresh", REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "--fresh empties the embedded Redis only" in line
    assert "unset REDIS_URL" in line
    assert kept.exists()


def test_a_bad_setting_stops_dev_before_anything_starts_or_prints(tmp_path: Path) -> None:
    """Before, the sandbox had already printed "Promoter sandbox on ..." above the error."""
    result = run_dev_quickly(tmp_path, HOLD_TTL_SECONDS="soon")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "Error: HOLD_TTL_SECONDS must be a whole number, got 'soon'"
    ]
    assert not (tmp_path / ".promoter-relay" / "redis").exists(), "no Redis was started"


def test_make_run_shows_an_nps_response_come_back_into_a_local_segment(tmp_path: Path) -> None:
    """README's example identify and track: the sandbox surveys and answers, and the response comes back
    into the local Segment receiver, which prints it."""
    with dev(tmp_path) as (api, log, _):
        banner = log.read_text()
        assert "NPS responses to Segment:" in banner
        assert "(local receiver: each response is printed here)" in banner
        identify = {"userId": "u1", "traits": {"email": "ada@example.com", "name": "Ada Lovelace"}}
        assert requests.post(f"{api}/v1/identify", json=identify, auth=AUTH, timeout=5).ok
        track = {"userId": "u1", "event": "Order Completed", "properties": {"order_id": "o1", "total": 42}}
        assert requests.post(f"{api}/v1/track", json=track, auth=AUTH, timeout=5).ok

        def came_back() -> list[str]:
            lines = [line for line in log.read_text().splitlines() if line.startswith("segment receiver:")]
            return lines if len(lines) >= 2 else []

        lines = wait_until(came_back, timeout=120, interval=0.5)
        assert any(line.startswith('segment receiver: track "NPS Survey Responded"') for line in lines)
        assert any(line.startswith("segment receiver: identify nps_score=") for line in lines)
        assert all(line.endswith("userId=u1") for line in lines)
        assert "ada@example.com" not in "\n".join(lines)
