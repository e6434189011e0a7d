"""The Makefile's virtualenv stamp: installing Chromium after a first ``make`` must make the next one
install the browser extra (Playwright), instead of failing with ``No module named 'playwright'``."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration  # each test starts processes

MAKE = shutil.which("make")


def dry_run(target: str, venv: Path, path: Path) -> str:
    """What ``make -n`` would run, with only ``path`` on PATH (so only its programs are found)."""
    assert MAKE is not None
    result = subprocess.run(
        [MAKE, "-n", "-C", str(ROOT), target, f"VENV={venv}"],
        env={**os.environ, "PATH": str(path)}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def installed(venv: Path, path: Path) -> None:
    """As if ``make install`` had just run there: a python in the venv, and the stamp make asks for."""
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    lines = dry_run("install", venv, path).splitlines()
    [touch] = [line for line in lines if line.startswith("touch ")]
    stamp = Path(touch.split(" ", 1)[1])
    stamp.touch()
    later = time.time() + 5
    os.utime(stamp, (later, later))


def test_installing_chromium_later_brings_the_browser_extra(tmp_path: Path) -> None:
    venv, bare, with_chromium = tmp_path / "venv", tmp_path / "bare", tmp_path / "with-chromium"
    bare.mkdir()
    with_chromium.mkdir()
    chromium = with_chromium / "chromium"
    chromium.write_text("#!/bin/sh\n")
    chromium.chmod(0o755)

    first = dry_run("install", venv, bare)
    assert "pip install" in first
    assert "browser" not in first
    installed(venv, bare)
    assert "pip install" not in dry_run("install", venv, bare), "up to date"

    after_chromium = dry_run("install", venv, with_chromium)
    assert "pip install" in after_chromium, "Chromium is there now: the browser extra must be installed"
    assert ",browser" in after_chromium


def test_make_status_runs_the_venvs_promoter_relay(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    installed(venv, tmp_path)
    assert f"{venv}/bin/promoter-relay status" in dry_run("status", venv, tmp_path)
    assert f"{venv}/bin/promoter-relay dead-letters list" in dry_run("dead-letters", venv, tmp_path)
