"""In-memory rate limits per client address (login, enrollment)."""

from __future__ import annotations

import time
from collections import OrderedDict, deque

from .errors import ResourceExhausted


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key (a sliding window)."""

    def __init__(self, limit: int, window: float, what: str, max_keys: int = 100_000) -> None:
        self.limit, self.window, self.what, self.max_keys = limit, window, what, max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def hit(self, key: str, now: float | None = None) -> None:
        """Count one event for ``key``; raise ResourceExhausted when over the limit."""
        t = time.monotonic() if now is None else now
        q = self._events.get(key)
        if q is None:
            q = self._events[key] = deque()
            if len(self._events) > self.max_keys:
                self._events.popitem(last=False)
        else:
            self._events.move_to_end(key)
        while q and q[0] <= t - self.window:
            q.popleft()
        if len(q) >= self.limit:
            retry = q[0] + self.window - t
            raise ResourceExhausted(
                f"too many {self.what} attempts from this address; try again in {max(1, round(retry))} s",
                retry_after=retry,
            )
        q.append(t)
