"""The four measurements. Each returns ``{row name: [one dict of figures per run]}``; rows compared with
each other are run interleaved inside every repeat, so a burst of noise hits both sides of a ratio."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, cast

import redis

from app.admission import admit
from app.devtools.processes import EmbeddedRedis, free_port
from bench import noop_app
from bench.infra import PY, ROOT, Proc, Procs, base_env, configure_sandbox, purge, wait_http
from bench.load import Loader
from bench.storage import SETTINGS, sample_events
from worker import keys, taskmessages
from worker.events import Event, identities, version
from worker.mapping import contact_body, contact_fields
from worker.messages import Admission
from worker.promoter import NO_CALL
from worker.stores import Stores, build_stores

Runs = dict[str, list[dict[str, Any]]]

# --quick: one pool, smaller preloads and windows (bench/__main__.py quick()).
QUICK = False
DELIVERY_CONCURRENCY = 100
DELIVERY_LATENCY_MS = 50.0
SLOW_LATENCY_MS = 2000.0
DECOUPLE_WORKER_THREADS = 32  # docker-compose.yml's worker
DEDUP_ROW = "durable + dedup Flask (one script: marker per messageId, LPUSH)"
FLOOR_ROW = "floor task (1 Promoter call + 1 Redis write), threads x8, 0 ms"


@dataclass
class Ctx:
    procs: Procs
    redis_url: str
    client: redis.Redis
    loader: Loader
    repeats: int
    seconds: float
    connections: int
    people: int = 0

    def load(self, url: str, mode: str, connections: int | None = None) -> dict[str, Any]:
        return self.loader.run(url, mode, self.seconds, connections or self.connections)


def _storage(ctx: Ctx, mode: str) -> dict[str, Any]:
    args = [PY, "-m", "bench.storage", ctx.redis_url, "bench-storage", mode, "3"]
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=90, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("BENCH-RESULT "))
    result: dict[str, Any] = json.loads(line.split(" ", 1)[1])
    return result


def _interleaved(ctx: Ctx, urls: list[str], mode: str) -> list[dict[str, Any]]:
    """A, B, C, C, B, A in halves of the run time, so a drift of the machine's speed hits every side
    alike. Rates are pooled over both halves; latency percentiles are the mean of the two halves'."""
    half = max(1.0, ctx.seconds / 2)
    first = [ctx.loader.run(url, mode, half, ctx.connections) for url in urls]
    second = [ctx.loader.run(url, mode, half, ctx.connections) for url in reversed(urls)]
    return [_pool(x, y) for x, y in zip(first, reversed(second), strict=True)]


def _pool(x: dict[str, Any], y: dict[str, Any]) -> dict[str, Any]:
    seconds = x["seconds"] + y["seconds"]
    pooled = {k: x[k] + y[k] for k in ("requests", "non2xx", "errors")}
    pooled |= {
        k: (x[k] * x["seconds"] + y[k] * y["seconds"]) / seconds for k in ("events_per_s", "requests_per_s")
    }
    pooled |= {k: (x[k] + y[k]) / 2 for k in ("p50_ms", "p99_ms")}
    return {**pooled, "max_ms": max(x["max_ms"], y["max_ms"]), "seconds": seconds, "halves": [x, y]}


