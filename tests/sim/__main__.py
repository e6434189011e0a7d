"""``python -m tests.sim``: run seeds, report failures with a one-line reproduction and a shrunk history.

    python -m tests.sim                  # seeds for about 10 minutes
    python -m tests.sim --seconds 60     # for a minute
    python -m tests.sim --seeds 500      # seeds 1..500 (--first to start elsewhere)
    python -m tests.sim --seed 123 -v    # one seed, with its trace and every violation
    python -m tests.sim --mutate no-final-guard --seeds 1000   # must fail: a planted bug (mutations.py)

Seeds run in ``--jobs`` processes, each with a redis-server of its own. The last line is always
``N seeds, F failures``; the exit status is 1 when any seed failed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.sim import mutations
from tests.sim.run import Outcome, run_seed, shrink
from tests.sim.traffic import FEATURES


def _server() -> Any:
    from app.devtools.processes import EmbeddedRedis

    return EmbeddedRedis(Path(tempfile.mkdtemp(prefix="relay-sim-"))).start()


_URL = ""
_WITHOUT: frozenset[str] = frozenset()


def _init(urls: Any, without: frozenset[str]) -> None:
    global _URL, _WITHOUT
    _URL, _WITHOUT = urls.get(), without


_TRACE = False


def _work(seed: int) -> Outcome:
    return run_seed(seed, _URL, without=_WITHOUT, trace=_TRACE)


def _seeds(args: argparse.Namespace) -> Iterator[int]:
    if args.seed is not None:
        yield args.seed
        return
    count = args.seeds if args.seeds is not None else 1 << 40
    yield from range(args.first, args.first + count)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, help="run this one seed (and shrink it if it fails)")
    parser.add_argument("--seeds", type=int, help="how many seeds to run")
    parser.add_argument("--first", type=int, default=1, help="first seed (default 1)")
    parser.add_argument("--seconds", type=float, help="run seeds for this long (default 600 without --seeds)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-shrink", action="store_true", help="report failures without shrinking them")
    parser.add_argument("--json", type=Path, help="write every failure here")
    parser.add_argument("--without", default="", help=f"traffic features to leave out: {', '.join(FEATURES)}")
    parser.add_argument("--mutate", choices=sorted(mutations.MUTATIONS), help="plant this bug first")
    parser.add_argument("--stop-at-first", action="store_true", help="stop at the first failing seed")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--trace", action="store_true", help="with --seed: print the run's trace and traffic")
    args = parser.parse_args(argv)
    if args.seconds is None and args.seeds is None and args.seed is None:
        args.seconds = 600.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    global _TRACE
    _TRACE = args.trace and args.seed is not None
    without = frozenset(word for word in args.without.split(",") if word)
    if args.mutate:
        mutations.apply(args.mutate)
    jobs = 1 if args.seed is not None else max(1, args.jobs)
    servers = [_server() for _ in range(jobs)]
    started = time.monotonic()
    try:
        done, failures = _run(args, servers, without)
        if failures and not args.no_shrink:
            for outcome in failures[:5]:
                print(shrink(outcome, servers[0].url).report(), flush=True)
    finally:
        for server in servers:
            server.stop()
    if args.json:
        args.json.write_text(json.dumps([f.as_json() for f in failures], indent=2))
    _progress(done, len(failures), started)
    print(f"{done} seeds, {len(failures)} failures")
    return 1 if failures else 0


def _run(args: argparse.Namespace, servers: list[Any], without: frozenset[str]) -> tuple[int, list[Outcome]]:
    """Seeds through a pool of processes, each on a redis-server of its own; stops at ``--seconds``."""
    context = multiprocessing.get_context("fork")
    urls = context.Queue()
    for server in servers:
        urls.put(server.url)
    pool = (
        context.Pool(len(servers), initializer=_init, initargs=(urls, without)) if len(servers) > 1 else None
    )
    if pool is None:
        _init(urls, without)
    results = pool.imap(_work, _seeds(args)) if pool else map(_work, _seeds(args))
    started = time.monotonic()
    done, failures = 0, []
    try:
        for outcome in results:
            done += 1
            _show(outcome, args.verbose)
            if outcome.violations:
                failures.append(outcome)
                if args.stop_at_first:
                    break
            if args.seconds is not None and time.monotonic() - started > args.seconds:
                break
            if done % 200 == 0:
                _progress(done, len(failures), started)
    finally:
        if pool:
            pool.terminate()
    return done, failures


def _show(outcome: Outcome, verbose: bool) -> None:
    if _TRACE:
        print("\n".join(outcome.lines))
        for item in outcome.history:
            print("   ", json.dumps(item, sort_keys=True))
    if outcome.violations:
        print(outcome.headline(), flush=True)
        if verbose:
            print(outcome.details())


def _progress(done: int, failed: int, started: float) -> None:
    minutes = (time.monotonic() - started) / 60
    rate = done / max(minutes, 1e-9)
    print(f"  ... {done} seeds in {minutes:.1f} min ({rate:.0f} seeds/min), {failed} failed", flush=True)


if __name__ == "__main__":
    sys.exit(main())
