"""Actions: what a device is asked to do, and the states it reports back.

    queued → (offered → accepted, in consent mode) → downloading → verifying → installing
           → succeeded | failed | rolled_back;   also cancelled (by an admin) and rejected (by the device)

A device may only move its own open actions forward; repeating the current
state updates progress and message (a retried report is harmless); a report
on an action that already ended in that same state is accepted as a no-op.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import sqlite3
from typing import Any

import msgspec

from ..accounts import audit
from ..accounts.audit import Actor
from ..artifacts import catalog as artifacts
from ..core.clock import new_id, now, to_dt
from ..core.effects import Publish
from ..core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from ..store.database import effect
from .registry import ActionsOpen, find_device_row


class ActionKind(enum.StrEnum):
    """What an action asks of a device: the one list (tests/test_closed_lists.py checks every other place)."""

    INSTALL = "install"
    ROLLBACK = "rollback"
    RESTART = "restart"
    REBOOT = "reboot"
    CONFIG = "config"


class ActionState(enum.StrEnum):
    """Where an action is: the one list of its states (tests/test_closed_lists.py checks every other place)."""

    QUEUED = "queued"
    OFFERED = "offered"
    ACCEPTED = "accepted"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


S = ActionState  # short, for the tuples below
# Kinds that carry an artifact (or go back to the previous one), and those that only run a command.
DEPLOYING = (ActionKind.INSTALL, ActionKind.ROLLBACK)
SIMPLE = (ActionKind.RESTART, ActionKind.REBOOT, ActionKind.CONFIG)
# The open states in the order an action goes through them, and the states it ends in.
PROGRESS = (S.QUEUED, S.OFFERED, S.ACCEPTED, S.DOWNLOADING, S.VERIFYING, S.INSTALLING)
TERMINAL = (S.SUCCEEDED, S.FAILED, S.ROLLED_BACK, S.CANCELLED, S.REJECTED)
# States a device may report; 'queued', 'offered' and 'cancelled' are the server's.
DEVICE_REPORTABLE = (S.ACCEPTED, S.REJECTED, S.DOWNLOADING, S.VERIFYING, S.INSTALLING, S.SUCCEEDED, S.FAILED,
                     S.ROLLED_BACK)
MAX_MESSAGE = 2000
# While a device works through an action (docs/protocol.md §7, next_checkin) it checks in this often instead of
# every poll_interval, so its progress and the next step come sooner; never under MIN_CHECKIN. An action offered
# for consent is waiting, not worked on, so it does not count.
WORKING_CHECKIN = 10
MIN_CHECKIN = 5


class Action(msgspec.Struct, kw_only=True):
    """An action as admins see it."""

    id: str
    device_id: str
    kind: str
    component: str
    state: str
    artifact: str | None = None  # NAME@VERSION
    message: str = ""
    progress: int = 0
    params: dict[str, Any] = {}
    rollout_id: str | None = None
    created_by: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


class DeviceAction(msgspec.Struct, kw_only=True):
    """An action as the device gets it in a check-in."""

    id: str
    kind: str
    component: str
    state: str
    rollback: bool = False
    artifact: artifacts.ArtifactRef | None = None
    params: dict[str, Any] = {}


_ADMIN_SELECT = ("SELECT ac.*, ar.name || '@' || ar.version AS artifact_ref FROM actions ac "
                 "LEFT JOIN artifacts ar ON ar.id = ac.artifact_id")


def _action(r: sqlite3.Row) -> Action:
    return Action(id=r["id"], device_id=r["device_id"], kind=r["kind"], component=r["component"], state=r["state"],
                  artifact=r["artifact_ref"], message=r["message"], progress=r["progress"],
                  params=json.loads(r["params"]), rollout_id=r["rollout_id"], created_by=r["created_by"],
                  created_at=to_dt(r["created_at"]), updated_at=to_dt(r["updated_at"]),
                  finished_at=to_dt(r["finished_at"]))


def get(conn: sqlite3.Connection, action_id: str) -> Action:
    r = conn.execute(f"{_ADMIN_SELECT} WHERE ac.id = ?", (action_id,)).fetchone()
    if r is None:
        raise NotFound(f"no action {action_id!r}")
    return _action(r)


def list_for_device(conn: sqlite3.Connection, device_ref: str, limit: int = 100) -> list[Action]:
    did = find_device_row(conn, device_ref, prefix=True)["id"]
    rows = conn.execute(f"{_ADMIN_SELECT} WHERE ac.device_id = ? ORDER BY ac.created_at DESC, ac.rowid DESC "
                        "LIMIT ?", (did, limit))
    return [_action(r) for r in rows]


def open_for_device(conn: sqlite3.Connection, device_id: str, base_url: str) -> list[DeviceAction]:
    """The device's open actions, oldest first, with download references."""
    out = []
    cache: dict[str, artifacts.ArtifactRef] = {}
    for r in conn.execute("SELECT * FROM actions WHERE device_id = ? AND open = 1 ORDER BY created_at, rowid",
                          (device_id,)):
        ref = None
        if r["artifact_id"]:
            ref = cache.get(r["artifact_id"])
            if ref is None:
                ref = cache[r["artifact_id"]] = artifacts.ref_for_device(
                    artifacts.get(conn, r["artifact_id"]), base_url)
        out.append(DeviceAction(id=r["id"], kind=r["kind"], component=r["component"], state=r["state"],
                                rollback=r["kind"] == ActionKind.ROLLBACK, artifact=ref,
                                params=json.loads(r["params"])))
    return out


