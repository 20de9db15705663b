"""A rollout's progress kept current from what changed: the orchestrator's pass in time proportional to the change.

A :class:`Tracker` is built once from a full snapshot (:func:`progress.read_snapshot`, at the first pass, after a
restart, and after every transition of the rollout) and keeps, per device, what :func:`progress.evaluate` would
count for it, with the sums the state machine acts on. A later pass re-classifies only:

- the devices in the change log (``device_changes``, filled by triggers in the transaction of each change: an
  action made or moved, a component report, a device enrolled, retagged or revoked, a fault recorded), past the
  sequence number the orchestrator has read;
- the devices whose status may change with time alone: each has its next deadline (end of its soak, its offline
  timeout) in a heap, and is re-read when it is due;
- the devices waiting for a check-in (skipped as offline with an open action, or past their soak without having
  checked in since): their last check-in is re-read every pass;
- the devices with a new raw telemetry point that breaks the health condition (points past the last raw id read;
  the rebuild reads the earlier points of every device whose soak may still be judged, so that a point stored
  before its device's install succeeded, stamped by a clock running ahead, counts once the install succeeds).

Each re-read device is classified by :func:`progress._classify` itself, on the same data a full snapshot would
hold, so a tracker and a full evaluation cannot disagree (tests/rollouts/test_tracker.py compares them).
Whenever the rollout's row changed in any way (a transition bumps ``rev``), the tracker is rebuilt; and a pass
whose counts say a transition is due (start, next stage, completion, halt) decides it on a full snapshot.
"""

from __future__ import annotations

import heapq
import math
import sqlite3
from typing import Any

from ..store import database
from ..telemetry import storage as telemetry_storage
from . import storage
from .progress import (
    BUCKETS,
    C_VERSION,
    FAILED,
    I_FINISHED,
    I_STATE,
    I_UPDATED,
    IN_PROGRESS,
    PENDING,
    QUEUED,
    SKIPPED,
    SOAKING,
    STARTED_STATES,
    STATUSES,
    SUCCEEDED,
    LastSeen,
    Snapshot,
    _classify,
    read_snapshot,
    stage_of,
)
from .rules import bucket
from .service import Plan
from .states import ENDED

CHUNK = 500  # ids per IN (...) list
OPEN = ("queued", "offered", *STARTED_STATES)
# A device's mark: (stage, status, attempted, late, missing); what it adds to the counts.
Mark = tuple[int, int, bool, bool, bool]


def _after(t: float) -> float:
    """The first time after ``t``: a condition ``now - x > timeout`` turns at _after(x + timeout)."""
    return math.nextafter(t, math.inf)


