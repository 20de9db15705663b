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
from ..artifacts.modules import check_devices_have_module
from ..core.clock import new_ordered_id, now, to_dt
from ..core.effects import Publish
from ..core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from ..core.fields import Int32
from ..core.names import matches_any
from ..store.database import effect
from . import storage
from .registry import ActionsOpen, NewActions, find_device_row


class ActionKind(enum.StrEnum):
    """What an action asks of a device: the one list (tests/test_closed_lists.py checks every other place)."""

    INSTALL = "install"
    ROLLBACK = "rollback"
    RESTART = "restart"
    REBOOT = "reboot"
    CONFIG = "config"
    LOGS = "logs"


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
SIMPLE = (ActionKind.RESTART, ActionKind.REBOOT, ActionKind.CONFIG, ActionKind.LOGS)
# The open states in the order an action goes through them, and the states it ends in.
PROGRESS = (S.QUEUED, S.OFFERED, S.ACCEPTED, S.DOWNLOADING, S.VERIFYING, S.INSTALLING)
TERMINAL = (S.SUCCEEDED, S.FAILED, S.ROLLED_BACK, S.CANCELLED, S.REJECTED)
# States a device may report; 'queued', 'offered' and 'cancelled' are the server's.
DEVICE_REPORTABLE = (S.ACCEPTED, S.REJECTED, S.DOWNLOADING, S.VERIFYING, S.INSTALLING, S.SUCCEEDED, S.FAILED,
                     S.ROLLED_BACK)
MAX_MESSAGE = 2000
# A logs action: how many of the app's last lines it asks for, and the most a device may send back.
LOG_LINES_DEFAULT, LOG_LINES_MAX = 200, 2000
LOG_BYTES_MAX = 256 * 1024
# Results kept per device (the newest; older ones are dropped, their actions stay).
RESULTS_KEPT = 20


class ActionResult(msgspec.Struct, kw_only=True):
    """What an action brought back from the device: the last lines of an app's log (kind logs)."""

    # The lines as the app wrote them (the last may lack its newline), UTF-8; at most LOG_BYTES_MAX bytes.
    text: str = ""
    # How many lines ``text`` holds.
    lines: Int32 = 0
    # The byte cap cut the text short of the lines asked for (the log had more).
    truncated: bool = False

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
    # Only from GetAction: what the action brought back (a logs action's lines), while the server keeps it.
    result: ActionResult | None = None


class DeviceAction(msgspec.Struct, kw_only=True):
    """An action as the device gets it in a check-in."""

    id: str
    kind: str
    component: str
    state: str
    rollback: bool = False
    artifact: artifacts.ArtifactRef | None = None
    params: dict[str, Any] = {}


def _action(r: sqlite3.Row) -> Action:
    return Action(id=r["id"], device_id=r["device_id"], kind=r["kind"], component=r["component"], state=r["state"],
                  artifact=r["artifact_ref"], message=r["message"], progress=r["progress"],
                  params=json.loads(r["params"]), rollout_id=r["rollout_id"], created_by=r["created_by"],
                  created_at=to_dt(r["created_at"]), updated_at=to_dt(r["updated_at"]),
                  finished_at=to_dt(r["finished_at"]))


def get(conn: sqlite3.Connection, action_id: str, *, with_result: bool = False) -> Action:
    r = storage.admin_action(conn, action_id)
    if r is None:
        raise NotFound(f"no action {action_id!r}")
    a = _action(r)
    if with_result:
        stored = storage.action_result(conn, action_id)
        a.result = msgspec.json.decode(stored, type=ActionResult) if stored is not None else None
    return a


def list_for_device(conn: sqlite3.Connection, device_ref: str, limit: int = 100) -> list[Action]:
    did = find_device_row(conn, device_ref, prefix=True)["id"]
    return [_action(r) for r in storage.admin_actions_of(conn, did, limit)]


def open_for_device(conn: sqlite3.Connection, device_id: str, base_url: str) -> list[DeviceAction]:
    """The device's open actions, oldest first, with download references."""
    out = []
    cache: dict[str, artifacts.ArtifactRef] = {}
    for r in storage.open_actions(conn, device_id):
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
    return max((storage.longest_poll_interval(conn, action_ids[i:i + 500]) for i in range(0, len(action_ids), 500)),
               default=0)


def devices_with_open_actions(conn: sqlite3.Connection) -> set[str]:
    return storage.devices_with_open_actions(conn)


def still_open(conn: sqlite3.Connection, device_ids: list[str]) -> set[str]:
    """Of ``device_ids``, those that still have an open action (the one query for it)."""
    return storage.devices_still_open(conn, device_ids)


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


def _opened(conn: sqlite3.Connection, device_ids: list[str], action_ids: list[str]) -> None:
    if device_ids:
        effect(conn, ActionsOpen(tuple(device_ids), True))
        effect(conn, NewActions(tuple(device_ids), tuple(action_ids)))


