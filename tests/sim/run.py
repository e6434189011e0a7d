"""One seed, start to finish, and shrinking a failing one to the fewest messages that still fail."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import redis

from tests.sim import oracle, traffic
from tests.sim.world import World


@dataclass
class Outcome:
    seed: int
    violations: list[tuple[str, str]]
    trace: str
    steps: int
    messages: int
    settings: dict[str, Any]
    keep: list[int] | None = None
    without: frozenset[str] = frozenset()
    history: list[dict[str, Any]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def headline(self) -> str:
        kinds = sorted({kind for kind, _ in self.violations})
        extra = f" WITHOUT={','.join(sorted(self.without))}" if self.without else ""
        return f"FAIL seed {self.seed}: {', '.join(kinds)} -- reproduce: make sim SEED={self.seed}{extra}"

    def details(self) -> str:
        lines = [f"  {kind}: {detail}" for kind, detail in self.violations[:20]]
        lines.append(f"  settings: {self.settings}")
        return "\n".join(lines)

    def report(self) -> str:
        lines = [self.headline(), self.details()]
        if self.keep is not None:
            lines.append(f"  shrunk to {len(self.history)} of {self.messages} messages:")
            lines += [f"    {json.dumps(item, sort_keys=True)}" for item in self.history]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "violations": self.violations,
            "steps": self.steps,
            "settings": self.settings,
        }


def _fresh(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def run_seed(
    seed: int,
    url: str,
    keep: set[int] | None = None,
    without: frozenset[str] = frozenset(),
    trace: bool = False,
) -> Outcome:
    """Run ``seed`` on the (private) Redis at ``url``, which it empties first."""
    _fresh(url)
    random.seed(seed)  # the relay's own jitter (backoff) draws from the module's generator
    world = World(seed, url, keep=keep, without=without)
    if trace:
        world.lines = []
    world.run()
    oracle.check(world)
    return Outcome(
        seed=seed,
        violations=[(v.kind, v.detail) for v in world.violations],
        trace=world.trace.hexdigest(),
        steps=world.steps,
        messages=len(world.traffic.sent),
        settings={k: sorted(v) if isinstance(v, frozenset) else v for k, v in world.overrides.items()},
        keep=sorted(keep) if keep is not None else None,
        without=without,
        history=_history(world) if keep is not None or trace else [],
        lines=world.lines or [],
    )


def _history(world: World) -> list[dict[str, Any]]:
    out = []
    for sent in sorted(world.traffic.sent, key=lambda s: s.flush_at):
        item = {"n": sent.number, "arrives": round(sent.flush_at, 3), "at": traffic.stamp(sent.true_time)}
        item.update({k: v for k, v in sent.message.items() if k != "context"})
        out.append(item)
    return out


def shrink(failed: Outcome, url: str, budget: int = 150) -> Outcome:
    """Drop messages while the seed still fails with one of the same kinds of violation (ddmin)."""
    kinds = {kind for kind, _ in failed.violations}
    world = World(failed.seed, url, without=failed.without)
    current = [sent.number for sent in world.traffic.sent]
    best = run_seed(failed.seed, url, keep=set(current), without=failed.without)
    if not kinds & {kind for kind, _ in best.violations}:
        return failed
    chunks = 2
    runs = 0
    while len(current) > 1 and runs < budget:
        size = max(1, len(current) // chunks)
        reduced = False
        for start in range(0, len(current), size):
            candidate = current[:start] + current[start + size :]
            runs += 1
            outcome = run_seed(failed.seed, url, keep=set(candidate), without=failed.without)
            if kinds & {kind for kind, _ in outcome.violations}:
                current, best, reduced = candidate, outcome, True
                chunks = max(chunks - 1, 2)
                break
            if runs >= budget:
                break
        if not reduced:
            if size == 1:
                break
            chunks = min(len(current), chunks * 2)
    return best
