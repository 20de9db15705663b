"""The orchestrator: one asyncio task that moves every rollout along.

Each pass, per rollout: one read transaction (a snapshot, bulk queries only),
a decision made in memory (:func:`rollouts.decide`), and the writes it needs —
one write transaction for the transition and its first actions, more only when
a stage hands out more than :data:`rollout_steps.CHUNK` actions. A write made on a
stale read is refused by the rollout's ``rev`` and redone at the next pass. All
state is in the database, so a restarted server continues where it stopped.

Tests call :meth:`Orchestrator.run_pass` with their own clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core.errors import InvalidArgument
from ..core.lifecycle import Scope
from ..core.tasks import cancel_and_wait
from . import service as rollouts
from . import storage
from .progress import read_snapshot
from .steps import Change

if TYPE_CHECKING:
    from ..fleet import Fleet

log = logging.getLogger(__name__)


@dataclass
class RolloutPass:
    rollout_id: str
    read_seconds: float = 0.0
    decide_seconds: float = 0.0
    write_seconds: float = 0.0
    devices: int = 0
    actions: int = 0
    writes: int = 0
    stale: bool = False


@dataclass
class PassReport:
    seconds: float = 0.0
    rollouts: list[RolloutPass] = field(default_factory=list)
    errors: int = 0

    @property
    def actions(self) -> int:
        return sum(r.actions for r in self.rollouts)


class Orchestrator:
    name = "orchestrator"
    scope: Scope = "fleet"  # docs/architecture.md, "Background parts"

    def __init__(self, fleet: Fleet, interval: float | None = None) -> None:
        self.fleet = fleet
        self.interval = fleet.settings.rollout_pass_seconds if interval is None else interval
        if self.interval < 0:
            raise InvalidArgument("rollout_pass_seconds must be 0 (no background passes) or positive")
        self.last: PassReport | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None

    async def run_pass(self, now: float | None = None) -> PassReport:
        """One pass over every rollout that may need something, at ``now`` (default: the clock)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # the loop and a test, or two wake-ups, never interleave passes
            return await self._pass(time.time() if now is None else now)

    async def _pass(self, now: float) -> PassReport:
        started = time.perf_counter()
        report = PassReport()
        store = self.fleet.store
        # Rollouts that may need something: the active ones, and for an offline timeout after a rollback the
        # rolled back ones (devices that report the new version late still go back), unless a newer one took over.
        for rollout_id in await store.read(lambda c: storage.due_rollout_ids(c, now)):
            stats = RolloutPass(rollout_id)
            report.rollouts.append(stats)
            try:
                await self._one(rollout_id, now, stats)
            except Exception:
                report.errors += 1
                log.exception("rollout %s: the orchestrator pass failed; trying again next pass", rollout_id)
        report.seconds = time.perf_counter() - started
        self.last = report
        return report

    async def _one(self, rollout_id: str, now: float, stats: RolloutPass) -> None:
        store = self.fleet.store
        t0 = time.perf_counter()
        snap = await store.read(lambda c: read_snapshot(c, rollout_id, now, self.fleet.hub.last_seen))
        t1 = time.perf_counter()
        plan = rollouts.decide(snap)
        t2 = time.perf_counter()
        stats.read_seconds, stats.decide_seconds, stats.devices = t1 - t0, t2 - t1, len(snap.device_ids)
        if plan.empty:
            return
        rev = snap.row.rev
        for part in plan.split():
            def write(conn: sqlite3.Connection, part: rollouts.Plan = part, rev: int = rev) -> Change | None:
                return rollouts.apply(conn, rollout_id, rev, part, now)
            change = await store.write(write)
            stats.writes += 1
            if change is None:
                stats.stale = True
                log.info("rollout %s changed while the orchestrator decided; deciding again next pass", rollout_id)
                break
            stats.actions += len(change.new_actions)
            rev = change.rev
        stats.write_seconds = time.perf_counter() - t2

    # --- the background task ----------------------------------------------------------------
    def wake(self) -> None:
        """Run a pass soon (after a rollout was created or changed)."""
        if self._wake is not None:
            self._wake.set()

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.run_pass()
            except Exception:
                log.exception("orchestrator pass failed; trying again in %.0f s", self.interval)

    async def start(self) -> None:
        if self.interval <= 0:
            return
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="fleetd-orchestrator")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self._wake = None
