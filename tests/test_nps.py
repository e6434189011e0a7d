"""What one Promoter response becomes in Segment, and the settings that turn the loop on: pure logic."""

from __future__ import annotations

from typing import Any

import pytest

from worker import keys, nps
from worker.settings import SettingsError, load

RESULT = {
    "id": 5200,
    "href": "https://app.promoter.io/api/feedback/5200/",
    "contact": {"first_name": "Hank", "last_name": "Zakroff", "id": 101, "email": "hank.zakroff@email.com"},
    "score": 2,
    "score_type": "detractor",
    "comment": "Website doesn't work. Pricing is expensive.",
    "posted_date": "2014-10-10T8:20:00Z",
}


CATEGORIES = [
    (0, "detractor"),
    (6, "detractor"),
    (7, "passive"),
    (8, "passive"),
    (9, "promoter"),
    (10, "promoter"),
]


@pytest.mark.parametrize(("score", "category"), CATEGORIES)
def test_categories_follow_nps(score: int, category: str) -> None:
    assert nps.category(score) == category


def test_nps_is_promoters_minus_detractors_in_percent() -> None:
    assert nps.nps(2, 1, 3) == 33.3
    assert nps.nps(0, 4, 4) == -100.0
    assert nps.nps(0, 0, 0) is None


def test_a_promoter_example_result_becomes_a_track_and_an_identify() -> None:
    response = nps.parse(RESULT, 7)
    assert response is not None
    assert (response.feedback_id, response.contact_id, response.day) == ("5200", "101", "2014-10-10")
    track = nps.track(response, "u1", "NPS Survey Responded")
    assert track.kind == "track"
    assert track.fields["user_id"] == "u1"
    assert track.fields["properties"] == {
        "score": 2, "category": "detractor", "comment": RESULT["comment"], "campaign_id": 7,
        "feedback_id": "5200", "posted_date": "2014-10-10T8:20:00Z",
    }  # fmt: skip
    identify = nps.identify(response, None)
    assert identify.fields["anonymous_id"] == "promoter-contact-101"
    assert identify.fields["traits"]["email"] == "hank.zakroff@email.com"
    assert "email" not in nps.identify(response, "u1").fields["traits"]
    assert track.fields["message_id"].endswith("-track")
    assert identify.fields["message_id"].endswith("-identify")


def test_the_message_id_changes_with_the_content_only() -> None:
    parsed = [
        nps.parse(r, 7)
        for r in (RESULT, dict(RESULT), {**RESULT, "comment": "Fixed"}, {**RESULT, "score": 9})
    ]
    first, again, edited, rescored = (r for r in parsed if r is not None)
    assert nps.message_id(first, "track") == nps.message_id(again, "track")
    assert len({nps.message_id(r, "track") for r in (first, edited, rescored)}) == 3


@pytest.mark.parametrize(
    "broken",
    [{"score": None}, {"score": 11}, {"score": True}, {"id": None}, {"posted_date": "yesterday"},
     {"posted_date": None}],
)  # fmt: skip
def test_entries_without_what_an_event_needs_are_refused(broken: dict[str, Any]) -> None:
    assert nps.parse({**RESULT, **broken}, 7) is None
    assert nps.parse("not a dict", 7) is None


def test_a_long_comment_is_cut_to_stay_under_segments_32_kb() -> None:
    response = nps.parse({**RESULT, "comment": "é" * 20_000}, 7)
    assert response is not None
    assert len(response.comment) == nps.MAX_COMMENT


def test_emails_are_masked_for_the_dashboard() -> None:
    assert nps.mask_email("ada@example.com") == "a***@example.com"
    assert nps.mask_email("") == ""
    assert nps.mask_email("no-at-sign") == "***"


def test_the_email_digest_lowercases_ascii_like_lua() -> None:
    assert keys.email_digest("Ada@Example.COM") == keys.email_digest("ada@example.com")
    assert keys.email_digest("Émile@example.com") != keys.email_digest("émile@example.com")
    assert len(keys.email_digest("x@example.com")) == 16


def test_feedback_settings_default_off_and_parse_strictly() -> None:
    settings = load({})
    assert (settings.feedback_segment_write_key, settings.feedback_poll_seconds) == ("", 300)
    assert settings.feedback_event == "NPS Survey Responded"
    assert settings.feedback_segment_host == "https://api.segment.io"
    on = load({"FEEDBACK_SEGMENT_WRITE_KEY": "wk-secret-123", "FEEDBACK_SEGMENT_HOST": "http://127.0.0.1:9/",
               "FEEDBACK_POLL_SECONDS": "60", "FEEDBACK_EVENT": "NPS Answered"})  # fmt: skip
    assert on.feedback_segment_host == "http://127.0.0.1:9"
    assert (on.feedback_poll_seconds, on.feedback_event) == (60, "NPS Answered")
    assert "wk-secret-123" not in repr(on)
    for name, value in (("FEEDBACK_POLL_SECONDS", "0"), ("FEEDBACK_SEGMENT_HOST", "ftp://x"),
                        ("FEEDBACK_SEGMENT_WRITE_KEY", "has space")):  # fmt: skip
        with pytest.raises(SettingsError, match=name):
            load({name: value})
    with pytest.raises(SettingsError) as refused:
        load({"FEEDBACK_SEGMENT_WRITE_KEY": "wk secret"})
    assert "wk secret" not in str(refused.value), "a write key is never echoed"
