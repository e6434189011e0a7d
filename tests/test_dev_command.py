"""``promoter-relay dev`` (what ``make run`` starts): one command, events delivered, Ctrl-C leaves nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from app.cli import DEV_ADMIN_TOKEN, DEV_WRITE_KEY, free_port
from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.integration


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


def test_dev_runs_everything_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PROMOTER_", "SEGMENT_", "REDIS_", "ADMIN_", "GUNICORN_"))
    }
    log = open(tmp_path / "dev.log", "wb")  # noqa: SIM115
    dev = subprocess.Popen(
        [str(Path(sys.executable).parent / "promoter-relay"), "dev", "--port", str(port), "--workers", "4"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: "Ctrl-C stops everything" in (tmp_path / "dev.log").read_text(), timeout=60)
        banner = (tmp_path / "dev.log").read_text()
        assert f"curl -u {DEV_WRITE_KEY}:" in banner and f"{api}/admin/" in banner
        auth = (DEV_WRITE_KEY, "")
        track = {"userId": "dev1", "event": "NPS"}
        assert requests.post(f"{api}/v1/track", json=track, auth=auth, timeout=5).status_code == 200
        identify = {"userId": "dev1", "traits": {"email": "dev1@example.com"}}
        assert requests.post(f"{api}/v1/identify", json=identify, auth=auth, timeout=5).status_code == 200

        def delivered() -> int:
            stats = requests.get(
                f"{api}/admin/api/stats", headers={"Authorization": f"Bearer {DEV_ADMIN_TOKEN}"}, timeout=5
            ).json()
            return int(stats["totals"]["delivered"])

        wait_until(lambda: delivered() == 2, timeout=60)
        groups = {_process_groups().get(child) for child in _children(dev.pid)} - {None}
        assert len(groups) == 5, "redis, sandbox, api, worker and beat, each in its own group"
    finally:
        dev.send_signal(signal.SIGINT)
        dev.wait(timeout=60)
    time.sleep(0.5)
    leftovers = [pid for pid, group in _process_groups().items() if group in groups]
    assert leftovers == [], f"processes left behind: {leftovers}"
    assert dev.returncode == 0, (tmp_path / "dev.log").read_text()[-2000:]
