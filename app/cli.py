"""The ``promoter-relay`` command: run everything locally, run the sandbox, look inside from a terminal.

Settings are read only by the commands that need them, so ``--help`` and ``--version`` work whatever
the environment holds, and a bad value is one line naming the variable, never a traceback.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import click
import redis

from worker.settings import Settings, SettingsError, load


def _version() -> str:
    try:
        return version("promoter-relay")
    except PackageNotFoundError:
        return "unknown"


@click.group()
@click.version_option(_version(), prog_name="promoter-relay")
def main() -> None:
    """promoter-relay: a self-hosted Segment -> Promoter.io destination."""


@main.command()
@click.option("--port", default=8000, show_default=True, type=int, help="API port")
@click.option("--workers", default=8, show_default=True, type=int, help="worker threads")
@click.option("--fresh", is_flag=True, help="start with empty data (deletes the data folder)")
@click.option("--data-dir", default=".promoter-relay", show_default=True, type=click.Path(path_type=Path))
def dev(port: int, workers: int, fresh: bool, data_dir: Path) -> None:
    """Everything in one command: embedded Redis, sandbox Promoter, API, worker and beat."""
    from app.devtools import dev as devtools

    devtools.run(port, workers, fresh, data_dir)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--api-key", default="sandbox-key", show_default=True, envvar="SANDBOX_API_KEY")
@click.option("--latency-ms", default=0.0, show_default=True, type=float)
@click.option(
    "--state-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="keep contacts (and their ids) in this file across restarts",
)
def sandbox(host: str, port: int, api_key: str, latency_ms: float, state_file: Path | None) -> None:
    """Run the local fake Promoter.io API (control routes under /_sandbox/: calls, contacts, config)."""
    from app.devtools.sandbox import SandboxState, serve

    try:
        state = SandboxState(api_key=api_key, latency_ms=latency_ms, state_file=state_file)
    except (OSError, ValueError, KeyError) as error:
        raise click.ClickException(f"cannot read the sandbox state file {state_file}: {error}") from None
    click.echo(f"Promoter sandbox on http://{host}:{port} (Authorization: Token <api key>)")
    serve(host, port, state)


def _settings(dotenv: bool = False) -> Settings:
    """Settings for an inspection command, and which Redis it reads, said on stderr. With no REDIS_URL:
    the Redis of the running ``promoter-relay dev`` of this folder, else of the only one running.
    ``dotenv``: ``./.env`` fills in what the environment does not set (as docker compose reads it)."""
    env = dict(os.environ)
    if dotenv and Path(".env").is_file():
        from dotenv import dotenv_values

        env = {k: v for k, v in dotenv_values(".env").items() if v is not None} | env
        click.echo("Settings: ./.env, overridden by the environment", err=True)
    where = "REDIS_URL"
    if not env.get("REDIS_URL"):
        env["REDIS_URL"], where = _dev_redis()
    try:
        settings = load(env)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"Redis: {_shown(settings.redis_url)} ({where})", err=True)
    return settings


def _dev_redis() -> tuple[str, str]:
    """The Redis URL of a running ``promoter-relay dev``, and how it was found."""
    from app.devtools.dev import read_state, running_instances
    from app.devtools.processes import redis_answers

    here = read_state()
    if here and redis_answers(here["redis_url"]):
        return here["redis_url"], "the running `promoter-relay dev` of this folder"
    running = [state for state in running_instances() if redis_answers(state["redis_url"])]
    if len(running) == 1:
        return running[0][
            "redis_url"
        ], f"the running `promoter-relay dev` with data in {running[0]['data_dir']}"
    if running:
        folders = ", ".join(f"{state['data_dir']} ({_shown(state['redis_url'])})" for state in running)
        raise click.ClickException(
            f"{len(running)} `promoter-relay dev` instances are running ({folders}): run this from the "
            "folder of the one to read, or set REDIS_URL"
        )
    return (
        Settings.redis_url,
        "the default: no `promoter-relay dev` is running; set REDIS_URL to read another",
    )


def _shown(url: str) -> str:
    """A Redis URL without its password."""
    return re.sub(r"//[^@/]*@", "//***@", url)


def _stores(settings: Settings) -> Any:
    from worker.stores import build_stores

    return build_stores(settings, timeout=5.0)


def _redis_down(error: redis.RedisError) -> click.ClickException:
    return click.ClickException(f"Redis unavailable: {type(error).__name__}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json: bool) -> None:
    """Queue depth, held messages, retries, dead letters, delivery counts and Promoter's budget."""
    from worker import keys
    from worker.stats import snapshot

    settings = _settings()
    stores = _stores(settings)
    try:
        data = snapshot(stores.redis, settings)
        empty = not stores.redis.exists(keys.STATS)
    except redis.RedisError as error:
        raise _redis_down(error) from None
    if empty:
        click.echo("(this Redis holds no relay data yet)", err=True)
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    for section, values in data.items():
        if isinstance(values, dict):
            click.echo(f"{section}:")
            for name, value in sorted(values.items()):
                click.echo(f"  {name:<22} {value}")
        else:
            click.echo(f"{section:<24} {values}")


