"""Device presence: publishes ``device.online`` and ``device.offline`` when a device starts or stops keeping its
check-in interval.

The check-in hot path does nothing for this: a sweep every few seconds compares
what the hub knows (last check-in, poll interval, status) with the devices it
saw online last time. It walks the directory in slices, yielding to the event
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
from .registry import is_online

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
        self.online: set[str] | None = None
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> tuple[list[str], list[str]]:
        """Compare, publish the changes. → (came online, went offline)."""
        now = self.clock()
        runtime, last_seen = self.hub.runtime, self.hub.last_seen
        learning = self.online is None
        online = set() if self.online is None else self.online
        came: list[str] = []
        went: list[str] = []
        ids = list(runtime)  # a snapshot: devices come and go while the sweep yields
        for i in range(0, len(ids), SLICE):
            if i:
                await asyncio.sleep(0)
            for did in ids[i:i + SLICE]:
                rt = runtime.get(did)
                is_on = rt is not None and rt.status == "active" and is_online(last_seen(did), rt.poll_interval, now)
                if is_on and did not in online:
                    online.add(did)
                    came.append(did)
                elif not is_on and did in online:
                    online.discard(did)
                    went.append(did)
        await asyncio.sleep(0)
        deleted = [did for did in online if did not in runtime]
        online.difference_update(deleted)
        went.extend(deleted)
        self.online = online
        if learning:
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
