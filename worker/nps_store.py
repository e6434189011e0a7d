"""What the relay remembers of the NPS responses it sent to Segment, all of it bounded.

- per feedback id, the fingerprint last sent (with its category and day), so a re-poll sends nothing and
  an edit is sent once more; it expires after ``SEEN_TTL`` (far longer than the poll's overlap window);
- per respondent, the posted date of the newest response sent, so an older response met later (on a
  later page) does not overwrite the person's NPS traits with older ones;
- per day, the count of promoters, passives and detractors, for the dashboard's chart: one small hash a
  day, expiring ``DAYS_KEPT`` days after that day;
- the last ``LATEST_KEPT`` responses, emails masked, comments cut short, for the dashboard's list.

A page's records are written in one MULTI only after Segment took the whole page: what was not
delivered is not remembered as sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import redis

from worker import keys
from worker.nps import CATEGORIES, Response, mask_email, nps, posted_moment

DAY = 86400
SEEN_TTL = 30 * DAY
DAYS_KEPT = 400
LATEST_KEPT = 200
LATEST_TTL = DAYS_KEPT * DAY
SHOWN_COMMENT = 200
_SEP = "|"


@dataclass(frozen=True)
class Seen:
    fingerprint: str
    category: str
    day: str

    def encode(self) -> str:
        return _SEP.join((self.fingerprint, self.category, self.day))

    @classmethod
    def decode(cls, raw: str | None) -> Seen | None:
        parts = (raw or "").split(_SEP)
        return cls(*parts) if len(parts) == 3 else None


@dataclass(frozen=True)
class Pending:
    """A response whose content Segment has not had yet; ``before`` is what it had (an edit)."""

    response: Response
    before: Seen | None
    respondent: str
    newest: bool


@dataclass(frozen=True)
class Sent:
    pending: Pending
    user_id: str | None


def day_key(day: str) -> str:
    return keys.NPS_DAY + day


def respondent_key(respondent: str) -> str:
    return keys.feedback_seen("newest:" + respondent)


class NpsStore:
    def __init__(self, client: redis.Redis, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.clock = clock

    def unsent(self, responses: Sequence[Response]) -> list[Pending]:
        """The responses whose current content was never sent, oldest first (so the last identify a
        person gets is their newest answer); ``newest`` says whether the identify should go too."""
        ordered = sorted(responses, key=lambda r: (r.posted, len(r.feedback_id), r.feedback_id))
        respondents = [_respondent(r) for r in ordered]
        pipe = self.client.pipeline(transaction=False)
        for response, respondent in zip(ordered, respondents, strict=True):
            pipe.get(keys.feedback_seen(response.feedback_id))
            pipe.get(respondent_key(respondent))
        answers = pipe.execute()
        pending = []
        newest_of: dict[str, datetime] = {}
        for index, (response, respondent) in enumerate(zip(ordered, respondents, strict=True)):
            seen, newest = Seen.decode(answers[2 * index]), answers[2 * index + 1]
            if seen is not None and seen.fingerprint == response.fingerprint:
                continue
            known = newest_of.get(respondent) or (_moment(newest) if newest else None)
            is_newest = known is None or response.posted >= known
            if is_newest:
                newest_of[respondent] = response.posted
            pending.append(Pending(response, seen, respondent, is_newest))
        return pending

    def record(self, sent: Sequence[Sent]) -> None:
        if not sent:
            return
        oldest_kept = (datetime.fromtimestamp(self.clock(), UTC) - timedelta(days=DAYS_KEPT)).date()
        pipe = self.client.pipeline(transaction=True)
        for item in sent:
            response, before = item.pending.response, item.pending.before
            now = Seen(response.fingerprint, response.category, response.day)
            pipe.set(keys.feedback_seen(response.feedback_id), now.encode(), ex=SEEN_TTL)
            if item.pending.newest:
                pipe.set(respondent_key(item.pending.respondent), response.posted.isoformat(), ex=SEEN_TTL)
            if before is not None and _kept(before.day, oldest_kept):
                pipe.hincrby(day_key(before.day), before.category, -1)
                pipe.expireat(day_key(before.day), _day_start(before.day) + DAYS_KEPT * DAY)
            if _kept(now.day, oldest_kept):
                pipe.hincrby(day_key(now.day), now.category, 1)
                pipe.expireat(day_key(now.day), _day_start(now.day) + DAYS_KEPT * DAY)
            pipe.lpush(keys.NPS_LATEST, json.dumps(_shown(item, self.clock())))
        pipe.ltrim(keys.NPS_LATEST, 0, LATEST_KEPT - 1)
        pipe.expire(keys.NPS_LATEST, LATEST_TTL)
        pipe.execute()

    def summary(self, days: int, by: str, latest: int = 20) -> dict[str, Any]:
        """NPS per day or per week (weeks from Monday) over the last ``days`` days, and the latest answers."""
        today = datetime.fromtimestamp(self.clock(), UTC).date()
        first = today - timedelta(days=days - 1)
        if by == "week":
            first -= timedelta(days=first.weekday())
        span = [first + timedelta(days=n) for n in range((today - first).days + 1)]
        pipe = self.client.pipeline(transaction=False)
        for day in span:
            pipe.hgetall(day_key(day.isoformat()))
        counts = cast(list[dict[str, str]], pipe.execute())
        periods: dict[str, dict[str, int]] = {}
        for day, found in zip(span, counts, strict=True):
            label = (day - timedelta(days=day.weekday()) if by == "week" else day).isoformat()
            bucket = periods.setdefault(label, dict.fromkeys(CATEGORIES, 0))
            for name in CATEGORIES:
                bucket[name] += max(0, int(found.get(name) or 0))
        series = [_period(label, bucket) for label, bucket in periods.items()]
        totals = {name: sum(p[name + "s"] for p in series) for name in CATEGORIES}
        return {
            "by": by,
            "days": days,
            "series": series,
            "totals": _period("total", totals),
            "latest": self.latest(latest),
        }

    def latest(self, limit: int) -> list[dict[str, Any]]:
        """The most recently posted answers among the last sent, each feedback once (its latest content)."""
        shown: dict[str, dict[str, Any]] = {}
        for raw in cast(list[str], self.client.lrange(keys.NPS_LATEST, 0, LATEST_KEPT - 1)):
            item = json.loads(raw)
            shown.setdefault(str(item.get("feedback_id")), item)
        ordered = sorted(shown.values(), key=_posted_order, reverse=True)
        return ordered[:limit]


def _period(label: str, counts: dict[str, int]) -> dict[str, Any]:
    responses = sum(counts.values())
    return {
        "period": label,
        "responses": responses,
        "promoters": counts["promoter"],
        "passives": counts["passive"],
        "detractors": counts["detractor"],
        "nps": nps(counts["promoter"], counts["detractor"], responses),
    }


def _shown(item: Sent, now: float) -> dict[str, Any]:
    response = item.pending.response
    return {
        "feedback_id": response.feedback_id,
        "score": response.score,
        "category": response.category,
        "comment": response.comment[:SHOWN_COMMENT],
        "posted_date": response.posted_date,
        "campaign_id": response.campaign_id,
        "email": mask_email(response.email),
        "user": item.user_id,
        "edited": item.pending.before is not None,
        "sent_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def _posted_order(item: dict[str, Any]) -> tuple[datetime, int, str]:
    feedback_id = str(item.get("feedback_id"))
    try:
        posted = posted_moment(str(item.get("posted_date")))
    except ValueError:
        posted = datetime.min.replace(tzinfo=UTC)
    return posted, len(feedback_id), feedback_id


def _respondent(response: Response) -> str:
    """Who answered, as a key part: Promoter's contact id, else a digest of the email (never the email)."""
    if response.contact_id:
        return "c" + response.contact_id
    if response.email:
        return "e" + keys.email_digest(response.email)
    return "f" + response.feedback_id


def _moment(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _kept(day: str, oldest: date) -> bool:
    return date.fromisoformat(day) > oldest


def _day_start(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())