@main.command()
@click.option("--dry-run", is_flag=True, help="count what would be converted; write nothing")
@click.option("--wait", default=0.0, show_default=True, help="seconds to wait for another process migrating")
def migrate(dry_run: bool, wait: float) -> None:
    """Bring the stored data to this version's schema (workers and beat do it when they start)."""
    from worker import migrate as migration

    settings = _settings(dotenv=True)
    stores = _stores(settings)
    try:
        report = migration.migrate(
            stores.redis,
            settings,
            dry_run=dry_run,
            wait_seconds=wait,
            progress=lambda line: click.echo(line, err=True),
        )
    except migration.MigrationError as error:
        raise click.ClickException(str(error)) from None
    except redis.RedisError as error:
        raise _redis_down(error) from None
    click.echo(migration.describe(report))


@main.group("dead-letters")
def dead_letters() -> None:
    """List, replay and discard messages the relay gave up on."""


@dead_letters.command("list")
@click.option("--limit", default=20, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True)
def dead_list(limit: int, as_json: bool) -> None:
    from app import records

    stores = _stores(_settings())
    try:
        letters = [records.dead_letter(r) for r in stores.dead.list(limit)]
        total = stores.dead.count()
    except redis.RedisError as error:
        raise _redis_down(error) from None
    if as_json:
        click.echo(json.dumps(letters, indent=2, default=str))
        return
    click.echo(f"{total} dead letter(s)")
    for letter in letters:
        name = letter.get("event_name") or ""
        click.echo(
            f"{letter['at']}  {letter['id']}  {letter['type']} {name}  user={letter.get('user') or '-'}  "
            f"attempts={letter['attempts']}  {letter['reason']}"
        )
        if evidence := letter.get("evidence"):
            click.echo(f"    evidence: {json.dumps(evidence, sort_keys=True)}")


@dead_letters.command("replay")
@click.argument("refs", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="replay every dead letter")
def dead_replay(refs: tuple[str, ...], replay_all: bool) -> None:
    """Queue dead letters again (ref or messageId). Exits 1 if any could not be replayed."""
    if not refs and not replay_all:
        raise click.UsageError("give refs or --all")
    stores = _stores(_settings())
    if replay_all:
        outcomes = stores.dead.replay_all()
        click.echo(f"replayed {outcomes.get('replayed', 0)} dead letter(s)")
        refused = {k: v for k, v in outcomes.items() if k != "replayed"}
        if refused:
            click.echo(f"not replayed: {refused}")
        return
    failed = False
    for ref in refs:
        outcome = stores.dead.replay(stores.dead.resolve(ref))
        failed |= outcome != "replayed"
        click.echo(f"{ref}: {_REPLAY_TEXT.get(outcome, outcome)}")
    if failed:
        sys.exit(1)


_REPLAY_TEXT = {
    "replayed": "replayed",
    "missing": "no such dead letter",
    "surveyed": "not replayed: its survey is known to have been sent (a replay would survey twice)",
    "calling": "not replayed: a survey call of it is still being made (try again once it has ended)",
    "expired": "not replayed: its event has expired",
}


