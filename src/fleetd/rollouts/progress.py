"""Where a rollout stands, derived from its actions and the devices' reports: never stored twice.

:func:`read_snapshot` reads everything one evaluation needs in one read
transaction with a handful of bulk queries (no per-device query); :func:`evaluate`
turns it into per-stage counts and the facts the state machine acts on.

A device's status in a rollout:

    pending      its stage has not started
    queued       its stage started; it has no action yet, or the action is queued / offered
    in_progress  accepted, downloading, verifying or installing
    soaking      installed; being watched for the soak time
    succeeded    installed and stayed healthy for the soak: checked in after the soak, still
                 reports the new version, no failure or restart reported, health condition held
    failed       the install failed or rolled back on the device, or a fault was seen while soaking
                 (unhealthy, restarted, another version reported, condition broken, went silent)
    skipped      offline or without progress past the offline timeout, declined (consent), its
                 action was cancelled, or it lacks the artifact's update module (recorded when it would
                 have got its action: a fault whose reason starts with SKIPPED_MARK); shown as such,
                 never a silent pass
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from ..core.errors import NotFound
from ..devices.actions import PROGRESS, ActionState
from ..store import database
from ..telemetry import rollups
from ..telemetry import storage as telemetry_storage
from . import storage
from .rules import HealthCondition, Window, bucket
from .states import ENDED

STATUSES = ("pending", "queued", "in_progress", "soaking", "succeeded", "failed", "skipped")
PENDING, QUEUED, IN_PROGRESS, SOAKING, SUCCEEDED, FAILED, SKIPPED = range(7)
# A recorded fault with this reason is a device left out (it never got an action), not a failure.
SKIPPED_MARK: Final = "skipped: "
STARTED_STATES = PROGRESS[PROGRESS.index(ActionState.ACCEPTED):]  # the device took the action on


@dataclass
class Target:
    """Active devices with all ``tags`` and a type ``device_types`` covers (names or patterns, when any are
    given), plus ``device_ids``."""

    tags: dict[str, str] = field(default_factory=dict)
    device_types: list[str] = field(default_factory=list)
    device_ids: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"tags": self.tags, "device_types": self.device_types, "device_ids": self.device_ids},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Target:
        d = json.loads(text)
        return cls(dict(d.get("tags", {})), list(d.get("device_types", [])), list(d.get("device_ids", [])))


@dataclass
class RolloutRow:
    id: str
    artifact_id: str
    artifact: str  # NAME@VERSION
    version: str
    component: str
    target: Target
    stages: list[float]
    max_failure: float  # fraction
    soak: float
    offline_timeout: float
    start_at: float | None
    window: Window | None
    health: HealthCondition | None
    consent: bool
    state: str
    stage: int
    reason: str
    rev: int
    created_by: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None


def load_row(conn: sqlite3.Connection, rollout_id: str) -> RolloutRow:
    r = storage.rollout_row(conn, rollout_id)
    if r is None:
        raise NotFound(f"no rollout {rollout_id!r} ('fleetd rollouts list' shows them)")
    return RolloutRow(
        id=r["id"], artifact_id=r["artifact_id"], artifact=r["label"], version=r["version"],
        component=r["component"], target=Target.from_json(r["target"]), stages=json.loads(r["stages"]),
        max_failure=r["max_failure"], soak=r["soak_seconds"], offline_timeout=r["offline_timeout"],
        start_at=r["start_at"], window=Window.parse(r["window"]), health=HealthCondition.parse(r["health"]),
        consent=bool(r["consent"]), state=r["state"], stage=r["stage"], reason=r["reason"], rev=r["rev"],
        created_by=r["created_by"], created_at=r["created_at"], updated_at=r["updated_at"],
        started_at=r["started_at"], finished_at=r["finished_at"])


# Rows as the queries return them (tuples: a rollout reads 100,000 of each on every pass).
# install: (device_id, state, updated_at, finished_at); comp: (device_id, version, state, health, restarts)
Install = tuple[str, str, float, float | None]
Comp = tuple[str, str, str, str, int]
I_STATE: Final = 1
I_UPDATED: Final = 2
I_FINISHED: Final = 3
C_VERSION: Final = 1
C_STATE: Final = 2
C_HEALTH: Final = 3
C_RESTARTS: Final = 4


@dataclass
class Snapshot:
    row: RolloutRow
    now: float
    # Target devices and devices with an action of this rollout: parallel lists.
    device_ids: list[str]
    buckets: list[float]
    last_seen: list[float | None]  # the freshest: the hub's (in memory) or the stored one
    stored_seen: list[float | None]  # as stored, written together with the component reports
    joined: list[float]
    installs: dict[str, Install]
    messages: dict[str, str]  # device → the message of its install action, for the ones that ended badly
    rollbacks: dict[str, str]  # device → state of its rollback action
    comps: dict[str, Comp]
    faults: dict[str, str]
    busy: set[str]  # another open action concerns the component
    violations: dict[str, list[float]]  # device → times its points broke the health condition
    stage_rows: dict[int, tuple[float, float | None, str]]  # idx → started, ended, outcome


# --- buckets, cached per rollout -------------------------------------------------------------

class BucketCache:
    """A rollout's buckets are fixed, so they are computed once per device (a few rollouts kept)."""

    def __init__(self, rollouts: int = 4) -> None:
        self._by_rollout: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._rollouts = rollouts
        self._lock = threading.Lock()

    def get(self, rollout_id: str) -> dict[str, float]:
        with self._lock:
            got = self._by_rollout.get(rollout_id)
            if got is None:
                got = self._by_rollout[rollout_id] = {}
                while len(self._by_rollout) > self._rollouts:
                    self._by_rollout.popitem(last=False)
            self._by_rollout.move_to_end(rollout_id)
            return got


