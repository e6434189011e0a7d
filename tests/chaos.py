"""``make chaos``: send thousands of identify/track pairs while breaking everything, then account.

Faults, in turn and then combined: workers SIGKILLed (whole process group), Redis SIGKILLed and
restarted from its append-only file, Promoter answering 30% 5xx, bursts of 429 with Retry-After,
and 2 s stalls that our client times out on. The sender behaves like Segment: it retries 5xx and
connection errors with the same message ids. At the end every acknowledged event must be in a final
state that the sandbox's own record agrees with; a loss or a duplicate survey exits non-zero.

Unknown survey outcomes (a stall past the client timeout, a worker killed mid-call) end by policy
(``UNKNOWN_SURVEY_OUTCOME``): ``dead-letter`` leaves them to an operator, ``resend`` sends once more and
lets Promoter's eligibility window (on in the sandbox) refuse a true duplicate. ``--policy both`` (the
default) runs the same seeded traffic and faults once per policy and prints the two side by side.

Everything runs on 127.0.0.1 and stops by itself (each phase and the final drain have deadlines).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis
import requests

from app.devtools.processes import Children, EmbeddedRedis, free_port
from app.devtools.sandbox import SandboxServer, SandboxState
from worker import keys
from worker.events import source_of_key
from worker.states import FINAL

ROOT = Path(__file__).resolve().parent.parent
WRITE_KEY = "chaos-write-key"
SANDBOX_KEY = "chaos-sandbox-key"
CAMPAIGN = 3
SOURCE = source_of_key(WRITE_KEY)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Services(Children):
    """The relay's processes, restartable by name (a killed worker comes back as a new process)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(log_dir)
        self.env = env
        self.named: dict[str, subprocess.Popen[bytes]] = {}

    def run(self, name: str, args: list[str]) -> None:
        self.named[name] = self.start(name, args, self.env, cwd=ROOT)

    def worker(self, name: str, pool: str, concurrency: int) -> None:
        self.run(
            name,
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", pool, "--concurrency",
             str(concurrency), "--without-gossip", "--without-mingle", "--loglevel", "WARNING",
             "-n", f"{name}-{len(self.processes)}@%h"],
        )  # fmt: skip

    def sigkill(self, name: str) -> None:
        self.kill(self.named.pop(name))


@dataclass
class Sender:
    """Posts batches like Segment: same message ids on retry, backoff on 5xx/connection errors."""

    api: str
    acknowledged: set[str] = field(default_factory=set)
    attempts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, batch: list[dict[str, Any]], deadline: float) -> None:
        session = requests.Session()
        delay = 0.2
        while time.monotonic() < deadline:
            try:
                response = session.post(
                    f"{self.api}/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""), timeout=10
                )
                status = response.status_code
            except requests.RequestException:
                status = 0
            with self.lock:
                self.attempts[str(status)] += 1
                if status == 200:
                    body = response.json()
                    if body["rejected"]:
                        raise RuntimeError(f"chaos events rejected: {body['rejected'][:2]}")
                    self.acknowledged.update(item["messageId"] for item in batch)
                    return
            if 400 <= status < 500:
                raise RuntimeError(f"unexpected {status}: {response.text[:200]}")
            time.sleep(delay)
            delay = min(delay * 2, 3.0)
        raise RuntimeError("sender gave up: ingest never recovered")


def make_events(
    users: int, duplicate_rate: float, rng: random.Random
) -> tuple[list[dict[str, Any]], set[str]]:
    """Identify/track pairs (tracks often first), shuffled across users, with re-sent duplicates."""
    events: list[dict[str, Any]] = []
    for i in range(users):
        user = f"chaos-{i}"
        tag = uuid.uuid4().hex[:8]
        identify = {"type": "identify", "userId": user, "messageId": f"i-{i}-{tag}",
                    "traits": {"email": f"{user}@example.com", "name": f"Chaos User{i}"}}  # fmt: skip
        track = {"type": "track", "userId": user, "event": "NPS", "messageId": f"t-{i}-{tag}",
                 "properties": {"plan": rng.choice(["free", "pro"])}}  # fmt: skip
        events += [track, identify] if rng.random() < 0.6 else [identify, track]
    # Shuffle in windows: a user's two events stay near each other, as in real traffic.
    window = 200
    for start in range(0, len(events), window):
        chunk = events[start : start + window]
        rng.shuffle(chunk)
        events[start : start + window] = chunk
    unique = {e["messageId"] for e in events}
    duplicates = rng.sample(events, int(len(events) * duplicate_rate))
    for duplicate in duplicates:
        events.insert(rng.randrange(len(events)), dict(duplicate))
    return events, unique