def _insert(conn: sqlite3.Connection, actor: Actor, device_id: str, kind: str, component: str,
            artifact_id: str | None, params: dict[str, Any], *, state: str = "queued",
            rollout_id: str | None = None) -> str:
    aid, t = new_ordered_id("act"), now()
    storage.insert_action(conn, action_id=aid, device_id=device_id, kind=kind, component=component,
                          artifact_id=artifact_id, state=state, params=json.dumps(params), rollout_id=rollout_id,
                          created_by=actor.name or actor.id, at=t)
    return aid


def _check_no_open(conn: sqlite3.Connection, device_ids: list[str], component: str) -> None:
    if not component:
        return
    busy = storage.open_actions_on(conn, component, device_ids)
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
             if not matches_any(art.device_types, r["device_type"])]
    if wrong:
        listed = "; ".join(f"{ref}{'' if ref == r['id'] else ' (' + r['id'] + ')'} is of type {r['device_type']}"
                           for ref, r in wrong[:5])
        raise FailedPrecondition(f"{art.name}@{art.version} is built for {', '.join(art.device_types)}, but "
                                 f"{listed}{' …' if len(wrong) > 5 else ''}; push a build for that type "
                                 "(--device-type) or leave those devices out")
    check_devices_have_module(art, [(r["id"], r["inventory"]) for r in rows])
    _check_no_open(conn, [r["id"] for r in rows], art.name)
    state = "offered" if consent else "queued"
    ids = [_insert(conn, actor, r["id"], ActionKind.INSTALL, art.name, art.id, {}, state=state, rollout_id=rollout_id)
           for r in rows]
    _opened(conn, [r["id"] for r in rows], ids)
    audit.record_batch(conn, actor, "action.install", ids, [r["id"] for r in rows], component=art.name,
                       artifact=f"{art.name}@{art.version}", rollout=rollout_id)
    return ids


def insert_installs(conn: sqlite3.Connection, actor: Actor, device_ids: list[str], art: artifacts.Artifact, *,
                    consent: bool, rollout_id: str) -> list[str]:
    """Install actions of ``art`` for devices the caller has checked (active, of a type the artifact is built for,
    no open action for its component), in bulk: two statements however many. No audit entry: the caller's one
    entry covers them (a rollout's stage start names the stage and its count)."""
    state = S.OFFERED if consent else S.QUEUED
    t, by = now(), actor.name or actor.id
    ids = [new_ordered_id("act") for _ in device_ids]
    storage.insert_actions(conn, ids, device_ids, kind=ActionKind.INSTALL, component=art.name, artifact_id=art.id,
                           state=state, params="{}", rollout_id=rollout_id, created_by=by, at=t)
    _opened(conn, device_ids, ids)
    return ids


def create_rollback(conn: sqlite3.Connection, actor: Actor, device_refs: list[str], component: str,
                    *, rollout_id: str | None = None) -> list[str]:
    """Install each device's previous known-good version of ``component``, marked as a rollback."""
    rows = _active_devices(conn, device_refs)
    _check_no_open(conn, [r["id"] for r in rows], component)
    ids = []
    for r in rows:
        comp = storage.component(conn, r["id"], component)
        artifact_id, params = None, {}
        if comp and comp["previous_version"]:
            artifact_id = storage.artifact_id_of(conn, component, comp["previous_version"])
            params = {"from_version": comp["version"], "to_version": comp["previous_version"]}
        if artifact_id is None:
            # No previous version to go back to: the device removes (app) or keeps (firmware) what it has.
            params = {**params, "no_previous_version": True}
        ids.append(_insert(conn, actor, r["id"], ActionKind.ROLLBACK, component, artifact_id, params,
                           rollout_id=rollout_id))
    _opened(conn, [r["id"] for r in rows], ids)
    audit.record_batch(conn, actor, "action.rollback", ids, [r["id"] for r in rows], component=component,
                       rollout=rollout_id)
    return ids


def create_simple(conn: sqlite3.Connection, actor: Actor, device_refs: list[str], kind: str, component: str = "",
                  params: dict[str, Any] | None = None) -> list[str]:
    """restart (a component), reboot (the device), config, or logs (a component's last log lines)."""
    if kind not in SIMPLE:
        raise InvalidArgument(f"kind must be {_or(SIMPLE)} here, got {kind!r}")
    if kind == ActionKind.RESTART and not component:
        raise InvalidArgument("restart needs the app (component) to restart")
    if kind == ActionKind.LOGS:
        if not component:
            raise InvalidArgument("logs needs the app (component) whose log to read")
        params = {"lines": _log_lines((params or {}).get("lines"))}
    rows = _active_devices(conn, device_refs)
    if kind == ActionKind.LOGS:
        _check_reports_app(conn, rows, component)
    ids = [_insert(conn, actor, r["id"], kind, component, None, params or {}) for r in rows]
    _opened(conn, [r["id"] for r in rows], ids)
    audit.record_batch(conn, actor, f"action.{kind}", ids, [r["id"] for r in rows], component=component)
    return ids


