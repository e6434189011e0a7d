"""What one Promoter NPS response becomes in Segment: pure functions, no I/O.

Promoter's ``GET /feedback/`` lists responses (``{"id", "contact": {"id", "email", ...}, "score",
"comment", "posted_date", ...}``); the relay sends each new or changed one to Segment as a ``track`` and an
``identify``. Their messageIds are derived from the response's id and its content, so a resend of the
same content is a duplicate Segment drops, and an edited comment or score is a new event.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

CATEGORIES = ("promoter", "passive", "detractor")
# A Segment message may be 32 KB; four bytes a character at worst leaves room for the rest.
MAX_COMMENT = 4000
ANONYMOUS_PREFIX = "promoter-contact-"


@dataclass(frozen=True)
class Response:
    feedback_id: str
    contact_id: str
    email: str
    score: int
    comment: str
    posted_date: str
    campaign_id: int | None

    @property
    def category(self) -> str:
        return category(self.score)

    @property
    def fingerprint(self) -> str:
        """Changes when what the respondent said changes (score, comment) or Promoter re-dates it."""
        content = json.dumps(
            [self.feedback_id, self.score, self.comment, self.posted_date], ensure_ascii=False
        )
        return hashlib.sha256(content.encode()).hexdigest()[:16]

    @property
    def posted(self) -> datetime:
        return posted_moment(self.posted_date)

    @property
    def day(self) -> str:
        return self.posted.strftime("%Y-%m-%d")

    @property
    def anonymous_id(self) -> str:
        """Stable for one Promoter contact, so every answer of a stranger lands on one Segment profile."""
        return ANONYMOUS_PREFIX + (self.contact_id or f"feedback-{self.feedback_id}")


def category(score: int) -> str:
    """NPS's three groups: 9-10 promoters, 7-8 passives, 0-6 detractors."""
    return "promoter" if score >= 9 else "passive" if score >= 7 else "detractor"


def nps(promoters: int, detractors: int, responses: int) -> float | None:
    """% promoters - % detractors, from -100 to 100; None without responses."""
    if responses <= 0:
        return None
    return round(100.0 * (promoters - detractors) / responses, 1)


_ONE_DIGIT_HOUR = re.compile(r"([T ])(\d):")


def posted_moment(text: str) -> datetime:
    """Promoter's ``posted_date`` as an aware datetime (UTC when it names no zone). Lenient: public
    examples of its API show ``2014-10-10T8:20:00Z``, which ``fromisoformat`` refuses."""
    moment = datetime.fromisoformat(_ONE_DIGIT_HOUR.sub(r"\g<1>0\g<2>:", text.strip()).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse(result: Any, campaign_id: int | None) -> Response | None:
    """One entry of ``results``; None when it lacks what a Segment event needs (an id, a score 0-10,
    a readable posted date)."""
    if not isinstance(result, Mapping):
        return None
    score, feedback_id, posted = result.get("score"), result.get("id"), result.get("posted_date")
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 10:
        return None
    if feedback_id is None or str(feedback_id) == "" or not isinstance(posted, str):
        return None
    try:
        posted_moment(posted)
    except (ValueError, OverflowError):
        return None
    contact = result.get("contact")
    email, contact_id = (
        (contact.get("email"), contact.get("id")) if isinstance(contact, Mapping) else (None, None)
    )
    comment = result.get("comment")
    return Response(
        feedback_id=str(feedback_id),
        contact_id="" if contact_id is None else str(contact_id),
        email=email.strip() if isinstance(email, str) else "",
        score=score,
        comment=(comment if isinstance(comment, str) else "")[:MAX_COMMENT],
        posted_date=posted,
        campaign_id=campaign_id,
    )


@dataclass(frozen=True)
class Message:
    """The arguments of one call of the Segment client: ``kind`` is ``track`` or ``identify``."""

    kind: str
    fields: dict[str, Any]


def message_id(response: Response, kind: str) -> str:
    return f"promoter-feedback-{response.feedback_id}-{response.fingerprint}-{kind}"


def identity(response: Response, user_id: str | None) -> dict[str, Any]:
    if user_id:
        return {"user_id": user_id}
    return {"anonymous_id": response.anonymous_id}


def track(response: Response, user_id: str | None, event: str) -> Message:
    return Message(
        "track",
        {
            **identity(response, user_id),
            "event": event,
            "properties": {
                "score": response.score,
                "category": response.category,
                "comment": response.comment,
                "campaign_id": response.campaign_id,
                "feedback_id": response.feedback_id,
                "posted_date": response.posted_date,
            },
            "timestamp": response.posted,
            "message_id": message_id(response, "track"),
            "context": {"integration": {"name": "promoter-relay"}},
        },
    )


def identify(response: Response, user_id: str | None) -> Message:
    """The person's latest NPS traits; a stranger's email goes with them, so Segment can match it."""
    traits: dict[str, Any] = {
        "nps_score": response.score,
        "nps_category": response.category,
        "nps_responded_at": response.posted_date,
    }
    if not user_id and response.email:
        traits["email"] = response.email
    return Message(
        "identify",
        {
            **identity(response, user_id),
            "traits": traits,
            "timestamp": response.posted,
            "message_id": message_id(response, "identify"),
            "context": {"integration": {"name": "promoter-relay"}},
        },
    )


def mask_email(email: str) -> str:
    """``a***@example.com``: enough for an operator to tell responses apart, not to read the address."""
    local, at, domain = email.partition("@")
    if not at:
        return "***" if email else ""
    return f"{local[:1]}***@{domain}"