def ingest(ctx: Ctx) -> Runs:
    """The relay's ingest beside a durable minimal endpoint (parse the JSON body, one LPUSH: the honest
    reference) and that endpoint with deduplication, interleaved; a bare Flask 200 for the ceiling of
    the stack; and the storage step alone."""
    env = base_env(ctx.redis_url, queue="bench-ingest")
    relay_proc, relay = ctx.procs.gunicorn("relay-api", "app:create_app()", env)
    durable_proc, durable = ctx.procs.gunicorn("durable-flask", "bench.apps:durable_app()", env)
    dedup_proc, dedup = ctx.procs.gunicorn("dedup-flask", "bench.apps:deduplicating_app()", env)
    bare_proc, bare = ctx.procs.gunicorn("bare-flask", "bench.apps:bare_app()", env)
    for url in (relay, durable, dedup, bare):  # warm-up: imports, connection pools, Lua script cache
        ctx.loader.run(url, "single", 1, ctx.connections)
    runs: Runs = defaultdict(list)
    for _ in range(ctx.repeats):
        for mode, label in (("single", "single"), ("batch", "batch of 100")):
            durable_run, dedup_run, relay_run = _interleaved(ctx, [durable, dedup, relay], mode)
            runs[f"durable Flask (parse + LPUSH), {label}"].append(durable_run)
            runs[f"{DEDUP_ROW}, {label}"].append(dedup_run)
            runs[f"relay, {label}"].append(relay_run)
            runs[f"bare Flask, {label}"].append(ctx.load(bare, mode))
        ctx.client.delete("bench-ingest", "bench-ingest.low", "bench-ingest.durable", "bench-ingest.dedup")
        runs["Redis LPUSH x100 (1 conn)"].append(_storage(ctx, "lpush"))
        runs["Messages.accept x100 (1 conn)"].append(_storage(ctx, "accept100"))
        runs["Messages.accept x1 (1 conn)"].append(_storage(ctx, "accept1"))
    for proc in (relay_proc, durable_proc, dedup_proc, bare_proc):
        ctx.procs.stop(proc)
    return runs


def decoupling(ctx: Ctx) -> Runs:
    """Single-event ingest while Promoter is healthy (50 ms), slow (2 s) or down, with worker and beat
    running; plus the same load with the worker stopped, to tell CPU contention from coupling."""
    port = free_port()
    sandbox_proc, sandbox = ctx.procs.sandbox(DELIVERY_LATENCY_MS, port)
    queue = "bench-decouple"
    env = base_env(ctx.redis_url, sandbox, queue=queue)
    relay_proc, relay = ctx.procs.gunicorn("relay-api", "app:create_app()", env)
    naive_proc, naive = ctx.procs.gunicorn("naive-inline", "bench.apps:naive_app()", env)
    beat_args = [PY, "-m", "celery", "-A", "worker", "beat", "--loglevel", "WARNING"]
    beat = ctx.procs.start("beat", [*beat_args, "--schedule", str(ctx.procs.dir / "beat-schedule")], env)
    for url in (relay, naive):
        ctx.loader.run(url, "single", 1, ctx.connections)
    runs: Runs = defaultdict(list)
    for _ in range(ctx.repeats):
        purge(ctx.client, queue)
        runs["relay, worker stopped"].append(ctx.load(relay, "single"))
        worker = ctx.procs.celery("relay-worker", "worker", "threads", DECOUPLE_WORKER_THREADS, env)
        time.sleep(2.0)  # past its start-up burst
        for condition in ("healthy", "slow", "down"):
            if condition == "slow":
                configure_sandbox(sandbox, latency_ms=SLOW_LATENCY_MS)
            if condition == "down":
                ctx.procs.stop(sandbox_proc)
            for name, url in (("relay", relay), ("naive inline", naive)):
                purge(ctx.client, queue)
                cpu = worker.cpu_seconds()
                result = ctx.load(url, "single")
                if not worker.alive():
                    raise RuntimeError(f"the relay worker died:\n{worker.tail()}")
                result["worker_cpu_pct"] = 100 * (worker.cpu_seconds() - cpu) / result["seconds"]
                runs[f"{name}, Promoter {condition}"].append(result)
        ctx.procs.stop(worker)
        sandbox_proc, _ = ctx.procs.sandbox(DELIVERY_LATENCY_MS, port)
    for proc in (beat, relay_proc, naive_proc, sandbox_proc):
        ctx.procs.stop(proc)
    purge(ctx.client, queue)
    return runs


def _ordered(events: list[Event], block: int = 200) -> list[Event]:
    """Identifies of a block of users, then their tracks: most tracks find their user known, as in life."""
    ordered: list[Event] = []
    for start in range(0, len(events), 2 * block):
        chunk = events[start : start + 2 * block]
        ordered += chunk[0::2] + chunk[1::2]
    return ordered


