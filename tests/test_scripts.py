"""The Lua scripts: each loads into a real Redis; every name they share with Python is generated from
Python; no state or verdict is written as a literal; and what a script answers is what it wrote."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from app.cli import main
from worker import keys, scripts
from worker.messages import STATUS_FIELDS, records_table
from worker.settings import Settings, load
from worker.states import FINAL, LUA_ENUMS, State

ROOT = Path(__file__).resolve().parent.parent
LUA_FILES = sorted(scripts.LUA_DIR.rglob("*.lua"))
_LITERAL = re.compile(r"'([^'\\]*)'|\"([^\"\\]*)\"")


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
    owners = {name.split(".")[0] for name in names}
    assert owners == {"messages", "people", "budget", "schedule", "holds", "deadletters", "reconcile"}
    for owner in owners:
        assert (scripts.LUA_DIR.parent / f"{owner}.py").exists(), f"lua/{owner}.* next to worker/{owner}.py"
    assert [path.stem for path in sorted((scripts.LUA_DIR / "lib").glob("*.lua"))] == sorted(scripts.LIBRARY)


def test_every_script_opens_with_what_it_takes_and_answers() -> None:
    for name in scripts.names():
        head = scripts.source(name).split("\n\n", 1)[0]
        assert head.startswith(f"-- {name}:"), name
        for part in ("KEYS:", "ARGV:", "Returns:"):
            assert part in head, f"{name} does not say its {part}"


def test_enums_final_states_and_key_formats_are_generated_from_python() -> None:
    head = scripts.head(Settings())
    for table, enum in LUA_ENUMS.items():
        for member in enum:
            assert (
                f"{member.name} = [==[{member.value}]==]"
                in head.split(f"local {table} = ", 1)[1].split("\n")[0]
            )
    final = re.search(r"local FINAL = \{(.*)\}", head)
    assert final is not None
    assert {part.split("=")[0].strip() for part in final.group(1).split(",")} == {s.value for s in FINAL}
    assert State.HELD.value not in final.group(1)
    for name, template in keys.FORMATS.items():
        before, after = template.split("%s")
        assert f"local function key_{name}(x) return [==[{before}]==] .. x .. [==[{after}]==] end" in head


def _literals(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("--", 1)[0]
        found += [(number, single or double) for single, double in _LITERAL.findall(code)]
    return found


def test_no_state_or_verdict_is_written_as_a_literal_in_the_lua() -> None:
    """A state or verdict is named through the generated tables (``STATE.HELD``), so renaming one in
    Python cannot leave a script comparing against the old word. Status record fields are names, not
    values, and have their own table (``STATUS_FIELDS``)."""
    values = {member.value for enum in LUA_ENUMS.values() for member in enum}
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {text!r}"
        for path in LUA_FILES
        for number, text in _literals(path)
        if text in values and text not in STATUS_FIELDS
    ]
    assert offenders == []


def test_the_literal_check_sees_a_state_written_as_a_word(tmp_path: Path) -> None:
    """The check above can fail: a state spelled out in a script is caught."""
    script = tmp_path / "x.lua"
    script.write_text("if state == 'held' then return 'go' end -- 'dead' in a comment is fine\n")
    assert [text for _, text in _literals(script)] == ["held", "go"]


def _arguments(text: str) -> list[str]:
    """The top-level, comma-separated arguments of a call, up to its closing parenthesis."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(" or char == "{":
            depth += 1
        elif char in ")}":
            if depth == 0:
                break
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()]


def _status_fields_used(text: str) -> set[str]:
    used: set[str] = set()
    pattern = r"redis\.call\('(HSET|HGET|HMGET|HDEL|HEXISTS|HINCRBY)', (?:key|key_message\([^)]*\)), "
    for command, rest in re.findall(pattern + r"(.*)", text):
        arguments = _arguments(rest)
        if command == "HSET":
            arguments = arguments[::2]
        elif command == "HINCRBY":
            arguments = arguments[:1]
        used |= {argument.strip("'") for argument in arguments if re.fullmatch(r"'[a-z_]+'", argument)}
    return used


def test_the_scripts_use_only_documented_status_fields() -> None:
    used = set().union(*(_status_fields_used(path.read_text()) for path in LUA_FILES))
    assert {"state", "survey_email", "barrier"} <= used
    assert used - set(STATUS_FIELDS) == set(), "status fields used but not in STATUS_FIELDS"
    assert _status_fields_used("redis.call('HSET', key, 'undocumented', 1, 'state', x)") == {
        "undocumented",
        "state",
    }


def test_the_records_document_is_current() -> None:
    assert (ROOT / "docs" / "records.md").read_text() == records_table()


def test_a_redis_error_points_at_a_line_a_person_can_print(redis_client: redis.Redis) -> None:
    """Redis reports ``user_script:<n>``; ``scripts.numbered`` (``scripts show``) prints that line."""
    settings = Settings()
    script = scripts.Script(redis_client, "messages.start", settings, lambda: 1.0)
    redis_client.set("relay:msg:{k00000000:x}", "not a hash")
    with pytest.raises(redis.ResponseError) as raised:
        script("k00000000:x")
    line = int(re.search(r"user_script:(\d+)", str(raised.value)).group(1))  # type: ignore[union-attr]
    printed = CliRunner().invoke(main, ["scripts", "show", "messages.start"], env={"REDIS_URL": ""})
    assert printed.exit_code == 0, printed.output
    shown = printed.output.splitlines()
    assert shown[line - 1].startswith(f"{line:5} ")
    assert "HMGET" in shown[line - 1]
    assert shown == scripts.numbered("messages.start", settings).splitlines()


def test_scripts_list_names_every_script_and_show_refuses_an_unknown_one() -> None:
    listed = CliRunner().invoke(main, ["scripts", "list"])
    assert [line.split()[0] for line in listed.output.splitlines()] == scripts.names()
    assert "a track reaches its person" in listed.output
    unknown = CliRunner().invoke(main, ["scripts", "show", "lib/core"])
    assert unknown.exit_code == 1
    assert "no script 'lib/core'" in unknown.output
