"""``python -m bench [--only ingest,decoupling,delivery,memory,calls,backlog,people] [--repeats 3]
[--seconds 4] [--people N] [--quick]``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from bench import promoter_calls, report, sections
from bench.infra import ROOT, Procs, median, redis_target
from bench.load import Loader, ensure_wrk

SECTIONS = {
    "ingest": sections.ingest,
    "decoupling": sections.decoupling,
    "delivery": sections.delivery,
    "memory": sections.memory,
    "calls": promoter_calls.calls,
    "backlog": promoter_calls.backlog,
    "people": sections.people,
}
RESULTS = ROOT / "bench" / "results.json"


def _revision() -> str:
    """The commit measured, marked dirty when the work tree differs from it."""

    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, check=False)
        return run.stdout.strip()

    dirty = " (dirty)" if git("status", "--porcelain", "app", "worker") else ""
    return git("rev-parse", "--short", "HEAD") + dirty


def quick() -> None:
    """Smaller sizes everywhere (the figures are then only a check that every section runs)."""
    from bench import people

    promoter_calls.MIX_USERS = 300
    promoter_calls.PERSONS = 300
    promoter_calls.BACKLOG_UPDATES = 3000
    promoter_calls.NEW_USERS_FOR_S = 15.0
    promoter_calls.SURVEY_GRACE_S = 15.0
    people.PROFILE_PEOPLE = 300
    people.SCALE_SMALL = 2000
    people.SAMPLES = 300
    sections.QUICK = True


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma list of sections")
    parser.add_argument("--repeats", type=int, default=None, help="3 (--quick: 1)")
    parser.add_argument("--seconds", type=float, default=None, help="of each HTTP load run: 4 (--quick: 2)")
    parser.add_argument(
        "--quick", action="store_true", help="every section once, smaller: a check that it all runs"
    )
    parser.add_argument("--connections", type=int, default=16, help="ingest load connections")
    parser.add_argument(
        "--people",
        type=int,
        default=0,
        help="people section: load this many people too, and compare event costs with 10,000 people",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="only print the table of an earlier --output")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(args.output.read_text())
        runs = {
            sec: {row: data["runs"] for row, data in rows.items()} for sec, rows in saved["sections"].items()
        }
        ratio = report.ratios(runs)
        print(report.render(saved["meta"], runs, ratio, report.targets(runs, ratio)))
        return
    if args.quick:
        quick()
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.seconds = args.seconds or (2.0 if args.quick else 4.0)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")

    started = time.monotonic()
    procs = Procs()
    results: dict[str, Any] = {}
    try:
        redis_url, where = redis_target(procs)
        loader = Loader(ensure_wrk(), procs.dir)
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        ctx = sections.Ctx(
            procs, redis_url, client, loader, args.repeats, args.seconds, args.connections, args.people
        )
        meta: dict[str, Any] = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "git": _revision(),
            "redis": where,
            "load": f"{loader.name}, {args.connections} connections",
            "repeats": args.repeats,
            "seconds": args.seconds,
            "pools": sections.pools(),
            "people": args.people,
            "quick": args.quick,
            "section_seconds": {},
        }
        for name in chosen:
            section_started = time.monotonic()
            print(f"[bench] {name} ...", flush=True)
            results[name] = dict(SECTIONS[name](ctx))
            meta["section_seconds"][name] = round(time.monotonic() - section_started, 1)
            print(f"[bench] {name} done in {time.monotonic() - section_started:.0f} s", flush=True)
    finally:
        procs.stop_all()
        shutil.rmtree(procs.dir, ignore_errors=True)
    ratio = report.ratios(results)
    goals = report.targets(results, ratio)
    meta["total_seconds"] = round(time.monotonic() - started, 1)
    document = {
        "meta": meta,
        "sections": {
            section: {row: {"median": report.medians(runs), "runs": runs} for row, runs in rows.items()}
            for section, rows in results.items()
        },
        "ratios": {name: {"median": median(values), "runs": values} for name, values in ratio.items()},
        "targets": goals,
    }
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    tmp.replace(args.output)
    print()
    print(report.render(meta, results, ratio, goals))
    print(f"\ntotal {meta['total_seconds']:.0f} s; raw runs and medians in {args.output}")


if __name__ == "__main__":
    main()
