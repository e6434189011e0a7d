"""A test suite that is safe to run: ``make test`` never touches a Redis it did not start.

A second redis-server plays the user's own Redis, holding data in db 0 and db 13 (db 13 being the
database earlier versions of this suite flushed). Part of the suite then runs in a subprocess with
``REDIS_URL`` pointing at it, and afterwards every key is still there, unchanged. With
``RELAY_TEST_REDIS_URL`` naming a database that holds data, the run refuses to start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.devtools.processes import EmbeddedRedis
from tests.conftest import ROOT

pytestmark = pytest.mark.integration  # each test starts processes

SUBSET = ["tests/test_stores.py", "-k", "dead_letter or discard"]
NOT_INHERITED = ("RELAY_TEST_REDIS_URL", "PYTEST_CURRENT_TEST")
SENTINELS = {0: ("user:settings", "db0-value"), 13: ("user:precious", "db13-value")}


@pytest.fixture
def users_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "users-redis").start()
    for db, (key, value) in SENTINELS.items():
        redis.Redis(port=server.port, db=db).set(key, value)
    yield server
    server.stop()


def url(server: EmbeddedRedis, db: int) -> str:
    return f"redis://127.0.0.1:{server.port}/{db}"


def run_suite(**env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUBSET]
    return subprocess.run(
        command, cwd=ROOT, env={**environ, **env}, capture_output=True, text=True, timeout=240, check=False
    )


def assert_untouched(server: EmbeddedRedis) -> None:
    for db, (key, value) in SENTINELS.items():
        client = redis.Redis(port=server.port, db=db, decode_responses=True)
        assert client.get(key) == value, f"db {db} lost its data"
        assert client.dbsize() == 1, f"db {db} got keys: {client.keys('*')[:5]}"
    keyspace = redis.Redis(port=server.port).info("keyspace")
    assert sorted(keyspace) == ["db0", "db13"], "no other database was written either"


@pytest.mark.parametrize("db", [13, 0])
def test_the_suite_never_touches_the_redis_at_redis_url(users_redis: EmbeddedRedis, db: int) -> None:
    run = run_suite(REDIS_URL=url(users_redis, db))
    assert run.returncode == 0, run.stdout + run.stderr
    assert " passed" in run.stdout
    assert_untouched(users_redis)


def test_a_given_test_database_that_holds_data_is_refused(users_redis: EmbeddedRedis) -> None:
    run = run_suite(RELAY_TEST_REDIS_URL=url(users_redis, 13), REDIS_URL=url(users_redis, 13))
    assert run.returncode != 0
    assert "holds data" in run.stdout + run.stderr
    assert " passed" not in run.stdout, "no test ran"
    assert_untouched(users_redis)


def test_a_given_empty_test_database_is_used_and_nothing_else(users_redis: EmbeddedRedis) -> None:
    run = run_suite(RELAY_TEST_REDIS_URL=url(users_redis, 5))
    assert run.returncode == 0, run.stdout + run.stderr
    assert " passed" in run.stdout
    assert_untouched(users_redis)
