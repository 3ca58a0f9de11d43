"""Per-address rate limiting: how many new sessions a client may start per minute.

A sliding window (the timestamps of the last ``limit`` events per address) is exact, needs no tuning, and
tells a refused client exactly when it may try again (Retry-After). Memory is ``limit`` floats per address
seen in the last window; :meth:`SlidingWindow.prune` forgets the rest.

The other limits live where their facts are: jobs in flight per address and the global queue capacity are
counted in the job store (:mod:`freestems.service.jobs`), the upload size while streaming
(:mod:`freestems.service.uploads`), the audio duration on the decoded file.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from .errors import too_many_requests


class SlidingWindow:
    """At most ``limit`` events per key in any ``window`` seconds."""

    def __init__(self, limit: int, window: float = 60.0, *, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window = window
        self._clock = clock
        self._events: dict[str, deque[float]] = {}

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may have another event (0: now)."""
        events = self._recent(key)
        if events is None or len(events) < self.limit:
            return 0.0
        return events[0] + self.window - self._clock()

    def hit(self, key: str, what: str = "new sessions") -> None:
        """Record an event for ``key``, or raise 429 (with Retry-After) if it is over the limit."""
        wait = self.retry_after(key)
        if wait > 0:
            raise too_many_requests(
                "rate_limited",
                f"too many {what} from your address ({self.limit} per {self.window:g} s); "
                f"try again in {max(1, round(wait))} s",
                wait,
            )
        self._events.setdefault(key, deque()).append(self._clock())

    def record(self, key: str) -> None:
        """Count an event for ``key`` that has already happened (a refusal): never raises."""
        events = self._events.setdefault(key, deque())
        events.append(self._clock())
        while len(events) > self.limit:  # only the newest ``limit`` decide when the key may go on
            events.popleft()

    def prune(self) -> None:
        """Forget addresses with no event in the window."""
        for key in list(self._events):
            self._recent(key)

    def _recent(self, key: str) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        horizon = self._clock() - self.window
        while events and events[0] <= horizon:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def __len__(self) -> int:
        return len(self._events)