def _stores(client: redis.Redis, queue: str) -> Stores:
    return build_stores(replace(SETTINGS, queue_name=queue), client=client)


def _admissions(events: list[Event]) -> list[Admission]:
    """As ingest admits them (``app.admission.admit``)."""
    return [admit(event, True, SETTINGS) for event in events]


def _preload(client: redis.Redis, queue: str, pairs: int, task: str | None = None) -> int:
    events = _ordered(sample_events(2 * pairs, uuid.uuid4().hex[:10]))
    if task is not None:
        pipe = client.pipeline(transaction=False)
        for n, event in enumerate(events):
            message = taskmessages.render(event["ref"], event["type"], queue, f"noop-{n}")
            pipe.lpush(
                queue, message.replace(f'"{taskmessages.TASK_FOR_TYPE[event["type"]]}"', f'"{task}"', 1)
            )
        pipe.execute()
        return len(events)
    messages = _stores(client, queue).messages
    for start in range(0, len(events), 500):
        messages.accept(_admissions(events[start : start + 500]))
    return len(events)


def _redis_counters(client: redis.Redis) -> tuple[float, int]:
    cpu, stats = client.info("cpu"), client.info("stats")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), int(stats["total_commands_processed"])


def _drain(
    client: redis.Redis,
    proc: Proc,
    done: Callable[[], int],
    total: int,
    warmup: float = 1.0,
    window: float = 6.0,
) -> dict[str, Any]:
    """Tasks/s of a worker draining a preloaded queue, measured after start-up and warm-up, before 90 %."""
    launched, start = time.monotonic(), done()
    while done() == start:
        if not proc.alive() or time.monotonic() - launched > 60:
            raise RuntimeError(f"{proc.name} made no progress:\n{proc.tail()}")
        time.sleep(0.05)
    startup = time.monotonic() - launched
    time.sleep(warmup)
    c0, t0, cpu0, (rcpu0, cmds0) = done(), time.monotonic(), proc.cpu_seconds(), _redis_counters(client)
    pss = 0
    while time.monotonic() - t0 < window and done() - start < 0.9 * total:
        time.sleep(0.1)
        if not pss and time.monotonic() - t0 > window / 3:
            pss = proc.pss_bytes()
    c1, t1, cpu1, (rcpu1, cmds1) = done(), time.monotonic(), proc.cpu_seconds(), _redis_counters(client)
    tasks = max(1, c1 - c0)
    round_trips, in_scripts = _commands_per_task(client, done)
    return {
        "round_trips_per_task": round_trips,
        "script_cmds_per_task": in_scripts,
        "tasks_per_s": (c1 - c0) / (t1 - t0),
        "tasks": c1 - c0,
        "seconds": t1 - t0,
        "startup_s": startup,
        "worker_cpu_ms_per_task": (cpu1 - cpu0) * 1000 / tasks,
        "redis_cpu_ms_per_task": (rcpu1 - rcpu0) * 1000 / tasks,
        "redis_cmds_per_task": (cmds1 - cmds0) / tasks,
        "worker_pss_mib": (pss or proc.pss_bytes()) / 2**20,
        "processes": len(proc.group()),
    }


def _commands_per_task(
    client: redis.Redis, done: Callable[[], int], seconds: float = 1.5
) -> tuple[float, float]:
    """Redis commands per task, split by MONITOR into those a process sent (round trips: the task's
    scripts and Celery's own commands) and those run inside Lua scripts. Sampled after the CPU window:
    MONITOR slows Redis down."""
    counts = {"client": 0, "lua": 0}
    first = done()
    deadline = time.monotonic() + seconds
    with client.monitor() as monitor:  # type: ignore[no-untyped-call]
        for command in monitor.listen():
            counts["lua" if command.get("client_type") == "lua" else "client"] += 1
            if time.monotonic() > deadline:
                break
    tasks = max(1, done() - first)
    return counts["client"] / tasks, counts["lua"] / tasks


