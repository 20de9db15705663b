"""Periodic housekeeping: blob garbage collection, blob scrub, expired sessions, abandoned pending devices, the
entries of the device change log that no rollout needs (once for the fleet: :class:`Maintenance`); and the
expired terminal recordings in this process's own data dir (in every process: :meth:`Maintenance.of_process`).

Each job runs on its own interval in one background task; a failing job is
logged and retried at its next turn, never taking the server down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .accounts import storage as accounts_storage
from .core.lifecycle import Scope
from .core.tasks import cancel_and_wait
from .devices import registry

if TYPE_CHECKING:
    from .fleet import Fleet

log = logging.getLogger(__name__)


@dataclass
class Job:
    name: str
    every: float
    run: Callable[[], Awaitable[Any]]
    next_at: float = field(default=0.0)


async def expire_pending(fleet: Fleet) -> str:
    """Delete the token-less pending devices silent for pending_expiry_days (the hub forgets them after)."""
    silent_for = fleet.settings.pending_expiry_days * 86400
    gone = await fleet.store.write(lambda c: registry.expire_pending(c, silent_for))
    return f"{len(gone)} deleted"


async def expire_recordings(fleet: Fleet, now: float | None = None) -> str:
    """Delete the terminal recordings of this process's data dir older than remote_recording_days."""
    from .remote import recording  # the remote package: loaded only where there are recordings

    return await recording.expire(fleet.store, fleet.data_dir / "recordings", fleet.settings.remote_recording_days,
                                  now)


async def expire_sessions(fleet: Fleet) -> str:
    now = time.time()
    return f"{await fleet.store.write(lambda c: accounts_storage.delete_expired_sessions(c, now))} deleted"


class Maintenance:
    name = "maintenance"
    scope: Scope = "fleet"  # docs/architecture.md, "Background parts"

    def __init__(self, fleet: Fleet, jobs: list[Job] | None = None) -> None:
        s = fleet.settings
        self.jobs = [
            Job("blob gc", s.gc_interval_hours * 3600, fleet.blobs.gc),
            Job("blob scrub", s.scrub_interval_hours * 3600, fleet.blobs.scrub),
            Job("expired sessions", 3600, lambda: expire_sessions(fleet)),
            Job("device change log", 60, fleet.orchestrator.forget),
        ] if jobs is None else jobs
        if s.pending_expiry_days and jobs is None:
            self.jobs.append(Job("expired pending devices", 3600, lambda: expire_pending(fleet)))
        # The first scrub waits a full interval: no disk-wide read right at startup.
        now = time.monotonic()
        for j in self.jobs:
            j.next_at = now + (j.every if j.name == "blob scrub" else 60)
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of_process(cls, fleet: Fleet) -> Maintenance | None:
        """The housekeeping of this process's own data dir, which every replica does for itself: its terminal
        recordings (docs/remote-access.md, "Recordings"). None when there is nothing to do: retention off
        (remote_recording_days 0), or no recordings made nor asked for."""
        s = fleet.settings
        if not s.remote_recording_days or not (s.remote_record_terminals or (fleet.data_dir / "recordings").is_dir()):
            return None
        m = cls(fleet, [Job("expired recordings", 3600, lambda: expire_recordings(fleet))])
        m.name, m.scope = "recordings maintenance", "process"
        return m

    async def run_due(self) -> None:
        now = time.monotonic()
        for job in self.jobs:
            if job.next_at > now:
                continue
            job.next_at = now + job.every
            try:
                result = await job.run()
                log.info("%s: %s", job.name, result)
            except Exception:
                log.exception("%s failed; retrying in %.0f s", job.name, job.every)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(30)
            await self.run_due()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="fleetd-maintenance")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)


# --- a query of accounts/, which moves to its storage module (issue 14) --------------------------------------------
