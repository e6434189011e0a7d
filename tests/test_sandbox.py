"""The fake Promoter must answer like the real one, or every relay test built on it proves the wrong thing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from app.devtools.sandbox import CAMPAIGN_PAGE, SandboxControl, SandboxServer, SandboxState, create_sandbox
from worker.promoter import AccountError, PermanentError, PromoterClient

KEY = "s3cret-sandbox-key"
CONTACT = {"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace"}


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxState(api_key=KEY)) as running:
        yield running


@pytest.fixture
def control(server: SandboxServer) -> SandboxControl:
    return SandboxControl(server.url)


def call(
    server: SandboxServer,
    path: str,
    body: Any = None,
    *,
    auth: str | None = f"Token {KEY}",
    data: str | None = None,
) -> requests.Response:
    headers = {"Authorization": auth} if auth is not None else {}
    return requests.post(server.url + path, json=body, data=data, headers=headers, timeout=10)


def get(server: SandboxServer, path: str, *, auth: str | None = f"Token {KEY}") -> requests.Response:
    headers = {"Authorization": auth} if auth is not None else {}
    return requests.get(server.url + path, headers=headers, timeout=10)


def survey(email: str = "ada@example.com", campaign: int = 7) -> dict[str, Any]:
    return {"campaign_id": campaign, "contact": {**CONTACT, "email": email}, "attributes": {"plan": "pro"}}


def test_url_has_no_trailing_slash_and_healthz_answers(server: SandboxServer) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    assert not server.url.endswith("/")
    assert requests.get(server.url + "/_sandbox/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("path", ["/contacts/", "/v2/survey/"])
@pytest.mark.parametrize(
    ("auth", "detail"),
    [
        (None, "Authentication credentials were not provided."),
        ("Token wrong-key", "Invalid token."),
        (f"Bearer {KEY}", "Invalid token."),
        ("Token", "Invalid token."),
    ],
)
def test_auth_is_required(server: SandboxServer, path: str, auth: str | None, detail: str) -> None:
    response = call(server, path, CONTACT, auth=auth)
    assert response.status_code == 401
    assert response.json() == {"detail": detail}


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/contacts/", {}, {"email": ["This field is required."]}),
        ("/contacts/", {"first_name": "Ada"}, {"email": ["This field is required."]}),
        ("/contacts/", {"email": "not-an-email"}, {"email": ["Enter a valid email address."]}),
        ("/contacts/", {"email": "a@b"}, {"email": ["Enter a valid email address."]}),
        (
            "/contacts/",
            {**CONTACT, "attributes": {"address.city": "Paris"}},
            {
                "attributes": [
                    "Attribute name 'address.city' may only contain letters, digits, underscore and space."
                ]
            },
        ),
        (
            "/contacts/",
            {**CONTACT, "attributes": {"order_count": 3}},
            {"attributes": ["Attribute 'order_count' must be a string."]},
        ),
        (
            "/contacts/",
            [CONTACT],
            {"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]},
        ),
        ("/v2/survey/", {**survey(), "campaign_id": None}, {"campaign_id": ["A valid integer is required."]}),
        (
            "/v2/survey/",
            {**survey(), "campaign_id": "seven"},
            {"campaign_id": ["A valid integer is required."]},
        ),
        ("/v2/survey/", survey(campaign=0), {"campaign_id": ['Invalid pk "0" - object does not exist.']}),
        ("/v2/survey/", {"campaign_id": 7}, {"contact": ["This field is required."]}),
        (
            "/v2/survey/",
            {"campaign_id": 7, "contact": {}},
            {"contact": {"email": ["This field is required."]}},
        ),
        ("/v2/survey/", survey(email="nope"), {"contact": {"email": ["Enter a valid email address."]}}),
        (
            "/v2/survey/",
            {**survey(), "attributes": {"nps": 9}},
            {"attributes": ["Attribute 'nps' must be a string."]},
        ),
    ],
)
def test_validation_errors(server: SandboxServer, path: str, body: Any, expected: dict[str, Any]) -> None:
    response = call(server, path, body)
    assert response.status_code == 400
    assert response.json() == expected


@pytest.mark.parametrize("path", ["/contacts/", "/v2/survey/"])
def test_non_json_body_is_a_parse_error(server: SandboxServer, path: str) -> None:
    response = call(server, path, data="{not json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("JSON parse error")


def test_unknown_campaign_is_rejected_when_campaigns_are_set(server: SandboxServer) -> None:
    server.state.configure({"campaigns": [7]})
    response = call(server, "/v2/survey/", survey(campaign=9))
    assert response.status_code == 400
    assert response.json() == {"campaign_id": ['Invalid pk "9" - object does not exist.']}
    assert call(server, "/v2/survey/", survey(campaign=7)).status_code == 200


def test_upsert_merges_attributes_and_keeps_id(server: SandboxServer, control: SandboxControl) -> None:
    first = call(server, "/contacts/", {**CONTACT, "attributes": {"plan": "free", "city": "London"}})
    second = call(server, "/contacts/", {"email": "ADA@Example.com", "attributes": {"plan": "pro"}})
    assert first.status_code == second.status_code == 200
    created, updated = first.json(), second.json()
    assert set(created) == {"id", "email", "first_name", "last_name", "created_date", "attributes"}
    assert updated["id"] == created["id"]
    assert updated["created_date"] == created["created_date"]
    assert updated["first_name"] == "Ada"
    assert updated["attributes"] == {"plan": "pro", "city": "London"}
    other = call(server, "/contacts/", {"email": "grace@example.com", "contact_list": [3]}).json()
    assert other["id"] != created["id"]
    assert [c["contact_list"] for c in control.contacts()] == [[], [3]]


def test_survey_success_is_recorded_and_upserts_the_contact(
    server: SandboxServer, control: SandboxControl
) -> None:
    response = call(server, "/v2/survey/", survey())
    assert response.status_code == 200
    body = response.json()
    assert body["campaign"] == 7
    assert body["attributes"] == {"plan": "pro"}
    assert body["contact"]["email"] == "ada@example.com"
    [recorded] = control.surveys()
    assert recorded["json"] == survey()
    assert recorded["method"] == "POST"
    assert recorded["path"] == "/v2/survey/"
    assert isinstance(recorded["seq"], int)
    assert isinstance(recorded["at"], float)
    assert [c["id"] for c in control.contacts()] == [body["contact"]["id"]]


def test_ineligible_contact(server: SandboxServer, control: SandboxControl) -> None:
    control.configure(ineligible_emails={"Ada@Example.com"})
    response = call(server, "/v2/survey/", survey())
    assert response.status_code == 400
    assert response.json() == {"non_field_errors": ["Contact is not eligible for survey."]}
    assert control.surveys() == []
    assert [c["status"] for c in control.calls()] == [400]


def test_fail_next_sequence_then_success(server: SandboxServer, control: SandboxControl) -> None:
    control.configure(fail_next=[500, 503])
    statuses = [call(server, "/v2/survey/", survey()).status_code for _ in range(3)]
    assert statuses == [500, 503, 200]
    assert [c["status"] for c in control.calls("/v2/survey/")] == [500, 503, 200]
    assert control.config()["fail_next"] == []


def test_throttle_next_answers_429_with_retry_after(server: SandboxServer, control: SandboxControl) -> None:
    control.configure(throttle_next=2, retry_after=42)
    for _ in range(2):
        response = call(server, "/contacts/", CONTACT)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "42"
        assert response.json() == {"detail": "Request was throttled. Expected available in 42.0 seconds."}
    assert call(server, "/contacts/", CONTACT).status_code == 200


def test_failures_come_before_auth(server: SandboxServer, control: SandboxControl) -> None:
    control.configure(fail_next=[503])
    assert call(server, "/contacts/", CONTACT, auth=None).status_code == 503
    assert call(server, "/contacts/", CONTACT, auth=None).status_code == 401


@pytest.mark.parametrize(
    "config",
    [{"latency_ms": 150}, {"delay_next": [0.15]}, {"timeout_rate": 1, "timeout_seconds": 0.15}],
)
def test_delays_are_applied(server: SandboxServer, control: SandboxControl, config: dict[str, Any]) -> None:
    control.configure(**config)
    started = time.monotonic()
    assert call(server, "/contacts/", CONTACT).status_code == 200
    assert time.monotonic() - started >= 0.15


@pytest.mark.parametrize("config", [{"down": True}, {"failure_rate": 1}])
def test_down_and_failure_rate_answer_503(
    server: SandboxServer, control: SandboxControl, config: dict[str, Any]
) -> None:
    control.configure(**config)
    for path in ("/contacts/", "/v2/survey/"):
        response = call(server, path, survey())
        assert response.status_code == 503
        assert response.json() == {"detail": "Service unavailable"}
    assert requests.get(server.url + "/_sandbox/healthz", timeout=5).status_code == 200


def test_seeded_failures_are_reproducible() -> None:
    def pattern() -> list[int]:
        client = create_sandbox(SandboxState(api_key=KEY, seed=3, failure_rate=0.5)).test_client()
        headers = {"Authorization": f"Token {KEY}"}
        return [client.post("/contacts/", json=CONTACT, headers=headers).status_code for _ in range(20)]

    first = pattern()
    assert first == pattern()
    assert {200, 503} == set(first)


def test_calls_never_contain_the_api_key(server: SandboxServer, control: SandboxControl) -> None:
    call(server, "/contacts/", CONTACT)
    call(server, "/v2/survey/", survey(), auth=f"Token {KEY}x")
    call(server, "/nowhere/", {}, auth=f"Token {KEY}")
    calls = control.calls()
    assert [c["status"] for c in calls] == [200, 401, 404]
    dumped = json.dumps(calls) + requests.get(server.url + "/_sandbox/config", timeout=5).text
    assert KEY not in dumped


def test_config_round_trip(control: SandboxControl) -> None:
    wanted = {
        "latency_ms": 5.0,
        "failure_rate": 0.25,
        "timeout_rate": 0.0,
        "timeout_seconds": 1.5,
        "down": False,
        "ineligible_emails": ["a@example.com", "b@example.com"],
        "campaigns": [1, 2],
        "seed": 11,
        "fail_next": [500],
        "throttle_next": 1,
        "retry_after": 30,
        "delay_next": [0.5],
        "survey_cooldown_seconds": 60.0,
        "feedback_rate": 0.5,
        "feedback_page_size": 3,
    }
    assert control.configure(**wanted) == wanted
    assert control.config() == wanted
    assert "api_key" not in control.config()


@pytest.mark.parametrize("body", [{"failure_rate": 2}, {"nonsense": 1}, {"fail_next": "500"}, [1]])
def test_bad_config_is_rejected_and_changes_nothing(server: SandboxServer, body: Any) -> None:
    before = SandboxControl(server.url).config()
    response = requests.post(server.url + "/_sandbox/config", json=body, timeout=5)
    assert response.status_code == 400
    assert "detail" in response.json()
    assert SandboxControl(server.url).config() == before


def test_calls_filter_and_reset(server: SandboxServer, control: SandboxControl) -> None:
    call(server, "/contacts/", CONTACT)
    call(server, "/v2/survey/", survey())
    assert [c["path"] for c in control.calls("/contacts/")] == ["/contacts/"]
    assert len(control.calls()) == 2
    control.reset()
    assert control.calls() == []
    assert control.contacts() == []
    call(server, "/contacts/", CONTACT)
    assert control.calls()[0]["seq"] == 3


def test_survey_cooldown_makes_a_repeat_survey_ineligible(
    server: SandboxServer, control: SandboxControl
) -> None:
    control.configure(survey_cooldown_seconds=60)
    assert call(server, "/v2/survey/", survey()).status_code == 200
    again = call(server, "/v2/survey/", survey())
    assert again.status_code == 400
    assert again.json() == {"non_field_errors": ["Contact is not eligible for survey."]}
    assert call(server, "/v2/survey/", survey(campaign=8)).status_code == 200
    assert call(server, "/v2/survey/", survey(email="other@example.com")).status_code == 200


# --- GET /campaigns/?page=N (DRF pagination) ---------------------------------------------------


def test_campaigns_default_to_three_on_one_page(server: SandboxServer, control: SandboxControl) -> None:
    for path in ("/campaigns/", "/campaigns/?page=1"):
        response = get(server, path)
        assert response.status_code == 200
        assert response.json() == {
            "count": 3,
            "next": None,
            "previous": None,
            "results": [{"id": i, "name": f"Sandbox campaign {i}"} for i in (1, 2, 3)],
        }
    assert [(c["method"], c["path"], c["status"]) for c in control.calls()] == [
        ("GET", "/campaigns/", 200)
    ] * 2


def test_campaigns_are_paginated_like_drf(server: SandboxServer, control: SandboxControl) -> None:
    assert CAMPAIGN_PAGE == 10
    control.configure(campaigns=list(range(125, 100, -1)))  # 25 campaigns, given unsorted
    base = f"{server.url}/campaigns/"
    pages = [get(server, f"/campaigns/?page={number}") for number in (1, 2, 3)]
    assert [page.status_code for page in pages] == [200, 200, 200]
    first, second, third = (page.json() for page in pages)
    assert {first["count"], second["count"], third["count"]} == {25}
    assert (first["previous"], first["next"]) == (None, f"{base}?page=2")
    assert (second["previous"], second["next"]) == (f"{base}?page=1", f"{base}?page=3")
    assert (third["previous"], third["next"]) == (f"{base}?page=2", None)
    ids = [[c["id"] for c in page["results"]] for page in (first, second, third)]
    assert ids == [list(range(101, 111)), list(range(111, 121)), list(range(121, 126))]
    # Following "next" from the first page walks every campaign exactly once.
    seen, url = [], base
    while url:
        page = requests.get(url, headers={"Authorization": f"Token {KEY}"}, timeout=10).json()
        seen += [c["id"] for c in page["results"]]
        url = page["next"]
    assert seen == list(range(101, 126))


@pytest.mark.parametrize("page", ["4", "0", "-1", "two", "1.5", ""])
def test_campaigns_page_out_of_range_is_404(
    server: SandboxServer, control: SandboxControl, page: str
) -> None:
    control.configure(campaigns=list(range(1, 26)))
    response = get(server, f"/campaigns/?page={page}")
    assert response.status_code == 404
    assert response.json() == {"detail": "Invalid page."}
    assert get(server, "/campaigns/?page=3").status_code == 200


def test_campaigns_an_empty_list_has_one_empty_page(server: SandboxServer, control: SandboxControl) -> None:
    control.configure(campaigns=[])
    response = get(server, "/campaigns/?page=1")
    assert response.status_code == 200
    assert response.json() == {"count": 0, "next": None, "previous": None, "results": []}
    assert get(server, "/campaigns/?page=2").status_code == 404


@pytest.mark.parametrize(
    ("auth", "detail"),
    [
        (None, "Authentication credentials were not provided."),
        ("Token wrong-key", "Invalid token."),
        (f"Bearer {KEY}", "Invalid token."),
    ],
)
def test_campaigns_need_the_token(server: SandboxServer, auth: str | None, detail: str) -> None:
    for path in ("/campaigns/?page=1", "/campaigns/?page=99"):  # auth comes before the page check
        response = get(server, path, auth=auth)
        assert response.status_code == 401
        assert response.json() == {"detail": detail}
        assert response.headers["WWW-Authenticate"] == "Token"


def test_campaigns_share_the_failure_gate(server: SandboxServer, control: SandboxControl) -> None:
    control.configure(fail_next=[503], throttle_next=1, retry_after=9)
    assert get(server, "/campaigns/?page=1").status_code == 503
    throttled = get(server, "/campaigns/?page=1")
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "9"
    assert get(server, "/campaigns/?page=1").status_code == 200
    assert (
        requests.post(
            server.url + "/campaigns/", headers={"Authorization": f"Token {KEY}"}, timeout=10
        ).status_code
        == 405
    )


def test_promoter_client_reads_campaign_pages(server: SandboxServer, control: SandboxControl) -> None:
    control.configure(campaigns=list(range(1, 13)))
    client = PromoterClient(server.url, KEY, timeout=5)
    reply = client.campaigns(2)
    assert [c["id"] for c in reply.data["results"]] == [11, 12]
    assert reply.data["previous"] == f"{server.url}/campaigns/?page=1"
    assert reply.data["next"] is None
    assert (reply.call.endpoint, reply.call.status) == ("campaigns", "200")
    assert reply.call.seconds >= 0
    with pytest.raises(AccountError, match=r"404: Invalid page\.") as caught:
        client.campaigns(3)
    assert (caught.value.call.endpoint, caught.value.call.status) == ("campaigns", "404")
    with pytest.raises(AccountError, match=r"401: Invalid token\."):
        PromoterClient(server.url, "not-" + KEY, timeout=5).campaigns(1)


def test_a_sandbox_with_a_state_file_remembers_its_contacts_across_restarts(tmp_path: Path) -> None:
    """The relay remembers the contacts it created across restarts of ``promoter-relay dev``; the
    sandbox must too, or a new contact is given id 1 again."""
    state_file = tmp_path / "sandbox.json"
    contact = {"email": "ada@example.com", "first_name": "Ada", "attributes": {"plan": "pro"}}
    with SandboxServer(SandboxState(api_key=KEY, state_file=state_file)) as first:
        client = PromoterClient(first.url, KEY)
        assert client.upsert_contact(contact).data["id"] == 1
        client.survey({"campaign_id": 1, "contact": {"email": "ada@example.com"}})
    with SandboxServer(
        SandboxState(api_key=KEY, state_file=state_file, survey_cooldown_seconds=3600)
    ) as again:
        client = PromoterClient(again.url, KEY)
        [kept] = SandboxControl(again.url).contacts()
        assert (kept["id"], kept["first_name"], kept["attributes"]) == (1, "Ada", {"plan": "pro"})
        assert client.upsert_contact({"email": "bob@example.com"}).data["id"] == 2, "ids are not reused"
        with pytest.raises(PermanentError, match="not eligible"):
            client.survey({"campaign_id": 1, "contact": {"email": "ada@example.com"}})
        assert SandboxControl(again.url).calls() != [], "the call log is per run"
    assert not state_file.with_suffix(".partial").exists()


def feedback_page(server: SandboxServer, query: str = "") -> requests.Response:
    return get(server, "/feedback/" + query)


def test_a_surveyed_contact_answers_with_a_seeded_score(
    server: SandboxServer, control: SandboxControl
) -> None:
    """Scores come from the seed, apart from the draws that decide injected failures."""
    scores = []
    for _ in range(2):
        control.reset()
        control.configure(seed=5, failure_rate=0.0)
        for n in range(6):
            assert call(server, "/v2/survey/", survey(f"p{n}@example.com")).status_code == 200
        listed = feedback_page(server).json()
        scores.append([(r["contact"]["email"], r["score"]) for r in listed["results"]])
        assert listed["count"] == 6
    assert scores[0] == scores[1]
    [first, *_] = feedback_page(server).json()["results"]
    assert set(first) == {"id", "href", "contact", "score", "score_type", "comment", "posted_date"}
    assert set(first["contact"]) == {"id", "email", "first_name", "last_name"}
    assert first["score_type"] == ("promoter" if first["score"] >= 9 else "passive" if first["score"] >= 7
                                   else "detractor")  # fmt: skip


def test_no_answer_when_feedback_rate_is_zero(server: SandboxServer, control: SandboxControl) -> None:
    control.configure(feedback_rate=0)
    assert call(server, "/v2/survey/", survey()).status_code == 200
    assert feedback_page(server).json() == {"count": 0, "next": None, "previous": None, "results": []}


def test_feedback_is_paginated_newest_first_and_filtered(
    server: SandboxServer, control: SandboxControl
) -> None:
    control.configure(feedback_rate=0, feedback_page_size=2)
    for n in range(3):
        assert call(server, "/v2/survey/", survey(f"p{n}@example.com", campaign=7 + n % 2)).status_code == 200
    days = ["2026-11-28T10:00:00Z", "2026-11-29T10:00:00Z", "2026-11-30T10:00:00Z"]
    for n, day in enumerate(days):
        control.add_feedback(email=f"p{n}@example.com", campaign=7 + n % 2, score=n + 8, posted_date=day)
    page1 = feedback_page(server, "?page=1").json()
    assert page1["count"] == 3
    assert [r["posted_date"] for r in page1["results"]] == days[:0:-1]
    assert page1["next"].endswith("/feedback/?page=2")
    page2 = requests.get(page1["next"], headers={"Authorization": f"Token {KEY}"}, timeout=10).json()
    assert [r["posted_date"] for r in page2["results"]] == days[:1]
    assert page2["next"] is None
    assert page2["previous"].endswith("page=1")
    since = feedback_page(server, "?posted_date_0=2026-11-29").json()
    assert [r["posted_date"] for r in since["results"]] == days[:0:-1]
    until = feedback_page(server, "?posted_date_1=2026-11-29").json()
    assert [r["posted_date"] for r in until["results"]] == days[1::-1]
    by_campaign = feedback_page(server, "?survey__campaign=8&posted_date_0=2026-11-01").json()
    assert [r["contact"]["email"] for r in by_campaign["results"]] == ["p1@example.com"]
    kept = feedback_page(server, "?posted_date_0=2026-11-01&page=1").json()["next"]
    assert "posted_date_0=2026-11-01" in kept
    assert kept.endswith("page=2")


def test_feedback_pages_and_filters_are_checked_like_drf(server: SandboxServer) -> None:
    assert feedback_page(server, "?page=2").status_code == 404
    assert feedback_page(server, "?page=x").json() == {"detail": "Invalid page."}
    bad_date = feedback_page(server, "?posted_date_0=yesterday")
    assert (bad_date.status_code, bad_date.json()) == (400, {"posted_date": ["Enter a valid date/time."]})
    assert feedback_page(server, "?survey__campaign=x").status_code == 400
    assert get(server, "/feedback/", auth=None).status_code == 401


def test_an_edited_response_keeps_its_id_and_date(server: SandboxServer, control: SandboxControl) -> None:
    assert call(server, "/v2/survey/", survey()).status_code == 200
    [before] = feedback_page(server).json()["results"]
    edited = control.edit_feedback(before["id"], comment="Changed my mind", score=3)
    assert (edited["id"], edited["posted_date"]) == (before["id"], before["posted_date"])
    [after] = feedback_page(server).json()["results"]
    assert (after["comment"], after["score"], after["score_type"]) == ("Changed my mind", 3, "detractor")
    missing = requests.patch(f"{server.url}/_sandbox/feedback/999", json={"comment": "x"}, timeout=10)
    assert missing.status_code == 404


def test_promoter_client_reads_feedback_pages(server: SandboxServer, control: SandboxControl) -> None:
    control.configure(feedback_page_size=1)
    for n in range(2):
        assert call(server, "/v2/survey/", survey(f"p{n}@example.com")).status_code == 200
    client = PromoterClient(server.url, KEY)
    first = client.feedback(1, posted_since="2000-01-01", campaign=7)
    assert first.data["count"] == 2
    assert first.data["next"]
    assert client.feedback(2, posted_since="2000-01-01", campaign=7).data["next"] is None
    assert client.feedback(1, posted_since="2000-01-01", campaign=8).data["count"] == 0
    [call_one, *_] = control.calls("/feedback/")
    assert call_one["method"] == "GET"
