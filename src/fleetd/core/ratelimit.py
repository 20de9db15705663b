"""Rate limits per client address (login, enrollment, device authentication).

:class:`RateLimiter` counts in this process's memory: what a single server (SQLite) uses. Replicas on one
PostgreSQL database count in it instead (store/ratelimits.py, chosen when the Fleet is made), so that an address
that spreads its attempts over the replicas meets the same limit. Both have the :class:`Limiter` interface.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import Protocol

from .errors import ResourceExhausted


class Limiter(Protocol):
    limit: int

    async def hit(self, key: str) -> None:
        """Count one event for ``key``; raise ResourceExhausted when over the limit."""


def exhausted(what: str, retry: float) -> ResourceExhausted:
    return ResourceExhausted(
        f"too many {what} attempts from this address; try again in {max(1, round(retry))} s", retry_after=retry)


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key (a sliding window), in memory."""

    def __init__(self, limit: int, window: float, what: str, max_keys: int = 100_000) -> None:
        self.limit, self.window, self.what, self.max_keys = limit, window, what, max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    async def hit(self, key: str) -> None:
        self.hit_at(key, time.monotonic())

    def hit_at(self, key: str, t: float) -> None:
        """:meth:`hit` at the monotonic time ``t``."""
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
            raise exhausted(self.what, q[0] + self.window - t)
        q.append(t)
