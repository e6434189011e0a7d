"""Promoter refusing the account (a wrong PROMOTER_API_URL, a revoked key, a 403) pauses the whole
relay instead of burying every message (issue 26), and "replay all" after such a problem recovers
every message in one go: a replayed track waits for its replayed identify.

Written against the relay's own task bodies (``tests.harness``) over a real Redis and the sandbox
over HTTP; the harness clock stands for the hours a pause may last.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from app.devtools.sandbox import SandboxServer
from tests.conftest import SANDBOX_KEY
from tests.factories import make_event
from tests.harness import Relay, make_relay
from tests.test_admin import BEARER
from worker import keys
from worker.promoter import PromoterClient
from worker.scripts import PROBE_SECONDS
from worker.states import State

USERS = [f"p{n}" for n in range(6)]


def traffic(relay: Relay) -> tuple[list[str], list[str]]:
    """An identify and a survey track for each user; the refs of each kind."""
    identifies = relay.send(*[make_event(f"id-{u}", "identify", u) for u in USERS])
    tracks = relay.send(
        *[make_event(f"nps-{u}", "track", u, timestamp="2026-11-29T01:00:00.000Z") for u in USERS]
    )
    return identifies, tracks


def use_url(relay: Relay, url: str) -> None:
    client = PromoterClient(url, SANDBOX_KEY, timeout=relay.runtime.settings.promoter_timeout_seconds)
    relay.runtime = dataclasses.replace(relay.runtime, promoter=client)


def refuse_by_url(relay: Relay, sandbox: SandboxServer) -> Callable[[], object]:
    use_url(relay, sandbox.url + "/wrong-prefix")
    return lambda: use_url(relay, sandbox.url)


def refuse_by_key(relay: Relay, sandbox: SandboxServer) -> Callable[[], object]:
    sandbox.state.configure({"api_key": "rotated-key"})
    return lambda: sandbox.state.configure({"api_key": SANDBOX_KEY})


def refuse_by_403(relay: Relay, sandbox: SandboxServer) -> Callable[[], object]:
    sandbox.state.configure({"fail_next": [403] * 10_000})
    return lambda: sandbox.state.configure({"fail_next": []})


PROBLEMS: dict[str, tuple[Callable[[Relay, SandboxServer], Callable[[], object]], int]] = {
    "wrong URL (404)": (refuse_by_url, 404),
    "revoked key (401)": (refuse_by_key, 401),
    "forbidden (403)": (refuse_by_403, 403),
}


def states(relay: Relay, refs: list[str]) -> set[str | None]:
    return {relay.state(r) for r in refs}


def answered(sandbox: SandboxServer, status: int) -> int:
    return len([c for c in sandbox.state.calls() if c["status"] == status])


def metric(client: FlaskClient, name: str) -> float:
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_an_account_level_refusal_pauses_everything_and_resumes_alone(
    redis_client: redis.Redis, sandbox: SandboxServer, client: FlaskClient, problem: str
) -> None:
    relay = make_relay(redis_client, sandbox, retry_window_seconds=4 * 3600)
    refuse, status = PROBLEMS[problem]
    fix = refuse(relay, sandbox)
    identifies, tracks = traffic(relay)
    relay.drain()
    assert relay.stores.budget.account_problem() is not None
    assert str(status) in str(relay.stores.budget.account_problem())
    for _ in range(3 * 60):  # three hours, a minute at a time
        relay.later(60)
    assert relay.stores.dead.count() == 0
    assert states(relay, identifies) == {State.RETRYING}
    assert states(relay, tracks) == {State.HELD}
    assert "refuses the account" in relay.record(identifies[0])["detail"]
    # One probe a minute, not one call per message per retry.
    assert answered(sandbox, status) <= 3 * 60 + 2
    assert relay.surveys() == []
    assert metric(client, "relay_promoter_account_refused") == 1
    account = client.get("/admin/api/stats", headers=BEARER).get_json()["account"]
    assert account["refused"] is True
    assert str(status) in account["why"]

    fix()
    relay.later(PROBE_SECONDS)
    for _ in range(5):
        relay.later(PROBE_SECONDS)
    assert relay.stores.budget.account_problem() is None
    assert states(relay, identifies + tracks) == {State.DELIVERED}
    assert sorted(s["contact"]["email"] for s in relay.surveys()) == sorted(f"{u}@example.com" for u in USERS)
    assert relay.stores.dead.count() == 0
    assert metric(client, "relay_promoter_account_refused") == 0


def test_a_pause_longer_than_the_retry_window_ends_in_dead_letters_and_replay_all_recovers_them(
    redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    relay = make_relay(redis_client, sandbox, retry_window_seconds=3600)
    fix = refuse_by_key(relay, sandbox)
    identifies, tracks = traffic(relay)
    relay.drain()
    for _ in range(90):
        relay.later(60)
    assert states(relay, identifies) == {State.DEAD}
    dead_tracks = states(relay, tracks)
    assert dead_tracks <= {State.DEAD, State.HELD}

    fix()
    outcome = relay.stores.dead.replay_all()
    assert outcome.get("replayed", 0) >= len(identifies)
    relay.drain()
    for _ in range(3):
        relay.later(PROBE_SECONDS)
    assert states(relay, identifies + tracks) == {State.DELIVERED}
    assert relay.stores.dead.count() == 0
    assert sorted(s["contact"]["email"] for s in relay.surveys()) == sorted(f"{u}@example.com" for u in USERS)


def test_replay_all_delivers_a_track_after_its_identify_even_when_the_track_is_replayed_first(
    redis_client: redis.Redis, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ordering of issue 26's second defect: the track runs before its replayed identify."""
    relay = make_relay(redis_client, sandbox)
    sandbox.state.configure({"fail_next": [400]})
    (identify,) = relay.send(make_event("id-r", "identify", "r"))
    relay.drain()
    (track,) = relay.send(make_event("nps-r", "track", "r"))
    relay.drain()
    assert (relay.state(identify), relay.state(track)) == (State.DEAD, State.DEAD)
    assert "refused" in relay.record(track)["detail"]

    real_zrange = relay.redis.zrange

    def tracks_first(name: str, start: int, end: int, *args: Any, **kwargs: Any) -> Any:
        found = real_zrange(name, start, end, *args, **kwargs)
        return sorted(found, key=lambda r: r != track) if name == keys.DEAD_INDEX else found

    monkeypatch.setattr(relay.redis, "zrange", tracks_first)
    assert relay.stores.dead.replay_all() == {"replayed": 2}
    ran = relay.drain()
    assert ran >= 2
    assert relay.ran[-ran][0] == track
    assert (relay.state(identify), relay.state(track)) == (State.DELIVERED, State.DELIVERED)
    assert [s["contact"]["email"] for s in relay.surveys()] == ["r@example.com"]