def next_checkin(poll_interval: int, pending: list[DeviceAction]) -> int:
    """Seconds until the device's next check-in: sooner while it has an action to work through."""
    if any(a.state != S.OFFERED for a in pending):
        return max(MIN_CHECKIN, min(poll_interval, WORKING_CHECKIN))
    return poll_interval


def longest_poll_interval(conn: sqlite3.Connection, action_ids: list[str]) -> int:
    """The longest poll interval among the devices of these actions: by then every one has picked its action up."""
    longest = 0
    for i in range(0, len(action_ids), 500):
        chunk = action_ids[i:i + 500]
        row = conn.execute("SELECT MAX(d.poll_interval) FROM actions a JOIN devices d ON d.id = a.device_id "
                           f"WHERE a.id IN ({','.join('?' * len(chunk))})", chunk).fetchone()
        longest = max(longest, row[0] or 0)
    return longest


def devices_with_open_actions(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT DISTINCT device_id FROM actions WHERE open = 1")}


def still_open(conn: sqlite3.Connection, device_ids: list[str]) -> set[str]:
    """Of ``device_ids``, those that still have an open action (the one query for it)."""
    found: set[str] = set()
    for i in range(0, len(device_ids), 500):
        chunk = device_ids[i:i + 500]
        found.update(r[0] for r in conn.execute(
            f"SELECT DISTINCT device_id FROM actions WHERE open = 1 AND device_id IN ({','.join('?' * len(chunk))})",
            chunk))
    return found


def note_open(conn: sqlite3.Connection, device_ids: list[str]) -> set[str]:
    """Record, for the hub once this transaction commits, which of ``device_ids`` still have open actions after
    some of theirs ended; returns those."""
    still = still_open(conn, device_ids)
    closed = tuple(d for d in dict.fromkeys(device_ids) if d not in still)
    if still:
        effect(conn, ActionsOpen(tuple(still), True))
    if closed:
        effect(conn, ActionsOpen(closed, False))
    return still


def settled(conn: sqlite3.Connection, action: Action) -> None:
    """Record, for once this transaction commits: the action's new state on the event stream, and whether its
    device still has open actions."""
    effect(conn, Publish("action.state", msgspec.to_builtins(action)))
    note_open(conn, [action.device_id])


def _opened(conn: sqlite3.Connection, device_ids: list[str]) -> None:
    if device_ids:
        effect(conn, ActionsOpen(tuple(device_ids), True))


def _insert(conn: sqlite3.Connection, actor: Actor, device_id: str, kind: str, component: str,
            artifact_id: str | None, params: dict[str, Any], *, state: str = "queued",
            rollout_id: str | None = None) -> str:
    aid, t = new_id("act"), now()
    conn.execute("INSERT INTO actions (id, device_id, kind, component, artifact_id, state, params, rollout_id, "
                 "created_by, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                 (aid, device_id, kind, component, artifact_id, state, json.dumps(params), rollout_id,
                  actor.name or actor.id, t, t))
    conn.execute("INSERT INTO action_events (action_id, ts, state) VALUES (?, ?, ?)", (aid, t, state))
    audit.record(conn, actor, f"action.{kind}", aid, device=device_id, component=component, artifact=artifact_id)
    return aid


