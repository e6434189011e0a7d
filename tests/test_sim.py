"""The simulator in the suite: a fixed set of seeds must run clean, a seed must replay exactly, and
each planted bug of ``tests/sim/mutations.py`` must be caught by a seed known to catch it (so a change
that blinds the oracle fails here, not only in ``make sim``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.devtools.processes import EmbeddedRedis
from tests.sim import mutations
from tests.sim.run import run_seed

# About a minute on this machine's two cores; `make sim` runs thousands.
SEEDS = range(1, 41)

# mutation -> (a seed that catches it, the violation it shows). Found with
# `make sim MUTATE=<name> SEEDS=1000` (the first failing seed).
CAUGHT_BY = {
    "answer-not-record": (1, "script answer differs from the record"),
    "no-final-guard": (1, "a known person's message is a dead letter"),
    "anonymous-reaches-other": (11, "surveyed another person's email"),
    "no-track-barrier": (14, "surveyed a replaced email"),
    "no-suppression": (13, "delivered for a forgotten person"),
    "forget-keeps-events": (22, "trace of a forgotten person"),
}


@pytest.fixture(scope="module")
def sim_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the simulator's own: every seed empties it and takes its TTLs over."""
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("sim-redis"))).start()
    yield server.url
    server.stop()


@pytest.mark.slow
def test_a_fixed_set_of_seeds_runs_clean(sim_redis: str) -> None:
    outcomes = [run_seed(seed, sim_redis) for seed in SEEDS]
    reports = [outcome.headline() + "\n" + outcome.details() for outcome in outcomes if outcome.violations]
    assert not reports, "\n".join(reports)
    assert sum(outcome.messages for outcome in outcomes) > 20 * len(SEEDS)


def test_a_seed_replays_exactly(sim_redis: str) -> None:
    first, second = run_seed(7, sim_redis), run_seed(7, sim_redis)
    assert first.steps > 100
    assert (first.trace, first.steps, first.messages) == (second.trace, second.steps, second.messages)
    assert run_seed(8, sim_redis).trace != first.trace


def test_every_planted_bug_is_caught_or_says_why_not() -> None:
    assert set(mutations.MUTATIONS) == set(CAUGHT_BY) | set(mutations.UNCAUGHT)
    assert not set(CAUGHT_BY) & set(mutations.UNCAUGHT)


@pytest.mark.parametrize("name", sorted(CAUGHT_BY))
def test_a_planted_bug_is_caught(sim_redis: str, name: str) -> None:
    seed, kind = CAUGHT_BY[name]
    assert not run_seed(seed, sim_redis).violations
    with mutations.planted(name):
        outcome = run_seed(seed, sim_redis)
    assert kind in {found for found, _ in outcome.violations}, outcome.details()


def test_a_mutation_whose_text_is_gone_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    stale = mutations.Mutation("lib/core", "no such text", "", "a stale mutation")
    monkeypatch.setitem(mutations.MUTATIONS, "stale", stale)
    with pytest.raises(LookupError, match="no longer holds"), mutations.planted("stale"):
        pass
