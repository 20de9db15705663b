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
from ..devices import storage as devices_storage
from ..devices.registry import DEFAULT_POLL_INTERVAL, DeviceGone, DeviceRuntime, find_device_row
from ..devices.tags import check_tags
from ..store.database import Store, effect
from . import storage
from .tokens import TokenEntry, TokenIndex, check_device_type, load_live

DEFAULT_DEVICE_TYPE = "ddi"
# The kinds DDI delivers (a deploymentBase carries an artifact); the others are answered as failed.
DEPLOYABLE = actions.DEPLOYING


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
    for r in storage.ddi_device_rows(conn):
        controllers[r[1]] = r[0]
        if r[2]:
            requested.add(r[0])
    return Loaded(load_live(conn), controllers, requested, storage.watched_device_ids(conn),
                  storage.installed_bases(conn))


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

    def apply(self, loaded: Loaded) -> None:
        """Everything as :func:`load` read it (after the change feed lost its connection: store/changes.py)."""
        self.tokens.replace(loaded.tokens)
        self.controllers.clear()
        self.controllers.update(loaded.controllers)
        self.installed.clear()
        self.installed.update(loaded.installed)
        self.config_requested.clear()
        self.config_requested.update(loaded.config_requested)
        self.watch.clear()
        self.watch.update(loaded.watch)

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
    num = storage.num_of(conn, kind, ref)
    if num is None:
        raise NotFound(f"no DDI id for {kind} {ref}")
    return num


def ref_of(conn: sqlite3.Connection, kind: str, num: int) -> str | None:
    return storage.ref_of(conn, kind, num)


# --- DDI devices ---------------------------------------------------------------------

def check_controller_id(controller_id: str) -> str:
    return CONTROLLER_ID.check(controller_id)


def _insert_device(conn: sqlite3.Connection, actor: Actor, controller_id: str, device_type: str,
                   tags: dict[str, str], via: str) -> tuple[str, DeviceRuntime]:
    did, t = new_id("dev"), now()
    # DDI devices authenticate by token, never by key pair: the public key stays empty (no signature matches it).
    devices_storage.insert_device(
        conn, device_id=did, hardware_id=controller_id, name=controller_id, device_type=device_type, public_key=b"",
        status="active", claim_code=None, token_id=None, tags=json.dumps(tags), inventory="{}",
        poll_interval=DEFAULT_POLL_INTERVAL, created_at=t, enrolled_at=t, last_addr=None)
    storage.insert_ddi_device(conn, did, controller_id, t)
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
    r = storage.device_with_ddi(conn, controller_id)
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
    r = storage.device_and_controller_id(conn, ref)
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
        devices_storage.set_type_and_tags(conn, r["id"], device_type or r["device_type"], json.dumps(merged))
        audit.record(conn, actor, "device.update", r["id"], device_type=device_type or None, set_tags=tags)
    _known(conn, r["id"], r["controller_id"])
    return DdiDevice(r["id"], r["controller_id"], False,
                     DeviceRuntime(r["status"], r["poll_interval"], device_type or r["device_type"]))


def find_ddi_device(conn: sqlite3.Connection, ref: str) -> DdiDevice:
    r = find_device_row(conn, ref)
    controller_id = storage.controller_id_of(conn, r["id"])
    if controller_id is None:
        raise FailedPrecondition(f"device {r['id']} does not use DDI")
    return DdiDevice(r["id"], controller_id, False, DeviceRuntime(r["status"], r["poll_interval"], r["device_type"]))


# --- what a poll shows -----------------------------------------------------------------

@dataclass(frozen=True)
class PollView:
    deployment: tuple[int, str] | None  # (action num, state)
    cancel: int | None  # action num
    watch: bool
    # Open actions DDI cannot express: restart, reboot, config, a rollback with no version to go back to.
    undeliverable: bool = False


def poll_view(conn: sqlite3.Connection, device_id: str) -> PollView:
    cancel = storage.cancel_to_show(conn, device_id)
    deploy = storage.deployment_to_show(conn, device_id)
    fetched_open = storage.fetched_open(conn, device_id)
    undeliverable = storage.has_undeliverable(conn, device_id)
    return PollView((int(deploy[0]), str(deploy[1])) if deploy else None, cancel,
                    cancel is not None or fetched_open, undeliverable)


def fail_undeliverable(conn: sqlite3.Connection, device_id: str) -> list[str]:
    """End the open actions a DDI device can never be sent, so that none stays open forever and blocks its
    component. A rollback without a previous version: the device keeps what it runs (as firmware does)."""
    rows = storage.undeliverable(conn, device_id)
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
    r = storage.action_by_num(conn, num)
    if r is None or r["device_id"] != device_id or r["kind"] not in DEPLOYABLE:
        # The same answer for another device's action as for none: ids of others are not revealed.
        raise NotFound(f"controller {controller_id} has no action {num}")
    return ActionRow(num, r["id"], r["kind"], r["state"], r["artifact_id"], r["fetched_at"] is not None,
                     r["cancel_acked_at"] is not None, bool(r["cancel_stopped"]), r["message"], r["progress"])


def mark_fetched(conn: sqlite3.Connection, device_id: str, action_id: str) -> None:
    storage.mark_fetched(conn, action_id, device_id, now())
    effect(conn, Fetched(device_id))


def history(conn: sqlite3.Connection, action_id: str, count: int) -> list[str]:
    return storage.action_history(conn, action_id, count)


# --- software modules ----------------------------------------------------------------------

def module_artifact(conn: sqlite3.Connection, module_num: int, device_id: str) -> sqlite3.Row:
    """The artifact behind a software module id, only if one of ``device_id``'s open deployments names it (the
    same 404 otherwise); anonymous downloads too pass the device of the controller in their path."""
    r = storage.module_artifact(conn, module_num)
    if r is None:
        raise NotFound(f"no software module {module_num}")
    if not storage.has_open_action_for(conn, device_id, r["id"]):
        raise NotFound(f"software module {module_num} is not assigned to this controller")
    return r


__all__ = ["DdiState", "PollView", "ensure_device", "module_artifact", "poll_view", "register_by_gateway"]