@dead_letters.command("discard")
@click.argument("refs", nargs=-1)
@click.option("--all", "discard_all", is_flag=True, help="discard every dead letter")
@click.option("--older-than", default=None, help="with --all: only those older than this (30d, 12h, 90m)")
def dead_discard(refs: tuple[str, ...], discard_all: bool, older_than: str | None) -> None:
    """Drop dead letters for good. Exits 1 if a given one did not exist."""
    if not refs and not discard_all:
        raise click.UsageError("give refs or --all")
    if older_than and not discard_all:
        raise click.UsageError("--older-than goes with --all")
    stores = _stores(_settings())
    if discard_all:
        seconds = _duration(older_than) if older_than else None
        click.echo(f"discarded {stores.dead.discard_all(seconds)} dead letter(s)")
        return
    missing = [ref for ref in refs if not stores.dead.discard([stores.dead.resolve(ref)])]
    click.echo(f"discarded {len(refs) - len(missing)} dead letter(s)")
    if missing:
        click.echo(f"no such dead letter: {', '.join(missing)}")
        sys.exit(1)


@main.command()
@click.argument("user_ids", nargs=-1)
@click.option("--email", "emails", multiple=True, help="an email of the person (repeatable)")
@click.option("--at-promoter", is_flag=True, help="remove their contacts at Promoter too")
@click.option("--yes", is_flag=True, help="do not ask first")
def forget(user_ids: tuple[str, ...], emails: tuple[str, ...], at_promoter: bool, yes: bool) -> None:
    """Erase everything the relay holds about a person (GDPR/CCPA erasure): every identity, the person,
    their messages, dead letters, orders and markers; later events naming them are dropped for
    SUPPRESSION_DAYS. Exits 1 when nothing was found for some id (they are suppressed all the same)."""
    if not user_ids and not emails:
        raise click.UsageError("give at least one USER_ID or --email")
    if bad := [email for email in emails if "@" not in email]:
        raise click.BadParameter(f"not an email address: {', '.join(bad)}", param_hint="--email")
    settings = _settings()
    stores = _stores(settings)
    named = len(user_ids) + len(emails)
    if not yes:
        where = " and remove their contacts at Promoter" if at_promoter else ""
        click.confirm(f"Erase everything the relay holds about the {named} id(s) given{where}? "
                      "This cannot be undone", abort=True)  # fmt: skip
    try:
        result = stores.forgetter.forget(user_ids, emails)
        job = stores.forget_jobs.create(result, at_promoter, enqueue=False)
    except redis.RedisError as error:
        raise _redis_down(error) from None
    click.echo(
        f"erased {result.persons} person(s), {result.identities} identit(ies), {result.messages} message(s)"
    )
    for user in result.unknown_users:
        click.echo(f"nothing found for user id {user!r}")
    for email in result.unknown_emails:
        click.echo(f"nothing found for email {email!r}")
    if result.suppressed:
        click.echo(f"later events naming them are dropped for {settings.suppression_days} day(s)")
    else:
        click.echo(
            "suppression is off (SUPPRESSION_KEY unset or SUPPRESSION_DAYS=0): later events are accepted"
        )
    if at_promoter:
        _remove_at_promoter(settings, stores, job)
    if result.unknown_users or result.unknown_emails:
        sys.exit(1)


def _remove_at_promoter(settings: Settings, stores: Any, job: str) -> None:
    """The job's removals at Promoter, made here: through the shared budget, waiting out 429s and
    transient failures for the retry window."""
    from worker.promoter import PromoterClient
    from worker.runtime import Runtime
    from worker.tasks import remove_contacts

    if not settings.promoter_api_key:
        raise click.ClickException("PROMOTER_API_KEY is not set: cannot remove contacts at Promoter")
    client = PromoterClient(settings.promoter_api_url, settings.promoter_api_key,
                            timeout=settings.promoter_timeout_seconds)  # fmt: skip
    rt = Runtime(settings, stores, client)
    attempt = 1
    while not (outcome := remove_contacts(rt, job, attempt)).done:
        click.echo(f"at Promoter: {outcome.why}; again in {outcome.retry_in:.1f}s", err=True)
        time.sleep(max(0.05, outcome.retry_in))
        attempt += 1
    state = stores.forget_jobs.get(job) or {}
    removal = state.get("atPromoter", {})
    detail = f": {removal['detail']}" if removal.get("detail") else ""
    click.echo(f"at Promoter: {removal.get('state')} ({removal.get('removed', 0)} removed, "
               f"{removal.get('notFound', 0)} not there){detail}")  # fmt: skip
    if removal.get("state") == "failed":
        sys.exit(2)


def _duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not match:
        raise click.BadParameter(
            f"{text!r}: use a number and s, m, h or d (e.g. 30d)", param_hint="--older-than"
        )
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


