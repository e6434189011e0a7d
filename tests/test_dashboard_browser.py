"""The dashboard in a real headless Chromium, over a live API and a real Redis: log in, read the tiles
and tables, search, open a message and a user, replay and discard dead letters (with the confirmation
that "Replay all" asks for), and see a replayed dead letter delivered by a real worker."""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
import redis
import requests
from werkzeug.serving import make_server

from app import create_app
from app.devtools.sandbox import SandboxServer
from app.devtools.segment_receiver import ReceiverServer, ReceiverState
from app.records import when
from tests.conftest import ADMIN_TOKEN, ARTIFACTS, CAMPAIGN_ID, Processes, ref, settings_for
from tests.factories import accept, make_event, queued_refs, stores_for
from tests.harness import make_relay
from tests.test_admin import EVIDENCE, UNKNOWN_REASON, dead_track, held_track, retrying_track
from worker import feedback, keys
from worker.segment_sender import SegmentSender
from worker.stores import Stores

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Dialog, Page

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        CHROMIUM is None and not os.environ.get("CI"), reason="needs Debian's chromium (.ci/run installs it)"
    ),
]

XSS = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"
XSS_ID = f"{XSS}-dl-1"
DAILY_LIMIT = 5000
LATE = 30_000  # ms: a worker process has to start and deliver


@pytest.fixture
def live_url(redis_client: redis.Redis, redis_url: str) -> Iterator[str]:
    app = create_app(settings_for(redis_url, promoter_daily_limit=DAILY_LIMIT))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM is not None, "CI must install chromium"
    with sync_playwright() as playwright:
        args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--headless"]  # fmt: skip
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield launched
        finally:
            launched.close()


class Dialogs:
    """Every dialog the page opens, answered as ``accept`` says (a test flips it before clicking)."""

    def __init__(self, page: Page) -> None:
        self.seen: list[tuple[str, str]] = []
        self.accept = False
        page.on("dialog", self.answer)

    def answer(self, dialog: Dialog) -> None:
        self.seen.append((dialog.type, dialog.message))
        if self.accept:
            dialog.accept()
        else:
            dialog.dismiss()


@pytest.fixture
def page(browser: Browser) -> Page:
    return browser.new_page(viewport={"width": 1400, "height": 1000})


@pytest.fixture
def stores(redis_client: redis.Redis) -> Stores:
    return stores_for(redis_client)


