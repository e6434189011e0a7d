"""HTTP load from a separate process: wrk (from Debian) with a Lua script, else ``bench.pyload``.

Every request carries fresh message ids (a repeated id would take the cheaper duplicate path), so the
bodies are built per request: in Lua for wrk, in Python for the fallback. The three kinds of body:

* ``single``: alternately an identify to ``/v1/identify`` and a track of the same user to ``/v1/track``;
* ``batch``: ``/v1/batch`` with 50 such identify+track pairs (100 events);
* ``contacts``: a contact upsert to the Promoter sandbox's ``/contacts/``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.infra import PY, ROOT, SANDBOX_KEY, WRITE_KEY

EVENTS_PER_REQUEST = {"single": 1, "batch": 100, "contacts": 1}
BATCH_PAIRS = 50

_LUA = r"""
local mode, auth, salt, pairs = "%(mode)s", "%(auth)s", "%(salt)s", %(pairs)d
local counter, n = 0, 0
function setup(thread) counter = counter + 1; thread:set("tid", counter) end
local function user(i) return string.format("%%s-%%d-%%d", salt, tid, i) end
local function identify(i)
  return string.format('{"type":"identify","messageId":"%%s-i","userId":"%%s","traits":'
    .. '{"email":"u%%d.%%d@example.com","name":"Ada Lovelace","plan":"pro","company":{"name":"Acme",'
    .. '"size":12}},"context":{"library":'
    .. '{"name":"analytics-python","version":"2.4.0"}},"timestamp":"2026-11-29T05:00:00.000Z"}',
    user(i), user(i), tid, i)
end
local function track(i)
  return string.format('{"type":"track","messageId":"%%s-t","userId":"%%s","event":"NPS Survey",'
    .. '"properties":{"plan":"pro","total":42.5,"items":3},"context":{"library":{"name":"analytics-python",'
    .. '"version":"2.4.0"}},"timestamp":"2026-11-29T05:00:01.000Z"}', user(i), user(i))
end
local json_headers = {["Content-Type"] = "application/json", ["Authorization"] = auth}
function request()
  n = n + 1
  if mode == "single" then
    local i = math.floor((n + 1) / 2)
    if n %% 2 == 1 then return wrk.format("POST", "/v1/identify", json_headers, identify(i)) end
    return wrk.format("POST", "/v1/track", json_headers, track(i))
  elseif mode == "batch" then
    local items = {}
    for k = 1, pairs do
      local i = (n - 1) * pairs + k
      items[#items + 1] = identify(i)
      items[#items + 1] = track(i)
    end
    return wrk.format("POST", "/v1/batch", json_headers, '{"batch":[' .. table.concat(items, ",") .. ']}')
  end
  local body = string.format('{"email":"c%%d.%%d.%%s@example.com","first_name":"Ada","last_name":"Lovelace",'
    .. '"attributes":{"plan":"pro"}}', tid, n, salt)
  return wrk.format("POST", "/contacts/", json_headers, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH-RESULT {"requests":%%d,"seconds":%%.4f,"non2xx":%%d,"errors":%%d,'
    .. '"p50_ms":%%.3f,"p99_ms":%%.3f,"max_ms":%%.3f}\n', summary.requests, summary.duration / 1e6,
    e.status, e.connect + e.read + e.write + e.timeout, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def auth_header(mode: str) -> str:
    if mode == "contacts":
        return f"Token {SANDBOX_KEY}"
    return "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()


def ensure_wrk() -> str | None:
    """wrk from Debian, installed on first use when apt-get can; None means the Python fallback."""
    if os.environ.get("BENCH_LOADER") == "python":
        return None
    apt = shutil.which("apt-get")
    if shutil.which("wrk") is None and apt is not None:
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        install = [apt, "install", "-y", "-qq", "wrk"]
        if subprocess.run(install, capture_output=True, env=env, timeout=240, check=False).returncode:
            # A fresh machine has no package lists yet.
            subprocess.run([apt, "update", "-qq"], capture_output=True, env=env, timeout=240, check=False)
            subprocess.run(install, capture_output=True, env=env, timeout=240, check=False)
    return shutil.which("wrk")


@dataclass
class Loader:
    wrk: str | None
    script_dir: Path

    @property
    def name(self) -> str:
        return "wrk" if self.wrk else "bench.pyload (Python, threads + keep-alive)"

    def run(self, url: str, mode: str, seconds: float, connections: int) -> dict[str, Any]:
        """One closed-loop run; events/s counts only 2xx answers."""
        salt = uuid.uuid4().hex[:10]
        timeout = 15 + seconds
        if self.wrk:
            script = self.script_dir / f"load-{mode}.lua"
            params = {"mode": mode, "auth": auth_header(mode), "salt": salt, "pairs": BATCH_PAIRS}
            script.write_text(_LUA % params)
            args = [
                self.wrk,
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
            ]
            out = subprocess.run([*args, url], capture_output=True, text=True, timeout=timeout, check=False)
        else:
            args = [PY, "-m", "bench.pyload", url, mode, str(seconds), str(connections), salt]
            out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH-RESULT ")), None)
        if line is None:
            raise RuntimeError(f"load generator failed: {out.stdout[-500:]} {out.stderr[-500:]}")
        result: dict[str, Any] = json.loads(line.split(" ", 1)[1])
        ok = result["requests"] - result["non2xx"]
        result["events_per_s"] = ok * EVENTS_PER_REQUEST[mode] / result["seconds"]
        result["requests_per_s"] = result["requests"] / result["seconds"]
        return result
