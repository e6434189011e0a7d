"""The scheduler: actors as greenlets, a virtual clock, a broker, and Redis TTLs in virtual time.

Every actor runs real relay code in a greenlet of its own: a worker runs ``tasks.deliver`` on a task
message it took off a queue, beat runs one housekeeping job, ingest accepts one client batch, the
operator replays or discards dead letters. An actor gives control back at each step boundary (a Lua
script call, a Promoter call, its answer, a sleep), and the seeded scheduler picks which actor moves
next, or crashes it, or lets virtual time pass. Only one greenlet runs at a time, so a seed is one
exact interleaving.

Time. Scripts get ``NOW`` from the virtual clock. Redis expires keys on its own wall clock, so the
world takes TTLs over: after steps that may have set one, every key whose TTL was just set (shorter
than ``OFFSET_MS``) gets its virtual deadline recorded and its real TTL pushed out to ``OFFSET_MS``;
when virtual time passes a deadline, the world deletes the key. A key whose TTL was removed shows up
with none and is checked against ``keys.BOUNDED``.

The broker follows kombu's Redis transport: a worker takes a message off the right of the first
non-empty queue (high, then low); it is acknowledged when the task returns, dropped when the task
raised (Celery rejects it without requeue), and put back ``VISIBILITY_TIMEOUT`` after it was taken if
its worker died, or lost for good with a small chance (the window kombu cannot close). Any message
still held past the visibility timeout comes back too, as kombu's restore does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import greenlet
import redis

from tests.factories import text, text_map, texts
from tests.sim import traffic as traffic_module
from tests.sim.promoter import Faults, ScriptedPromoter, UnexpectedClientError
from worker import keys, taskmessages
from worker.events import source_of_key
from worker.messages import SUPPRESSED
from worker.runtime import Runtime
from worker.settings import Settings, load
from worker.states import StartKind
from worker.stores import Stores, build_stores
from worker.tasks import HANDLERS, deliver

OFFSET_MS = 10**12  # ~32 years: beyond any TTL the relay sets
WRITE_KEY = "sim-write-key"
SOURCE = source_of_key(WRITE_KEY)
CAMPAIGN = 7
MAX_STEPS = 60_000
# The share of seeds in which an operator forgets one person (``promoter-relay forget``) mid-run.
FORGET_CHANCE = 0.3
SUPPRESSION_KEY = "sim-suppression-key-0123456789"
SYNC_EVERY = 15

_MESSAGE_KEY = re.compile(r"^relay:msg:\{(.*)\}(|:log)$")
_TTL_SYNC = """
local fresh, persistent = {}, {}
for _, key in ipairs(redis.call('KEYS', '*')) do
  local ttl = redis.call('PTTL', key)
  if ttl == -1 then
    persistent[#persistent + 1] = key
  elseif ttl >= 0 and ttl < tonumber(ARGV[1]) then
    fresh[#fresh + 1] = key
    fresh[#fresh + 1] = ttl
    redis.call('PEXPIRE', key, ARGV[2])
  end
end
return {fresh, persistent}
"""


class Crash(BaseException):
    """A worker process dies where it stands (not an ``Exception``: nothing of ours catches it)."""


@dataclass
class Actor:
    name: str
    kind: str
    glet: greenlet.greenlet
    wake_at: float = 0.0
    tag: str = ""
    message: str = ""
    queue: str = ""
    last_script_step: int = 0
    last_script_time: float = 0.0
    person: str = ""
    last_ran: float = 0.0
    dying: bool = False


@dataclass
class Unacked:
    message: str
    queue: str
    restore_at: float
    worker: str


@dataclass
class Violation:
    kind: str
    detail: str
    step: int


@dataclass
class Record:
    """What the run observed, for the oracle."""

    accepted_at_step: dict[str, int] = field(default_factory=dict)
    accepted_at_time: dict[str, float] = field(default_factory=dict)
    # ref -> (virtual time it was received, the batch that brought it first)
    received: dict[str, tuple[float, int]] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    ref_of: dict[int, str] = field(default_factory=dict)
    expired_records: dict[str, dict[str, str]] = field(default_factory=dict)
    expired_logs: dict[str, list[str]] = field(default_factory=dict)
    discarded: set[str] = field(default_factory=set)
    # The person forgotten (human index), when the forget completed (virtual time), and the refs ingest
    # answered as suppressed.
    forgotten: int | None = None
    forgotten_at: float | None = None
    suppressed: set[str] = field(default_factory=set)
    replayed: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class SimRedis(redis.Redis):
    """The relay's Redis client: each script call is a step boundary, and may fail as the seed says."""

    world: World

    def evalsha(self, sha: str, numkeys: int, *args: Any) -> Any:
        world = self.world
        world.boundary("lua " + world.script_names.get(sha, sha[:8]))
        actor = world.current()
        if actor is not None:
            actor.last_script_step = world.steps
            actor.last_script_time = world.t
        # The script's NOW (its first argument) is read from the clock just before the call goes out;
        # the pause at the boundary came in between, so read it again.
        args = (*args[:numkeys], f"{world.clock():.3f}", *args[numkeys + 1 :])
        fault = world.redis_fault()
        if fault == "before":
            raise redis.ConnectionError("simulated: Redis unreachable")
        result = super().evalsha(sha, numkeys, *args)
        if actor is not None and actor.message:
            # Whose call its next one is: the person its message belonged to when it was planned (a
            # merge while the call is out makes it another's, and two persons' calls may be out).
            found = world._plain.hget(keys.message(taskmessages.ref_of(actor.message)), "person")
            actor.person = str(found) if found else ""
        world.check_answer(world.script_names.get(sha, ""), args[numkeys:], result)
        if fault == "after":
            raise redis.ConnectionError("simulated: the reply was lost")
        return result


# Scripts that answer a message's state: which argument names the message, and where the state is in
# the answer. Python logs and decides from that answer, so it must be what the record holds.
_STATE_ANSWERS: dict[str, tuple[int, Callable[[Any], str | None]]] = {
    "deadletters.bury": (1, lambda answer: answer),
    "schedule.later": (1, lambda answer: answer),
    "people.settle_survey": (1, lambda answer: answer),
    "people.failed": (2, lambda answer: answer),
    "people.alias": (1, lambda answer: json.loads(answer).get("state")),
    "people.contact": (1, lambda answer: json.loads(answer).get("state")),
    "people.track": (1, lambda answer: json.loads(answer).get("state")),
    "people.synced": (2, lambda answer: json.loads(answer).get("state")),
    "people.claim_survey": (1, lambda answer: json.loads(answer).get("state")),
    "messages.start": (
        1,
        lambda answer: answer[1] if answer[0] in (StartKind.FINAL, StartKind.HELD) else None,
    ),
}


def draw_settings(rng: random.Random) -> dict[str, Any]:
    """Settings for one seed: both unknown-outcome policies, cooldown, daily limit, low rates, short TTLs."""
    timeout = rng.choice((2.0, 5.0, 10.0))
    window = rng.choice((3600, 14400))
    person_ttl = rng.choice((2 * 86400, 4 * 86400, 365 * 86400))
    settings: dict[str, Any] = {
        "promoter_timeout_seconds": timeout,
        "visibility_timeout": rng.choice((60, 300)) if timeout < 10 else 300,
        "retry_window_seconds": window,
        "retry_base_seconds": 2.0,
        "retry_max_delay_seconds": float(rng.choice((60, 900))),
        "promoter_rate_limit": rng.choice((0.5, 2.0, 10.0, 100.0)),
        "promoter_daily_limit": rng.choice((None, None, None, 60, 400)) if person_ttl > 4 * 86400 else None,
        "survey_cooldown_days": rng.choice((0, 0, 1)),
        "unknown_survey_outcome": rng.choice(("dead-letter", "resend")),
        "anonymous_id_ttl_seconds": rng.choice((600, 3600, 86400)),
        "person_ttl_seconds": person_ttl,
        "hold_ttl_seconds": rng.choice((window + 3600, 86400, 7 * 86400)),
        "anonymous_hold_ttl_seconds": rng.choice((600, 86400)),
        "anonymous_hold_expiry": rng.choice(("skip", "dead-letter")),
        "status_ttl_seconds": rng.choice((3 * 86400, 30 * 86400)),
    }  # fmt: skip
    orders_surveyed = rng.random() < 0.3
    settings["survey_events"] = frozenset(
        {traffic_module.SURVEY_EVENT, *([traffic_module.ORDER_EVENT] if orders_surveyed else [])}
    )
    return settings


def draw_faults(rng: random.Random, calm: bool) -> Faults:
    if calm:
        return Faults()
    level = rng.choice((0.0, 0.05, 0.15, 0.3))
    chances = {
        "transient": level * 0.4,
        "gateway": level * 0.1,
        "throttle": level * 0.15,
        "unauthorized": level * 0.03,
        "timeout_before": level * 0.1,
        "timeout_after": level * 0.1,
        "late": level * 0.05,
        "ineligible": level * 0.05,
        "crash_after": level * 0.02,
    }
    return Faults(chances, retry_after=(1.0, rng.choice((5.0, 60.0))))


class World:
    def __init__(
        self,
        seed: int,
        redis_url: str,
        *,
        keep: set[int] | None = None,
        without: frozenset[str] = frozenset(),
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        setup = random.Random(f"setup-{seed}")
        self.span = setup.choice((900.0, 7200.0, 3 * 86400.0))
        self.overrides = draw_settings(setup)
        self.fault_level = setup.random()
        self.traffic = traffic_module.generate(random.Random(f"traffic-{seed}"), self.span, without)
        if keep is not None:
            self._keep_only(keep)
        self.workers = setup.choice((1, 2, 3, 4))
        self.crash_chance = setup.choice((0.0, 0.002, 0.01))
        self.redis_chance = setup.choice((0.0, 0.0, 0.002))
        self.lost_chance = 0.2
        self.t = 0.0
        self.steps = 0
        self.calm = False
        self.main = greenlet.getcurrent()
        self.actors: list[Actor] = []
        self.unacked: dict[str, Unacked] = {}
        self.effects: list[tuple[float, Callable[[], None]]] = []
        self.deadlines: dict[str, float] = {}
        self.violations: list[Violation] = []
        self.record = Record()
        self.trace = hashlib.sha256()
        self.lines: list[str] | None = None
        self.next_batch = 0
        self.retry_batches: list[tuple[float, int]] = []
        self.beat_last: dict[str, float] = {}
        # An operator looks at the dead letters now and then, at least every five days of traffic.
        last = max((batch.arrival for batch in self.traffic.batches), default=0.0)
        regular = [day * 5 * 86400.0 for day in range(1, int(last // (5 * 86400)) + 1)]
        extra = [setup.uniform(0, max(last, self.span)) for _ in range(setup.randint(0, 3))]
        self.operator_at = sorted(regular + extra)
        # One person forgotten at a drawn moment, in some seeds (its own generator: the other draws stay).
        forget_plan = random.Random(f"forget-{seed}")
        self.forget_at: float | None = None
        self.forget_human: traffic_module.Human | None = None
        if "forget" not in without and self.traffic.humans and forget_plan.random() < FORGET_CHANCE:
            self.forget_human = forget_plan.choice(self.traffic.humans)
            self.forget_at = forget_plan.uniform(0, max(last, self.span))
        self.script_names: dict[str, str] = {}
        self._plain = redis.Redis.from_url(redis_url, decode_responses=True)
        self.client = cast(SimRedis, SimRedis.from_url(redis_url, decode_responses=True))
        self.client.world = self
        self.settings: Settings = load(
            {},
            redis_url=redis_url,
            promoter_api_url="http://promoter.invalid/api",
            promoter_api_key="sim-key",
            promoter_campaign_id=CAMPAIGN,
            segment_write_keys=(WRITE_KEY,),
            environment="test",
            suppression_key=SUPPRESSION_KEY,
            **self.overrides,
        )
        self.stores: Stores = build_stores(self.settings, client=self.client, clock=self.clock)
        self.faults = draw_faults(setup, calm=self.fault_level < 0.2)
        window = (
            self.settings.retry_window_seconds * 2 if self.settings.unknown_survey_outcome == "resend" else 0
        )
        self.promoter = ScriptedPromoter(
            self, self.faults, deadline=self._deadline(), window_seconds=window,
            lease_seconds=self.settings.survey_lease_seconds,
        )  # fmt: skip
        self.runtime = Runtime(self.settings, self.stores, self.promoter, self.clock, self.sleep)  # type: ignore[arg-type]
        self._name_scripts()
        self._ttl_sync = self._plain.register_script(_TTL_SYNC)
        self._log_handler = _ErrorLog(self)
        self.persistent: list[str] = []

    # --- setup -------------------------------------------------------------------------------------

    def _deadline(self) -> float:
        timeout = self.settings.promoter_timeout_seconds
        return min(timeout, 5.0) + timeout

    def _name_scripts(self) -> None:
        from worker import scripts

        for name in scripts.names():
            text = scripts.render(name, self.settings)
            # Loaded now, so that no call meets NOSCRIPT (a second round trip, and one more step).
            self.script_names[self._plain.script_load(text)] = name

    def _keep_only(self, keep: set[int]) -> None:
        """Shrinking: only the messages numbered in ``keep`` are sent."""
        for batch in self.traffic.batches:
            batch.messages = [sent for sent in batch.messages if sent.number in keep]
        self.traffic.batches = [batch for batch in self.traffic.batches if batch.messages]
        self.traffic.sent = [sent for sent in self.traffic.sent if sent.number in keep]

    # --- what actors call --------------------------------------------------------------------------

    def clock(self) -> float:
        return traffic_module.EPOCH.timestamp() + self.t

    def now(self) -> float:
        return self.clock()

    def draw(self) -> float:
        return self.rng.random()

    def person_of_caller(self) -> str | None:
        actor = self.current()
        if actor is None or not actor.message:
            return None
        return actor.person or None

    def planned_at(self) -> float:
        actor = self.current()
        return self.clock() - self.t + (actor.last_script_time if actor else self.t)

    def mark(self) -> int:
        actor = self.current()
        return actor.last_script_step if actor else self.steps

    def at(self, when: float, effect: Callable[[], None]) -> None:
        self.effects.append((when - traffic_module.EPOCH.timestamp(), effect))

    def current(self) -> Actor | None:
        here = greenlet.getcurrent()
        for actor in self.actors:
            if actor.glet is here:
                return actor
        return None

    def boundary(self, what: str) -> None:
        actor = self.current()
        if actor is None or actor.dying:
            return
        self.note(f"{self.steps}:{actor.name}:{what}")
        self.main.switch(("pause", what))

    def sleep(self, seconds: float) -> None:
        actor = self.current()
        if actor is None:
            return
        actor.wake_at = self.t + max(0.0, seconds)
        self.boundary(f"sleep {seconds:.3f}")

    def redis_fault(self) -> str | None:
        if self.calm or self.current() is None or not self.redis_chance:
            return None
        draw = self.rng.random()
        if draw < self.redis_chance:
            return "before"
        if draw < self.redis_chance * 2:
            return "after"
        return None

    def note(self, line: str) -> None:
        """One line of the run's trace: hashed (a seed must replay exactly), kept when asked for."""
        self.trace.update(line.encode() + b"\n")
        if self.lines is not None:
            self.lines.append(f"t={self.t:10.3f} {line}")

    def check_answer(self, script: str, argv: tuple[Any, ...], answer: Any) -> None:
        """A script that answers a message's state answers the one its record holds."""
        if script not in _STATE_ANSWERS:
            return
        index, state_in = _STATE_ANSWERS[script]
        said = state_in(answer)
        if not said:
            return
        ref = str(argv[index])
        held = self._plain.hget(keys.message(ref), "state")
        if held is not None and said != held:
            self.violate(
                "script answer differs from the record", f"{script} said {said!r} for {ref}, record {held!r}"
            )

    def violate(self, kind: str, detail: str) -> None:
        self.violations.append(Violation(kind, detail, self.steps))

    # --- the run -----------------------------------------------------------------------------------

    def run(self) -> None:
        logger = logging.getLogger("relay")
        logger.addHandler(self._log_handler)
        try:
            last = max((batch.arrival for batch in self.traffic.batches), default=0.0)
            self._loop(horizon=last + 3600)
            self.settle()
        finally:
            logger.removeHandler(self._log_handler)

    def settle(self) -> None:
        """Faults stop; the operator replays what a person would; then everything must come to rest."""
        from tests.sim import operator

        self.calm = True
        self.promoter.enabled = False
        self.operator_at = []
        # Retries run out within their window; the operator looks before dead letters age out.
        self._loop(horizon=self.t + self.settings.retry_window_seconds + 3600)
        self._spawn("operator", "operator", lambda: operator.final_pass(self))
        self._loop()

    def _loop(self, horizon: float | None = None) -> None:
        while True:
            if self.steps > MAX_STEPS:
                self.violate("runaway", f"more than {MAX_STEPS} steps")
                return
            options = self._options()
            if options:
                self._act(options)
                continue
            upcoming = self._next_time()
            if upcoming is None or (horizon is not None and upcoming > horizon):
                return
            self._advance(upcoming)

    def _options(self) -> list[tuple[str, Any, float]]:
        """Every move possible now, each with its weight."""
        options = self._actor_options()
        if self.workers > sum(1 for a in self.actors if a.kind == "worker") and self._queued():
            options.append(("fetch", None, 6.0))
        if (
            self.next_batch < len(self.traffic.batches)
            and self.traffic.batches[self.next_batch].arrival <= self.t
        ):
            options.append(("ingest", self.next_batch, 4.0))
        for index, (when, _) in enumerate(self.retry_batches):
            if when <= self.t:
                options.append(("reingest", index, 2.0))
        for job in self._beat_due():
            options.append(("beat", job, 2.0))
        for tag, entry in self.unacked.items():
            if entry.restore_at <= self.t:
                options.append(("restore", tag, 3.0))
        options += [("effect", index, 3.0) for index, (when, _) in enumerate(self.effects) if when <= self.t]
        options += self._operator_options()
        if options and not self.calm:
            options.append(("tick", None, 1.5))
        return options

    def _operator_options(self) -> list[tuple[str, Any, float]]:
        options: list[tuple[str, Any, float]] = []
        if self.operator_at and self.operator_at[0] <= self.t:
            options.append(("operator", None, 2.0))
        if self.forget_at is not None and self.forget_at <= self.t:
            options.append(("forget", None, 2.0))
        return options

    def _actor_options(self) -> list[tuple[str, Any, float]]:
        options: list[tuple[str, Any, float]] = []
        for actor in self.actors:
            if actor.wake_at <= self.t:
                options.append(("resume", actor, 10.0))
                if actor.kind == "worker" and not self.calm and self.crash_chance:
                    options.append(("crash", actor, 10.0 * self.crash_chance))
        return options

    def _act(self, options: list[tuple[str, Any, float]]) -> None:
        weights = [weight for _, _, weight in options]
        kind, subject, _ = self.rng.choices(options, weights)[0]
        self.steps += 1
        getattr(self, f"_do_{kind}")(subject)
        if self.steps % SYNC_EVERY == 0:
            self._sync()

    # --- actions -----------------------------------------------------------------------------------

    def _do_resume(self, actor: Actor) -> None:
        self._switch(actor)

    def _do_crash(self, actor: Actor) -> None:
        self.note(f"{self.steps}:{actor.name}:crash")
        actor.dying = True
        with contextlib.suppress(Crash):
            actor.glet.throw(Crash())
        self.actors.remove(actor)
        entry = self.unacked.get(actor.tag)
        if entry is not None and self.rng.random() < self.lost_chance:
            del self.unacked[actor.tag]

    def _do_fetch(self, _: None) -> None:
        for queue in (self.settings.queue_name, self.settings.low_queue):
            popped = self._plain.rpop(queue)
            if popped:
                raw = text(popped)
                break
        else:
            return
        message = json.loads(raw)
        tag = message["properties"]["delivery_tag"]
        if tag in self.unacked:
            self.violate("task id collision", f"two task messages in flight share the delivery tag {tag!r}")
        name = f"w{self.steps}"
        self.unacked[tag] = Unacked(raw, queue, self.t + self.settings.visibility_timeout, name)
        ref = taskmessages.ref_of(raw)
        task = message["headers"]["task"]
        task_id = message["headers"]["id"]
        self.note(f"{self.steps}:fetch {ref} {task_id}")

        def body() -> Any:
            try:
                return ("done", deliver(ref, HANDLERS[task], self.runtime, task_id))
            except redis.ResponseError as error:  # a script failed: a defect, not a fault we made
                self.violate("script error", f"{ref}: {error}")
                return ("rejected", None)
            except redis.RedisError:
                return ("rejected", None)
            except Exception as error:  # escaping deliver is a defect in itself
                self.violate("exception escaped a task body", f"{ref}: {type(error).__name__}: {error}")
                return ("rejected", None)

        actor = self._spawn(name, "worker", body, message=raw)
        actor.tag = tag

    def _do_ingest(self, index: int) -> None:
        self.next_batch += 1
        self._spawn(f"ingest{index}", "ingest", lambda: self._ingest(index))

    def _do_reingest(self, position: int) -> None:
        _, index = self.retry_batches.pop(position)
        self._spawn(f"ingest{index}r", "ingest", lambda: self._ingest(index))

    def _do_beat(self, job: str) -> None:
        self.beat_last[job] = self.t

        def body() -> Any:
            try:
                return ("done", self._housekeeping(job))
            except redis.ResponseError as error:
                self.violate("script error", f"{job}: {error}")
                return ("rejected", None)
            except redis.RedisError:
                return ("rejected", None)

        self._spawn(f"beat-{job}", "beat", body)

    def _housekeeping(self, job: str) -> object:
        if job == "dispatch":
            return self.stores.schedule.dispatch_due()
        if job == "expire":
            return self.stores.holds.expire()
        if job == "reconcile":
            return self.stores.reconciler.requeue_stale()
        return self.stores.dead.prune()

    def _do_restore(self, tag: str) -> None:
        entry = self.unacked.pop(tag)
        self._plain.lpush(entry.queue, entry.message)
        self.note(f"{self.steps}:restore {tag}")

    def _do_effect(self, index: int) -> None:
        _, effect = self.effects.pop(index)
        effect()

    def _do_operator(self, _: None) -> None:
        from tests.sim import operator

        self.operator_at.pop(0)
        self._spawn("operator", "operator", lambda: operator.during(self))

    def _do_forget(self, _: None) -> None:
        """The operator forgets one person by userId (and legacy id) and emails; a Redis error: again
        a minute later (a forget is idempotent)."""
        human = self.forget_human
        assert human is not None
        self.forget_at = None

        def body() -> Any:
            try:
                self.stores.forgetter.forget([human.user_id, *([human.legacy_id] if human.legacy_id else [])],
                                             human.emails)  # fmt: skip
            except redis.ResponseError as error:
                self.violate("script error", f"forget: {error}")
                return None
            except redis.RedisError:
                self.forget_at = self.t + 60.0
                return None
            self.record.forgotten, self.record.forgotten_at = human.index, self.t
            self.note(f"{self.steps}:forgot h{human.index}")
            return None

        self._spawn("forget", "operator", body)

    def _do_tick(self, _: None) -> None:
        """Time passes while actors are busy. A worker is never left unscheduled for more than a third
        of a lease (the relay's leases outlast any call with a margin; a process that stalls longer
        is modelled as a crash, which the run also draws)."""
        target = self.t + self.rng.choice((0.05, 0.5, 3.0, 30.0))
        stall = self.settings.survey_lease_seconds / 3
        for actor in self.actors:
            if actor.kind == "worker":
                target = min(target, max(actor.last_ran, actor.wake_at) + stall)
        if target > self.t:
            self._advance(target)

    # --- actors ------------------------------------------------------------------------------------

    def _spawn(self, name: str, kind: str, body: Callable[[], Any], message: str = "") -> Actor:
        actor = Actor(name, kind, greenlet.greenlet(body, parent=self.main), message=message)
        self.actors.append(actor)
        self._switch(actor)
        return actor

    def _switch(self, actor: Actor) -> None:
        actor.last_ran = self.t
        answer = actor.glet.switch()
        if actor.glet.dead:
            self.actors.remove(actor)
            self._finished(actor, answer)

    def _finished(self, actor: Actor, answer: Any) -> None:
        if actor.kind != "worker":
            return
        outcome = answer[0] if isinstance(answer, tuple) else "done"
        entry = self.unacked.get(actor.tag)
        if entry is not None and entry.worker == actor.name:
            del self.unacked[actor.tag]
        self.note(f"{self.steps}:{actor.name}:{outcome}")

    def _ingest(self, index: int) -> Any:
        from app.ingest import batch_shared, validate_messages

        batch = self.traffic.batches[index]
        document = traffic_module.body(batch)
        received_at = self.t
        received = traffic_module.moment(self.t)
        validated = validate_messages(
            document["batch"],
            None,
            batch_shared(document),
            SOURCE,
            self.settings,
            webhook=False,
            now=received,
        )
        refused_at = {refused["index"] for refused in validated.refused}
        for refused in validated.refused:
            sent = batch.messages[refused["index"]]
            self.record.refused.append(f"m{sent.number}: {refused['errors']}")
            self.violate("ingest refused a valid message", f"m{sent.number}: {refused['errors']}")
        admitted = [sent for i, sent in enumerate(batch.messages) if i not in refused_at]
        for sent, admission in zip(admitted, validated.admitted, strict=True):
            self.record.ref_of.setdefault(sent.number, admission.event["ref"])
        try:
            answers = self.stores.messages.accept(validated.admitted)
        except redis.RedisError:
            # The client saw an error and sends the batch again; the script may have run all the same.
            for admission in validated.admitted:
                ref = admission.event["ref"]
                if ref not in self.record.received and self._plain.exists(keys.message(ref)):
                    self.record.received[ref] = (received_at, index)
                    self.record.accepted_at_step[ref] = self.steps
                    self.record.accepted_at_time[ref] = self.t
            self.retry_batches.append((self.t + self.rng.choice((1.0, 10.0, 60.0)), index))
            return None
        for admission, answer in zip(validated.admitted, answers, strict=True):
            ref = admission.event["ref"]
            if answer == SUPPRESSED:
                self.record.suppressed.add(ref)
                continue
            self.record.accepted_at_step.setdefault(ref, self.steps)
            self.record.accepted_at_time.setdefault(ref, self.t)
            self.record.received.setdefault(ref, (received_at, index))
        return None

    # --- time --------------------------------------------------------------------------------------

    def _queued(self) -> bool:
        pipe = self._plain.pipeline(transaction=False)
        pipe.llen(self.settings.queue_name)
        pipe.llen(self.settings.low_queue)
        return any(pipe.execute())

    def _beat_due(self) -> list[str]:
        due = []
        for job, (period, when) in self._beat_plan().items():
            if when is None:
                continue
            if max(when, self.beat_last.get(job, -math.inf) + period) <= self.t:
                due.append(job)
        return due

    def _beat_plan(self) -> dict[str, tuple[float, float | None]]:
        """When each housekeeping job next has something to do (virtual seconds), and its period."""
        base = traffic_module.EPOCH.timestamp()
        pipe = self._plain.pipeline(transaction=False)
        pipe.zrange(keys.SCHEDULE, 0, 0, withscores=True)
        pipe.zrange(keys.HOLDS_USERS, 0, 0, withscores=True)
        pipe.zrange(keys.HOLDS_ANONYMOUS, 0, 0, withscores=True)
        pipe.zrange(keys.PENDING, 0, 0, withscores=True)
        pipe.zrange(keys.DEAD_INDEX, 0, 0, withscores=True)
        schedule, users, anonymous, pending, dead = pipe.execute()

        def first(found: list[tuple[str, float]], plus: float) -> float | None:
            return found[0][1] - base + plus if found else None

        holds = [
            x for x in (first(users, self.settings.hold_ttl_seconds),
                        first(anonymous, self.settings.anonymous_hold_ttl_seconds)) if x is not None
        ]  # fmt: skip
        return {
            "dispatch": (1.0, first(schedule, 0.0)),
            "expire": (60.0, min(holds) + 0.001 if holds else None),
            "reconcile": (15.0, first(pending, self.settings.visibility_timeout + 30.0)),
            "prune": (600.0, first(dead, self.settings.dead_letter_ttl_seconds)),
        }

    def _next_time(self) -> float | None:
        times: list[float] = [actor.wake_at for actor in self.actors]
        if self.next_batch < len(self.traffic.batches):
            times.append(self.traffic.batches[self.next_batch].arrival)
        times += [when for when, _ in self.retry_batches]
        times += [entry.restore_at for entry in self.unacked.values()]
        times += [when for when, _ in self.effects]
        times += self.operator_at[:1]
        if self.forget_at is not None:
            times.append(self.forget_at)
        for job, (period, when) in self._beat_plan().items():
            if when is not None and job != "prune":
                times.append(max(when, self.beat_last.get(job, -math.inf) + period))
        later = [when for when in times if when > self.t]
        return min(later) if later else None

    def _advance(self, to: float) -> None:
        # A late effect lands when the model says (Promoter applies a stalled request within seconds of
        # its answer), however far time jumps: a jump stops at each effect due on its way.
        while due := [(when, i) for i, (when, _) in enumerate(self.effects) if when <= to]:
            when, index = min(due)
            if when > self.t:
                self._move(when)
            _, effect = self.effects.pop(index)
            self.note(f"{self.steps}:late effect at {when:.3f}")
            effect()
        self._move(to)

    def _move(self, to: float) -> None:
        self._sync()
        self.t = to
        expired = [key for key, deadline in self.deadlines.items() if deadline <= self.t]
        if expired:
            self._remember(expired)
            self._plain.delete(*expired)
            for key in expired:
                del self.deadlines[key]
        self.note(f"{self.steps}:t={self.t:.3f}")

    def _remember(self, expired: list[str]) -> None:
        """Status records outlive nothing: keep what the oracle will ask of those that expire now."""
        for key in expired:
            found = _MESSAGE_KEY.match(key)
            if not found:
                continue
            ref, part = found.group(1), found.group(2)
            if part == "":
                self.record.expired_records[ref] = text_map(self._plain.hgetall(key))
            elif part == ":log":
                self.record.expired_logs[ref] = texts(self._plain.lrange(key, 0, -1))

    def _sync(self) -> None:
        fresh, persistent = self._ttl_sync(args=[OFFSET_MS // 2, OFFSET_MS])
        for key, ttl in zip(fresh[::2], fresh[1::2], strict=True):
            self.deadlines[key] = self.t + round(int(ttl) / 1000.0)
        for key in persistent:
            self.deadlines.pop(key, None)
        self.persistent = persistent

    def unbounded_keys(self) -> list[str]:
        self._sync()
        return sorted(
            key for key in self.persistent if key not in keys.BOUNDED and not key.startswith("_kombu")
        )


class _ErrorLog(logging.Handler):
    """An ERROR logged by the relay during a task (``unexpected error``) is a defect."""

    def __init__(self, world: World) -> None:
        super().__init__(logging.ERROR)
        self.world = world

    def emit(self, record: logging.LogRecord) -> None:
        if not record.getMessage().startswith("unexpected error"):
            return  # an operator-facing error (Promoter refuses the account), not a fault of ours
        if record.exc_info and isinstance(record.exc_info[1], UnexpectedClientError):
            return
        cause = f" ({record.exc_info[1]!r})" if record.exc_info else ""
        self.world.violate("error logged", record.getMessage() + cause)