class Tracker:
    def __init__(self, snap: Snapshot, key: tuple[Any, ...], raw_seen: int) -> None:
        self.snap = snap  # its dicts (installs, comps, faults, ...) are kept current; its lists are not used
        self.key = key  # the rollout's row as read: any change means a rebuild
        self.raw_seen = raw_seen  # raw telemetry read up to this id
        self.reread = 0  # devices re-read by the last refresh
        r = snap.row
        self.devices: dict[str, tuple[float, int, float | None, float]] = {}  # bucket, stage, stored seen, joined
        self.marks: dict[str, Mark] = {}
        self.counts = [[0] * (len(STATUSES) + 1) for _ in r.stages]
        self.members = self.attempted = self.failed = self.late_failed = self.done = 0
        self.missing: dict[str, None] = {}  # members without an action that may get one (ordered)
        self.new_faults: dict[str, str] = {}
        self.installed: dict[str, None] = {}  # what a rollback sends back (progress.installed)
        self.deadlines: list[tuple[float, str]] = []
        self.due: dict[str, float] = {}
        self.watch: set[str] = set()
        self.since = r.started_at if r.started_at is not None else snap.now
        for did, b, stored, joined in zip(snap.device_ids, snap.buckets, snap.stored_seen, snap.joined, strict=True):
            self.devices[did] = (b, stage_of(r.stages, b), stored, joined)
        for did, seen in zip(snap.device_ids, snap.last_seen, strict=True):
            self._place(did, seen)
        for did in snap.installs:
            self._note_installed(did)

    @classmethod
    def load(cls, conn: sqlite3.Connection, rollout_id: str, now: float, fresh: LastSeen | None
             ) -> tuple[Tracker, Snapshot]:
        """A tracker from a full snapshot, and that snapshot (for a decision made on it before the tracker's next
        refresh, which changes its dicts)."""
        with database.read_snapshot(conn):
            key = _key(storage.rollout_row(conn, rollout_id))
            snap = read_snapshot(conn, rollout_id, now, fresh, every_device=True)
            raw = telemetry_storage.newest_raw_id(conn) or 0
        return cls(snap, key, raw), snap

    @property
    def rev(self) -> int:
        return self.snap.row.rev

    # --- a pass --------------------------------------------------------------------------------------------

    def refresh(self, conn: sqlite3.Connection, now: float, fresh: LastSeen | None, changed: set[str]) -> bool:
        """Bring the counts to ``now`` (in the caller's read transaction), given the devices changed since the last
        refresh. False: the rollout's row changed (or its raw telemetry was emptied); rebuild instead."""
        if _key(storage.rollout_row(conn, self.snap.row.id)) != self.key:
            return False
        self.snap.now = now
        todo = set(changed) | self.watch
        while self.deadlines and self.deadlines[0][0] <= now:
            t, did = heapq.heappop(self.deadlines)
            if self.due.get(did) == t:
                del self.due[did]
                todo.add(did)
        if self.snap.row.health is not None:
            broke = self._new_violations(conn, now)
            if broke is None:
                return False
            todo |= broke
        seen = self._reread(conn, sorted(todo), fresh)
        self.reread = len(todo)
        for did in todo:
            self._place(did, seen.get(did))
            self._note_installed(did)
        return True

    def _new_violations(self, conn: sqlite3.Connection, now: float) -> set[str] | None:
        """Add the raw points past the last one read that break the health condition. → their devices."""
        top = telemetry_storage.newest_raw_id(conn) or 0
        if top < self.raw_seen:
            return None  # ids were handed out again (the raw table was emptied): read it afresh
        if top == self.raw_seen:
            return set()
        r, cond = self.snap.row, self.snap.row.health
        assert cond is not None
        horizon = now - r.offline_timeout - r.soak  # no soak still being judged began earlier
        out: set[str] = set()
        for did, ts in telemetry_storage.points_breaking(conn, self.raw_seen, top, cond.metric, horizon, cond.op,
                                                         cond.threshold):
            if did not in self.snap.faults:
                self.snap.violations.setdefault(did, []).append(ts)
                out.add(did)
        self.raw_seen = top
        return out

    def _reread(self, conn: sqlite3.Connection, ids: list[str], fresh: LastSeen | None) -> dict[str, float | None]:
        """Read these devices' rows afresh into the snapshot's dicts. → their freshest last check-in."""
        snap, r = self.snap, self.snap.row
        cache = BUCKETS.get(r.id)
        seen: dict[str, float | None] = {}
        for i in range(0, len(ids), CHUNK):
            chunk = ids[i:i + CHUNK]
            for did in chunk:
                snap.installs.pop(did, None)
                snap.rollbacks.pop(did, None)
                snap.messages.pop(did, None)
                snap.comps.pop(did, None)
                snap.busy.discard(did)
            for did, kind, state, updated, finished, message in storage.rollout_actions_of(conn, r.id, chunk):
                if kind == "install":
                    snap.installs[did] = (did, state, updated, finished)
                    if state in ("failed", "rolled_back", "cancelled"):
                        snap.messages[did] = message
                else:
                    snap.rollbacks[did] = state
            for comp in storage.component_reports_of(conn, r.component, chunk):
                snap.comps[comp[0]] = comp
            snap.faults.update(storage.faults_of(conn, r.id, chunk))
            snap.busy |= storage.busy_among(conn, r.component, r.id, chunk)
            rows = {row[0]: row for row in storage.devices_in_target(conn, r.target, chunk)}
            for did in chunk:
                row = rows.get(did)
                if row is None or not (row[3] or did in snap.installs):
                    self.devices.pop(did, None)  # gone, or left the target without an action of the rollout
                    continue
                b = cache.get(did)
                if b is None:
                    b = cache[did] = bucket(r.id, did)
                self.devices[did] = (b, stage_of(r.stages, b), row[1], row[2])
                f = fresh(did) if fresh is not None else None
                seen[did] = row[1] if f is None else max(row[1] or 0.0, f)
        return seen

    # --- one device ------------------------------------------------------------------------------------------

    def _unmark(self, did: str) -> None:
        mark = self.marks.pop(did, None)
        self.due.pop(did, None)
        self.watch.discard(did)
        self.missing.pop(did, None)
        self.new_faults.pop(did, None)
        if mark is None:
            return
        k, status, attempted, late, _ = mark
        row = self.counts[k]
        row[0] -= 1
        row[1 + status] -= 1
        if status == PENDING:
            return
        self.members -= 1
        self.attempted -= attempted
        if status >= SUCCEEDED:
            self.done -= 1
            if status == FAILED:
                if late:
                    self.late_failed -= 1
                else:
                    self.failed -= 1

    def _place(self, did: str, last_seen: float | None) -> None:
        """Classify one device as :func:`progress.evaluate` does, and add it to the counts."""
        self._unmark(did)
        dev = self.devices.get(did)
        if dev is None:
            return
        snap, r = self.snap, self.snap.row
        _, k, stored, joined = dev
        row = self.counts[k]
        row[0] += 1
        if k > r.stage:
            row[1 + PENDING] += 1
            self.marks[did] = (k, PENDING, False, False, False)
            return
        action = snap.installs.get(did)
        status, why, fault = _classify(snap, did, action, k, last_seen, stored, joined, False)
        row[1 + status] += 1
        self.members += 1
        late = joined >= self.since
        attempted = action is not None and status != SKIPPED and not late
        self.attempted += attempted
        missing = action is None and did not in snap.busy and did not in snap.faults
        if missing:
            self.missing[did] = None
        if status >= SUCCEEDED:
            self.done += 1
            if status == FAILED:
                if fault:
                    self.new_faults[did] = why
                if late:
                    self.late_failed += 1
                else:
                    self.failed += 1
        self.marks[did] = (k, status, attempted, late, missing)
        seen = last_seen if last_seen is not None else joined
        when = self._next_check(action, k, seen, joined, status)
        if when is not None:
            self.due[did] = when
            heapq.heappush(self.deadlines, (when, did))
        if (status == SKIPPED and action is not None and action[I_STATE] in OPEN) or (
                status == SOAKING and action is not None and snap.now >= (action[I_FINISHED] or action[I_UPDATED])
                + r.soak):
            self.watch.add(did)  # a check-in changes its status: re-read every pass

    def _next_check(self, a: tuple[str, str, float, float | None] | None, k: int, seen: float, joined: float,
                    status: int) -> float | None:
        """When time alone may change the status :func:`progress._classify` gave (None: it cannot)."""
        snap, r = self.snap, self.snap.row
        timeout = r.offline_timeout
        if a is None:
            started = snap.stage_rows.get(k)
            return _after(max(started[0], joined) + timeout) if status == QUEUED and started else None
        state, updated = a[I_STATE], a[I_UPDATED]
        if state == "succeeded":
            if status != SOAKING or r.state in ENDED:
                return None
            t = a[I_FINISHED] or updated
            silent = _after(max(seen, t) + timeout)
            return min(t + r.soak, silent) if snap.now < t + r.soak else silent
        if state in STARTED_STATES:
            return _after(max(seen, updated) + timeout) if status == IN_PROGRESS else None
        if state in ("queued", "offered"):
            return _after(min(seen, updated) + timeout) if status == QUEUED else None
        return None

    def _note_installed(self, did: str) -> None:
        snap = self.snap
        c = snap.comps.get(did)
        if did in snap.installs and c is not None and c[C_VERSION] == snap.row.version and did not in snap.rollbacks:
            self.installed[did] = None
        else:
            self.installed.pop(did, None)

    # --- the decision ------------------------------------------------------------------------------------------

    def plan(self) -> Plan | None:
        """:func:`service.decide` on the kept counts, for the passes that make no transition; None when one may
        be due (the caller decides it on a full snapshot)."""
        r, now = self.snap.row, self.snap.now
        if r.state == "rolled_back":
            return Plan(rollbacks=list(self.installed))
        if r.state == "scheduled":
            waiting = (r.start_at is not None and now < r.start_at) or (r.window is not None
                                                                       and not r.window.contains(now))
            return Plan() if waiting else None
        if r.state not in ("running", "paused"):
            return Plan()
        if self.failed >= 1 and self.failed > r.max_failure * self.attempted:
            return None
        plan = Plan(faults=list(self.new_faults.items()))
        if r.state == "paused":
            return plan
        window_open = r.window is None or r.window.contains(now)
        if self.done == self.members and (window_open or r.stage + 1 == len(r.stages)):
            return None
        if window_open:
            plan.installs = list(self.missing)
        return plan


def _key(row: sqlite3.Row | None) -> tuple[Any, ...]:
    return () if row is None else tuple(row)
