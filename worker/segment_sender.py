"""Handing messages to Segment with its official client, and knowing whether they all got there.

The client batches, gzips and retries in a thread of its own and reports failures only through
``on_error``. The feedback poll advances its cursor past a page only once every message of the page
was uploaded, so ``send`` enqueues them, waits for the queue to drain (``flush``), and raises when any
batch failed. The client's retry budgets are cut from hours to about a minute: a Segment outage then
fails the poll (which tries again later, from the same page) instead of holding a worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from segment.analytics import Client

from worker.feedback import SendFailed
from worker.nps import Message

log = logging.getLogger(__name__)

# 500 KB and 2,500 messages per batch are Segment's limits; the client stays under both.
UPLOAD_SIZE = 100
TIMEOUT = 10
MAX_RETRIES = 3
MAX_BACKOFF_SECONDS = 30
MAX_RATE_LIMIT_SECONDS = 60


class SegmentSender:
    def __init__(self, write_key: str, host: str) -> None:
        self.host = host
        self._lock = threading.Lock()
        self._errors: list[str] = []
        self._client = Client(
            write_key=write_key,
            host=host,
            gzip=True,
            timeout=TIMEOUT,
            max_retries=MAX_RETRIES,
            upload_size=UPLOAD_SIZE,
            on_error=self._failed,
            max_total_backoff_duration=MAX_BACKOFF_SECONDS,
            max_rate_limit_duration=MAX_RATE_LIMIT_SECONDS,
        )

    def __repr__(self) -> str:
        return f"SegmentSender(host={self.host!r})"

    def _failed(self, error: Exception, batch: Sequence[Any]) -> None:
        self._errors.append(f"{len(batch)} message(s): {type(error).__name__}: {str(error)[:200]}")

    def send(self, messages: Sequence[Message]) -> int:
        """Upload ``messages``; returns how many were too large to send at all (skipped, not retried)."""
        with self._lock:
            self._errors.clear()
            too_large = 0
            for message in messages:
                call = self._client.track if message.kind == "track" else self._client.identify
                try:
                    queued, _ = call(**message.fields)
                except RuntimeError:  # larger than Segment's 32 KB: no retry can help
                    too_large += 1
                    continue
                if not queued:
                    self._errors.append("the Segment client's queue is full")
            self._client.flush()
            if self._errors:
                raise SendFailed("; ".join(self._errors[:3]))
            return too_large

    def close(self) -> None:
        self._client.shutdown()