def _check_no_open(conn: sqlite3.Connection, device_ids: list[str], component: str) -> None:
    if not component:
        return
    marks = ",".join("?" * len(device_ids))
    busy = conn.execute(f"SELECT device_id, id, kind FROM actions WHERE open = 1 AND component = ? "
                        f"AND device_id IN ({marks})", [component, *device_ids]).fetchall()
    if busy:
        listed = ", ".join(f"{r['device_id']} ({r['kind']} {r['id']})" for r in busy[:5])
        raise FailedPrecondition(f"{len(busy)} device(s) already have an open action for {component!r}: {listed}"
                                 f"{' …' if len(busy) > 5 else ''}; wait for it or cancel it first")


def _active_devices(conn: sqlite3.Connection, refs: list[str]) -> list[sqlite3.Row]:
    if not refs:
        raise InvalidArgument("no devices given")
    rows = []
    for ref in dict.fromkeys(refs):
        r = find_device_row(conn, ref, prefix=True)
        if r["status"] != "active":
            raise FailedPrecondition(f"device {r['id']} is {r['status']}; only active devices get actions")
        rows.append(r)
    return rows


def create_install(conn: sqlite3.Connection, actor: Actor, device_refs: list[str], artifact_ref: str,
                   *, consent: bool = False, rollout_id: str | None = None) -> list[str]:
    """Install actions for every device, all or none."""
    art = artifacts.get(conn, artifact_ref)
    rows = _active_devices(conn, device_refs)
    # Said by the name the caller gave (_active_devices keeps the order of the first mention of each).
    wrong = [(ref, r) for ref, r in zip(dict.fromkeys(device_refs), rows, strict=True)
             if r["device_type"] not in art.device_types]
    if wrong:
        listed = "; ".join(f"{ref}{'' if ref == r['id'] else ' (' + r['id'] + ')'} is of type {r['device_type']}"
                           for ref, r in wrong[:5])
        raise FailedPrecondition(f"{art.name}@{art.version} is built for {', '.join(art.device_types)}, but "
                                 f"{listed}{' …' if len(wrong) > 5 else ''}; push a build for that type "
                                 "(--device-type) or leave those devices out")
    _check_no_open(conn, [r["id"] for r in rows], art.name)
    state = "offered" if consent else "queued"
    ids = [_insert(conn, actor, r["id"], ActionKind.INSTALL, art.name, art.id, {}, state=state, rollout_id=rollout_id)
           for r in rows]
    _opened(conn, [r["id"] for r in rows])
    return ids


def create_rollback(conn: sqlite3.Connection, actor: Actor, device_refs: list[str], component: str,
                    *, rollout_id: str | None = None) -> list[str]:
    """Install each device's previous known-good version of ``component``, marked as a rollback."""
    rows = _active_devices(conn, device_refs)
    _check_no_open(conn, [r["id"] for r in rows], component)
    ids = []
    for r in rows:
        comp = conn.execute("SELECT version, previous_version FROM device_components WHERE device_id = ? AND "
                            "name = ?", (r["id"], component)).fetchone()
        artifact_id, params = None, {}
        if comp and comp["previous_version"]:
            a = conn.execute("SELECT id FROM artifacts WHERE name = ? AND version = ?",
                             (component, comp["previous_version"])).fetchone()
            if a is not None:
                artifact_id = a["id"]
            params = {"from_version": comp["version"], "to_version": comp["previous_version"]}
        if artifact_id is None:
            # No previous version to go back to: the device removes (app) or keeps (firmware) what it has.
            params = {**params, "no_previous_version": True}
        ids.append(_insert(conn, actor, r["id"], ActionKind.ROLLBACK, component, artifact_id, params,
                           rollout_id=rollout_id))
    _opened(conn, [r["id"] for r in rows])
    return ids


def create_simple(conn: sqlite3.Connection, actor: Actor, device_refs: list[str], kind: str, component: str = "",
                  params: dict[str, Any] | None = None) -> list[str]:
    """restart (a component), reboot (the device) or config."""
    if kind not in SIMPLE:
        raise InvalidArgument(f"kind must be {_or(SIMPLE)} here, got {kind!r}")
    if kind == ActionKind.RESTART and not component:
        raise InvalidArgument("restart needs the app (component) to restart")
    rows = _active_devices(conn, device_refs)
    ids = [_insert(conn, actor, r["id"], kind, component, None, params or {}) for r in rows]
    _opened(conn, [r["id"] for r in rows])
    return ids


