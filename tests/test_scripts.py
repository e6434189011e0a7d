"""Every Lua script renders and loads into a real Redis, and its generated constants match Python's."""

from __future__ import annotations

import re

import pytest
import redis

from worker import keys, scripts
from worker.settings import Settings, load
from worker.states import FINAL, State


@pytest.mark.parametrize("name", scripts.names())
@pytest.mark.parametrize(
    "settings",
    [
        Settings(),
        load({}, promoter_daily_limit=500, survey_cooldown_days=30, unknown_survey_outcome="resend"),
    ],
    ids=["defaults", "every-option"],
)
def test_every_script_loads_into_redis(redis_client: redis.Redis, name: str, settings: Settings) -> None:
    sha = redis_client.script_load(scripts.render(name, settings))
    assert redis_client.script_exists(sha) == [True]


def test_the_scripts_are_the_files_next_to_their_owners() -> None:
    names = scripts.names()
    assert len(names) >= 15
    owners = {name.split(".")[0] for name in names}
    assert owners == {"ledger", "people", "budget", "schedule", "holds", "deadletters", "reconcile"}
    for owner in owners:
        assert (scripts.LUA_DIR.parent / f"{owner}.py").exists(), f"lua/{owner}.* next to worker/{owner}.py"


def test_final_states_in_lua_are_generated_from_the_state_enum() -> None:
    head = scripts.constants(Settings())
    final = re.search(r"local FINAL = \{(.*)\}", head)
    assert final is not None
    assert {part.split("=")[0].strip() for part in final.group(1).split(",")} == {s.value for s in FINAL}
    assert State.HELD.value not in final.group(1)


def test_key_formats_in_lua_are_generated_from_keys() -> None:
    head = scripts.constants(Settings())
    for name, template in keys.FORMATS.items():
        before, after = template.split("%s")
        assert f"local function key_{name}(x) return [==[{before}]==] .. x .. [==[{after}]==] end" in head


def test_a_script_reports_its_own_errors_with_its_name(redis_client: redis.Redis) -> None:
    script = scripts.Script(redis_client, "ledger.begin", Settings(), lambda: 1.0)
    assert script.name == "ledger.begin"
    assert script("no-such-ref") == ["missing", ""]
