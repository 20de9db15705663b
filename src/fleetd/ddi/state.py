"""hawkBit DDI: DDI devices, their integer ids, and what a poll shows them.

A DDI device is an ordinary fleetd device (active, hardware id = controller id) with a row in
``ddi_devices``. Its install and rollback actions are shown as ``deploymentBase`` (feedback is
feedback.py); a cancelled action whose deployment the device already fetched is shown as
``cancelAction`` until the device answers the cancellation. :class:`DdiState` holds what a poll
needs in memory (tokens, controller ids, which devices have something to be told), so an idle
device's poll touches no database.

Device type and tags of a new DDI device: from the gateway token that registers it, or from
``fleetd devices ddi-token --device-type/--tag``; default type ``ddi``. Config data may set the
type later with a ``device_type`` attribute (feedback.py).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from ..accounts import audit
from ..accounts.audit import Actor
from ..core.clock import new_id, now
from ..core.effects import Effect
from ..core.errors import FailedPrecondition, NotFound, Unauthenticated
from ..core.names import CONTROLLER_ID
from ..devices import actions, registry
from ..devices.registry import DEFAULT_POLL_INTERVAL, DeviceGone, DeviceRuntime, find_device_row
from ..devices.tags import check_tags
from ..store.database import Store, effect
from .tokens import TokenEntry, TokenIndex, check_device_type, load_live

DEFAULT_DEVICE_TYPE = "ddi"
# The kinds DDI delivers (a deploymentBase carries an artifact); the others are answered as failed.
DEPLOYABLE = actions.DEPLOYING
_DEPLOYABLE_SQL = ", ".join(f"'{k}'" for k in DEPLOYABLE)


# --- in-memory state -----------------------------------------------------------------

@dataclass
class Loaded:
    tokens: dict[bytes, TokenEntry]
    controllers: dict[str, str]
    config_requested: set[str]
    watch: set[str]
    installed: dict[str, int]


def load(conn: sqlite3.Connection) -> Loaded:
    controllers, requested = {}, set()
    for r in conn.execute("SELECT device_id, controller_id, config_requested FROM ddi_devices"):
        controllers[r[1]] = r[0]
        if r[2]:
            requested.add(r[0])
    watch = {r[0] for r in conn.execute(
        "SELECT DISTINCT s.device_id FROM ddi_action_state s JOIN actions a ON a.id = s.action_id "
        "WHERE s.fetched_at IS NOT NULL AND (a.open = 1 OR (a.state = 'cancelled' AND s.cancel_acked_at IS NULL))")}
    installed = {r[0]: r[1] for r in conn.execute(
        "SELECT a.device_id, n.num FROM actions a JOIN ddi_devices d ON d.device_id = a.device_id "
        "JOIN ddi_ids n ON n.kind = 'action' AND n.ref = a.id WHERE a.state = 'succeeded' "
        f"AND a.kind IN ({_DEPLOYABLE_SQL}) AND a.artifact_id IS NOT NULL ORDER BY a.finished_at, n.num")}
    return Loaded(load_live(conn), controllers, requested, watch, installed)


class ControllerKnown(Effect, frozen=True):
    """A DDI device and its controller id (``new``: just created, so its first poll asks for config data)."""

    device_id: str
    controller_id: str
    new: bool = False


class Fetched(Effect, frozen=True):
    """The device fetched a deployment: its polls look at its actions until that one is answered."""

    device_id: str


class Installed(Effect, frozen=True):
    """The deployment (by DDI number) the device last closed with success: its installedBase."""

    device_id: str
    num: int


class ConfigAnswered(Effect, frozen=True):
    device_id: str


class DdiState:
    """What the DDI hot path reads without the database, kept in step by the effects of committed writes."""

    def __init__(self, store: Store) -> None:
        loaded = store.read_sync(load)
        self.tokens = TokenIndex(loaded.tokens)
        self.controllers: dict[str, str] = loaded.controllers
        self.config_requested: set[str] = loaded.config_requested
        # Devices that fetched a deployment still open, or cancelled and not yet acknowledged.
        self.watch: set[str] = loaded.watch
        # The last deployment each device closed with success (the poll's installedBase link).
        self.installed: dict[str, int] = loaded.installed

    # The effects of committed writes (the handlers Fleet registers with the store).
    def controller_known(self, e: ControllerKnown) -> None:
        self.controllers[e.controller_id] = e.device_id
        if e.new:
            self.config_requested.add(e.device_id)

    def fetched(self, e: Fetched) -> None:
        self.watch.add(e.device_id)

    def installed_base(self, e: Installed) -> None:
        self.installed[e.device_id] = e.num

    def config_answered(self, e: ConfigAnswered) -> None:
        self.config_requested.discard(e.device_id)

    def device_gone(self, e: DeviceGone) -> None:
        for cid in [c for c, d in self.controllers.items() if d == e.device_id]:
            del self.controllers[cid]
        self.config_requested.discard(e.device_id)
        self.watch.discard(e.device_id)
        self.installed.pop(e.device_id, None)


# --- ids -----------------------------------------------------------------------------

def num_of(conn: sqlite3.Connection, kind: str, ref: str) -> int:
    r = conn.execute("SELECT num FROM ddi_ids WHERE kind = ? AND ref = ?", (kind, ref)).fetchone()
    if r is None:
        raise NotFound(f"no DDI id for {kind} {ref}")
    return int(r[0])


def ref_of(conn: sqlite3.Connection, kind: str, num: int) -> str | None:
    r = conn.execute("SELECT ref FROM ddi_ids WHERE kind = ? AND num = ?", (kind, num)).fetchone()
    return None if r is None else str(r[0])


# --- DDI devices ---------------------------------------------------------------------

def check_controller_id(controller_id: str) -> str:
    return CONTROLLER_ID.check(controller_id)


def _insert_device(conn: sqlite3.Connection, actor: Actor, controller_id: str, device_type: str,
                   tags: dict[str, str], via: str) -> tuple[str, DeviceRuntime]:
    did, t = new_id("dev"), now()
    # DDI devices authenticate by token, never by key pair: the public key stays empty (no signature matches it).
    conn.execute(
        "INSERT INTO devices (id, hardware_id, name, device_type, public_key, status, tags, inventory, poll_interval, "
        "created_at, enrolled_at) VALUES (?, ?, ?, ?, ?, 'active', ?, '{}', ?, ?, ?)",
        (did, controller_id, controller_id, device_type, b"", json.dumps(tags), DEFAULT_POLL_INTERVAL, t, t))
    conn.execute("INSERT INTO ddi_devices (device_id, controller_id, created_at) VALUES (?, ?, ?)",
                 (did, controller_id, t))
    audit.record(conn, actor, "device.enroll", did, status="active", ddi=via, hardware_id=controller_id,
                 device_type=device_type, tags=tags)
    _known(conn, did, controller_id, new=True)
    registry.enrolled(conn, did, controller_id, "ddi", "active")
    return did, DeviceRuntime("active", DEFAULT_POLL_INTERVAL, device_type)


def _known(conn: sqlite3.Connection, device_id: str, controller_id: str, *, new: bool = False) -> None:
    registry.changed(conn, device_id)
    effect(conn, ControllerKnown(device_id, controller_id, new))


def register_by_gateway(conn: sqlite3.Connection, controller_id: str, gateway: TokenEntry,
                        addr: str | None) -> tuple[str, DeviceRuntime, bool]:
    """The first poll of an unknown controller with a gateway token registers it as an active device."""
    check_controller_id(controller_id)
    r = conn.execute("SELECT d.id, d.status, d.poll_interval, d.device_type, x.device_id AS ddi FROM devices d "
                     "LEFT JOIN ddi_devices x ON x.device_id = d.id WHERE d.hardware_id = ?",
                     (controller_id,)).fetchone()
    if r is not None:
        if r["ddi"] is None:
            raise Unauthenticated(f"controller id {controller_id!r} is the hardware id of a device that does not "
                                  "use DDI")
        if r["status"] == "revoked":
            raise Unauthenticated(f"device {r['id']} ({controller_id}) was revoked")
        _known(conn, r["id"], controller_id)
        return str(r["id"]), DeviceRuntime(r["status"], r["poll_interval"], r["device_type"]), False
    actor = Actor("ddi_gateway", gateway.id, controller_id, addr)
    did, rt = _insert_device(conn, actor, controller_id, gateway.device_type or DEFAULT_DEVICE_TYPE,
                             dict(gateway.tags), "gateway")
    return did, rt, True


@dataclass
class DdiDevice:
    device_id: str
    controller_id: str
    created: bool
    runtime: DeviceRuntime


def ensure_device(conn: sqlite3.Connection, actor: Actor, ref: str, device_type: str = "",
                  tags: dict[str, str] | None = None) -> DdiDevice:
    """The DDI device named by device id or controller id, created (active) when there is none."""
    check_device_type(device_type)
    tags = check_tags(dict(tags or {}))
    r = conn.execute("SELECT d.*, x.controller_id FROM devices d LEFT JOIN ddi_devices x ON x.device_id = d.id "
                     "WHERE d.id = ? OR d.hardware_id = ?", (ref, ref)).fetchone()
    if r is None:
        did, rt = _insert_device(conn, actor, check_controller_id(ref), device_type or DEFAULT_DEVICE_TYPE, tags,
                                 "admin")
        return DdiDevice(did, ref, True, rt)
    if r["controller_id"] is None:
        raise FailedPrecondition(f"device {r['id']} ({r['hardware_id']}) enrolled with the fleet agent, not DDI; "
                                 "give a new controller id for the DDI device")
    if r["status"] == "revoked":
        raise FailedPrecondition(f"device {r['id']} is revoked; delete it first ('fleetd devices delete "
                                 f"{r['id']}') to register it again")
    if device_type or tags:
        merged = {**json.loads(r["tags"]), **tags}
        conn.execute("UPDATE devices SET device_type = ?, tags = ? WHERE id = ?",
                     (device_type or r["device_type"], json.dumps(merged), r["id"]))
        audit.record(conn, actor, "device.update", r["id"], device_type=device_type or None, set_tags=tags)
    _known(conn, r["id"], r["controller_id"])
    return DdiDevice(r["id"], r["controller_id"], False,
                     DeviceRuntime(r["status"], r["poll_interval"], device_type or r["device_type"]))


def find_ddi_device(conn: sqlite3.Connection, ref: str) -> DdiDevice:
    r = find_device_row(conn, ref)
    x = conn.execute("SELECT controller_id FROM ddi_devices WHERE device_id = ?", (r["id"],)).fetchone()
    if x is None:
        raise FailedPrecondition(f"device {r['id']} does not use DDI")
    return DdiDevice(r["id"], x[0], False, DeviceRuntime(r["status"], r["poll_interval"], r["device_type"]))


# --- what a poll shows -----------------------------------------------------------------

@dataclass(frozen=True)
class PollView:
    deployment: tuple[int, str] | None  # (action num, state)
    cancel: int | None  # action num
    watch: bool
    # Open actions DDI cannot express: restart, reboot, config, a rollback with no version to go back to.
    undeliverable: bool = False


def poll_view(conn: sqlite3.Connection, device_id: str) -> PollView:
    cancel = conn.execute(
        "SELECT n.num FROM actions a JOIN ddi_action_state s ON s.action_id = a.id "
        "JOIN ddi_ids n ON n.kind = 'action' AND n.ref = a.id WHERE a.device_id = ? AND a.state = 'cancelled' "
        "AND s.fetched_at IS NOT NULL AND s.cancel_acked_at IS NULL ORDER BY a.created_at, a.rowid LIMIT 1",
        (device_id,)).fetchone()
    # A rollback without an artifact (no previous version known) has nothing a DDI device could install.
    deploy = conn.execute(
        "SELECT n.num, a.state, s.fetched_at FROM actions a JOIN ddi_ids n ON n.kind = 'action' AND n.ref = a.id "
        "LEFT JOIN ddi_action_state s ON s.action_id = a.id WHERE a.device_id = ? AND a.open = 1 "
        f"AND a.kind IN ({_DEPLOYABLE_SQL}) AND a.artifact_id IS NOT NULL ORDER BY a.created_at, a.rowid LIMIT 1",
        (device_id,)).fetchone()
    fetched_open = conn.execute(
        "SELECT 1 FROM ddi_action_state s JOIN actions a ON a.id = s.action_id WHERE s.device_id = ? "
        "AND s.fetched_at IS NOT NULL AND a.open = 1 LIMIT 1", (device_id,)).fetchone() is not None
    undeliverable = conn.execute(
        f"SELECT 1 FROM actions WHERE device_id = ? AND open = 1 AND (kind NOT IN ({_DEPLOYABLE_SQL}) "
        "OR artifact_id IS NULL) LIMIT 1", (device_id,)).fetchone() is not None
    return PollView((int(deploy[0]), str(deploy[1])) if deploy else None, int(cancel[0]) if cancel else None,
                    cancel is not None or fetched_open, undeliverable)


def fail_undeliverable(conn: sqlite3.Connection, device_id: str) -> list[str]:
    """End the open actions a DDI device can never be sent, so that none stays open forever and blocks its
    component. A rollback without a previous version: the device keeps what it runs (as firmware does)."""
    rows = conn.execute("SELECT id, kind FROM actions WHERE device_id = ? AND open = 1 AND "
                        f"(kind NOT IN ({_DEPLOYABLE_SQL}) OR artifact_id IS NULL)", (device_id,)).fetchall()
    for r in rows:
        why = ("no previous version is known to roll back to; the DDI device keeps what it runs"
               if r["kind"] == "rollback" else f"hawkBit DDI has no {r['kind']} action; this device cannot do it")
        actions.report(conn, device_id, r["id"], "failed", why)
    return [r["id"] for r in rows]


@dataclass
class ActionRow:
    num: int
    id: str
    kind: str
    state: str
    artifact_id: str | None
    fetched: bool
    cancel_acked: bool
    cancel_stopped: bool  # the device confirmed it stopped (not rejected, not failed)
    message: str
    progress: int


def device_action(conn: sqlite3.Connection, device_id: str, controller_id: str, num: int) -> ActionRow:
    """One of this device's install/rollback actions by its DDI number; 404 for any other."""
    r = conn.execute(
        "SELECT a.*, s.fetched_at, s.cancel_acked_at, s.cancel_stopped FROM ddi_ids n JOIN actions a ON a.id = n.ref "
        "LEFT JOIN ddi_action_state s ON s.action_id = a.id WHERE n.kind = 'action' AND n.num = ?",
        (num,)).fetchone()
    if r is None or r["device_id"] != device_id or r["kind"] not in DEPLOYABLE:
        # The same answer for another device's action as for none: ids of others are not revealed.
        raise NotFound(f"controller {controller_id} has no action {num}")
    return ActionRow(num, r["id"], r["kind"], r["state"], r["artifact_id"], r["fetched_at"] is not None,
                     r["cancel_acked_at"] is not None, bool(r["cancel_stopped"]), r["message"], r["progress"])