BUCKETS = BucketCache()


# --- reading ---------------------------------------------------------------------------------

LastSeen = Callable[[str], "float | None"]


def read_snapshot(conn: sqlite3.Connection, rollout_id: str, now: float, last_seen: LastSeen | None = None, *,
                  every_device: bool = False) -> Snapshot:
    """Everything one evaluation needs, read in one transaction (the caller's, or one opened here).

    ``last_seen`` gives the hub's exact last check-in of a device (the store's may be a minute old).
    ``every_device``: the health condition's violations of every device that may still soak, not only of those
    soaking now (:func:`_violations`; for a tracker, which reads later points only)."""
    with database.read_snapshot(conn):
        return _read(conn, rollout_id, now, last_seen, every_device)


def _read(conn: sqlite3.Connection, rollout_id: str, now: float, fresh: LastSeen | None, every_device: bool
          ) -> Snapshot:
    r = load_row(conn, rollout_id)
    devices = storage.target_devices(conn, r.target)
    installs: dict[str, Install] = {row[0]: row for row in storage.install_actions(conn, r.id)}
    rollbacks = storage.rollback_states(conn, r.id)
    messages = storage.failed_install_messages(conn, r.id)
    # Devices that had an action but left the target (tags changed, revoked) still count.
    known = {d[0] for d in devices}
    gone = [d for d in installs if d not in known]
    for i in range(0, len(gone), 500):
        devices += storage.devices_by_id(conn, gone[i:i + 500])
    ids, stored, joined = (list(col) for col in zip(*devices, strict=True)) if devices else ([], [], [])
    seen = stored
    if fresh is not None:
        seen = [max(s or 0.0, f) if (f := fresh(did)) is not None else s for did, s in zip(ids, stored, strict=True)]
    cache = BUCKETS.get(r.id)
    if len(cache) < len(ids):
        for did in ids:
            if did not in cache:
                cache[did] = bucket(r.id, did)
    buckets = [cache[did] for did in ids]
    comps: dict[str, Comp] = {row[0]: row for row in storage.component_reports(conn, r.component)}
    faults = storage.faults(conn, r.id)
    busy = storage.busy_devices(conn, r.component, r.id)
    stage_rows = storage.stage_rows(conn, r.id)
    snap = Snapshot(r, now, ids, buckets, seen, stored, joined, installs, messages, rollbacks, comps, faults, busy, {},
                    stage_rows)
    if r.health is not None:
        snap.violations = _violations(conn, snap, r.health, every_device)
    return snap