def _log_lines(value: object) -> int:
    if value in (None, "", 0):
        return LOG_LINES_DEFAULT
    try:
        n = int(str(value))
    except ValueError:
        n = 0
    if not 1 <= n <= LOG_LINES_MAX:
        raise InvalidArgument(f"lines must be a whole number from 1 to {LOG_LINES_MAX}, got {value!r}")
    return n


def _check_reports_app(conn: sqlite3.Connection, rows: list[sqlite3.Row], component: str) -> None:
    """Every device must report ``component`` among its apps: a typo fails now, not at the next check-in."""
    for r in rows:
        names = [c["name"] for c in storage.component_rows(conn, r["id"])]
        if component not in names:
            have = f"it reports {', '.join(names)}" if names else "it reports no apps yet"
            raise FailedPrecondition(f"device {r['name']} ({r['id']}) has no app {component!r}; {have}")


def _or(names: tuple[str, ...]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}"


def _set_state(conn: sqlite3.Connection, action_id: str, state: str, message: str, progress: int) -> None:
    storage.set_action_state(conn, action_id, state, message, progress, now(), terminal=state in TERMINAL)


def report(conn: sqlite3.Connection, device_id: str, action_id: str, state: str, message: str = "",
           progress: int = 0, result: ActionResult | None = None) -> Action:
    """A device moves its action forward; the event stream and the hub hear of it after the commit."""
    action = advance(conn, device_id, action_id, state, message, progress, result)
    settled(conn, action)
    return action


def advance(conn: sqlite3.Connection, device_id: str, action_id: str, state: str, message: str = "",
            progress: int = 0, result: ActionResult | None = None) -> Action:
    """:func:`report` without its effects, for a caller that makes several steps of one report (DDI feedback)."""
    if state not in DEVICE_REPORTABLE:
        raise InvalidArgument(f"state must be one of {', '.join(DEVICE_REPORTABLE)}, got {state!r}")
    if not 0 <= progress <= 100:
        raise InvalidArgument("progress must be 0..100")
    message = message[:MAX_MESSAGE]
    r = storage.action(conn, action_id)
    if r is None or r["device_id"] != device_id:
        # Same answer for another device's action as for none: do not reveal which ids exist.
        raise NotFound(f"no action {action_id!r} for this device")
    current = r["state"]
    if result is not None:
        _check_result(r["kind"], state, result)
    if current in TERMINAL:
        if current != state:
            raise FailedPrecondition(f"action {action_id} already ended as {current}")
    elif state != current:
        _check_transition(r["kind"], current, state)
        _set_state(conn, action_id, state, message, progress)
        if result is not None:
            _keep_result(conn, device_id, action_id, result)
    else:
        storage.set_action_progress(conn, action_id, message, progress, now())
    return get(conn, action_id)


def _check_result(kind: str, state: str, result: ActionResult) -> None:
    if kind != ActionKind.LOGS:
        raise InvalidArgument(f"a {kind} action brings no result back; send the report without one")
    if state != S.SUCCEEDED:
        raise InvalidArgument(f"a result comes with the succeeded report, not with {state}")
    size = len(result.text.encode())
    if size > LOG_BYTES_MAX:
        raise InvalidArgument(f"the log text is {size} bytes; at most {LOG_BYTES_MAX} bytes "
                              f"({LOG_BYTES_MAX // 1024} KiB) are accepted: send the last lines that fit and set "
                              "truncated")
    if not 0 <= result.lines <= LOG_LINES_MAX:
        raise InvalidArgument(f"lines must be 0..{LOG_LINES_MAX}, got {result.lines}")


def _keep_result(conn: sqlite3.Connection, device_id: str, action_id: str, result: ActionResult) -> None:
    """Store ``result``; a device keeps its RESULTS_KEPT newest ones."""
    storage.keep_action_result(conn, device_id, action_id, msgspec.json.encode(result).decode(), now(), RESULTS_KEPT)


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
    done = get(conn, action_id)
    settled(conn, done)  # the event stream hears of it, as of any other end of an action
    return done


def may_download(conn: sqlite3.Connection, device_id: str, sha256: str) -> bool:
    """A device may fetch a blob that one of its open actions refers to."""
    return storage.open_action_fetches(conn, device_id, sha256)


def require_device_owns(conn: sqlite3.Connection, device_id: str, action_id: str) -> None:
    if storage.action_device_id(conn, action_id) != device_id:
        raise PermissionDenied("not your action")