def _or(names: tuple[str, ...]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}"


def _set_state(conn: sqlite3.Connection, action_id: str, state: str, message: str, progress: int) -> None:
    t = now()
    terminal = state in TERMINAL
    conn.execute("UPDATE actions SET state = ?, message = ?, progress = ?, updated_at = ?, open = ?, "
                 "finished_at = CASE WHEN ? THEN ? ELSE finished_at END WHERE id = ?",
                 (state, message, progress, t, 0 if terminal else 1, terminal, t, action_id))
    conn.execute("INSERT INTO action_events (action_id, ts, state, message, progress) VALUES (?,?,?,?,?)",
                 (action_id, t, state, message, progress))


def report(conn: sqlite3.Connection, device_id: str, action_id: str, state: str, message: str = "",
           progress: int = 0) -> Action:
    """A device moves its action forward; the event stream and the hub hear of it after the commit."""
    action = advance(conn, device_id, action_id, state, message, progress)
    settled(conn, action)
    return action


def advance(conn: sqlite3.Connection, device_id: str, action_id: str, state: str, message: str = "",
            progress: int = 0) -> Action:
    """:func:`report` without its effects, for a caller that makes several steps of one report (DDI feedback)."""
    if state not in DEVICE_REPORTABLE:
        raise InvalidArgument(f"state must be one of {', '.join(DEVICE_REPORTABLE)}, got {state!r}")
    if not 0 <= progress <= 100:
        raise InvalidArgument("progress must be 0..100")
    message = message[:MAX_MESSAGE]
    r = conn.execute("SELECT * FROM actions WHERE id = ?", (action_id,)).fetchone()
    if r is None or r["device_id"] != device_id:
        # Same answer for another device's action as for none: do not reveal which ids exist.
        raise NotFound(f"no action {action_id!r} for this device")
    current = r["state"]
    if current in TERMINAL:
        if current != state:
            raise FailedPrecondition(f"action {action_id} already ended as {current}")
    elif state != current:
        _check_transition(r["kind"], current, state)
        _set_state(conn, action_id, state, message, progress)
    else:
        conn.execute("UPDATE actions SET message = ?, progress = ?, updated_at = ? WHERE id = ?",
                     (message, progress, now(), action_id))
    return get(conn, action_id)


def _check_transition(kind: str, current: str, new: str) -> None:
    if current == "offered" and new not in ("accepted", "rejected", "failed"):
        raise FailedPrecondition("this action is offered: accept or reject it first")
    if new in ("accepted", "rejected") and current != "offered":
        raise FailedPrecondition(f"only an offered action can be {new}; this one is {current}")
    if new in PROGRESS and PROGRESS.index(new) < PROGRESS.index(current):
        raise FailedPrecondition(f"cannot go back from {current} to {new}")
    if kind in SIMPLE and new in (S.DOWNLOADING, S.VERIFYING):
        raise InvalidArgument(f"a {kind} action has no {new} step")


def cancel(conn: sqlite3.Connection, actor: Actor, action_id: str) -> Action:
    a = get(conn, action_id)
    if a.state in TERMINAL:
        raise FailedPrecondition(f"action {action_id} already ended as {a.state}")
    _set_state(conn, action_id, "cancelled", f"cancelled by {actor.name or actor.id}", a.progress)
    audit.record(conn, actor, "action.cancel", action_id, device=a.device_id)
    note_open(conn, [a.device_id])
    return get(conn, action_id)


def may_download(conn: sqlite3.Connection, device_id: str, sha256: str) -> bool:
    """A device may fetch a blob that one of its open actions refers to."""
    return conn.execute("SELECT 1 FROM actions ac JOIN artifacts ar ON ar.id = ac.artifact_id "
                        "WHERE ac.device_id = ? AND ac.open = 1 AND ar.sha256 = ? LIMIT 1",
                        (device_id, sha256)).fetchone() is not None


def require_device_owns(conn: sqlite3.Connection, device_id: str, action_id: str) -> None:
    r = conn.execute("SELECT device_id FROM actions WHERE id = ?", (action_id,)).fetchone()
    if r is None or r[0] != device_id:
        raise PermissionDenied("not your action")
