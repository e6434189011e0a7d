"""Per-process handles of a worker: the stores and one HTTP session to Promoter.

Created lazily and dropped on fork (``worker_process_init``): a requests session or Redis socket
inherited from the parent process would be shared by two processes without either knowing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.promoter import PromoterClient
from worker.settings import Settings
from worker.stores import Stores, build_stores


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    stores: Stores
    promoter: PromoterClient
    clock: Callable[[], float] = field(default=time.time)
    # Short inline waits (budget, another worker's call); the simulator runs them in virtual time.
    sleep: Callable[[float], None] = field(default=time.sleep)


def build_runtime(settings: Settings) -> Runtime:
    stores = build_stores(settings, timeout=10.0)
    # With a daily limit the budget script counts the day's requests; without one, the client does.
    count = None if settings.promoter_daily_limit else stores.budget.count_request
    return Runtime(
        settings=settings,
        stores=stores,
        promoter=PromoterClient(
            settings.promoter_api_url,
            settings.promoter_api_key,
            timeout=settings.promoter_timeout_seconds,
            on_request=count,
        ),
    )


class RuntimeSlot:
    """The current process's runtime, built on first use from ``settings``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._current: Runtime | None = None

    def get(self) -> Runtime:
        if self._current is None:
            with self._lock:
                if self._current is None:
                    self._current = build_runtime(self.settings)
        return self._current

    def reset(self, replacement: Runtime | None = None) -> None:
        """Forget the handles (after fork), or install ``replacement`` (tests)."""
        with self._lock:
            self._current = replacement
