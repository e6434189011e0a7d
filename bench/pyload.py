"""Fallback load generator when wrk is unavailable: ``python -m bench.pyload URL MODE SECONDS CONNS SALT``.

One keep-alive connection per thread, closed loop, the same bodies as the wrk script. It prints the
same ``BENCH-RESULT`` line. The GIL makes it weaker than wrk: compare only rows loaded the same way.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from urllib.parse import urlparse

from bench.load import BATCH_PAIRS, auth_header


def _identify(user: str, n: str) -> str:
    traits = {"email": f"u{n}@example.com", "name": "Ada Lovelace", "plan": "pro"}
    return json.dumps({"type": "identify", "messageId": f"{user}-i", "userId": user, "traits": traits})


def _track(user: str) -> str:
    properties = {"plan": "pro", "total": 42.5, "items": 3}
    message = {"type": "track", "messageId": f"{user}-t", "userId": user, "event": "NPS Survey"}
    return json.dumps({**message, "properties": properties})


def _request(mode: str, salt: str, tid: int, n: int) -> tuple[str, str]:
    if mode == "single":
        i = (n + 1) // 2
        user = f"{salt}-{tid}-{i}"
        return ("/v1/identify", _identify(user, f"{tid}.{i}")) if n % 2 else ("/v1/track", _track(user))
    if mode == "batch":
        items = []
        for k in range(1, BATCH_PAIRS + 1):
            i = (n - 1) * BATCH_PAIRS + k
            user = f"{salt}-{tid}-{i}"
            items += [_identify(user, f"{tid}.{i}"), _track(user)]
        return "/v1/batch", '{"batch":[' + ",".join(items) + "]}"
    body = {"email": f"c{tid}.{n}.{salt}@example.com", "first_name": "Ada", "attributes": {"plan": "pro"}}
    return "/contacts/", json.dumps(body)


def main() -> None:
    url, mode, seconds, conns, salt = sys.argv[1:6]
    parsed = urlparse(url)
    headers = {"Content-Type": "application/json", "Authorization": auth_header(mode)}
    latencies: list[float] = []
    counts = {"requests": 0, "non2xx": 0, "errors": 0}
    lock = threading.Lock()
    stop_at = time.monotonic() + float(seconds)

    def worker(tid: int) -> None:
        conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=10)
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            path, body = _request(mode, salt, tid, n)
            started = time.perf_counter()
            try:
                conn.request("POST", path, body=body.encode(), headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                with lock:
                    counts["errors"] += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - started)
                counts["requests"] += 1
                counts["non2xx"] += not 200 <= status < 300

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(1, int(conns) + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=float(seconds) + 12)
    elapsed = time.monotonic() - started
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0.0

    result = {**counts, "seconds": elapsed, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0)}
    print("BENCH-RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