@contextmanager
def stack(
    args: argparse.Namespace, workdir: Path, policy: str
) -> Iterator[tuple[EmbeddedRedis, Services, SandboxServer, str]]:
    redis_server = EmbeddedRedis(workdir / "redis", durable=True).start()
    sandbox = SandboxServer(SandboxState(api_key=SANDBOX_KEY, survey_cooldown_seconds=86400, seed=args.seed))
    sandbox.start()
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMOTER_", "SEGMENT_"))}
    env.update(
        REDIS_URL=redis_server.url,
        PROMOTER_API_URL=sandbox.url,
        PROMOTER_API_KEY=SANDBOX_KEY,
        PROMOTER_CAMPAIGN_ID=str(CAMPAIGN),
        PROMOTER_RATE_LIMIT="2000",
        PROMOTER_TIMEOUT_SECONDS="1.5",
        SEGMENT_WRITE_KEYS=WRITE_KEY,
        RETRY_BASE_SECONDS="0.5",
        RETRY_MAX_DELAY_SECONDS="5",
        VISIBILITY_TIMEOUT="20",
        UNKNOWN_SURVEY_OUTCOME=policy,
        RELAY_ENV="test",
        GUNICORN_BIND=f"127.0.0.1:{api_port}",
        GUNICORN_WORKERS="2",
    )
    services = Services(env, workdir)
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    services.run("api", [gunicorn, "--config", "python:app.gunicorn_conf", "app:create_app()"])
    services.worker("worker-a", "prefork", 4)
    services.worker("worker-b", "threads", 16)
    services.run("beat", [sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel", "WARNING",
                          "--schedule", str(workdir / "beat-schedule")])  # fmt: skip
    api = f"http://127.0.0.1:{api_port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{api}/readyz", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.2)
    try:
        yield redis_server, services, sandbox, api
    finally:
        services.stop()
        sandbox.stop()
        redis_server.stop()


FAULT_STEPS = 13


def faults(redis_server: EmbeddedRedis, services: Services, sandbox: SandboxServer, stop: threading.Event,
           phase_seconds: float, done: list[str]) -> None:  # fmt: skip
    """Break things in turn, then all together; ``done`` fills in as faults happen."""
    state = sandbox.state
    kills = 0

    def kill_worker() -> None:
        nonlocal kills
        kills += 1
        name = "worker-a" if kills % 2 else "worker-b"
        services.sigkill(name)
        services.worker(name, "prefork" if name == "worker-a" else "threads", 4 if name == "worker-a" else 16)
        done.append(f"SIGKILL {name}")

    def restart_redis() -> None:
        redis_server.crash()
        time.sleep(2)
        redis_server.start()
        done.append("redis SIGKILL + restart (AOF)")

    steps: list[tuple[str, Callable[[], object]]] = [
        ("30% 5xx", lambda: state.configure({"failure_rate": 0.3})),
        ("kill worker", kill_worker),
        ("clear", lambda: state.configure({"failure_rate": 0})),
        ("429 burst", lambda: state.configure({"throttle_next": 40, "retry_after": 2})),
        ("kill worker", kill_worker),
        ("restart redis", restart_redis),
        ("2 s stalls", lambda: state.configure({"timeout_rate": 0.1, "timeout_seconds": 2.0})),
        ("kill worker", kill_worker),
        ("clear", lambda: state.configure({"timeout_rate": 0})),
        (
            "combined",
            lambda: state.configure({"failure_rate": 0.3, "timeout_rate": 0.1, "throttle_next": 30}),
        ),
        ("kill worker", kill_worker),
        ("restart redis", restart_redis),
        ("kill worker", kill_worker),
    ]
    assert len(steps) == FAULT_STEPS
    for name, action in steps:
        if stop.wait(phase_seconds):
            break
        log(f"fault: {name}")
        action()
        if name not in ("kill worker", "restart redis"):
            done.append(name)
    state.configure({"failure_rate": 0, "timeout_rate": 0, "throttle_next": 0})