def pools() -> list[str]:
    if QUICK:
        return ["threads"]
    found = ["prefork", "threads"]
    if importlib.util.find_spec("gevent") is not None:
        found.append("gevent")
    return found


def delivery(ctx: Ctx) -> Runs:
    runs: Runs = defaultdict(list)
    # Sandbox ceiling: the fake Promoter alone at 100 concurrent calls of 50 ms (ideal 2,000 calls/s).
    werkzeug_port = free_port()
    werkzeug = ctx.procs.start(
        "sandbox-werkzeug",
        [PY, "-m", "bench.apps", str(werkzeug_port), str(DELIVERY_LATENCY_MS)],
        base_env(""),
    )
    werkzeug_url = f"http://127.0.0.1:{werkzeug_port}"
    wait_http(werkzeug_url + "/_sandbox/healthz")
    sandbox_proc, sandbox = ctx.procs.sandbox(DELIVERY_LATENCY_MS)
    for _ in range(ctx.repeats):
        for name, url in (("werkzeug threaded", werkzeug_url), ("gunicorn gthread 1x128", sandbox)):
            configure_sandbox(url, latency_ms=DELIVERY_LATENCY_MS)
            runs[f"sandbox ceiling: {name}"].append(ctx.load(url, "contacts", DELIVERY_CONCURRENCY))
    ctx.procs.stop(werkzeug)

    queue = "bench-deliver"
    env = base_env(ctx.redis_url, sandbox, queue=queue)
    noop_env = {**env, "RELAY_QUEUE": noop_app.QUEUE}

    def delivered() -> int:
        return int(cast(str | None, ctx.client.hget(keys.STATS, "state:delivered")) or 0)

    def run(name: str, pool: str, concurrency: int, latency_ms: float, reference: str | None = None) -> None:
        configure_sandbox(sandbox, latency_ms=latency_ms)
        target = noop_app.QUEUE if reference else queue
        purge(ctx.client, target)
        total = _preload(ctx.client, target, 600 if QUICK else 3000, reference)
        if reference:
            proc = ctx.procs.celery("noop-worker", "bench.noop_app", pool, concurrency, noop_env)
            done: Callable[[], int] = lambda: total - int(ctx.client.llen(target))  # noqa: E731
        else:
            proc = ctx.procs.celery(f"worker-{pool}", "worker", pool, concurrency, env)
            done = delivered
        result = _drain(ctx.client, proc, done, total, window=2.0 if QUICK else 6.0)
        ctx.procs.stop(proc)
        purge(ctx.client, target)
        runs[name].append(result)

    for repeat in range(ctx.repeats):
        # No target reads the other pools' rows (docs/performance.md): they are measured once.
        for pool in pools() if repeat == 0 else ["threads"]:
            run(
                f"relay, {pool} x{DELIVERY_CONCURRENCY}, 50 ms",
                pool,
                DELIVERY_CONCURRENCY,
                DELIVERY_LATENCY_MS,
            )
        # Per-task overhead: Promoter answering at once, so the task path itself is what is timed.
        run("no-op task, threads x8, 0 ms", "threads", 8, 0.0, noop_app.TASK)
        run(FLOOR_ROW, "threads", 8, 0.0, noop_app.FLOOR_TASK)
        run("relay task, threads x8, 0 ms", "threads", 8, 0.0)
    ctx.procs.stop(sandbox_proc)
    return runs


