"""Deliberate bugs, planted in the Lua the relay runs, to show the simulator catches what it claims to.

``python -m tests.sim --mutate NAME`` (``make sim MUTATE=NAME``) runs seeds against the relay with one
of these applied; every one must make seeds fail. Each is a textual edit of one file: if the file no
longer holds the text, applying it raises rather than silently testing the unchanged relay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    file: str
    before: str
    after: str
    why: str


MUTATIONS: dict[str, Mutation] = {
    # A claim made after a wait (budget, the message's own contact update) no longer looks at the
    # person's pending changes: a survey can go to an email a newer identify has replaced.
    "no-claim-recheck": Mutation(
        "lib/surveys",
        "if recheck and changes_pending(",
        "if false and changes_pending(",
        "drop the barrier recheck at survey claim",
    ),
    # A track no longer waits for a newer identify of its person that is on its way to Promoter.
    "no-track-barrier": Mutation(
        "people.track",
        "if changes_pending(identities_of(person, record), record) then",
        "if false then",
        "drop the barrier at the track (a pending contact change)",
    ),
    # A late retry, a redelivered task or a late success may overwrite a final state.
    "no-final-guard": Mutation(
        "lib/core",
        "  if is_final(current) and not replay then return current end\n",
        "",
        "skip the final-state guard",
    ),
    # A track whose anonymousId belongs to another userId reaches that other person.
    "anonymous-reaches-other": Mutation(
        "lib/persons",
        "    local ref, record = resolve(user)\n",
        "    local ref, record = resolve(user)\n"
        "    if not create and anonymous then\n"
        "      local other, found = resolve(anonymous)\n"
        "      if found then ref, record = other, found end\n"
        "    end\n",
        "let a track reach a person through another userId's anonymousId",
    ),
    # The track's plan says 'delivered' whatever its record holds (skipped, held, received...): the
    # answer Python logs from would no longer be the state Lua wrote.
    "answer-not-record": Mutation(
        "people.track",
        "plan.state = state_of(ref)\n",
        "plan.state = STATE.DELIVERED\n",
        "answer a state the record does not hold",
    ),
    # A forget leaves the stored events of the person's messages behind.
    "forget-keeps-events": Mutation(
        "lib/forget",
        "redis.call('DEL', key, key_event(ref), key_history(ref))",
        "redis.call('DEL', key, key_history(ref))",
        "leave a forgotten message's stored event",
    ),
    # A survey call of a forgotten message that returns records its outcome (and the cooldown marker
    # with the email) as if nothing had happened.
    "forgotten-survey-settles": Mutation(
        "people.settle_survey",
        "if state_of(ref) == STATE.FORGOTTEN then return STATE.FORGOTTEN end",
        "",
        "let a survey call that ends after a forget settle its message",
    ),
    # Ingest no longer drops the events of a forgotten person.
    "no-suppression": Mutation(
        "messages.accept",
        "  if suppressed(item[12]) then",
        "  if false then",
        "accept a forgotten person's later events",
    ),
}


# Planted bugs no seed has caught yet, and why: each is a gap of the traffic or the oracle, not a
# proof that the code it removes is unneeded.
UNCAUGHT = {
    "no-claim-recheck": (
        "the oracle allows a survey to go to the email its person had at the track's time; the recheck "
        "matters only when an identify older than the track arrives during the track's wait for budget"
    ),
    "forgotten-survey-settles": (
        "it needs a forget while a survey call of that person is in flight with SURVEY_COOLDOWN_DAYS on, "
        "which none of the first 200 seeds draws; tests/test_privacy.py stalls such a call to show it"
    ),
}


def apply(name: str) -> Callable[[], None]:
    """Plant mutation ``name`` in this process (and the processes it forks from now on); returns the
    function that takes it out again."""
    from worker import scripts

    mutation = MUTATIONS[name]
    original: Callable[[str], str] = scripts.source

    def mutated(file: str) -> str:
        text = original(file)
        if file != mutation.file:
            return text
        if text.count(mutation.before) != 1:
            raise LookupError(f"mutation {name}: worker/lua/{file}.lua no longer holds its text once")
        return text.replace(mutation.before, mutation.after)

    mutated(mutation.file)
    scripts.source = mutated  # type: ignore[assignment]

    def undo() -> None:
        scripts.source = original  # type: ignore[assignment]

    return undo


@contextlib.contextmanager
def planted(name: str) -> Iterator[None]:
    undo = apply(name)
    try:
        yield
    finally:
        undo()