def _violations(conn: sqlite3.Connection, snap: Snapshot, cond: HealthCondition, every_device: bool
                ) -> dict[str, list[float]]:
    """When the health condition broke, for the devices whose soak is still being judged: those soaking, and
    those whose soak ended within the offline timeout (their last points may arrive late). A device judged
    failed keeps its fault (rollout_faults); one judged healthy that long after its soak stays so. So the scan
    covers recent raw points only, however old the rollout.

    ``every_device``: also the points of devices whose install has not succeeded yet, from the oldest time a
    soak still judged can have begun. A tracker built on this snapshot reads only the points stored after it,
    and a device's clock may run ahead of the server's: its point stamped after its install finishes can be
    stored before the install's success is, and must count then."""
    r, now = snap.row, snap.now
    horizon = now - r.offline_timeout - r.soak
    starts = [a[I_FINISHED] for did, a in snap.installs.items()
              if a[I_STATE] == "succeeded" and a[I_FINISHED] is not None and a[I_FINISHED] >= horizon
              and did not in snap.faults]
    if not starts and not every_device:
        return {}
    out: dict[str, list[float]] = {}
    since = horizon if every_device else min(starts)
    # Only the raw id blocks that can hold points of the soaks (devices may stamp points up to a day ahead).
    for lo, hi in rollups.raw_ranges(conn, since, now + 2 * 86400):
        for did, ts in telemetry_storage.points_breaking(conn, lo, hi, cond.metric, since, cond.op, cond.threshold):
            out.setdefault(did, []).append(ts)
    return out


# --- evaluation ------------------------------------------------------------------------------------

@dataclass
class DeviceProgress:
    device_id: str
    stage: int
    status: str
    detail: str


