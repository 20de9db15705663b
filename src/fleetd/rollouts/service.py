"""Rollouts: the state machine and its storage.

    scheduled ──start time reached, window open──▶ running ──last stage done──▶ completed
    scheduled, running ──pause──▶ paused ──resume──▶ running (scheduled if no stage has started)
    scheduled, running, paused ──cancel──▶ cancelled
    any but rolled_back ──failures past the threshold, or an operator──▶ rolled_back

Every transition is one write transaction with the actions it creates or cancels and its audit
entry, and bumps ``rev`` so that the orchestrator never applies a decision made on a stale read.
A stage starts by giving install actions to its devices (``actions.create_install`` with the
rollout id), at most :data:`rollout_steps.CHUNK` per transaction; whatever a chunk leaves over is
picked up next, because a device of a started stage without an action is simply "missing" (the
same rule gives late-enrolling devices their action). The open-action rule and the rollout's own
actions, read by ``rollout_id``, make sure no device gets two.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from dataclasses import dataclass, field

import msgspec

from ..accounts import audit
from ..accounts.audit import Actor
from ..artifacts import catalog as artifacts
from ..artifacts.modules import check_devices_have_module
from ..core.clock import new_id, to_dt
from ..core.effects import Publish
from ..core.errors import FailedPrecondition, InvalidArgument
from ..core.names import DEVICE_TYPE, matches_any
from ..devices import actions
from ..devices.registry import find_device_row
from ..devices.tags import check_tags
from ..store.database import effect
from . import steps, storage
from .progress import (
    STATUSES,
    Evaluation,
    LastSeen,
    RolloutRow,
    Snapshot,
    Target,
    evaluate,
    installed,
    load_row,
    read_snapshot,
)
from .rules import HealthCondition, Window, check_percent, check_stages, parse_start_at
from .states import ACTIVE, RolloutState

DEFAULT_MAX_FAILURE = 5.0
DEFAULT_SOAK = 600.0
DEFAULT_OFFLINE_TIMEOUT = 1800.0


# --- the API's objects ---------------------------------------------------------------------------

class RolloutSpec(msgspec.Struct, kw_only=True):
    # The artifact: NAME@VERSION or its id.
    artifact: str
    # Active devices with all of these tags ...
    tags: dict[str, str] = {}
    # ... of these device types (default: the artifact's, when tags are given) ...
    device_types: list[str] = []
    # ... plus these devices (ids, hardware ids or names).
    device_ids: list[str] = []
    # Cumulative percentages, the last 100; default 5, 25, 100.
    stages: list[float] = []
    # Halt and roll back when more than this percentage of the attempted devices fail (default 5).
    max_failure_percent: float | None = None
    # How long installed devices must stay healthy before the next stage (default 600).
    soak_seconds: float | None = None
    # A device offline (or without progress) this long is skipped (default 1800).
    offline_timeout_seconds: float | None = None
    # When to start: ISO date and time (server local time unless it has an offset or a zone name), or +2h.
    start_at: str = ""
    # New actions only in this window, e.g. "Mon-Fri 01:00-05:00" or "Sat,Sun 00:00-06:00 Europe/Berlin".
    window: str = ""
    # Telemetry condition each device must meet while soaking, e.g. cpu_temp<80.
    health: str = ""
    # Offer the update; devices install only once they accept.
    consent: bool = False


class RolloutTarget(msgspec.Struct, kw_only=True):
    tags: dict[str, str] = {}
    device_types: list[str] = []
    device_ids: list[str] = []


class StageProgress(msgspec.Struct, kw_only=True):
    index: int
    percent: float
    # pending, running, completed, promoted, rolled_back or cancelled
    state: str
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    targeted: int = 0
    queued: int = 0
    in_progress: int = 0
    soaking: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0


class RollbackProgress(msgspec.Struct, kw_only=True):
    actions: int = 0
    open: int = 0
    succeeded: int = 0
    failed: int = 0


class Rollout(msgspec.Struct, kw_only=True):
    id: str
    artifact: str
    artifact_id: str
    component: str
    target: RolloutTarget
    stages: list[StageProgress]
    max_failure_percent: float
    soak_seconds: float
    offline_timeout_seconds: float
    start_at: dt.datetime | None = None
    window: str = ""
    health: str = ""
    consent: bool = False
    state: str
    # Index of the current stage; -1 before the first starts.
    stage: int = -1
    # Why it halted, was rolled back, cancelled or paused.
    reason: str = ""
    # What it waits for now, in words.
    waiting_for: str = ""
    # Whether the stage counts were computed (GetRollout does; ListRollouts does not).
    counted: bool = False
    # When the soak of the last soaking device ends (counted rollouts; none while no device soaks).
    soak_ends_at: dt.datetime | None = None
    rollback: RollbackProgress = msgspec.field(default_factory=RollbackProgress)
    created_by: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


class RolloutDevice(msgspec.Struct, kw_only=True):
    device_id: str
    # The device's name; empty when it has been deleted.
    name: str = ""
    # 0-based stage index.
    stage: int
    # pending, queued, in_progress, soaking, succeeded, failed or skipped
    status: str
    detail: str = ""


# --- creating ------------------------------------------------------------------------------------------

def create(conn: sqlite3.Connection, actor: Actor, spec: RolloutSpec, now: float) -> tuple[Rollout, steps.Change]:
    art = artifacts.get(conn, spec.artifact)
    stages = check_stages(list(spec.stages))
    max_failure = check_percent(DEFAULT_MAX_FAILURE if spec.max_failure_percent is None
                                else spec.max_failure_percent)
    soak = _seconds(spec.soak_seconds, DEFAULT_SOAK, "soak", minimum=0)
    timeout = _seconds(spec.offline_timeout_seconds, DEFAULT_OFFLINE_TIMEOUT, "offline timeout", minimum=1)
    start_at = parse_start_at(spec.start_at, now)
    window = Window.parse(spec.window)
    health = HealthCondition.parse(spec.health)
    target = _target(conn, spec, art)
    count = storage.count_target_devices(conn, target)
    if not count:
        raise FailedPrecondition(f"no active device matches the target ({describe_target(target)}); "
                                 "'fleetd devices list --tag k=v --type T' shows what matches")
    check_devices_have_module(art, storage.target_device_inventories(conn, target))
    _check_no_overlap(conn, art.name, target)
    rid = new_id("ro")
    storage.insert_rollout(
        conn, rollout_id=rid, artifact_id=art.id, component=art.name, target=target.to_json(),
        stages=json.dumps(stages), max_failure=max_failure / 100, soak=soak, offline_timeout=timeout,
        start_at=start_at, window=window.text if window else "", health=str(health) if health else "",
        consent=spec.consent, created_by=actor.name or actor.id, now=now)
    audit.record(conn, actor, "rollout.create", rid, artifact=f"{art.name}@{art.version}", selector=target.to_json(),
                 stages=stages, devices=count)
    effect(conn, Publish("rollout.state", {"id": rid, "state": "scheduled", "previous": "",
                                           "artifact": f"{art.name}@{art.version}"}))
    return get(conn, rid, now, counted=False), steps.Change(rid)


def _seconds(value: float | None, default: float, what: str, minimum: float) -> float:
    v = default if value is None else float(value)
    if not minimum <= v <= 365 * 86400:
        raise InvalidArgument(f"the {what} must be {minimum:g} s to a year, got {v:g} s")
    return v


def _target(conn: sqlite3.Connection, spec: RolloutSpec, art: artifacts.Artifact) -> Target:
    tags = check_tags(dict(spec.tags))
    # A given type: one of the artifact's own names or patterns, or a device type they cover.
    wrong = [t for t in spec.device_types
             if t not in art.device_types and not (DEVICE_TYPE.ok(t) and matches_any(art.device_types, t))]
    if wrong:
        raise InvalidArgument(f"{art.name}@{art.version} is built for {', '.join(art.device_types)}, not for "
                              f"{', '.join(wrong)}")
    if not tags and not spec.device_types and not spec.device_ids:
        raise InvalidArgument("say which devices: --target key=value (repeat: all must match), --device-type T "
                              "(every device of that type) and/or --device ID")
    device_types = list(dict.fromkeys(spec.device_types or art.device_types)) if tags or spec.device_types else []
    ids: list[str] = []
    for ref in dict.fromkeys(spec.device_ids):
        r = find_device_row(conn, ref, prefix=True)
        if r["status"] != "active":
            raise FailedPrecondition(f"device {r['id']} is {r['status']}; only active devices take part in rollouts")
        if not matches_any(art.device_types, r["device_type"]):
            raise FailedPrecondition(f"device {r['id']} is a {r['device_type']}; {art.name}@{art.version} is built "
                                     f"for {', '.join(art.device_types)}")
        ids.append(r["id"])
    return Target(tags, device_types, ids)


def describe_target(t: Target) -> str:
    parts = []
    if t.device_types:
        tags = " and ".join(f"{k}={v}" for k, v in sorted(t.tags.items()))
        parts.append(f"{'/'.join(t.device_types)} devices" + (f" tagged {tags}" if tags else ""))
    if t.device_ids:
        parts.append(f"{len(t.device_ids)} listed device(s)")
    return " plus ".join(parts)


def _check_no_overlap(conn: sqlite3.Connection, component: str, target: Target) -> None:
    """One rollout at a time per (device, component)."""
    for other in storage.active_rollouts_of(conn, component):
        both = storage.count_devices_in_both(conn, target, Target.from_json(other["target"]))
        if both:
            raise FailedPrecondition(
                f"rollout {other['id']} ({other['state']}) already updates {component!r} on {both} of these "
                f"devices; one rollout at a time per device and component: wait for it to end, or "
                f"'fleetd rollouts cancel {other['id']}'")


# --- reading -------------------------------------------------------------------------------------------

def get(conn: sqlite3.Connection, rollout_id: str, now: float, *, counted: bool = True,
        last_seen: LastSeen | None = None) -> Rollout:
    """One rollout; with ``counted``, its devices are classified (``last_seen``: the hub's exact check-ins)."""
    if not counted:
        return _to_api(load_row(conn, rollout_id), None, {}, now)
    snap = read_snapshot(conn, rollout_id, now, last_seen)
    return _to_api(snap.row, evaluate(snap), snap.stage_rows, now)


def list_rollouts(conn: sqlite3.Connection, now: float, state: str = "", limit: int = 100) -> list[Rollout]:
    if state and state not in set(RolloutState):
        raise InvalidArgument(f"state must be one of {', '.join(RolloutState)}, got {state!r}")
    if not 1 <= limit <= 1000:
        raise InvalidArgument("limit must be 1..1000")
    ids = storage.newest_rollout_ids(conn, state, limit)
    stages = storage.stage_rows_of(conn, ids)
    return [_to_api(load_row(conn, rid), None, stages.get(rid, {}), now) for rid in ids]


def device_progress(conn: sqlite3.Connection, rollout_id: str, now: float, status: str = "",
                    limit: int = 1000, last_seen: LastSeen | None = None) -> tuple[list[RolloutDevice], int]:
    if status and status not in STATUSES:
        raise InvalidArgument(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    snap = read_snapshot(conn, rollout_id, now, last_seen)
    found = [d for d in evaluate(snap, details=True).devices if not status or d.status == status]
    found.sort(key=lambda d: (d.stage, d.device_id))
    names = storage.device_names(conn, [d.device_id for d in found[:limit]])
    return [RolloutDevice(device_id=d.device_id, name=names.get(d.device_id, ""), stage=d.stage, status=d.status,
                          detail=d.detail) for d in found[:limit]], len(found)


def _to_api(r: RolloutRow, ev: Evaluation | None, stage_rows: dict[int, tuple[float, float | None, str]],
            now: float) -> Rollout:
    stages = []
    for i, pct in enumerate(r.stages):
        started, ended, outcome = stage_rows.get(i, (None, None, ""))
        state = "pending" if started is None else (outcome or "running") if ended is not None else "running"
        s = StageProgress(index=i, percent=pct, state=state, started_at=to_dt(started), ended_at=to_dt(ended))
        if ev is not None:
            c = ev.counts[i]
            s.targeted = c[0]
            s.queued, s.in_progress, s.soaking, s.succeeded, s.failed, s.skipped = c[2:8]
        stages.append(s)
    rb = RollbackProgress()
    if ev is not None:
        rb = RollbackProgress(actions=sum(ev.rollbacks.values()), succeeded=ev.rollbacks.get("succeeded", 0),
                              failed=sum(n for s, n in ev.rollbacks.items() if s in ("failed", "rolled_back")),
                              open=sum(n for s, n in ev.rollbacks.items() if s not in actions.TERMINAL))
    return Rollout(
        id=r.id, artifact=r.artifact, artifact_id=r.artifact_id, component=r.component,
        target=RolloutTarget(tags=r.target.tags, device_types=r.target.device_types,
                             device_ids=r.target.device_ids),
        stages=stages, max_failure_percent=round(r.max_failure * 100, 6), soak_seconds=r.soak,
        offline_timeout_seconds=r.offline_timeout, start_at=to_dt(r.start_at), window=r.window.text if r.window else "",
        health=str(r.health) if r.health else "", consent=r.consent, state=r.state, stage=r.stage, reason=r.reason,
        waiting_for=_waiting_for(r, ev, now), counted=ev is not None,
        soak_ends_at=to_dt(ev.soak_end) if ev is not None and ev.soak_end else None, rollback=rb,
        created_by=r.created_by,
        created_at=to_dt(r.created_at), updated_at=to_dt(r.updated_at), started_at=to_dt(r.started_at),
        finished_at=to_dt(r.finished_at))


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="minutes")


def _waiting_for(r: RolloutRow, ev: Evaluation | None, now: float) -> str:
    if r.state not in ACTIVE:
        return ""
    if r.state == "paused":
        return "an operator to resume it"
    if r.state == "scheduled":
        if r.start_at is not None and now < r.start_at:
            return f"its start time, {_iso(r.start_at)}"
        if r.window is not None and not r.window.contains(now):
            return f"the maintenance window ({r.window.text}), next open {_iso(r.window.next_open(now))}"
        return "the orchestrator to start it"
    if ev is None:
        return ""
    c = [sum(row[i] for row in ev.counts) for i in range(8)]
    if c[2] or c[3]:
        return f"{c[2] + c[3]} device(s) to install"
    if c[4]:
        return f"{c[4]} device(s) to finish their soak"
    if r.window is not None and not r.window.contains(now):
        return f"the maintenance window ({r.window.text}), next open {_iso(r.window.next_open(now))}"
    return "the orchestrator's next pass"


# --- operator transitions ----------------------------------------------------------------------------------

def _who(actor: Actor) -> str:
    return actor.name or actor.id or actor.kind


def pause(conn: sqlite3.Connection, actor: Actor, rollout_id: str, now: float) -> steps.Change:
    r = load_row(conn, rollout_id)
    _require(r, ("scheduled", "running"), "pause")
    change = steps.Change(r.id)
    steps.set_state(conn, actor, r, "paused", now, change, "pause", f"paused by {_who(actor)}")
    return change


def resume(conn: sqlite3.Connection, actor: Actor, rollout_id: str, now: float) -> steps.Change:
    r = load_row(conn, rollout_id)
    _require(r, ("paused",), "resume")
    change = steps.Change(r.id)
    steps.set_state(conn, actor, r, "running" if r.stage >= 0 else "scheduled", now, change, "resume", "")
    return change


def cancel(conn: sqlite3.Connection, actor: Actor, rollout_id: str, now: float) -> steps.Change:
    r = load_row(conn, rollout_id)
    _require(r, ACTIVE, "cancel")
    change = steps.Change(r.id)
    n = steps.cancel_open_installs(conn, r, now, f"rollout {r.id} cancelled by {_who(actor)}")
    steps.set_state(conn, actor, r, "cancelled", now, change, "cancel", f"cancelled by {_who(actor)}", cancelled=n)
    return change


def promote(conn: sqlite3.Connection, actor: Actor, rollout_id: str, now: float,
            last_seen: LastSeen | None = None) -> steps.Change:
    """Start the next stage now, without waiting for the soak, the start time or the window."""
    r = load_row(conn, rollout_id)
    _require(r, ("scheduled", "running"), "promote")
    if r.stage + 1 >= len(r.stages):
        raise FailedPrecondition(f"rollout {r.id} is already in its last stage ({r.stages[-1]:g}%); it completes "
                                 "when those devices have soaked")
    snap = read_snapshot(conn, r.id, now, last_seen)
    ev = evaluate(snap, for_stage=r.stage + 1)
    change = steps.Change(r.id)
    steps.start_stage(conn, actor, snap.row, r.stage + 1, now, change, installs=len(ev.missing),
                      previous_outcome="promoted")
    audit.record(conn, actor, "rollout.promote", r.id, stage=r.stage + 1)
    steps.create_installs(conn, actor, snap.row, ev.missing, change, now, audited=False)
    return change


def rollback(conn: sqlite3.Connection, actor: Actor, rollout_id: str, now: float, reason: str = "",
             last_seen: LastSeen | None = None) -> steps.Change:
    r = load_row(conn, rollout_id)
    if r.state == "rolled_back":
        raise FailedPrecondition(f"rollout {r.id} is already rolled back ({r.reason})")
    snap = read_snapshot(conn, r.id, now, last_seen)
    change = steps.Change(r.id)
    why = f"rolled back by {_who(actor)}" + (f": {reason}" if reason else "")
    steps.roll_back(conn, actor, snap.row, installed(snap), now, why, change)
    return change


def _require(r: RolloutRow, states: tuple[str, ...], verb: str) -> None:
    if r.state not in states:
        raise FailedPrecondition(f"rollout {r.id} is {r.state}; only a {' or '.join(states)} rollout can be "
                                 f"{'paused' if verb == 'pause' else verb + 'd'}")


# --- the orchestrator's decision --------------------------------------------------------------------------

@dataclass
class Plan:
    faults: list[tuple[str, str]] = field(default_factory=list)
    start: int | None = None  # stage to start
    installs: list[str] = field(default_factory=list)
    complete: bool = False
    halt: str = ""  # the reason
    rollbacks: list[str] = field(default_factory=list)  # devices to send back (halt, or stragglers after it)
    stage_installs: int = 0  # with ``start``: the installs the whole stage start hands out (its audit entry's count)
    stage_part: bool = False  # installs that belong to the stage start of the part before (audited with it)

    @property
    def empty(self) -> bool:
        return not (self.faults or self.start is not None or self.installs or self.complete or self.halt
                    or self.rollbacks)

    def split(self, size: int | None = None) -> list[Plan]:
        """The transition with the first ``size`` actions, then plans of ``size`` more actions each: one write
        transaction apiece, so that the single writer is never held for long.

        The devices go in id order: each transaction's actions then land in one stretch of the indexes keyed by
        device (actions_device, actions_open, actions_rollout, the devices looked up) instead of all over them,
        which, with random action ids, made a 75,000-device stage start about twice as slow (docs/decisions.md,
        "Action ids sort by time")."""
        size = size or steps.CHUNK
        started = self.start is not None
        installs, rollbacks = sorted(self.installs), sorted(self.rollbacks)
        first = Plan(self.faults, self.start, installs[:size], self.complete, self.halt, rollbacks[:size],
                     len(installs) if started else 0, self.stage_part)
        rest = [Plan(installs=installs[i:i + size], stage_part=started or self.stage_part)
                for i in range(size, len(installs), size)]
        rest += [Plan(rollbacks=rollbacks[i:i + size]) for i in range(size, len(rollbacks), size)]
        return [first, *rest]


def decide(snap: Snapshot) -> Plan:
    """What to do next for one rollout, from a snapshot; nothing is written here."""
    r, now = snap.row, snap.now
    if r.state == "rolled_back":
        # Devices that finished installing after the halt (or had not reported yet) go back too.
        return Plan(rollbacks=installed(snap))
    if r.state == "scheduled":
        if (r.start_at is not None and now < r.start_at) or (r.window is not None and not r.window.contains(now)):
            return Plan()
        return Plan(start=0, installs=evaluate(snap, for_stage=0).missing)
    if r.state not in ("running", "paused"):
        return Plan()
    ev = evaluate(snap)
    plan = Plan(faults=ev.new_faults)
    if ev.failure_exceeded(r.max_failure):
        plan.halt, plan.rollbacks = halt_reason(r, ev), installed(snap)
        return plan
    if r.state == "paused":
        return plan
    window_open = r.window is None or r.window.contains(now)
    if ev.stage_done and r.stage + 1 == len(r.stages):
        plan.complete = True
    elif ev.stage_done and window_open:
        plan.start = r.stage + 1
        plan.installs = evaluate(snap, for_stage=r.stage + 1).missing
    elif window_open:
        plan.installs = ev.missing
    return plan


def halt_reason(r: RolloutRow, ev: Evaluation) -> str:
    share = 100 * ev.failed / max(ev.attempted, 1)
    examples = "; ".join(f"{d}: {why}" for d, why in ev.failures[:3])
    late = (f"; {ev.late_failed} more failed but enrolled after the rollout started, so do not count"
            if ev.late_failed else "")
    return (f"stage {r.stage + 1} ({r.stages[r.stage]:g}%): {ev.failed} of {ev.attempted} attempted device(s) "
            f"failed ({share:.1f}%, more than the {r.max_failure * 100:g}% allowed); e.g. {examples}{late}")


def apply(conn: sqlite3.Connection, rollout_id: str, rev: int, plan: Plan, now: float) -> steps.Change | None:
    """Carry out a plan in the caller's write transaction; None when the rollout changed since it was read."""
    r = load_row(conn, rollout_id)
    if r.rev != rev:
        return None
    change = steps.Change(r.id)
    actor = steps.ORCHESTRATOR
    if plan.faults:
        steps.record_faults(conn, r, plan.faults, now)
        audit.record(conn, actor, "rollout.faults", r.id, devices=[d for d, _ in plan.faults][:20],
                     count=len(plan.faults), first=plan.faults[0][1])
    if plan.halt:
        steps.roll_back(conn, actor, r, plan.rollbacks, now, plan.halt, change)
    elif plan.complete:
        steps.set_state(conn, actor, r, "completed", now, change, "complete", "")
    else:
        if plan.start is not None:
            steps.start_stage(conn, actor, r, plan.start, now, change,
                              installs=plan.stage_installs or len(plan.installs))
        if plan.installs:
            steps.create_installs(conn, actor, r, plan.installs, change, now,
                                  audited=plan.start is None and not plan.stage_part)
        if plan.rollbacks:
            steps.create_rollbacks(conn, actor, r, plan.rollbacks, change)
    change.rev = storage.rollout_rev(conn, r.id)
    return change
