"""The orchestrator: one asyncio task that moves every rollout along.

Each pass reads the device change log past what it has read (one query), then per
rollout: one read transaction that brings the rollout's :class:`~.tracker.Tracker`
up to date with the devices that changed or came due (none: O(1) rows read), a
decision made on its counts, and the writes it needs. When the counts say a
transition may be due, or the rollout's row changed, the decision is made on a
full snapshot instead (:func:`rollouts.decide`). A transition is one write
transaction with its first actions, more only when a stage hands out more than
:data:`rollout_steps.CHUNK` actions. A write made on a stale read is refused by
the rollout's ``rev`` and redone at the next pass. All state is in the database
(the trackers are rebuilt from it), so a restarted server continues where it stopped.

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
from ..core.tasks import cancel_and_wait, within
from . import service as rollouts
from . import storage
from .progress import read_snapshot
from .steps import Change
from .tracker import Tracker

if TYPE_CHECKING:
    from ..fleet import Fleet

log = logging.getLogger(__name__)
FORGET_AFTER = 10_000  # change log entries read before the read ones are deleted


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
    rebuilt: bool = False  # its tracker was built from a full snapshot (first pass, restart, after a transition)
    reread: int = 0  # devices re-read (changed, due, or waiting for a check-in)
    full: bool = False  # the decision was made on a full snapshot (a transition may be due)


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
        self._trackers: dict[str, Tracker] = {}
        self._seq: int | None = None  # the device change log read up to here
        self._forgot = 0  # the change log dropped up to here

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
        # rolled back ones (devices that report the new version late still go back), unless a newer one took over;
        # and the devices changed since the last pass.
        seq, due, changed = await store.read(lambda c: self._changes(c, now))
        for rollout_id in list(self._trackers):
            if rollout_id not in due:
                del self._trackers[rollout_id]
        for rollout_id in due:
            stats = RolloutPass(rollout_id)
            report.rollouts.append(stats)
            try:
                await self._one(rollout_id, now, stats, changed)
            except Exception:
                self._trackers.pop(rollout_id, None)  # built afresh next pass
                report.errors += 1
                log.exception("rollout %s: the orchestrator pass failed; trying again next pass", rollout_id)
        self._seq = seq
        if seq - self._forgot >= FORGET_AFTER:
            await self._forget(seq)
        report.seconds = time.perf_counter() - started
        self.last = report
        return report

    def _changes(self, conn: sqlite3.Connection, now: float) -> tuple[int, list[str], set[str]]:
        """(the change log's newest sequence number, the rollouts due, the devices changed since the last pass)."""
        due = storage.due_rollout_ids(conn, now)
        if self._seq is None or not due:  # every tracker is built afresh (or none is needed)
            return max(storage.last_change(conn), self._seq or 0), due, set()
        seq, changed = storage.changes_since(conn, self._seq)
        return seq, due, changed

    async def _one(self, rollout_id: str, now: float, stats: RolloutPass, changed: set[str]) -> None:
        store = self.fleet.store
        fresh = self.fleet.hub.last_seen
        t0 = time.perf_counter()
        kept = self._trackers.get(rollout_id)
        snap = None
        if kept is not None and await store.read(lambda c: kept.refresh(c, now, fresh, changed)):
            tracker = kept
            stats.reread = tracker.reread
        else:
            tracker, snap = await store.read(lambda c: Tracker.load(c, rollout_id, now, fresh))
            self._trackers[rollout_id] = tracker
            stats.rebuilt = True
        t1 = time.perf_counter()
        plan = tracker.plan()
        rev = tracker.rev
        if plan is None:  # a transition may be due: decide it on everything
            stats.full = True
            if snap is None:
                snap = await store.read(lambda c: read_snapshot(c, rollout_id, now, fresh))
            plan, rev = rollouts.decide(snap), snap.row.rev
        t2 = time.perf_counter()
        stats.read_seconds, stats.decide_seconds, stats.devices = t1 - t0, t2 - t1, len(tracker.devices)
        if plan.empty:
            return
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

    async def forget(self) -> str:
        """Drop the device change log's entries that no tracker needs: those read by the last pass, and every one
        when no rollout is tracked (none is due, or no pass runs: ``rollout_pass_seconds`` 0). A periodic job of
        :class:`~fleetd.maintenance.Maintenance`, so that the log stays bounded whether rollouts run or not; a pass
        drops what it read itself once :data:`FORGET_AFTER` entries piled up."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # not while a pass reads the log
            upto = (self._seq if self._trackers else await self.fleet.store.read(storage.last_change)) or 0
            gone = await self._forget(upto) if upto > self._forgot else 0  # sequence numbers are never reused
        return f"{gone} deleted"

    async def _forget(self, upto: int) -> int:
        gone = await self.fleet.store.write(lambda c: storage.forget_changes(c, upto))
        self._forgot = max(self._forgot, upto)
        return gone

    def tracker(self, rollout_id: str) -> Tracker | None:
        """The rollout's tracker as the last pass left it (None: not due, or not built yet)."""
        return self._trackers.get(rollout_id)

    # --- the background task ----------------------------------------------------------------
    def wake(self) -> None:
        """Run a pass soon (after a rollout was created or changed)."""
        if self._wake is not None:
            self._wake.set()

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await within(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.run_pass()
            except Exception:
                log.exception("orchestrator pass failed; trying again in %.0f s", self.interval)

    async def start(self) -> None:
        # (Re)started, e.g. on the replica that took the fleet lease: another may have run passes meanwhile and
        # dropped change-log entries these trackers would need, so every tracker is built afresh.
        self._trackers.clear()
        self._seq = None
        if self.interval <= 0:
            return
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="fleetd-orchestrator")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self._wake = None
