"""What an on-call person does with dead letters, during the run and once faults have stopped.

During the run: now and then "Replay all", a replay of one dead letter, or a discard. Once faults have
stopped, one pass as README tells an operator to do it: a survey whose outcome is unknown is checked
at Promoter (here: the scripted Promoter's record) and discarded if it landed, replayed if not;
everything else is replayed once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis

if TYPE_CHECKING:
    from tests.sim.world import World


def _letters(world: World) -> list[dict[str, Any]]:
    return world.stores.dead.list(limit=100_000)


def during(world: World) -> None:
    """A look at the dead letters: replay or discard some, checking Promoter for unknown surveys first
    (a stalled call lands within seconds of its answer, so letters that young are left for later)."""
    try:
        letters = [letter for letter in _letters(world) if letter["at"] < world.now() - 10]
        if not letters:
            return
        pick = world.draw()
        if pick < 0.5:
            decide(world, letters)
        elif pick < 0.9:
            decide(world, [letters[int(world.draw() * len(letters))]])
        else:
            letter = letters[int(world.draw() * len(letters))]
            if world.stores.dead.discard([letter["id"]]):
                world.record.discarded.add(letter["id"])
    except redis.RedisError:
        return


def landed(world: World, letter: dict[str, Any]) -> bool:
    """Whether Promoter shows a survey for this dead letter's track (an operator's look at Promoter)."""
    event = letter.get("event") or {}
    sim_ref = str((event.get("properties") or {}).get("sim_ref", ""))
    return any(survey.ref == sim_ref for survey in world.promoter.surveys)


def decide(world: World, letters: list[dict[str, Any]]) -> None:
    for letter in letters:
        ref = letter["id"]
        if "outcome unknown" in str(letter.get("reason")) and landed(world, letter):
            world.stores.dead.discard([ref])
            world.record.discarded.add(ref)
        elif world.stores.dead.replay(ref) == "replayed":
            world.record.replayed[ref] = world.t


def final_pass(world: World) -> None:
    decide(world, _letters(world))
