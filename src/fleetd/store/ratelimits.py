"""Rate limits counted in the database, for replicas on one PostgreSQL database (issue 18).

An address that sends its login attempts to several replicas meets one limit: each hit upserts the row of its
scope, key and slot (the window's length of time it falls in) in ``rate_limits``; the limit weighs the previous
slot's hits by how much of it the sliding window still covers (``previous * (1 - elapsed / window) + current``),
which, unlike fixed windows, lets no burst of twice the limit through at a slot's edge. A refused hit is not
counted: the write that counted it rolls back. The row's lock serializes concurrent hits on one key across
replicas, so none is lost. Each limiter deletes its scope's rows older than the previous slot when its slots roll
over (once a window per replica). Times are the replica's clock (replicas are expected to run NTP: a skew of a
second moves a slot's edge by a second).

A single server (SQLite) keeps the in-memory :class:`fleetd.core.ratelimit.RateLimiter`: :func:`limiter_for`.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable

from ..core.ratelimit import Limiter, RateLimiter, exhausted
from .database import Store


class SharedRateLimiter:
    """At most ``limit`` events per ``window`` seconds per key, counted in the ``rate_limits`` table."""

    def __init__(self, store: Store, limit: int, window: float, what: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.limit, self.window, self.what, self.clock = store, limit, window, what, clock
        self._cleaned_slot = -1

    async def hit(self, key: str) -> None:
        t = self.clock()
        slot = math.floor(t / self.window)
        clean = slot != self._cleaned_slot

        def count(conn: sqlite3.Connection) -> None:
            if clean:
                conn.execute("DELETE FROM rate_limits WHERE scope = ? AND slot < ?", (self.what, slot - 1))
            row = conn.execute("SELECT hits FROM rate_limits WHERE scope = ? AND key = ? AND slot = ?",
                               (self.what, key, slot - 1)).fetchone()
            previous = row[0] if row else 0
            hits = conn.execute(
                "INSERT INTO rate_limits (scope, key, slot, hits) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (scope, key, slot) DO UPDATE SET hits = rate_limits.hits + 1 RETURNING hits",
                (self.what, key, slot)).fetchone()[0]
            elapsed = t / self.window - slot  # of the current slot, 0..1
            if previous * (1 - elapsed) + hits > self.limit:
                raise exhausted(self.what, self._retry(previous, hits - 1, elapsed))

        await self.store.write(count)
        self._cleaned_slot = slot

    def _retry(self, previous: int, current: int, elapsed: float) -> float:
        """Seconds until one more hit fits, with ``previous`` and ``current`` hits counted (``elapsed`` of the
        current slot gone)."""
        room = self.limit - current - 1  # what the previous slot's weight must drop to
        if previous and room >= 0:
            return max(0.0, (1 - room / previous) - elapsed) * self.window
        # The current slot alone is full: wait for the next, in which it is the (shrinking) previous one.
        after = 1 - (self.limit - 1) / current if current else 0.0
        return (1 - elapsed + max(0.0, after)) * self.window


def limiter_for(store: Store, limit: int, window: float, what: str) -> Limiter:
    """The limiter for a store: in memory on SQLite (one process), in the database on PostgreSQL (replicas)."""
    if store.dsn is None:
        return RateLimiter(limit, window, what)
    return SharedRateLimiter(store, limit, window, what)