def mark_fetched(conn: sqlite3.Connection, device_id: str, action_id: str) -> None:
    conn.execute("INSERT INTO ddi_action_state (action_id, device_id, fetched_at) VALUES (?, ?, ?) "
                 "ON CONFLICT (action_id) DO UPDATE SET fetched_at = COALESCE(fetched_at, excluded.fetched_at)",
                 (action_id, device_id, now()))
    effect(conn, Fetched(device_id))


def history(conn: sqlite3.Connection, action_id: str, count: int) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT CASE WHEN message = '' THEN state ELSE state || ': ' || message END FROM action_events "
        "WHERE action_id = ? ORDER BY id DESC LIMIT ?", (action_id, count))]


# --- software modules ----------------------------------------------------------------------

def module_artifact(conn: sqlite3.Connection, module_num: int, device_id: str) -> sqlite3.Row:
    """The artifact behind a software module id, only if one of ``device_id``'s open deployments names it (the
    same 404 otherwise); anonymous downloads too pass the device of the controller in their path."""
    r = conn.execute(
        "SELECT a.*, b.md5, b.sha1 FROM ddi_ids n JOIN artifacts a ON a.id = n.ref "
        "JOIN blobs b ON b.sha256 = a.sha256 WHERE n.kind = 'artifact' AND n.num = ?", (module_num,)).fetchone()
    if r is None:
        raise NotFound(f"no software module {module_num}")
    if conn.execute(
            "SELECT 1 FROM actions WHERE device_id = ? AND artifact_id = ? AND open = 1 LIMIT 1",
            (device_id, r["id"])).fetchone() is None:
        raise NotFound(f"software module {module_num} is not assigned to this controller")
    return r


__all__ = ["DdiState", "PollView", "ensure_device", "module_artifact", "poll_view", "register_by_gateway"]
