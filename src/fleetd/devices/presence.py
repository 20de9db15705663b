"""Device presence: publishes ``device.online`` and ``device.offline`` when a device starts or stops keeping its
check-in interval.

The check-in hot path does nothing for this: a sweep every few seconds compares
what the hub knows (last check-in, poll interval, status) with the devices it
saw online last time (a flag per device in the hub's directory, so one Presence
sweeps a hub). It walks the directory in slices, yielding to the event
loop between them, so a fleet of 100,000 devices never stalls requests for more
than a few milliseconds. The first sweep only learns the state; events are for
changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec

from ..core.clock import to_dt
from ..core.events import EventBus
from ..core.lifecycle import Scope
from ..core.tasks import cancel_and_wait
from .hub import DeviceHub
from .registry import ONLINE_SLACK

log = logging.getLogger(__name__)

# Devices looked at between two yields to the event loop (about a millisecond's work).
SLICE = 2_000


class Presence:
    name = "presence"
    scope: Scope = "fleet"  # docs/architecture.md, "Background parts"

    def __init__(self, hub: DeviceHub, events: EventBus, *, every: float = 3.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.hub = hub
        self.events = events
        self.every = every
        self.clock = clock
        # The first sweep only learns who is online (the directory keeps the flags: directory.Directory.sweep).
        self.learning = True
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> tuple[list[str], list[str]]:
        """Compare, publish the changes. → (came online, went offline)."""
        now = self.clock()
        directory = self.hub.runtime
        came: list[str] = []
        went: list[str] = []
        start: int | None = 0
        while start is not None:
            if start:
                await asyncio.sleep(0)
            c, w, start = directory.sweep(start, SLICE, now, ONLINE_SLACK)
            came += c
            went += w
        went += directory.take_departed()
        if self.learning:
            self.learning = False
            return [], []
        came.sort()
        went.sort()
        for did in came:
            self.events.publish("device.online", self._data(did))
        for did in went:
            self.events.publish("device.offline", self._data(did))
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
