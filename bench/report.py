"""Medians, side-by-side ratios, targets and the printed table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench import promoter_calls as pc
from bench.infra import median
from bench.sections import DEDUP_ROW, DELIVERY_CONCURRENCY, DELIVERY_LATENCY_MS, FLOOR_ROW, Runs

RATE_LIMIT = 100_000.0
IDEAL_CALLS_PER_S = min(DELIVERY_CONCURRENCY / (DELIVERY_LATENCY_MS / 1000), RATE_LIMIT)
Sections = dict[str, Runs]


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    numeric = {
        k for run in runs for k, v in run.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return {k: median(float(run[k]) for run in runs if k in run) for k in sorted(numeric)}


def per_run(
    a: list[dict[str, Any]], b: list[dict[str, Any]], key: Callable[[dict[str, Any]], float]
) -> list[float]:
    """a_i / b_i for each repeat i: both sides of a ratio were measured in the same repeat."""
    return [key(x) / key(y) if key(y) else float("nan") for x, y in zip(a, b, strict=False)]


def _ev(run: dict[str, Any]) -> float:
    return float(run["events_per_s"])


def _p99(run: dict[str, Any]) -> float:
    return float(run["p99_ms"])


def ratios(sections: Sections) -> dict[str, list[float]]:
    """Each side-by-side ratio, one value per repeat."""
    out: dict[str, list[float]] = {}
    ing = sections.get("ingest", {})
    if ing:
        out["ingest single / durable Flask single"] = per_run(
            ing["relay, single"], ing["durable Flask (parse + LPUSH), single"], _ev
        )
        out["ingest single / bare Flask single"] = per_run(
            ing["relay, single"], ing["bare Flask, single"], _ev
        )
        dedup = ing.get(f"{DEDUP_ROW}, single")
        if dedup:
            out["durable + dedup single / durable Flask single"] = per_run(
                dedup, ing["durable Flask (parse + LPUSH), single"], _ev
            )
            out["ingest single / durable + dedup single"] = per_run(ing["relay, single"], dedup, _ev)
        out["ingest batch / durable Flask batch"] = per_run(
            ing["relay, batch of 100"], ing["durable Flask (parse + LPUSH), batch of 100"], _ev
        )
        out["ingest batch / Redis LPUSH ceiling"] = per_run(
            ing["relay, batch of 100"], ing["Redis LPUSH x100 (1 conn)"], _ev
        )
        out["ingest batch / Messages.accept x100"] = per_run(
            ing["relay, batch of 100"], ing["Messages.accept x100 (1 conn)"], _ev
        )
    dec = sections.get("decoupling", {})
    if dec:
        out["relay: p99 Promoter healthy / worker stopped"] = per_run(
            dec["relay, Promoter healthy"], dec["relay, worker stopped"], _p99
        )
    for name in ("relay", "naive inline"):
        for condition in ("slow", "down"):
            row = dec.get(f"{name}, Promoter {condition}")
            if row:
                base = dec[f"{name}, Promoter healthy"]
                out[f"{name}: p99 Promoter {condition} / healthy"] = per_run(row, base, _p99)
    return out | _delivery_ratios(sections.get("delivery", {})) | _calls_ratios(sections.get("calls", {}))


def _delivery_ratios(dlv: Runs) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for name, runs in dlv.items():
        if name.startswith("relay, ") and "50 ms" in name:
            out[f"{name}: achieved / ideal"] = [r["tasks_per_s"] / IDEAL_CALLS_PER_S for r in runs]
            ceiling = dlv.get("sandbox ceiling: gunicorn gthread 1x128")
            if ceiling:
                out[f"{name}: achieved / sandbox ceiling"] = per_run(
                    runs, ceiling, lambda r: float(r.get("tasks_per_s", r.get("requests_per_s", 0)))
                )
    noop, ours = dlv.get("no-op task, threads x8, 0 ms"), dlv.get("relay task, threads x8, 0 ms")
    floor = dlv.get(FLOOR_ROW)
    if noop and ours:
        out["relay task / no-op task, throughput"] = per_run(ours, noop, lambda r: float(r["tasks_per_s"]))
        out["relay task / no-op task, worker CPU per task"] = per_run(ours, noop, _task_cpu)
    if noop and ours and floor:
        out["floor task / no-op task, worker CPU per task"] = per_run(floor, noop, _task_cpu)
        out["relay task / floor task, worker CPU per task"] = per_run(ours, floor, _task_cpu)
    return out


def _task_cpu(run: dict[str, Any]) -> float:
    return float(run["worker_cpu_ms_per_task"])


def _calls(run: dict[str, Any]) -> float:
    return float(run["calls"])


def _calls_ratios(calls: Runs) -> dict[str, list[float]]:
    if not calls:
        return {}
    relay = calls[pc.ROW_RELAY]
    return {
        "Promoter calls: relay / lower bound": per_run(relay, calls[pc.ROW_BOUND], _calls),
        "Promoter calls: relay / forwarder": per_run(relay, calls[pc.ROW_FORWARDER], _calls),
    }


def _spread(runs: list[dict[str, Any]], key: Callable[[dict[str, Any]], float]) -> float:
    values = [key(r) for r in runs]
    mid = median(values)
    return (max(values) - min(values)) / mid if mid else float("nan")


def targets(sections: Sections, ratio_runs: dict[str, list[float]]) -> list[dict[str, Any]]:
    ratio = {name: median(values) for name, values in ratio_runs.items()}
    found: list[dict[str, Any]] = []

    def judge(name: str, value: float, goal: float, passed: bool, note: str = "") -> None:
        found.append({"target": name, "value": value, "goal": goal, "pass": passed, "note": note})

    if "ingest" in sections:
        value = ratio["ingest single / durable Flask single"]
        dedup = ratio.get("durable + dedup single / durable Flask single")
        note = "" if dedup is None else f"the durable endpoint plus dedup alone: {dedup:.2f}"
        judge("single-event ingest >= 0.5 x durable minimal endpoint", value, 0.5, value >= 0.5, note)
        value = ratio["ingest batch / Messages.accept x100"]
        judge("batch ingest >= 0.6 x Messages.accept x100 alone", value, 0.6, value >= 0.6)
    found += _delivery_targets(sections.get("delivery", {}), ratio)
    mem = sections.get("memory", {})
    if mem:
        queued = medians(next(r for n, r in mem.items() if n.startswith("accepted event")))["info_bytes"]
        note = "used_memory delta; an identity's first message also starts its message index"
        judge("Redis bytes per queued event <= 1,250", queued, 1250, queued <= 1250, note)
    dec = sections.get("decoupling", {})
    if dec:
        healthy = dec["relay, Promoter healthy"]
        tolerance = min(1.0, max(0.25, _spread(healthy, _p99)))
        for condition in ("slow", "down"):
            value = ratio[f"relay: p99 Promoter {condition} / healthy"]
            errors = sum(int(r["non2xx"]) + int(r["errors"]) for r in dec[f"relay, Promoter {condition}"])
            note = (
                f"noise tolerance +{tolerance:.0%}: spread of healthy runs, within 25-100%; {errors} non-2xx"
            )
            judge(
                f"ingest p99 unchanged when Promoter is {condition}",
                value,
                1 + tolerance,
                value <= 1 + tolerance and errors == 0,
                note,
            )
    return found + _calls_targets(sections, ratio) + _people_targets(sections.get("people", {}))


def _calls_targets(sections: Sections, ratio: dict[str, float]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if "calls" in sections:
        value = ratio["Promoter calls: relay / lower bound"]
        note = "relay calls / (contact states + surveys due)"
        found.append(_goal("Promoter calls <= 1.1 x lower bound", value, 1.1, value <= 1.1, note))
    if "backlog" in sections:
        m = medians(sections["backlog"][pc.ROW_NEW])
        note = f"{m['surveyed']:.0f} of {m['count']:.0f} new users surveyed; PROMOTER_RATE_LIMIT=10"
        value = m["p99_s"]
        found.append(_goal("new user's survey p99 <= 10 s under backlog", value, 10.0, value <= 10.0, note))
    return found


def _goal(name: str, value: float, goal: float, passed: bool, note: str) -> dict[str, Any]:
    return {"target": name, "value": value, "goal": goal, "pass": passed, "note": note}


def _delivery_targets(dlv: Runs, ratio: dict[str, float]) -> list[dict[str, Any]]:
    ours = dlv.get("relay task, threads x8, 0 ms")
    if not ours or "relay task / no-op task, worker CPU per task" not in ratio:
        return []
    trips = medians(ours)["round_trips_per_task"]
    in_scripts = medians(ours)["script_cmds_per_task"]
    note = f"plus {in_scripts:.1f} commands run inside the scripts"
    found = []
    value = ratio.get("relay task / floor task, worker CPU per task")
    if value is not None:
        noop = ratio["relay task / no-op task, worker CPU per task"]
        cpu_note = f"same settings, 0 ms Promoter; relay task / no-op Celery task: {noop:.2f}"
        found.append(
            {"target": "delivery task CPU <= 1.6 x floor task (1 Promoter call + 1 Redis write)",
             "value": value, "goal": 1.6, "pass": value <= 1.6, "note": cpu_note}
        )  # fmt: skip
    found.append(
        {"target": "Redis round trips per delivered event <= 12", "value": trips, "goal": 12,
         "pass": trips <= 12, "note": note}
    )  # fmt: skip
    return found


def _people_targets(people: Runs) -> list[dict[str, Any]]:
    from bench.people import MAX_BYTES, TARGET_PROFILE

    found: list[dict[str, Any]] = []
    profile = people.get(f"profile: {TARGET_PROFILE}")
    if profile:
        m = medians(profile)
        value = m["usage_bytes"]
        note = "MEMORY USAGE after status records expired; email index among 1 M people"
        found.append(_goal(f"bytes per known person ({TARGET_PROFILE}) <= {MAX_BYTES}", value, MAX_BYTES,
                           value <= MAX_BYTES, note))  # fmt: skip
        gb = m["with_key_overhead_bytes"] * 10_000_000 / 1e9
        note = "with each key's expiry and table entries"
        found.append(_goal("10 million such people in <= 4 GB", gb, 4.0, gb <= 4.0, note))
    scaling = people.get("events: scaling")
    if scaling and scaling[0].get("people", 0) > scaling[0].get("small_people", 0):
        m = scaling[0]
        size = f"{m['people']:,.0f}"
        for kind in ("track", "identify"):
            for figure, label in (("p99 us", "p99 script time"), ("redis cpu us", "Redis CPU per event")):
                value = m[f"{kind} {figure} @large"] / m[f"{kind} {figure} @small"]
                note = f"{m[f'{kind} {figure} @small']:,.0f} -> {m[f'{kind} {figure} @large']:,.0f} us"
                found.append(_goal(f"{kind}: {label} at {size} people <= 1.2 x at 10,000", value, 1.2,
                                   value <= 1.2, note))  # fmt: skip
    return found


def _fmt(value: Any, digits: int = 0) -> str:
    if not isinstance(value, int | float) or value != value:
        return "-"
    return f"{value:,.{digits}f}"


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [title]
    for row in [header, *rows]:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells))
    return "\n".join(lines)


def render(
    meta: dict[str, Any], sections: Sections, ratio: dict[str, list[float]], goals: list[dict[str, Any]]
) -> str:
    out = [
        f"promoter-relay bench: medians of {meta['repeats']} interleaved runs; {meta['load']}; "
        f"Redis {meta['redis']}; {meta['cpus']} CPUs; git {meta['git']}"
    ]
    for name, table in SECTION_TABLES.items():
        if sections.get(name):
            out += ["", *table(meta, sections[name])]
    out += ["", "RATIOS (median of the per-repeat ratios, and their range)"]
    for name, values in ratio.items():
        out.append(f"  {name:<58} {median(values):6.2f}   ({min(values):.2f} - {max(values):.2f})")
    out += ["", "TARGETS"]
    for goal in goals:
        verdict = "PASS" if goal["pass"] else "MISS"
        digits = 0 if goal["goal"] > 100 else 2
        value, target = _fmt(goal["value"], digits), _fmt(goal["goal"], digits)
        note = f"  ({goal['note']})" if goal["note"] else ""
        out.append(f"  {verdict}  {goal['target']}: {value} (goal {target}){note}")
    return "\n".join(out)


def _ingest_table(meta: dict[str, Any], ing: dict[str, list[dict[str, Any]]]) -> list[str]:
    durable = "durable Flask (parse + LPUSH), "
    bare = {"single": medians(ing[durable + "single"]), "batch": medians(ing[durable + "batch of 100"])}
    rows = []
    for name, runs in ing.items():
        m = medians(runs)
        if "p99_ms" in m:
            kind = "batch" if "batch" in name else "single"
            vs = _fmt(m["events_per_s"] / bare[kind]["events_per_s"], 2)
            row = [name, _fmt(m["events_per_s"]), _fmt(m["requests_per_s"]), _fmt(m["p50_ms"], 1)]
            rows.append([*row, _fmt(m["p99_ms"], 1), _fmt(m["non2xx"]), vs])
        else:
            rows.append([name, _fmt(m["events_per_s"]), "-", "-", "-", "-", "-"])
    header = ["ingest (gunicorn 2 workers x 4 threads)", "events/s", "req/s", "p50 ms", "p99 ms", "non-2xx"]
    title = f"INGEST, {meta['seconds']:.0f} s per row and repeat (A-B-C-C-B-A halves)"
    return [_table(title, [*header, "vs durable"], rows)]


def _decoupling_table(_: dict[str, Any], dec: dict[str, list[dict[str, Any]]]) -> list[str]:
    rows = []
    for name, runs in dec.items():
        m = medians(runs)
        base = medians(dec[name.split(",")[0] + ", Promoter healthy"])
        row = [name, _fmt(m["requests_per_s"]), _fmt(m["p50_ms"], 1), _fmt(m["p99_ms"], 1)]
        row += [_fmt(m["non2xx"] + m["errors"]), _fmt(m.get("worker_cpu_pct"))]
        rows.append([*row, _fmt(m["p99_ms"] / base["p99_ms"], 2)])
    header = ["single-event ingest", "req/s", "p50 ms", "p99 ms", "failed", "worker CPU %", "p99 vs healthy"]
    title = "DECOUPLING (worker threads x32 + beat; Promoter healthy = 50 ms, slow = 2 s, down = stopped)"
    return [_table(title, header, rows)]


def _delivery_tables(_: dict[str, Any], dlv: dict[str, list[dict[str, Any]]]) -> list[str]:
    rows = []
    for name, runs in dlv.items():
        if name.startswith("sandbox ceiling: "):
            m = medians(runs)
            row = [
                name.split(": ")[1],
                _fmt(m["requests_per_s"]),
                _fmt(m["requests_per_s"] / IDEAL_CALLS_PER_S, 2),
            ]
            rows.append([*row, _fmt(m["p50_ms"], 1), _fmt(m["p99_ms"], 1)])
    header = ["Promoter sandbox alone, 100 connections", "calls/s", "/ ideal", "p50 ms", "p99 ms"]
    out = [_table("SANDBOX CEILING (50 ms per call; ideal 2,000 calls/s)", header, rows), ""]
    rows = []
    for name, runs in dlv.items():
        if name.startswith("sandbox ceiling: "):
            continue
        m = medians(runs)
        ideal = _fmt(m["tasks_per_s"] / IDEAL_CALLS_PER_S, 2) if "50 ms" in name else "-"
        row = [name, _fmt(m["tasks_per_s"]), ideal, _fmt(m["worker_cpu_ms_per_task"], 2)]
        row += [_fmt(m.get("round_trips_per_task"), 1), _fmt(m.get("script_cmds_per_task"), 1)]
        row += [_fmt(m["redis_cpu_ms_per_task"], 3)]
        rows.append([*row, _fmt(m["worker_pss_mib"]), _fmt(m["startup_s"], 1)])
    header = ["delivery (tasks = Promoter calls)", "tasks/s", "/ ideal", "wkr CPU ms/task"]
    header += ["round trips/task", "in scripts/task", "Redis CPU ms/task", "worker PSS MiB", "start s"]
    ideal = f"{DELIVERY_CONCURRENCY} / 50 ms = {IDEAL_CALLS_PER_S:,.0f}/s"
    return [*out, _table(f"DELIVERY (identify+track pairs; ideal = {ideal})", header, rows)]


def _memory_table(_: dict[str, Any], mem: dict[str, list[dict[str, Any]]]) -> list[str]:
    rows = [[n, _fmt(medians(r)["usage_bytes"]), _fmt(medians(r)["info_bytes"])] for n, r in mem.items()]
    return [_table("REDIS MEMORY per item", ["item", "MEMORY USAGE B", "INFO delta B"], rows)]


def _calls_tables(_: dict[str, Any], calls: dict[str, list[dict[str, Any]]]) -> list[str]:
    shape = medians(calls[pc.ROW_MIX])
    bound = medians(calls[pc.ROW_BOUND])["calls"]
    rows = []
    for name in (pc.ROW_FORWARDER, pc.ROW_RELAY, pc.ROW_BOUND):
        m = medians(calls[name])
        row = [name, _fmt(m["calls"]), _fmt(m["contacts"]), _fmt(m["surveys"]), _fmt(m["per_1000"], 1)]
        rows.append([*row, _fmt(m["calls"] / bound, 2)])
    header = ["Promoter calls", "calls", "contact upserts", "surveys", "per 1,000 events", "vs bound"]
    title = (
        f"PROMOTER CALLS (seeded mix: {shape['users']:,.0f} users, {shape['events']:,.0f} events; "
        f"SURVEY_EVENTS=NPS Survey; sandbox 0 ms; PROMOTER_RATE_LIMIT={pc.CALLS_RATE_LIMIT:,.0f})"
    )
    saved = medians(calls[pc.ROW_SAVED])
    saved_rows = [[reason, _fmt(n)] for reason, n in saved.items()] or [["(none)", "-"]]
    return [
        _table(title, header, rows),
        "",
        _table(
            "relay: calls saved by reason (GET /admin/api/stats -> saved)", ["reason", "count"], saved_rows
        ),
        "",
        *_calls_notes(shape, medians(calls[pc.ROW_RELAY]), medians(calls[pc.ROW_STATES])),
    ]


def _calls_notes(shape: dict[str, float], relay: dict[str, float], states: dict[str, float]) -> list[str]:
    kinds = ", ".join(f"{_fmt(shape[k])} {k}" for k in ("identifies", "survey tracks", "order tracks"))
    finals = ", ".join(f"{_fmt(n)} {state}" for state, n in states.items())
    return [
        f"  mix: {kinds}, {_fmt(shape['other tracks'])} other tracks (no call); sent as /v1/batch of 100 "
        f"in {shape['send_s']:.0f} s, all final {shape['final_after_s']:.0f} s after the first batch",
        f"  relay: messages {finals}; calls not answered 200: {_fmt(relay['not_200'])}; "
        f"Promoter contacts without their last plan and order count: {_fmt(relay['contacts_wrong'])}",
    ]


def _backlog_table(_: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    rows = []
    for name in (pc.ROW_NEW, pc.ROW_FIFO):
        m = medians(runs[name])
        count = f"{m['surveyed']:.0f}/{m['count']:.0f}" if "surveyed" in m else _fmt(m["count"])
        rows.append([name, count, *(_fmt(m[k], 2) for k in ("p50_s", "p95_s", "p99_s", "max_s"))])
    title = (
        f"TIME TO FIRST SURVEY UNDER BACKLOG (PROMOTER_RATE_LIMIT={pc.REAL_RATE:.0f}; {pc.PERSONS:,} known "
        f"persons, {pc.BACKLOG_UPDATES:,} trait updates queued; a new user every {pc.NEW_USER_EVERY_S} s "
        f"for {pc.NEW_USERS_FOR_S:.0f} s)"
    )
    header = ["new user: ingest -> survey call", "surveyed", "p50 s", "p95 s", "p99 s", "max s"]
    fifo, b = medians(runs[pc.ROW_FIFO]), medians(runs[pc.ROW_BACKLOG])
    return [
        _table(title, header, rows),
        f"  computed FIFO: the whole backlog ({pc.BACKLOG_UPDATES:,} calls, one per update) ahead at the "
        f"worker's restart, {pc.REAL_RATE:.0f} calls/s; median {_fmt(fifo['ahead_p50'])} calls ahead / "
        f"{pc.REAL_RATE:.0f} per s",
        f"  during the {b['seconds']:.0f} s: {_fmt(b['calls'])} Promoter calls ({b['calls_per_s']:.1f}/s), "
        f"{_fmt(b['backlog_calls'])} of them backlog contact updates; relay.low held "
        f"{_fmt(b['queued_low_before'])} before, {_fmt(b['queued_low_after'])} after "
        f"({_fmt(b['retry_after'])} scheduled retries)",
    ]


def _people_tables(_: dict[str, Any], people: dict[str, list[dict[str, Any]]]) -> list[str]:
    from bench.people import KINDS, MAX_BYTES

    kinds = [label for label, _ in KINDS]
    rows = []
    for name, runs in people.items():
        if not name.startswith("profile"):
            continue
        m = medians(runs)
        verdict = "PASS" if m["usage_bytes"] <= MAX_BYTES else "MISS"
        row = [name.removeprefix("profile").lstrip(": "), *(_fmt(m.get(f"usage: {kind}")) for kind in kinds)]
        row += [_fmt(m["usage_bytes"]), _fmt(m["live_bytes"]), _fmt(m["keys"], 1)]
        rows.append([*row, _fmt(m["with_key_overhead_bytes"] * 1e7 / 1e9, 2), verdict])
    header = ["profile", *kinds, "total", "while linked", "keys", "10M people GB", f"<= {MAX_BYTES}"]
    title = "PEOPLE: bytes per known person (MEMORY USAGE) once its status records expired (three days)"
    out = [_table(title, header, rows)]
    scaling = people.get("events: scaling")
    if scaling:
        m = scaling[0]
        sizes = [("small", m["small_people"])]
        if m["people"] > m["small_people"]:
            sizes.append(("large", m["people"]))
        rows = []
        for kind in ("identify", "track"):
            for where, size in sizes:
                row = [f"{kind} among {size:,.0f} people"]
                row += [
                    _fmt(m[f"{kind} {f} @{where}"]) for f in ("p50 us", "p99 us", "redis cpu us", "script us")
                ]
                rows.append(row)
        header = ["event (its scripts)", "p50 us", "p99 us", "Redis CPU us", "in scripts us"]
        loads = ", ".join(
            f"{size:,.0f} loaded in {m[f'load_s @{where}']:.0f} s"
            + (f" ({m[f'used_memory_mib @{where}']:,.0f} MiB)" if f"used_memory_mib @{where}" in m else "")
            for where, size in sizes
        )
        out += ["", _table(f"PEOPLE: cost of an event's scripts by population ({loads})", header, rows)]
    return out


SECTION_TABLES: dict[str, Any] = {
    "ingest": _ingest_table,
    "decoupling": _decoupling_table,
    "delivery": _delivery_tables,
    "memory": _memory_table,
    "calls": _calls_tables,
    "backlog": _backlog_table,
    "people": _people_tables,
}