@dataclass
class Evaluation:
    counts: list[list[int]]  # per stage: targeted, then one count per status (pending..skipped)
    members: int = 0  # devices in the started stages
    # The halt threshold is judged on devices enrolled before the rollout started: one who enrolled later (with
    # a leaked join token, say) cannot halt it with failures nor dilute real ones with successes.
    attempted: int = 0  # members with an action, not skipped, enrolled before the start
    failed: int = 0  # of those, failed
    late_failed: int = 0  # failed members that enrolled after the start: shown, not counted
    done: int = 0  # members that succeeded, failed or were skipped
    missing: list[str] = field(default_factory=list)  # members without an action that may get one now
    new_faults: list[tuple[str, str]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (device, why), the first few
    rollbacks: dict[str, int] = field(default_factory=dict)  # rollback action state → count
    soak_end: float = 0.0  # when the last soaking device's soak ends (0: none soaks)
    devices: list[DeviceProgress] = field(default_factory=list)  # with details=True only

    @property
    def stage_done(self) -> bool:
        return self.done == self.members

    def failure_exceeded(self, max_failure: float) -> bool:
        """More failures among the attempted devices than allowed, and at least one."""
        return self.failed >= 1 and self.failed > max_failure * self.attempted


LATE_NOTE = " (enrolled after the rollout started: not counted toward its failure threshold)"


def stage_of(stages: list[float], b: float) -> int:
    """The first stage whose cumulative percentage is above the bucket."""
    return bisect.bisect_right(stages, b)


def evaluate(snap: Snapshot, *, details: bool = False, for_stage: int | None = None) -> Evaluation:
    """Classify every device; ``for_stage`` evaluates as if that stage had started (used to start it).

    This loop runs over every device of a rollout on every pass: words are only made for what needs them.
    """
    r = snap.row
    current = r.stage if for_stage is None else for_stage
    ev = Evaluation(counts=[[0] * (len(STATUSES) + 1) for _ in r.stages])
    stages, counts, installs, busy = r.stages, ev.counts, snap.installs, snap.busy
    since = r.started_at if r.started_at is not None else snap.now
    for did, b, last_seen, stored, joined in zip(snap.device_ids, snap.buckets, snap.last_seen, snap.stored_seen,
                                                 snap.joined, strict=True):
        k = bisect.bisect_right(stages, b)
        row = counts[k]
        row[0] += 1
        if k > current:
            row[1 + PENDING] += 1
            if details:
                ev.devices.append(DeviceProgress(did, k, "pending", ""))
            continue
        action = installs.get(did)
        status, why, fault = _classify(snap, did, action, k, last_seen, stored, joined, details)
        row[1 + status] += 1
        if status == SOAKING and action is not None:
            ev.soak_end = max(ev.soak_end, (action[I_FINISHED] or action[I_UPDATED]) + r.soak)
        ev.members += 1
        late = joined >= since
        if action is None:
            if did not in busy and did not in snap.faults:
                ev.missing.append(did)
        elif status != SKIPPED and not late:
            ev.attempted += 1
        if status >= SUCCEEDED:
            ev.done += 1
            if status == FAILED:
                if fault:
                    ev.new_faults.append((did, why))
                if late:
                    ev.late_failed += 1
                    why += LATE_NOTE
                else:
                    ev.failed += 1
                    if len(ev.failures) < 5:
                        ev.failures.append((did, why))
        if details:
            ev.devices.append(DeviceProgress(did, k, STATUSES[status], why))
    for state in snap.rollbacks.values():
        ev.rollbacks[state] = ev.rollbacks.get(state, 0) + 1
    return ev


def installed(snap: Snapshot) -> list[str]:
    """Devices that got the rollout's install and report its version, without a rollback of it yet: the ones
    a rollback sends back. (Devices whose install failed never left their version.)"""
    version, comps, rollbacks = snap.row.version, snap.comps, snap.rollbacks
    return [did for did in snap.installs if (c := comps.get(did)) is not None and c[C_VERSION] == version
            and did not in rollbacks]


def _classify(snap: Snapshot, did: str, a: Install | None, k: int, last_seen: float | None,
              stored_seen: float | None, joined: float, explain: bool) -> tuple[int, str, bool]:
    """(status, why, whether it is a new fault to record) for a device whose stage has started.
    ``why`` is always given for failures, otherwise only when ``explain``."""
    if snap.faults and did in snap.faults:
        why = snap.faults[did]
        if why.startswith(SKIPPED_MARK):
            return SKIPPED, why[len(SKIPPED_MARK):], False
        return FAILED, why, False
    r, now = snap.row, snap.now
    timeout = r.offline_timeout
    seen = last_seen if last_seen is not None else joined
    if a is None:
        started = snap.stage_rows.get(k, (now, None, ""))[0]
        if now - max(started, joined) > timeout:
            why = "another open action concerns this component" if did in snap.busy else "no action yet"
            return SKIPPED, f"{why} after the offline timeout" if explain else "", False
        return QUEUED, "waiting for its action" if explain else "", False
    state, updated = a[I_STATE], a[I_UPDATED]
    if state == "succeeded":
        return _soaking(snap, did, a[I_FINISHED] or updated, last_seen, stored_seen, seen, explain)
    if state in STARTED_STATES:
        if now - max(seen, updated) > timeout:
            return SKIPPED, f"no progress or check-in since {_when(max(seen, updated))}" if explain else "", False
        return IN_PROGRESS, state, False
    if state in ("queued", "offered"):
        if now - seen > timeout:
            return SKIPPED, f"offline since {_when(seen)}" if explain else "", False
        if now - updated > timeout:
            return SKIPPED, ("no answer to the offer" if state == "offered" else "did not pick up its action"
                             ) if explain else "", False
        return QUEUED, state, False
    if state in ("failed", "rolled_back"):
        message = snap.messages.get(did, "")
        return FAILED, f"install {state.replace('_', ' ')}" + (f": {message}" if message else ""), False
    # rejected or cancelled
    return SKIPPED, "declined on the device" if state == "rejected" else (
        snap.messages.get(did) or "its action was cancelled"), False


def _soaking(snap: Snapshot, did: str, t: float, last_seen: float | None, stored_seen: float | None, seen: float,
             explain: bool) -> tuple[int, str, bool]:
    """An installed device: soaking until it has checked in after the soak, healthy; a fault fails it.

    Its component report is judged against the stored last check-in, which is written in the same flush as
    the report; the hub's fresher one may belong to a check-in whose report is not stored yet."""
    r = snap.row
    if r.state in ENDED:
        return SUCCEEDED, "", False  # nothing waits for its soak any more
    soak_end = t + r.soak
    version = r.version
    comp = snap.comps.get(did)
    if comp is not None and comp[C_VERSION] == version:
        if comp[C_STATE] == "failed" or comp[C_HEALTH] == "unhealthy":
            return FAILED, f"reports {version} as {'failed' if comp[C_STATE] == 'failed' else 'unhealthy'}", True
        if comp[C_RESTARTS] > 0:
            return FAILED, f"{version} restarted {comp[C_RESTARTS]} time(s)", True
    if snap.violations and did in snap.violations:
        broken = [ts for ts in snap.violations[did] if t <= ts <= soak_end]
        if broken:
            return FAILED, f"health condition {r.health} broken at {_when(min(broken))}", True
    if snap.now >= soak_end:
        reports_it = comp is not None and comp[C_VERSION] == version
        if reports_it and last_seen is not None and last_seen >= soak_end:
            return SUCCEEDED, "", False
        if not reports_it and stored_seen is not None and stored_seen >= soak_end:
            return FAILED, f"reports {comp[C_VERSION] if comp else 'no version'} after installing {version}", True
    if snap.now - max(seen, t) > r.offline_timeout:
        return FAILED, f"stopped checking in during its soak (last {_when(max(seen, t))})", True
    return SOAKING, f"until {_when(soak_end)}" if explain else "", False


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
