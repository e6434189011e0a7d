"""worker/migrate.py: versions, the lock, dry runs, resuming after a crash, and the API's wait."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from app import create_app
from app.cli import main
from tests.conftest import basic, settings_for, wait_until
from tests.upgrade import snapshot
from worker import keys, migrate
from worker.settings import Settings, load

CLOCK = 1_800_000_100.0


def settings(url: str = "redis://unused") -> Settings:
    return load({}, redis_url=url, environment="test")


def run(client: redis.Redis, **options: Any) -> migrate.Report:
    return migrate.migrate(client, settings(), clock=lambda: CLOCK, **options)


def keyspace(client: redis.Redis) -> dict[str, Any]:
    """Every key and value (TTLs left out; a person's ids without their last-seen times, which are
    derived from TTLs that tick between two runs)."""
    found: dict[str, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            value: Any = client.get(key)
            if key.startswith("relay:person:"):
                value = json.loads(str(value))
                value["ids"] = sorted(value.get("ids", {}))
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(client.smembers(key))
        else:
            value = client.zrange(key, 0, -1, withscores=True)
        found[key] = value
    return found


@pytest.fixture
def old(redis_client: redis.Redis) -> redis.Redis:
    snapshot.restore(redis_client, snapshot.read())
    return redis_client


def test_an_empty_redis_is_stamped_with_the_current_schema_without_work(redis_client: redis.Redis) -> None:
    report = run(redis_client)
    assert report.before is None
    assert report.steps == {}
    assert redis_client.get(keys.SCHEMA) == str(migrate.CURRENT)
    assert redis_client.dbsize() == 1


def test_data_without_a_schema_is_version_1_and_newer_data_is_refused(old: redis.Redis) -> None:
    assert migrate.stored_version(old) == 1
    old.set(keys.SCHEMA, migrate.CURRENT + 1)
    with pytest.raises(migrate.MigrationError, match="newer"):
        run(old)


def test_the_steps_are_a_chain_ending_at_the_current_version() -> None:
    assert [step.version for step in migrate.STEPS] == list(range(2, migrate.CURRENT + 1))


def test_a_dry_run_counts_and_writes_nothing(old: redis.Redis) -> None:
    before = keyspace(old)
    report = run(old, dry_run=True)
    assert report.steps[2]["persons"] == 8
    assert report.steps[2]["persons_known"] == 5
    assert keyspace(old) == before
    assert "would convert" in migrate.describe(report)


def test_a_crash_midway_and_a_rerun_leave_what_one_run_leaves(
    old: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    pristine = keyspace(old)
    run(old)
    once = keyspace(old)
    # The step itself is idempotent too: run again on its own output, it changes nothing.
    migrate.to_v2(migrate.Context(old, settings(), CLOCK))
    assert keyspace(old) == once

    old.flushdb()
    snapshot.restore(old, snapshot.read())
    monkeypatch.setattr(migrate, "BATCH", 1)
    renewals = 0
    real_renew = migrate.MigrationLock.renew

    def crash_on_the_fourth(self: migrate.MigrationLock) -> None:
        nonlocal renewals
        renewals += 1
        if renewals == 4:
            raise redis.ConnectionError("killed midway")
        real_renew(self)

    monkeypatch.setattr(migrate.MigrationLock, "renew", crash_on_the_fourth)
    with pytest.raises(redis.ConnectionError):
        run(old)
    assert old.get(keys.SCHEMA) is None
    assert old.exists(keys.MIGRATION_LOCK) == 0
    half = keyspace(old)
    assert half != pristine
    assert half != once
    monkeypatch.setattr(migrate.MigrationLock, "renew", real_renew)
    assert run(old).after == migrate.CURRENT
    assert keyspace(old) == once


def test_only_one_process_migrates_and_the_other_waits_for_it(old: redis.Redis) -> None:
    old.set(keys.MIGRATION_LOCK, "another process", ex=60)
    with pytest.raises(migrate.MigrationError, match="another process"):
        run(old)

    def the_other_finishes() -> None:
        time.sleep(0.3)
        old.set(keys.SCHEMA, migrate.CURRENT)
        old.delete(keys.MIGRATION_LOCK)

    threading.Thread(target=the_other_finishes).start()
    report = run(old, wait_seconds=10)
    assert report.steps == {}
    assert report.after == migrate.CURRENT
    # Its persons were left to the other process: this one converted nothing.
    assert old.exists("relay:person:{1}") == 1


def _v1_person(client: redis.Redis) -> None:
    client.hset(
        "relay:person:{9}",
        mapping={"f:email": "zoe@example.com", "v:email": "001795910400000|k1:m1", "rev": "2",
                 "s:email": "zoe@example.com", "s:first_name": "Zoe", "s:last_name": "", "synced_rev": "2",
                 "synced_fp": "f" * 40, "lease": "k1:m7|1800000300"},
    )  # fmt: skip
    client.sadd("relay:person:{9}:ids", "u:zoe")
    client.set("relay:id:{u:zoe}", "9", ex=3600)
    client.set("relay:id:{u:gone}", "12", ex=3600)


def test_status_records_riding_along_or_of_unknown_surveys_are_read_as_the_new_code_reads_them(
    redis_client: redis.Redis,
) -> None:
    _v1_person(redis_client)
    riding, unknown = keys.message("k1:m8"), keys.message("k1:m9")
    redis_client.hset(
        riding,
        mapping={"type": "identify", "user": "u:zoe", "state": "received", "sync": "wait", "person": "9",
                 "detail": "waiting for the contact update carried by k1:m7"},
    )  # fmt: skip
    redis_client.hset(
        unknown,
        mapping={"type": "track", "user": "u:zoe", "state": "retrying", "survey": "unknown", "person": "9"},
    )
    report = run(redis_client)
    assert report.steps[2]["riding_along"] == 1
    assert report.steps[2]["links_dropped"] == 1
    assert redis_client.hget(riding, "state") == "waiting"
    assert redis_client.hget(riding, "detail") == "rides along with the contact update of k1:m7"
    assert redis_client.hget(riding, "person") == "u:zoe"
    assert redis_client.hmget(unknown, "survey_email", "survey_first") == ["zoe@example.com", "Zoe"]
    record = json.loads(str(redis_client.get("relay:person:{u:zoe}")))
    # The old lease's holder is no run of the new code: it is let go, and the fingerprint kept.
    assert "lease" not in record
    assert record["fp"] == "f" * 16
    assert record["f"]["email"][0] == "zoe@example.com"
    assert record["vs"] == ["0mx12olc0" + hashlib.sha1(b"k1:m1", usedforsecurity=False).hexdigest()[:6]]
    assert redis_client.exists("relay:id:{u:zoe}", "relay:id:{u:gone}", "relay:person:{9}:ids") == 0


def test_the_versions_it_writes_are_the_ones_the_new_code_writes() -> None:
    from tests.factories import make_event
    from worker.events import version

    event = make_event("m1", timestamp="2026-11-29T00:00:00.000Z")
    assert (
        version(event)
        == "0mx12olc0" + hashlib.sha1(event["ref"].encode(), usedforsecurity=False).hexdigest()[:6]
    )


def test_the_api_answers_503_until_the_data_is_migrated_then_serves(old: redis.Redis, redis_url: str) -> None:
    old.set(keys.MIGRATION_LOCK, "a worker migrating", ex=60)
    app = create_app({"TESTING": True, "UPGRADE_GATE": True, **settings_for(redis_url)})
    client = app.test_client()
    body = {"type": "track", "userId": "u9", "event": "NPS", "messageId": "gate-1"}
    refused = client.post("/v1/track", json=body, headers=basic())
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "30"
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    old.delete(keys.MIGRATION_LOCK)
    wait_until(lambda: client.post("/v1/track", json=body, headers=basic()).status_code == 200, timeout=10)
    assert old.get(keys.SCHEMA) == str(migrate.CURRENT)
    assert old.exists("relay:person:{u:alice}") == 1


def test_the_migrate_command_prints_counts(old: redis.Redis, redis_url: str) -> None:
    dry = CliRunner().invoke(main, ["migrate", "--dry-run"], env={"REDIS_URL": redis_url})
    assert dry.exit_code == 0, dry.output
    assert "schema 2: would convert" in dry.output
    assert "persons 8" in dry.output
    done = CliRunner().invoke(main, ["migrate"], env={"REDIS_URL": redis_url})
    assert done.exit_code == 0, done.output
    assert "schema 2: migrated" in done.output
    again = CliRunner().invoke(main, ["migrate"], env={"REDIS_URL": redis_url})
    assert "nothing to migrate" in again.output


def test_a_worker_refuses_to_start_on_data_of_a_newer_version(
    redis_client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    redis_client.set(keys.SCHEMA, migrate.CURRENT + 1)
    with pytest.raises(SystemExit) as stopped:
        migrate.at_start(settings(redis_url), "worker")
    assert stopped.value.code == 2
    assert "newer than this version's" in capsys.readouterr().err
