"""Device presence: publishes ``device.online`` and ``device.offline`` when a device starts or stops keeping its
check-in interval.

The check-in hot path does nothing for this: a sweep every few seconds compares
what the hub knows (last check-in, poll interval, status) with the devices it
saw online last time (a flag per device in the hub's directory, so one Presence
sweeps a hub). It walks the directory in slices, yielding to the event
loop between them, so a fleet of 100,000 devices never stalls requests for more
than a few milliseconds. The first sweep only learns the state; events are for
changes.

On PostgreSQL replicas (``shared``) a device checks in on any replica, and only the lease holder's presence runs:
before each sweep it reads the last contacts the replicas' hubs stored since the last one (a device's is stored at
most every ``hub.persist_seen_after`` seconds, at the next flush: no write per check-in) and takes the newer ones;
a device is offline only when its stored contact is older than its window plus that lag, so offline comes up to
about a minute later than on SQLite, online within a sweep of its stored contact. Its events go through a write
(``Publish`` effects), so every replica's event stream has them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Callable

import msgspec

from ..core.clock import to_dt
from ..core.effects import Publish
from ..core.events import EventBus
from ..core.lifecycle import Scope
from ..core.tasks import cancel_and_wait
from ..store.database import effect
from . import storage
from .hub import FLUSH_INTERVAL, DeviceHub
from .registry import ONLINE_SLACK

log = logging.getLogger(__name__)

# Devices looked at between two yields to the event loop (about a millisecond's work).
SLICE = 2_000
# Shared presence reads the contacts stored since its last read minus this (a flush that committed late, clocks of
# replicas a little apart).
LOOKBACK = 15.0


class Presence:
    name = "presence"
    scope: Scope = "fleet"  # docs/architecture.md, "Background parts"

    def __init__(self, hub: DeviceHub, events: EventBus, *, every: float = 3.0,
                 clock: Callable[[], float] = time.time, shared: bool = False) -> None:
        self.hub = hub
        self.events = events
        self.every = every
        self.clock = clock
        self.shared = shared
        self.slack = ONLINE_SLACK + (hub.persist_seen_after + FLUSH_INTERVAL + every if shared else 0)
        self._since = 0.0  # shared: where the next read of stored contacts starts
        # The first sweep only learns who is online (the directory keeps the flags: directory.Directory.sweep).
        self.learning = True
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> tuple[list[str], list[str]]:
        """Compare, publish the changes. → (came online, went offline)."""
        now = self.clock()
        if self.shared:
            since = self._since
            self.hub.seen_elsewhere(await self.hub.store.read(lambda c: storage.seen_since(c, since)))
            self._since = now - LOOKBACK
        directory = self.hub.runtime
        came: list[str] = []
        went: list[str] = []
        start: int | None = 0
        while start is not None:
            if start:
                await asyncio.sleep(0)
            c, w, start = directory.sweep(start, SLICE, now, self.slack)
            came += c
            went += w
        went += directory.take_departed()
        if self.learning:
            self.learning = False
            return [], []
        came.sort()
        went.sort()
        events = [("device.online", self._data(did)) for did in came]
        events += [("device.offline", self._data(did)) for did in went]
        if self.shared and events:
            await self.hub.store.write(functools.partial(_publish, events=events))  # every replica's stream
        else:
            for t, d in events:
                self.events.publish(t, d)
        return came, went

    def _data(self, device_id: str) -> dict[str, object]:
        seen = self.hub.last_seen(device_id)
        rt = self.hub.runtime.get(device_id)
        when = to_dt(seen)
        return {"device_id": device_id, "status": rt.status if rt else "deleted",
                "last_seen": msgspec.to_builtins(when)}

    async def _loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("presence sweep failed")
            await asyncio.sleep(self.every)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="fleetd-presence")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None


def _publish(conn: sqlite3.Connection, events: list[tuple[str, dict[str, object]]]) -> None:
    """A write of nothing but ``Publish`` effects: on PostgreSQL the change feed takes them to every replica."""
    for type_, data in events:
        effect(conn, Publish(type_, data))