def drain(url: str, ids: set[str], timeout: float) -> dict[str, str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    ordered = sorted(ids)
    while True:
        pipe = client.pipeline(transaction=False)
        for message_id in ordered:
            pipe.hget(keys.message(f"{SOURCE}:{message_id}"), "state")
        states = {m: s or "missing" for m, s in zip(ordered, pipe.execute(), strict=True)}
        pending = sum(1 for s in states.values() if s not in FINAL)
        if not pending or time.monotonic() > deadline:
            return states
        queues = f"{client.llen('relay')}/{client.llen('relay.low')}"
        log(f"draining: {pending} not final yet (queues {queues}, retries {client.zcard(keys.SCHEDULE)})")
        time.sleep(3)


def run(args: argparse.Namespace, policy: str = "dead-letter") -> dict[str, Any]:
    """One run with ``UNKNOWN_SURVEY_OUTCOME=policy``; one seed gives the same traffic and faults."""
    rng = random.Random(args.seed)
    events, unique = make_events(args.users, args.duplicates, rng)
    tracks = {e["messageId"]: e["userId"] for e in events if e["type"] == "track"}
    workdir = Path(tempfile.mkdtemp(prefix="relay-chaos-"))
    started = time.monotonic()
    try:
        with stack(args, workdir, policy) as (redis_server, services, sandbox, api):
            sender, fault_log = _send_under_faults(args, events, unique, redis_server, services, sandbox, api)
            states = drain(redis_server.url, unique, args.drain_seconds)
            client = redis.Redis.from_url(redis_server.url, decode_responses=True)
            dead_reasons, causes = _dead_letters(client, states)
            # decode_responses=True: the hash comes back as str names and values.
            counters = cast(dict[str, str], client.hgetall(keys.STATS))
            surveys: Counter[str] = Counter(
                c["json"]["contact"]["email"]
                for c in sandbox.state.calls("/v2/survey/")
                if c["status"] == 200
            )
            contacts = {c["email"] for c in sandbox.state.contacts()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    counts = Counter(states.values())
    surveyed_users = {email.split("@")[0] for email in surveys}
    track_users = set(tracks.values())
    dead_tracks = [m for m in tracks if states.get(m) == "dead"]
    unaccounted = [m for m in unique if m in sender.acknowledged and states.get(m) not in FINAL]
    # A track the relay calls delivered must show as a survey at Promoter.
    phantom = [m for m in tracks if states.get(m) == "delivered" and tracks[m] not in surveyed_users]
    return {
        "policy": policy,
        "sent_events": len(events),
        "unique_messages": len(unique),
        "acknowledged": len(sender.acknowledged & unique),
        "http_answers": dict(sender.attempts),
        "states": dict(counts),
        "delivered": counts.get("delivered", 0),
        "ineligible": counts.get("ineligible", 0),
        "dead": counts.get("dead", 0),
        "dead_reasons": dict(dead_reasons),
        # Where unknown outcomes came from: the client timed out, or the worker died holding the call.
        "unknown_outcomes": {
            k.split(":", 1)[1]: int(v) for k, v in counters.items() if k.startswith("survey_unknown:")
        },
        "dead_unknown_by_cause": dict(causes),
        "resent": {k.split(":", 1)[1]: int(v) for k, v in counters.items() if k.startswith("survey_resend:")},
        # Surveys dead-lettered as "outcome unknown" that Promoter did receive (false alarms); the
        # others were never received: those people are not surveyed unless an operator replays.
        "dead_but_surveyed": sum(1 for m in dead_tracks if tracks[m] in surveyed_users),
        "never_surveyed": len(track_users - surveyed_users),
        "surveys_at_promoter": sum(surveys.values()),
        "users_surveyed": len(surveyed_users & track_users),
        "users_with_contact": len({f"{u}@example.com" for u in track_users} & contacts),
        "duplicate_surveys": sum(n - 1 for n in surveys.values() if n > 1),
        "lost": len(unaccounted) + len(phantom) + len(unique - sender.acknowledged),
        "faults": fault_log,
        "seconds": round(time.monotonic() - started, 1),
    }


def _send_under_faults(
    args: argparse.Namespace,
    events: list[dict[str, Any]],
    unique: set[str],
    redis_server: EmbeddedRedis,
    services: Services,
    sandbox: SandboxServer,
    api: str,
) -> tuple[Sender, list[str]]:
    sender = Sender(api)
    stop = threading.Event()
    fault_log: list[str] = []
    fault_thread = threading.Thread(
        target=faults, args=(redis_server, services, sandbox, stop, args.phase_seconds, fault_log)
    )
    fault_thread.start()
    batches = [events[i : i + args.batch] for i in range(0, len(events), args.batch)]
    log(f"sending {len(events)} events ({len(unique)} unique) in {len(batches)} batches")
    send_deadline = time.monotonic() + args.send_seconds
    with ThreadPoolExecutor(max_workers=4) as pool:
        # Spread the load over the whole fault timeline, so every fault meets traffic.
        pace = args.pace if args.pace is not None else args.phase_seconds * FAULT_STEPS / len(batches)
        futures = []
        for batch in batches:
            futures.append(pool.submit(sender.send, batch, send_deadline))
            time.sleep(pace)
        for future in futures:
            future.result()
    fault_thread.join()
    log(f"all sent; faults done: {fault_log}")
    return sender, fault_log


def _dead_letters(client: redis.Redis, states: dict[str, str]) -> tuple[Counter[str], Counter[str]]:
    reasons: Counter[str] = Counter()
    causes: Counter[str] = Counter()
    for message_id, state in states.items():
        if state == "dead":
            record = json.loads(client.hget(keys.DEAD, f"{SOURCE}:{message_id}") or "{}")
            reasons[str(record.get("reason", "?"))[:80]] += 1
            if cause := (record.get("evidence") or {}).get("cause"):
                causes[cause] += 1
    return reasons, causes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10000, help="identify/track pairs (x2 events)")
    parser.add_argument("--duplicates", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--pace", type=float, default=None, help="seconds between batches (default: spread)")
    parser.add_argument("--phase-seconds", type=float, default=8.0)
    parser.add_argument("--send-seconds", type=float, default=600.0)
    parser.add_argument("--drain-seconds", type=float, default=240.0)
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--policy", choices=["dead-letter", "resend", "both"], default="both")
    parser.add_argument("--json", type=Path, help="also write the report(s) here")
    return parser.parse_args(argv)


def passed(report: dict[str, Any]) -> bool:
    common = (
        report["lost"] == 0
        and report["duplicate_surveys"] == 0
        and report["acknowledged"] == report["unique_messages"]
    )
    if report["policy"] == "resend":
        # Promoter's eligibility window settles every unknown outcome: nobody left for an operator.
        unknown_dead = sum(report["dead_unknown_by_cause"].values())
        return bool(common and unknown_dead == 0 and report["never_surveyed"] == 0 and report["dead"] == 0)
    # Every user was surveyed exactly once, or their track is a dead letter saying why.
    users = report["unique_messages"] // 2
    return bool(common and report["users_surveyed"] + report["dead"] - report["dead_but_surveyed"] == users)


def render(reports: list[dict[str, Any]]) -> str:
    names = list(reports[0])
    width = max(len(k) for k in names)
    lines = [f"{'':<{width}}  " + "  ".join(f"{r['policy']:<32}" for r in reports)]
    for name in names[1:]:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{json.dumps(r[name]):<32}" for r in reports))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    policies = ["dead-letter", "resend"] if args.policy == "both" else [args.policy]
    reports = [run(args, policy) for policy in policies]
    print(render(reports))
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))
    ok = all(passed(report) for report in reports)
    print("RESULT:", "OK - nothing lost, nothing surveyed twice" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