def _used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def _usage(client: redis.Redis, names: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.memory_usage(name, samples=0)
    return sum(int(size or 0) for size in pipe.execute())


def _message_keys(event: Event) -> list[str]:
    return [keys.message(event["ref"]), keys.history(event["ref"]), keys.event(event["ref"])]


def _person_keys(person: str, event: Event) -> list[str]:
    anonymous = [keys.identity(i) for i in identities(event) if i.startswith("a:")]
    return [keys.person(person), *anonymous]


def _split(event: Event) -> tuple[str, str]:
    """The user and anonymous identities of an event, as the person scripts take them ("" when absent)."""
    user = f"u:{event['userId']}" if event.get("userId") else ""
    return user, f"a:{event['anonymousId']}" if event.get("anonymousId") else ""


def _deliver_identify(stores: Stores, event: Event) -> str:
    """An identify delivered as a worker does it (plan, Promoter accepts, settle); its person."""
    start = stores.messages.start(event["ref"])
    token = f"{event['ref']}#{start.run}"
    fields = contact_fields(event["traits"])
    plan = stores.people.contact_plan(event["ref"], token, *_split(event), fields, version(event), "high")
    assert plan.sync is not None, plan
    body = contact_body(plan.sync.fields, ())
    following, _ = stores.people.synced(plan.sync, event["ref"], token, body, "1", NO_CALL, "high")
    assert following is None
    return plan.sync.person


def memory(ctx: Ctx, count: int = 0) -> Runs:
    """Redis bytes per item, through the relay's own code paths, ``count`` distinct users (the worst case).

    ``info``: used_memory delta / count (everything the step wrote; the Redis is shared, hence medians).
    ``usage``: MEMORY USAGE of the per-message and per-identity keys only (exact, blind to shared indexes).
    """
    count = count or 4000
    client, queue = ctx.client, "bench-memory"
    stores = _stores(client, queue)
    runs: Runs = defaultdict(list)
    for _ in range(ctx.repeats):
        events = sample_events(4 * count, uuid.uuid4().hex[:10])
        tracks, identifies = events[1 : 2 * count : 2], events[2 * count :: 2][:count]
        per_message = [k for e in tracks for k in _message_keys(e)]
        done = [k for e in identifies for k in _message_keys(e)]
        held = [keys.held(identities(e)[0]) for e in tracks]

        def accept(batch: list[Event]) -> None:
            for start in range(0, len(batch), 500):
                stores.messages.accept(_admissions(batch[start : start + 500]))

        m0 = _used_memory(client)
        accept(tracks)
        m1 = _used_memory(client)
        queued_usage = _usage(client, per_message) + _usage(client, [queue])
        client.delete(queue)  # as if workers had taken them: they are held next
        for event in tracks:
            start = stores.messages.start(event["ref"])
            token = f"{event['ref']}#{start.run}"
            stores.people.track_plan(event["ref"], token, *_split(event), None, True, 1, "high")
        m2 = _used_memory(client)
        held_usage = _usage(client, per_message) + _usage(client, held)

        accept(identifies)
        client.delete(queue)
        pids = [_deliver_identify(stores, event) for event in identifies]
        m3 = _used_memory(client)
        done_usage = _usage(client, done)
        person_usage = _usage(
            client, [k for p, e in zip(pids, identifies, strict=True) for k in _person_keys(p, e)]
        )

        runs["accepted event, queued (status record + event + task message)"].append(
            {"info_bytes": (m1 - m0) / count, "usage_bytes": queued_usage / count}
        )
        runs["held track (status record + event + held item)"].append(
            {"info_bytes": (m2 - m0) / count, "usage_bytes": held_usage / count}
        )
        runs["delivered identify (status record kept STATUS_TTL_SECONDS) and its new person"].append(
            {"info_bytes": (m3 - m2) / count, "usage_bytes": (done_usage + person_usage) / count}
        )
        client.flushdb()
    return runs


def people(ctx: Ctx) -> Runs:
    """Bytes per known person for three profiles, and a track's and an identify's cost among 10,000
    people, compared with ``--people N`` people (in a second Redis) when N is larger (bench/people.py)."""
    from bench import people as measure

    small = None
    if ctx.people > measure.SCALE_SMALL:
        # The same redis-server as the large population's (infra.redis_target).
        binary = os.environ.get("BENCH_REDIS_SERVER")
        server = EmbeddedRedis(ctx.procs.dir / "redis-small", binary=binary).start()
        ctx.procs.adopt(server)
        small = redis.Redis.from_url(server.url, decode_responses=True)
    return measure.section(ctx.client, small, ctx.people, ctx.repeats)
