"""``GUNICORN_*`` and the ``*_FILE`` secrets go through ``worker/settings.py`` like every other
variable: a typo stops start-up with one line naming the variable, and no secret is ever echoed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.test_startup import BIN, run
from worker.settings import FILE_VARIANTS, ServerSettings, SettingsError, load, load_server

GUNICORN = [str(BIN / "gunicorn"), "--config", "python:app.gunicorn_conf", "app:create_app()"]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GUNICORN_WORKERS", "fuor", "GUNICORN_WORKERS must be a whole number, got 'fuor'"),
        ("GUNICORN_THREADS", "0", "GUNICORN_THREADS must be greater than zero"),
        ("GUNICORN_BIND", "localhost", "GUNICORN_BIND must be host:port, unix:/path or fd://N"),
        ("GUNICORN_WORKRES", "4", "unknown setting GUNICORN_WORKRES"),
    ],
)
def test_a_bad_gunicorn_setting_stops_start_up_with_one_line(variable: str, value: str, message: str) -> None:
    result = run(GUNICORN, RELAY_ENV="development", REDIS_URL="redis://127.0.0.1:1/0", **{variable: value})
    assert result.returncode == 2, result.stderr[-1000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("promoter-relay: ")
    assert message in line
    assert "Traceback" not in result.stderr + result.stdout


def test_gunicorn_settings_are_parsed_with_defaults() -> None:
    assert load_server({}) == ServerSettings(bind="0.0.0.0:8000", workers=None, threads=4, accesslog=None)
    parsed = load_server(
        {
            "GUNICORN_BIND": "[::]:9000",
            "GUNICORN_WORKERS": " 3 ",
            "GUNICORN_THREADS": "8",
            "GUNICORN_ACCESSLOG": "-",
            "GUNICORN_CMD_ARGS": "--log-level debug",
        }
    )
    assert parsed == ServerSettings(bind="[::]:9000", workers=3, threads=8, accesslog="-")
    assert load_server({"GUNICORN_BIND": "unix:/run/relay.sock"}).bind == "unix:/run/relay.sock"
    with pytest.raises(SettingsError, match="GUNICORN_BIND"):
        load_server({"GUNICORN_BIND": "0.0.0.0:99999"})


@pytest.mark.integration
def test_gunicorn_is_configured_from_its_settings() -> None:
    """The values reach gunicorn: it binds where GUNICORN_BIND says (checked through its own
    ``--print-config``, which loads the config module and exits)."""
    result = run(
        [*GUNICORN[:3], "--print-config", GUNICORN[3]],
        RELAY_ENV="development", REDIS_URL="redis://127.0.0.1:1/0",
        GUNICORN_BIND="127.0.0.1:8123", GUNICORN_WORKERS="3", GUNICORN_THREADS="5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-1000:]
    config = {
        k.strip(): v.strip() for k, _, v in (line.partition(" = ") for line in result.stdout.splitlines())
    }
    assert config["bind"] == "['127.0.0.1:8123']"
    assert config["workers"] == "3"
    assert config["threads"] == "5"


@pytest.mark.parametrize("name", FILE_VARIANTS)
def test_a_secret_can_come_from_a_file(tmp_path: Path, name: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("  s3cret-from-a-file-0123456789\n")
    settings = load({f"{name}_FILE": str(secret)})
    attribute = name.lower()
    expected = (
        ("s3cret-from-a-file-0123456789",)
        if name == "SEGMENT_WRITE_KEYS"
        else "s3cret-from-a-file-0123456789"
    )
    assert getattr(settings, attribute) == expected


def test_write_keys_in_a_file_may_be_one_per_line(tmp_path: Path) -> None:
    secret = tmp_path / "keys"
    secret.write_text("key-one\nkey-two, key-three\n")
    assert load({"SEGMENT_WRITE_KEYS_FILE": str(secret)}).segment_write_keys == (
        "key-one",
        "key-two",
        "key-three",
    )


def test_a_secret_and_its_file_together_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-the-file")
    with pytest.raises(SettingsError) as error:
        load({"ADMIN_TOKEN": "from-the-variable", "ADMIN_TOKEN_FILE": str(secret)})
    assert str(error.value) == "ADMIN_TOKEN and ADMIN_TOKEN_FILE are both set; keep one"


def test_an_unreadable_secret_file_is_one_clear_line_without_the_secret(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(SettingsError, match=r"PROMOTER_API_KEY_FILE: cannot read .*nowhere.* \(No such file"):
        load({"PROMOTER_API_KEY_FILE": str(missing)})
    spaced = tmp_path / "spaced"
    spaced.write_text("abc def-secret")
    with pytest.raises(SettingsError, match="PROMOTER_API_KEY contains spaces") as error:
        load({"PROMOTER_API_KEY_FILE": str(spaced)})
    assert "def-secret" not in str(error.value)


@pytest.mark.integration
def test_a_service_with_an_unreadable_secret_file_stops_with_one_line(tmp_path: Path) -> None:
    result = run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker"],
        RELAY_ENV="development", REDIS_URL="redis://127.0.0.1:1/0",
        ADMIN_TOKEN_FILE=str(tmp_path / "absent"),
    )  # fmt: skip
    assert result.returncode == 2
    assert "ADMIN_TOKEN_FILE: cannot read" in result.stderr
    assert "Traceback" not in result.stderr