@main.command()
def check() -> None:
    """Before going live: Redis answers, Promoter takes the API key, the campaign exists (reads ./.env
    like docker compose does; the environment wins)."""
    from worker.promoter import PromoterClient, PromoterError

    settings = _settings(dotenv=True)
    ok = True
    try:
        _stores(settings).redis.ping()
        click.echo("ok    Redis answers")
    except redis.RedisError as error:
        ok = False
        click.echo(f"FAIL  Redis: {type(error).__name__}")
    if not settings.promoter_api_key:
        raise click.ClickException("PROMOTER_API_KEY is not set")
    client = PromoterClient(settings.promoter_api_url, settings.promoter_api_key, timeout=10)
    found, page, seen = False, 1, 0
    try:
        while page and not found:
            reply = client.campaigns(page)
            results = reply.data.get("results") or []
            seen += len(results)
            found = any(c.get("id") == settings.promoter_campaign_id for c in results)
            page = page + 1 if reply.data.get("next") and page < 50 else 0
        click.echo(
            f"ok    Promoter accepts the API key ({seen} campaign(s) seen at {settings.promoter_api_url})"
        )
    except PromoterError as error:
        raise click.ClickException(f"Promoter: {error}") from None
    if settings.promoter_campaign_id is None:
        click.echo("warn  PROMOTER_CAMPAIGN_ID is not set: surveys need integrations.Promoter.campaign")
    elif found:
        click.echo(f"ok    campaign {settings.promoter_campaign_id} exists")
    else:
        ok = False
        click.echo(f"FAIL  campaign {settings.promoter_campaign_id} is not among the account's campaigns")
    if settings.suppression_seconds:
        click.echo(
            f"ok    a forgotten person's later events are dropped for {settings.suppression_days} day(s)"
        )
    else:
        click.echo("warn  suppression is off (SUPPRESSION_KEY unset or SUPPRESSION_DAYS=0): a forget erases, "
                   "but the person's later events are accepted again")  # fmt: skip
    if not ok:
        sys.exit(1)


@main.group("scripts")
def scripts_group() -> None:
    """The Lua scripts as Redis runs them: a Redis error's ``user_script:<line>`` points into this text."""


@scripts_group.command("list")
def scripts_list() -> None:
    """Every script, with the first line of what it does."""
    from worker import scripts

    for name in scripts.names():
        header = []
        for line in scripts.source(name).splitlines():
            if not line.startswith("-- ") or line.startswith("-- KEYS"):
                break
            header.append(line.removeprefix("-- "))
        what = " ".join(header).split(": ", 1)[-1]
        click.echo(f"{name:22} {what.split('. ')[0].rstrip('.')}")


@scripts_group.command("show")
@click.argument("name")
def scripts_show(name: str) -> None:
    """Script NAME (as `scripts list` names it) with the generated head and the library, numbered as
    Redis numbers its lines; the settings of this environment fill in CONFIG."""
    from worker import scripts

    if name not in scripts.names():
        raise click.ClickException(f"no script {name!r}; `promoter-relay scripts list` names them")
    try:
        settings = load(dict(os.environ))
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    click.echo(scripts.numbered(name, settings), nl=False)


@main.command()
@click.argument("service", type=click.Choice(["beat", "worker"]))
@click.option("--max-age", default=30.0, show_default=True, help="seconds")
def health(service: str, max_age: float) -> None:
    """Health check for compose: beat, or a worker on this host, wrote its heartbeat within --max-age
    seconds (in Redis; a hung process still has a live PID)."""
    import socket

    from worker import heartbeat

    settings = _settings()
    try:
        client = _stores(settings).redis
        beats = heartbeat.read(client.get(heartbeat.BEAT), client.hgetall(heartbeat.WORKERS), time.time())
    except redis.RedisError as error:
        raise _redis_down(error) from None
    if service == "beat":
        age = beats.beat_age
    else:
        # Celery names a worker <name>@<hostname>: a container's own workers carry its hostname.
        host = socket.gethostname()
        mine = [a for name, a in beats.worker_ages.items() if name.rpartition("@")[2] == host]
        age = min(mine) if mine else None
    if age is None or age > max_age:
        raise click.ClickException(f"{service}: no heartbeat in the last {max_age:.0f}s")
    click.echo(f"{service}: heartbeat {age:.1f}s ago")
