"""Pacing the simulator to the server's per-address limits on Enroll and GetChallenge.

The server lets one address make ``enroll_rate_per_minute`` Enroll calls, and as
many GetChallenge calls, in any 60 s, and answers the next one ``429`` with a
Retry-After (docs/protocol.md). A simulator enrolling thousands of devices from
one address meets that limit. A :class:`Pacer` is shared by every worker process
(it lives in shared memory): until the server first answers 429, requests go as
fast as they come; at that 429 every worker waits out its Retry-After, and from
then on requests start evenly spaced at the limit the server showed, that is
the requests it accepted in the 60 s before the 429. Paced requests are not
errors: the summary counts them, and the 429s, apart from real failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from multiprocessing.context import BaseContext
from typing import Any

# The server counts its limits over any 60 s (docs/protocol.md, "Limits").
WINDOW = 60.0
# Start a little under the limit, so a request never arrives a hair before its slot frees.
MARGIN = 0.98
_BUCKETS = 64  # one per second, covering the window
_NEXT, _SPACING, _GATE, _LIMIT, _LIMIT_AT, _THROTTLED, _PACED, _ACCEPTED, _FIELDS = range(9)


class Pacer:
    """Start slots for one kind of limited request, shared by the processes forked after it is made."""

    def __init__(self, what: str, ctx: BaseContext | None = None) -> None:
        self.what = what
        ctx = ctx or multiprocessing.get_context("fork")
        # [fields…, the second of each of _BUCKETS buckets, then their counts]
        self._shared: Any = ctx.Array("d", _FIELDS + 2 * _BUCKETS)

    def take_slot(self) -> float:
        """Seconds to wait before this request may start."""
        with self._shared.get_lock():
            a = self._shared.get_obj()
            now = time.monotonic()
            start = max(now, a[_NEXT], a[_GATE])
            a[_NEXT] = start + a[_SPACING]
            if start > now:
                a[_PACED] += 1
            return start - now

    async def wait(self, stop: asyncio.Event) -> bool:
        """Wait for this request's slot; False when stopped meanwhile."""
        delay = self.take_slot()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        return not stop.is_set()

    def accepted(self, sent: float) -> None:
        """The server counted a request of ours sent at ``sent`` (it answered anything but 429)."""
        with self._shared.get_lock():
            a = self._shared.get_obj()
            second = int(sent)
            i = _FIELDS + second % _BUCKETS
            if a[i] != second:
                a[i], a[i + _BUCKETS] = second, 0
            a[i + _BUCKETS] += 1
            a[_ACCEPTED] += 1
            if a[_LIMIT] and a[_LIMIT_AT] - WINDOW < sent <= a[_LIMIT_AT]:
                # Sent before the 429 that showed the limit, answered after it: it counts toward that limit.
                self._set_limit(a, a[_LIMIT] + 1)

    def throttled(self, retry_after: float | None) -> None:
        """The server answered 429: everyone waits for its Retry-After, then goes at the limit it showed."""
        with self._shared.get_lock():
            a = self._shared.get_obj()
            now = time.monotonic()
            a[_THROTTLED] += 1
            a[_GATE] = max(a[_GATE], now + (retry_after if retry_after is not None else 5.0))
            seen = sum(a[_FIELDS + _BUCKETS + i] for i in range(_BUCKETS)
                       if a[_FIELDS + i] > now - WINDOW and a[_FIELDS + _BUCKETS + i])
            # The first 429 shows the limit; a later one (another client at this address, a lowered limit)
            # can only lower it.
            limit = seen if not a[_LIMIT] else min(a[_LIMIT], max(seen, 1))
            if limit >= 1:
                a[_LIMIT_AT] = now
                self._set_limit(a, limit)

    @staticmethod
    def _set_limit(a: Any, limit: float) -> None:
        a[_LIMIT] = limit
        a[_SPACING] = WINDOW / (limit * MARGIN)

    def snapshot(self) -> dict[str, Any]:
        with self._shared.get_lock():
            a = self._shared.get_obj()
            return {"limit_per_minute": int(a[_LIMIT]) or None, "throttled": int(a[_THROTTLED]),
                    "paced": int(a[_PACED]), "accepted": int(a[_ACCEPTED]),
                    "waiting_seconds": round(max(0.0, a[_GATE] - time.monotonic()), 1)}


__all__ = ["Pacer"]
