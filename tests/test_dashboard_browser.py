"""The dashboard in a real headless Chromium: log in, see a dead letter, replay it, see it delivered."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from werkzeug.serving import make_server

from app import create_app
from app.sandbox import SandboxServer
from tests.conftest import ADMIN_TOKEN, Processes, settings_for
from worker import keys
from worker.deadletters import DeadLetters
from worker.events import Event

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.integration

XSS = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"


@pytest.fixture
def live_url(redis_client: redis.Redis, redis_url: str) -> Iterator[str]:
    app = create_app(settings_for(redis_url))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _event(message_id: str, user: str) -> Event:
    return {
        "messageId": message_id,
        "type": "identify",
        "userId": user,
        "anonymousId": None,
        "traits": {"email": f"{user}@example.com", "firstName": XSS},
        "event": None,
        "properties": {},
        "context": {},
        "timestamp": None,
        "receivedAt": "2026-11-29T00:00:00Z",
        "campaignId": None,
    }


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"), reason="needs Debian's chromium (.ci/run installs it)"
)
def test_dashboard_replays_a_dead_letter_until_delivered(
    live_url: str,
    redis_client: redis.Redis,
    processes: Processes,
    sandbox: SandboxServer,
) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM is not None, "CI must install chromium"

    message_id = f"{XSS}-dl-1"
    DeadLetters(redis_client, 3600, "relay").bury(_event(message_id, "b1"), "Promoter rejected it: 403", 1)
    processes.worker()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        try:
            page = browser.new_page()
            dialogs: list[Any] = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(f"{live_url}/admin/")
            page.fill("#token", "wrong-token")
            page.click("#login button")
            expect(page.locator("#error")).to_contain_text("Token refused")

            page.fill("#token", ADMIN_TOKEN)
            page.click("#login button")
            row = page.locator("#dead tr", has_text="dl-1")
            expect(row).to_have_count(1)
            expect(row).to_contain_text("Promoter rejected it: 403")
            row.locator("button.replay").click()
            expect(page.locator("#dead tr")).to_have_count(0, timeout=15000)
            recent = page.locator("#recent tr", has_text="dl-1")
            expect(recent.locator(".state")).to_have_text("delivered", timeout=20000)
            page.screenshot(path=str(processes.log_dir / "dashboard.png"))
            assert page.title() == "promoter-relay"
            assert dialogs == []
        finally:
            browser.close()
    assert redis_client.hget(keys.message(message_id), "state") == "delivered"
    assert [c["email"] for c in sandbox.state.contacts()] == ["b1@example.com"]
