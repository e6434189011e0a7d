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


def _defined(text: str) -> set[str]:
    """Names defined at the top level of a Lua text (functions, tables, constants)."""
    pattern = r"^(?:local function (\w+)|local (\w+)|(\w+) = function)"
    return {next(group for group in match if group) for match in re.findall(pattern, text, re.M)}


@pytest.mark.parametrize("name", scripts.names())
def test_a_script_carries_every_prelude_definition_it_reaches(name: str) -> None:
    whole = scripts.constants(Settings()) + (scripts.LUA_DIR / "prelude.lua").read_text()
    prelude_names = _defined(whole)
    rendered = scripts.render(name, Settings())
    carried = _defined(rendered)
    code = "\n".join(line.split("--", 1)[0] for line in rendered.splitlines())
    used = {word for word in re.findall(r"[A-Za-z_]\w*", code) if word in prelude_names}
    assert used <= carried, f"{name} uses {sorted(used - carried)} without defining them"


def test_a_short_script_leaves_out_what_it_never_calls() -> None:
    whole = len(scripts.constants(Settings()) + (scripts.LUA_DIR / "prelude.lua").read_text())
    pause = scripts.render("budget.pause", Settings())
    assert len(pause) < whole / 3
    assert "local function release_person" not in pause
    # Reached only through bury -> set_state -> on_final: the forward declaration and its body both come.
    begin = scripts.render("ledger.begin", Settings())
    assert "local on_final" in begin
    assert "on_final = function" in begin
    assert "local function release_person" in begin
