"""The event bus: what happens in the fleet, for the UI and scripts (served as SSE at /v1/events).

A write publishes by recording an ``effects.Publish`` in its transaction; the
store hands it to :meth:`EventBus.deliver` once the write has committed.
In-memory sources (presence) call ``publish`` directly. Publishing never blocks
and never fails the caller. Each subscriber has a
bounded queue: a subscriber that falls behind loses the oldest events and is
told so with a ``dropped`` event, rather than slowing anyone down.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from .effects import Publish

QUEUE_SIZE = 1000


@dataclass(frozen=True)
class Event:
    id: int
    type: str  # e.g. device.online, action.state, rollout.state, alert.fired
    data: dict[str, Any]
    ts: float = field(default_factory=time.time)


class EventBus:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._subscribers: set[asyncio.Queue[Event]] = set()

    def publish(self, type: str, data: dict[str, Any]) -> None:
        """Send an event to every subscriber; safe to call from the event loop only."""
        event = Event(next(self._ids), type, data)
        for q in list(self._subscribers):
            if q.full():
                q.get_nowait()
                q.put_nowait(Event(0, "dropped", {"reason": "subscriber too slow"}))
                continue
            q.put_nowait(event)

    def gap(self, why: str) -> None:
        """Tell every subscriber that events may be missing (a ``dropped`` event), e.g. other replicas' events
        while the change feed had no connection (store/changes.py)."""
        for q in list(self._subscribers):
            if q.full():
                q.get_nowait()
            q.put_nowait(Event(0, "dropped", {"reason": why}))

    def deliver(self, e: Publish) -> None:
        """The handler of committed ``Publish`` effects."""
        self.publish(e.type, e.data)

    async def subscribe(self) -> AsyncIterator[Event]:
        q: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._subscribers.discard(q)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