def log_in(page: Page, live_url: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{live_url}/admin/")
    page.fill("#token", ADMIN_TOKEN)
    page.click("#login button")
    expect(page.locator("#main")).to_be_visible()


def refused_request(live_url: str) -> None:
    """A track without a write key: the API refuses it (401) and counts it."""
    assert (
        requests.post(f"{live_url}/v1/track", json={"userId": "u1", "event": "NPS"}, timeout=10).status_code
        == 401
    )


def seed(stores: Stores, live_url: str) -> dict[str, str]:
    """A held message, a retrying one, two dead letters (one of unknown survey outcome, with evidence;
    one with an XSS payload in its id and traits), a saved call, a refused request, budget used."""
    refs = {
        "held": held_track(stores, "held-1", user="h1"),
        "retrying": retrying_track(stores, "retry-1", user="r1"),
        "unknown": dead_track(stores, "nps-unknown", user="s1", reason=UNKNOWN_REASON, evidence=EVIDENCE),
    }
    traits = {"email": "b1@example.com", "firstName": XSS}
    accept(stores, make_event(XSS_ID, "identify", "b1", traits=traits))
    stores.messages.start(ref(XSS_ID))
    assert stores.dead.bury(ref(XSS_ID), "Promoter rejected it: 403", '{"detail": "<b>no</b>"}')
    refs["xss"] = ref(XSS_ID)
    cooled = make_event("cool-1", user="c1")
    accept(stores, cooled)
    stores.people.settle_survey(cooled["ref"], "cooldown", "surveyed 2 days ago", "", 7)
    stores.redis.set(keys.budget(str(int(time.time() // 86400))), 42)
    stores.redis.delete("relay", "relay.low")  # what is queued is only what a replay queues
    refused_request(live_url)
    return refs


def replayed_count(stores: Stores) -> int:
    return int(stores.redis.hget(keys.STATS, "replayed") or 0)


def test_dashboard_shows_the_relay_and_replays_until_delivered(
    live_url: str,
    page: Page,
    stores: Stores,
    processes: Processes,
    sandbox: SandboxServer,
) -> None:
    from playwright.sync_api import expect

    refs = seed(stores, live_url)
    processes.worker()
    dialogs = Dialogs(page)
    missing: list[str] = []
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)

    page.goto(f"{live_url}/admin/")
    page.fill("#token", "wrong-token")
    page.click("#login button")
    expect(page.locator("#error")).to_contain_text("Token refused (401)")
    expect(page.locator("#main")).to_be_hidden()
    page.fill("#token", ADMIN_TOKEN)
    page.click("#login button")

    # Tiles and tables show what was seeded; the payload is text, never markup.
    for tile, value in {"held": "1", "retry": "1", "dead": "2", "refused": "1", "saved": "1", "queued": "0",
                        "budget": f"42 / {DAILY_LIMIT}"}.items():  # fmt: skip
        expect(page.locator(f"#tile-{tile} .n")).to_have_text(value)
    expect(page.locator("#tile-refused .l")).to_contain_text("401: 1")
    expect(page.locator("#tile-saved .l")).to_contain_text("cooldown: 1")
    expect(page.locator("#dead tr")).to_have_count(2)
    xss_row = page.locator("#dead tr", has_text="dl-1")
    expect(xss_row.locator("button.open")).to_have_text(XSS_ID)
    expect(xss_row).to_contain_text('{"detail": "<b>no</b>"}')
    unknown_row = page.locator("#dead tr", has_text="nps-unknown")
    expect(unknown_row).to_contain_text("outcome unknown: timeout")
    expect(page.locator("#unknown-warning")).to_contain_text("can survey a person twice")
    expect(page.locator("#messages tr", has_text="held-1").locator(".state")).to_have_text("held")
    expect(page.locator("#messages tr", has_text="retry-1").locator(".state")).to_have_text("retrying")
    expect(page.locator("#main img")).to_have_count(0)
    expect(page.locator("script")).to_have_count(1)

    # The detail of the dead letter of unknown outcome: history from "received", the evidence.
    unknown_row.locator("button.open").click()
    expect(page.locator("#detail-title")).to_have_text("Message nps-unknown")
    expect(page.locator("#detail-history tr").first).to_contain_text("received")
    expect(page.locator("#detail-history tr").last).to_contain_text("dead")
    evidence = page.locator("#detail-evidence")
    for shown in ("timeout", "call started", "2026-11-29T10:00:00.123Z", "10.004", "attempts", "host:42"):
        expect(evidence).to_contain_text(shown)
    expect(page.locator("#detail-dead-fields")).to_contain_text(UNKNOWN_REASON)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.exists()
    assert shot.stat().st_size > 0

    # Search by userId, open the user and one of their messages.
    page.fill("#q", "h1")
    page.click("#search button[type=submit]")
    expect(page.locator("#messages-title")).to_have_text("Messages matching \u201ch1\u201d")
    expect(page.locator("#messages tr")).to_have_count(1)
    expect(page.locator("#user-title")).to_have_text("User h1 (not known to Promoter)")
    expect(page.locator("#messages tr", has_text="held-1").locator("button.user")).to_have_text("h1")
    expect(page.locator("#user-held tr")).to_have_count(1)
    expect(page.locator("#user-held tr")).to_contain_text("held-1")
    page.locator("#messages tr", has_text="held-1").locator("button.open").click()
    expect(page.locator("#detail-title")).to_have_text("Message held-1")
    expect(page.locator("#detail-history tr")).to_have_count(2)
    expect(page.locator("#detail-history tr").last).to_contain_text("waiting for an identify of u:h1")
    expect(page.locator("#detail-dead")).to_be_hidden()
    # A second search that finds no user leaves no user of the first one open.
    page.fill("#q", "nobody-by-this-id")
    page.click("#search button[type=submit]")
    expect(page.locator("#messages-title")).to_contain_text("nobody-by-this-id")
    expect(page.locator("#user")).to_be_hidden()
    page.click("#clear-search")
    expect(page.locator("#messages-title")).to_have_text("Recent messages")

    # "Replay all", dismissed: nothing happens.
    page.click("#replay-all")
    expect(page.locator("#notice")).to_have_text("Nothing replayed.")
    [(kind, question)] = dialogs.seen
    assert kind == "confirm"
    assert "Replay all 2 dead letter(s)?" in question
    assert "can survey a person twice" in question
    assert stores.dead.count() == 2
    assert replayed_count(stores) == 0
    assert queued_refs(stores.redis) == []

    # Replay the XSS one: a real worker delivers it.
    xss_row.locator("button.replay").click()
    expect(page.locator("#notice")).to_have_text(f"Replayed {ref(XSS_ID)}.")
    expect(page.locator("#dead tr")).to_have_count(1)
    delivered = page.locator("#messages tr", has_text="dl-1").locator(".state")
    expect(delivered).to_have_text("delivered", timeout=LATE)

    # "Replay all", accepted: the dead letter of unknown outcome goes too.
    dialogs.accept = True
    page.click("#replay-all")
    expect(page.locator("#notice")).to_have_text("Replayed 1 dead letter(s).")
    expect(page.locator("#dead tr")).to_have_count(0)
    assert [kind for kind, _ in dialogs.seen] == ["confirm", "confirm"], "and no alert from the payload"
    assert stores.dead.count() == 0
    assert replayed_count(stores) == 2
    assert page.title() == "promoter-relay"
    assert missing == [], "nothing the page asks for is missing (the favicon included)"
    assert stores.messages.state(refs["xss"]) == "delivered"
    [contact] = sandbox.state.contacts()
    assert (contact["email"], contact["first_name"]) == ("b1@example.com", XSS)


def test_dashboard_shows_why_a_replay_was_refused_and_discards(
    live_url: str, page: Page, stores: Stores, redis_client: redis.Redis
) -> None:
    from playwright.sync_api import expect

    surveyed = dead_track(stores, "sent-1", user="s1")
    redis_client.hset(keys.message(surveyed), "survey", "sent")
    expired = dead_track(stores, "gone-1", user="s2")
    redis_client.delete(keys.event(expired))
    dead_track(stores, "plain-1", user="s3")
    dead_track(stores, "plain-2", user="s4")
    dialogs = Dialogs(page)
    log_in(page, live_url)
    expect(page.locator("#dead tr")).to_have_count(4)

    page.locator("#dead tr", has_text="sent-1").locator("button.replay").click()
    refusal = f"The survey of {surveyed!r} is known to have been sent; replaying would survey twice."
    expect(page.locator("#notice")).to_have_text(f"Not replayed (409): {refusal}")
    expect(page.locator("#notice")).to_have_class("bad")
    page.locator("#dead tr", has_text="gone-1").locator("button.replay").click()
    expect(page.locator("#notice")).to_contain_text("Not replayed (410)")
    expect(page.locator("#notice")).to_contain_text("expired")
    expect(page.locator("#dead tr")).to_have_count(4)
    assert stores.dead.count() == 4
    assert queued_refs(redis_client) == []

    page.locator("#dead tr", has_text="plain-1").locator("button.discard").click()
    expect(page.locator("#notice")).to_have_text(f"Discarded {ref('plain-1')}.")
    expect(page.locator("#dead tr")).to_have_count(3)

    page.click("#discard-all")
    expect(page.locator("#notice")).to_have_text("Nothing discarded.")
    assert stores.dead.count() == 3
    dialogs.accept = True
    page.click("#replay-all")
    notice = page.locator("#notice")
    expect(notice).to_contain_text("Replayed 1 dead letter(s). Not replayed: ")
    expect(notice).to_contain_text("1 survey already sent")
    expect(notice).to_contain_text("1 event expired")
    expect(page.locator("#dead tr")).to_have_count(2)
    page.click("#discard-all")
    expect(page.locator("#notice")).to_have_text("Discarded 2 dead letter(s).")
    expect(page.locator("#dead tr")).to_have_count(0)
    expect(page.locator("#replay-all")).to_be_disabled()
    assert [kind for kind, _ in dialogs.seen] == ["confirm"] * 3
    assert "for good" in dialogs.seen[0][1]
    assert stores.dead.count() == 0


def test_dashboard_opens_a_known_user(
    live_url: str, page: Page, redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    from playwright.sync_api import expect

    relay = make_relay(redis_client, sandbox)
    relay.send(make_event("id-7", "identify", "u7", traits={"email": "u7@example.com", "firstName": "Ada"}))
    relay.drain()
    order = {"order_id": "o-1", "total": 12.5, "currency": "EUR"}
    relay.send(make_event("order-7", user="u7", event="Order Completed", properties=order))
    relay.drain()
    assert relay.state(ref("order-7")) == "delivered"
    log_in(page, live_url)
    page.locator("#messages tr", has_text="order-7").locator("button.user").click()
    expect(page.locator("#user-title")).to_have_text("User u7 (known to Promoter)")
    expect(page.locator("#user-fields tr", has_text="identities")).to_contain_text("u7")
    expect(page.locator("#user-fields tr", has_text="identities")).not_to_contain_text("u:u7")
    fields = page.locator("#user-fields")
    expect(fields.locator("tr", has_text="contact (merged)")).to_contain_text("email: u7@example.com")
    expect(fields.locator("tr", has_text="contact (merged)")).to_contain_text("first_name: Ada")
    expect(fields.locator("tr", has_text="at Promoter")).to_contain_text("email: u7@example.com")
    expect(fields.locator("tr", has_text="order attributes")).to_contain_text("order_count: 1")
    expect(fields.locator("tr", has_text="order attributes")).to_contain_text("lifetime_revenue_eur: 12.50")
    expect(page.locator("#user-held-title")).to_have_text("Held messages (0)")
    page.click("#user button.close")
    expect(page.locator("#user")).to_be_hidden()


def test_dashboard_shows_the_evidence_of_a_worker_stopped_mid_call(
    live_url: str, page: Page, stores: Stores, redis_client: redis.Redis
) -> None:
    from playwright.sync_api import expect

    evidence = {"cause": "worker stopped mid-call", "attempts": 3, "noticed_by": "host:7"}
    stopped = dead_track(stores, "stopped-1", user="s9", reason="survey outcome unknown", evidence=evidence)
    redis_client.hset(keys.message(stopped), mapping={"survey_started": "1800000000.25", "survey": "unknown"})
    log_in(page, live_url)
    page.locator("#dead tr", has_text="stopped-1").locator("button.open").click()
    shown = page.locator("#detail-evidence")
    expect(shown.locator("tr", has_text="cause")).to_contain_text("worker stopped mid-call")
    expect(shown.locator("tr", has_text="attempts")).to_contain_text("3")
    expect(shown.locator("tr", has_text="call started (status record)")).to_contain_text(
        "2027-01-15T08:00:00.250Z"
    )
    expect(page.locator("#detail-evidence-box")).to_contain_text("can survey the person twice")
    expect(page.locator("#unknown-warning")).to_contain_text("1 of these are surveys of unknown outcome")


def test_a_late_refusal_of_an_old_token_does_not_log_out_the_new_one(live_url: str, page: Page) -> None:
    """A refused token's answers can arrive after the right token was entered (seen in CI: the
    dashboard hid itself again and the next click timed out); only the token in use may log out."""
    from playwright.sync_api import Route, expect

    late: list[Route] = []

    def hold_wrong(route: Route) -> None:
        wrong = route.request.headers.get("authorization") == "Bearer wrong-token"
        if wrong and "/api/dead-letters" in route.request.url:
            late.append(route)
        else:
            route.continue_()

    page.route("**/admin/api/**", hold_wrong)
    page.goto(f"{live_url}/admin/")
    page.fill("#token", "wrong-token")
    page.click("#login button")
    expect(page.locator("#error")).to_contain_text("Token refused (401)")
    page.fill("#token", ADMIN_TOKEN)
    page.click("#login button")
    expect(page.locator("#updated")).to_contain_text("updated")
    assert len(late) == 1

    late[0].fulfill(status=401, content_type="application/json", body="{}")
    page.evaluate("() => new Promise(done => setTimeout(done, 300))")
    expect(page.locator("#main")).to_be_visible()
    expect(page.locator("#login")).to_be_hidden()
    expect(page.locator("#error")).to_have_text("")


def test_dashboard_charts_received_delivered_and_dead_per_minute(
    live_url: str, page: Page, redis_client: redis.Redis, sandbox: SandboxServer
) -> None:
    """Traffic spread over the last hour (the scripts count each minute at the clock they are given),
    drawn as three lines; the legend totals match what was sent. Its screenshot goes to
    test-artifacts/dashboard-chart.png."""
    from playwright.sync_api import expect

    relay = make_relay(redis_client, sandbox)
    this_minute = int(time.time() // 60)
    sent = {"received": 0, "delivered": 0, "dead": 0}
    busiest = (0, 0)
    for ago in range(58, 0, -2):
        users, refused = 2 + (ago * 7) % 9, int(ago % 10 == 0)
        relay.clock.now = (this_minute - ago) * 60 + 5.0
        sandbox.state.configure({"fail_next": [400] * refused})
        for n in range(users):
            user = f"c{ago}-{n}"
            relay.send(make_event(f"id-{user}", "identify", user), make_event(f"nps-{user}", user=user))
        busiest = max(busiest, (2 * users, ago))
        if ago % 6 == 0:
            relay.clock.advance(60)  # delivered a minute after they were received
        relay.drain()
        sent["received"] += 2 * users
        sent["dead"] += refused * 2  # a refused identify dead-letters its person's track too
        sent["delivered"] += 2 * (users - refused)
    log_in(page, live_url)
    chart = page.locator("#chart")
    for name, total in sent.items():
        expect(page.locator(f"#chart-total-{name}")).to_have_text(f"{name} {total}")
    for name in sent:
        points = page.locator(f"#chart-svg polyline.series-{name}").get_attribute("points") or ""
        assert len(points.split()) == 61, "60 whole minutes and the current one"
    expect(page.locator("#chart-title")).to_have_text("Per minute, last 60 minutes")
    peak, ago = busiest
    minute = when((this_minute - ago) * 60)
    expect(page.locator(f'#chart-svg rect.hover[data-at="{minute}"] title')).to_contain_text(
        f"{peak} received"
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard-chart.png"
    shot.unlink(missing_ok=True)
    chart.screenshot(path=str(shot))
    assert shot.stat().st_size > 0
    page.screenshot(path=str(ARTIFACTS / "dashboard-with-chart.png"), full_page=True)


@pytest.fixture
def receiver() -> Iterator[ReceiverServer]:
    with ReceiverServer(ReceiverState(write_key=NPS_WRITE_KEY)) as server:
        yield server


@pytest.fixture
def nps_url(redis_client: redis.Redis, redis_url: str, receiver: ReceiverServer) -> Iterator[str]:
    feedback_settings = {"feedback_segment_write_key": NPS_WRITE_KEY, "feedback_segment_host": receiver.url}
    app = create_app(settings_for(redis_url, **feedback_settings))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


NPS_WRITE_KEY = "nps-write-key"


def nps_history(redis_client: redis.Redis, sandbox: SandboxServer, receiver: ReceiverServer) -> int:
    """Twelve users surveyed through the relay (they answer today), three weeks of earlier answers of
    theirs at Promoter, one with markup in its comment; the poll sends them all. Returns how many."""
    relay = make_relay(
        redis_client, sandbox, feedback_segment_write_key=NPS_WRITE_KEY, feedback_segment_host=receiver.url
    )
    relay.clock.now = time.time()
    users = [f"n{n}" for n in range(12)]
    for user in users:
        relay.send(make_event(f"id-{user}", "identify", user, traits={"email": f"{user}@example.com"}))
    relay.drain()
    for user in users:
        relay.send(make_event(f"nps-{user}", "track", user))
    relay.drain()
    contacts = {c["email"]: c for c in sandbox.state.contacts()}
    draw = random.Random(24)
    for days_ago in range(1, 22):
        posted = time.strftime("%Y-%m-%dT10:00:00Z", time.gmtime(relay.clock() - days_ago * 86400))
        for _ in range(draw.randint(1, 4)):
            contact = contacts[f"{draw.choice(users)}@example.com"]
            # Getting better over time: fewer detractors lately.
            score = min(10, max(0, round(draw.gauss(9 - days_ago / 6, 2))))
            sandbox.state.add_feedback(
                CAMPAIGN_ID, contact, score, draw.choice(["", "ok", "Great support"]), posted
            )
    sandbox.state.add_feedback(CAMPAIGN_ID, contacts["n0@example.com"], 2, XSS, None)
    since = time.strftime("%Y-%m-%d", time.gmtime(relay.clock() - 30 * 86400))
    relay.redis.hset(keys.FEEDBACK_CURSOR, "since", since)  # as after a month without polls
    sender = SegmentSender(NPS_WRITE_KEY, receiver.url)
    try:
        outcome = feedback.poll(relay.runtime, sender)
    finally:
        sender.close()
    assert outcome.status == "done"
    return outcome.sent


def test_dashboard_nps_panel_charts_the_responses_sent_back_to_segment(
    nps_url: str, page: Page, redis_client: redis.Redis, sandbox: SandboxServer, receiver: ReceiverServer
) -> None:
    from playwright.sync_api import expect

    sent = nps_history(redis_client, sandbox, receiver)
    assert sent > 40
    assert len([m for m in receiver.state.messages() if m["type"] == "track"]) == sent
    log_in(page, nps_url)
    panel = page.locator("#nps")
    expect(panel.locator("#tile-nps-responses .n")).to_have_text(str(sent))
    expect(panel.locator("#nps-status")).to_contain_text(f"{sent} sent")
    expect(panel.locator("#nps-status")).to_contain_text("NPS Survey Responded")
    expect(panel.locator("#nps-chart rect.bar")).to_have_count(30)
    expect(panel.locator("#nps-chart polyline.line")).to_have_count(1)
    expect(panel.locator("#nps-latest tr")).to_have_count(20)
    first = panel.locator("#nps-latest tr").first
    expect(first).to_contain_text(XSS)  # shown as text, never run
    expect(first).to_contain_text("n***@example.com")
    expect(first.locator("button.user")).to_have_text("n0")
    expect(panel.locator("#nps-latest")).not_to_contain_text("n0@example.com")
    expect(page.locator("#main img")).to_have_count(0)
    assert page.title() == "promoter-relay"

    panel.locator(".nps-by button[data-by=week]").click()
    expect(panel.locator(".nps-by button.on")).to_have_text("Per week")
    today = datetime.now(UTC).date()
    first_monday = today - timedelta(days=181 + (today - timedelta(days=181)).weekday())
    expect(panel.locator("#nps-chart rect.bar")).to_have_count((today - first_monday).days // 7 + 1)
    expect(panel.locator("#tile-nps-score .l")).to_contain_text("last 182 days")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard-nps.png"
    shot.unlink(missing_ok=True)
    panel.locator(".nps-by button[data-by=day]").click()
    expect(panel.locator("#nps-chart rect.bar")).to_have_count(30)
    panel.screenshot(path=str(shot))
    assert shot.stat().st_size > 0
    first.locator("button.user").click()
    expect(page.locator("#user-title")).to_have_text("User n0 (known to Promoter)")


def test_a_red_banner_says_while_promoter_refuses_the_account(
    live_url: str, page: Page, stores: Stores
) -> None:
    from playwright.sync_api import expect

    log_in(page, live_url)
    banner = page.locator("#account")
    expect(banner).to_be_hidden()
    assert stores.budget.refused_account('HTTP 401: {"detail":"Invalid token."}')
    expect(banner).to_be_visible(timeout=LATE)
    expect(banner).to_contain_text("Delivery is paused: Promoter refuses the account")
    expect(banner).to_contain_text("Invalid token.")
    expect(banner).to_contain_text("PROMOTER_API_KEY or PROMOTER_API_URL")
    stores.redis.delete(keys.ACCOUNT)
    expect(banner).to_be_hidden(timeout=LATE)
