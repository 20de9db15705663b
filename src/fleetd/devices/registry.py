"""Devices and how they join: enrollment, claim codes, tags, revocation (join tokens: join_tokens.py).

Functions taking a ``sqlite3.Connection`` run inside the caller's write
transaction. :class:`Directory` is the in-memory view the hot path reads
(status, poll interval, auth epoch of every device), kept in step by the
service layer after each committed change.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from ..accounts import audit
from ..accounts.audit import Actor
from ..core.clock import new_id, now, to_dt
from ..core.effects import Effect, Publish
from ..core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from ..core.names import DEVICE_NAME, DEVICE_TYPE, HARDWARE_ID, TAG_KEY, like_pattern, matches_any
from ..store.database import effect
from . import join_tokens, storage
from .directory import DeviceRuntime, Directory  # noqa: F401 (DeviceRuntime: imported from here too)
from .join_tokens import JoinToken, use_token
from .tags import check_tags

CLAIM_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
DEFAULT_POLL_INTERVAL = 60
REKEY_TOKEN_TTL = 86400


# --- devices -------------------------------------------------------------------

def create_rekey_token(conn: sqlite3.Connection, actor: Actor, ref: str, expires_at: float
                       ) -> tuple[JoinToken, str, Device]:
    """A single-use token that replaces the key of one existing device (one that lost its key) and nothing else."""
    r = find_device_row(conn, ref)
    if r["status"] == "revoked":
        raise FailedPrecondition(f"device {r['id']} is revoked; a revoked device is not re-keyed: delete it "
                                 f"('fleetd devices delete {r['id']}') and enroll it again")
    tid, secret = join_tokens.insert_token(conn, actor, f"re-key {r['hardware_id']}", {}, 1, expires_at, r["id"])
    audit.record(conn, actor, "device.rekey_token", r["id"], token=tid, hardware_id=r["hardware_id"],
                 expires_at=expires_at)
    return join_tokens.get_token(conn, tid), secret, device_from_row(r)


class ComponentState(msgspec.Struct, kw_only=True):
    name: str
    version: str
    previous_version: str | None = None
    state: str = ""
    health: str = ""
    restarts: int = 0
    updated_at: dt.datetime | None = None


class Device(msgspec.Struct, kw_only=True):
    id: str
    hardware_id: str
    name: str
    device_type: str
    status: str
    online: bool = False
    tags: dict[str, str] = {}
    claim_code: str | None = None
    poll_interval: int = DEFAULT_POLL_INTERVAL
    last_seen: dt.datetime | None = None
    last_addr: str | None = None
    created_at: dt.datetime | None = None
    enrolled_at: dt.datetime | None = None
    inventory: dict[str, Any] = {}
    components: list[ComponentState] = []
    # Only in GetDevice's answer, for a device that speaks hawkBit DDI: its controller id (docs/ddi.md).
    ddi_controller_id: str | None = None
    # How it reaches fleetd: "mqtt" while its last message through the MQTT broker is within the online window
    # (2 x poll_interval + 30 s, this server's view), else "https" once seen; "" never seen. In GetDevice and
    # ListDevices.
    transport: str = ""
    # When its latest certificate that is neither expired nor revoked expires (docs/pki.md). In GetDevice and
    # ListDevices.
    certificate_expires: dt.datetime | None = None


ONLINE_SLACK = 30.0


def is_online(last_seen: float | None, poll_interval: int, at: float | None = None) -> bool:
    """Online while check-ins keep their interval: two intervals plus 30 s of slack."""
    if last_seen is None:
        return False
    return (at or now()) - last_seen <= 2 * poll_interval + ONLINE_SLACK


def device_from_row(r: sqlite3.Row, components: list[ComponentState] | None = None) -> Device:
    return Device(id=r["id"], hardware_id=r["hardware_id"], name=r["name"], device_type=r["device_type"],
                  status=r["status"], online=is_online(r["last_seen"], r["poll_interval"]),
                  tags=json.loads(r["tags"]), claim_code=r["claim_code"], poll_interval=r["poll_interval"],
                  last_seen=to_dt(r["last_seen"]), last_addr=r["last_addr"], created_at=to_dt(r["created_at"]),
                  enrolled_at=to_dt(r["enrolled_at"]), inventory=json.loads(r["inventory"]),
                  components=components or [])


def _component(r: sqlite3.Row) -> ComponentState:
    return ComponentState(name=r["name"], version=r["version"], previous_version=r["previous_version"],
                          state=r["state"], health=r["health"], restarts=r["restarts"],
                          updated_at=to_dt(r["updated_at"]))


def components_of(conn: sqlite3.Connection, device_id: str) -> list[ComponentState]:
    return [_component(r) for r in storage.component_rows(conn, device_id)]


def find_device_row(conn: sqlite3.Connection, ref: str, *, prefix: bool = False) -> sqlite3.Row:
    """By id, hardware id or (unique) name; with ``prefix`` (calls that read or deploy, never those that delete or
    revoke), also by the start of an id that only one device's id has."""
    r = storage.device_by_id_or_hardware_id(conn, ref)
    if r is not None:
        return r
    rows = storage.devices_named(conn, ref)
    if len(rows) > 1:
        raise InvalidArgument(f"{len(rows)} devices are named {ref!r}; use the device id")
    if rows:
        return rows[0]
    starting = _ids_starting(conn, ref) if ref else []
    if prefix and len(starting) == 1:
        found = storage.device_by_id(conn, starting[0]["id"])
        assert found is not None  # read in the same transaction
        return found
    if prefix and starting:
        listed = ", ".join(f"{m['id']} ({m['name']})" for m in starting[:MAX_LISTED_MATCHES])
        more = " …" if len(starting) > MAX_LISTED_MATCHES else ""
        raise InvalidArgument(f"{ref!r} is the start of more than one device id: {listed}{more}; give more of the id")
    if starting:
        raise NotFound(f"no device {ref!r}: this takes the whole id, hardware id or name, not the start of an id; "
                       "'fleetd devices list' shows the ids")
    raise NotFound(f"no device {ref!r} (give its id, hardware id or name; 'fleetd devices list' shows them)")


MAX_LISTED_MATCHES = 5


def _ids_starting(conn: sqlite3.Connection, start: str) -> list[sqlite3.Row]:
    """Devices whose id starts with ``start`` (at most one more than are listed), by id."""
    return storage.devices_with_id_starting(conn, start, MAX_LISTED_MATCHES + 1)


def get_device(conn: sqlite3.Connection, ref: str) -> Device:
    r = find_device_row(conn, ref, prefix=True)
    return device_from_row(r, components_of(conn, r["id"]))


def new_claim_code(conn: sqlite3.Connection) -> str:
    while True:
        raw = "".join(secrets.choice(CLAIM_ALPHABET) for _ in range(8))
        code = f"{raw[:4]}-{raw[4:]}"
        if not storage.claim_code_taken(conn, code):
            return code


def normalize_claim_code(code: str) -> str:
    raw = code.strip().upper().replace("-", "").replace(" ", "")
    if len(raw) != 8 or any(c not in CLAIM_ALPHABET for c in raw):
        raise InvalidArgument(f"claim code {code!r} should look like ABCD-EFGH (8 letters and digits)")
    return f"{raw[:4]}-{raw[4:]}"


@dataclass
class EnrollResult:
    device: Device
    epoch: int
    created: bool


def check_enroll_fields(hardware_id: str, device_type: str, name: str) -> None:
    HARDWARE_ID.check(hardware_id, "hardware_id")
    DEVICE_TYPE.check(device_type, "device_type")
    if name:
        DEVICE_NAME.check(name, "name")


def another_key_message(hardware_id: str) -> str:
    return (f"hardware id {hardware_id} is already enrolled with another key (did this device lose its key?). "
            f"An admin runs 'fleetd devices rekey {hardware_id}' and gives the device the token it prints, or "
            "deletes the device.")


class RekeyRefused(AlreadyExists):
    """An ordinary join token offered with a new key for an active device. The refusal rolls the transaction
    back, so the caller records ``device.rekey_refused`` (:func:`record_rekey_refused`) in one of its own."""

    def __init__(self, device_id: str, hardware_id: str, token_id: str) -> None:
        super().__init__(another_key_message(hardware_id))
        self.device_id, self.hardware_id, self.token_id = device_id, hardware_id, token_id


def record_rekey_refused(conn: sqlite3.Connection, e: RekeyRefused, addr: str | None) -> None:
    audit.record(conn, Actor("device", e.device_id, e.hardware_id, addr), "device.rekey_refused", e.device_id,
                 outcome="denied", token=e.token_id)


def enroll(conn: sqlite3.Connection, *, hardware_id: str, device_type: str, public_key: bytes, name: str,
           token: Callable[[], JoinToken] | None, inventory: dict[str, Any], addr: str | None,
           max_pending: int = 0) -> EnrollResult:
    """Create or re-enroll a device. A token makes it active; without one it is pending with a claim code.

    ``token`` checks the join token (if any) without counting a use; it is called
    only when the token matters, and a use is counted only when the token is used.
    The rules for a hardware id that is already enrolled are docs/protocol.md §5,
    "Enrolling again": the same key is idempotent; another key takes a re-key
    token bound to the device, or an ordinary token while the device is pending
    (it never proved anything). ``max_pending`` (0 = no cap) bounds the devices
    waiting to be claimed.
    """
    check_enroll_fields(hardware_id, device_type, name)
    existing = storage.device_by_hardware_id(conn, hardware_id)
    if existing is None:
        return _enroll_new(conn, hardware_id, device_type, public_key, name, token() if token else None,
                           inventory, addr, max_pending)
    ensure_not_revoked(existing["status"])
    same_key = hmac.compare_digest(existing["public_key"], public_key)
    if same_key and (token is None or existing["status"] == "active"):
        # Nothing changes, but the hub may not know the device yet (enrolled by an offline command).
        changed(conn, existing["id"])
        return EnrollResult(device_from_row(existing), existing["auth_epoch"], False)
    if token is None:
        raise AlreadyExists(another_key_message(hardware_id))
    tok = token()
    if tok.device_id is not None and tok.device_id != existing["id"]:
        raise PermissionDenied(f"this token re-keys device {tok.device_id} only")
    rekey = tok.device_id is not None and not same_key
    if not same_key and not rekey and existing["status"] == "active":
        raise RekeyRefused(existing["id"], hardware_id, tok.id)
    use_token(conn, tok)
    tags = {**json.loads(existing["tags"]), **tok.tags}
    epoch = existing["auth_epoch"] + 1
    storage.reenroll_device(conn, existing["id"], public_key=public_key, token_id=tok.id, tags=json.dumps(tags),
                            device_type=device_type, auth_epoch=epoch, enrolled_at=now(), last_addr=addr)
    if not same_key:  # the lost key's certificates go on the CRL
        storage.revoke_certificates_of(conn, existing["id"], now())
    audit.record(conn, Actor("device", existing["id"], hardware_id, addr), "device.rekey" if rekey else
                 "device.reenroll", existing["id"], token=tok.id, key_replaced=not same_key,
                 was=existing["status"])
    row = storage.device_by_id(conn, existing["id"])
    assert row is not None  # written in this transaction
    changed(conn, existing["id"])
    enrolled(conn, existing["id"], hardware_id, "connect", "active")
    return EnrollResult(device_from_row(row), epoch, False)


def _enroll_new(conn: sqlite3.Connection, hardware_id: str, device_type: str, public_key: bytes, name: str,
                tok: JoinToken | None, inventory: dict[str, Any], addr: str | None, max_pending: int
                ) -> EnrollResult:
    if tok is not None and tok.device_id is not None:
        raise PermissionDenied(f"this token re-keys device {tok.device_id} only")
    if tok is None and max_pending:
        waiting = storage.count_pending_devices(conn)
        if waiting >= max_pending:
            raise ResourceExhausted(f"{waiting} devices are waiting to be claimed; claim or reject some ('fleetd "
                                    "devices list --status pending') or raise max_pending_devices", retry_after=600)
    if tok is not None:
        use_token(conn, tok)
    return _insert_new(conn, hardware_id, device_type, public_key, name, inventory, addr, active=tok is not None,
                       tags=tok.tags if tok else {}, token_id=tok.id if tok else None)


def _insert_new(conn: sqlite3.Connection, hardware_id: str, device_type: str, public_key: bytes, name: str,
                inventory: dict[str, Any], addr: str | None, *, active: bool, tags: dict[str, str],
                token_id: str | None, **audited: Any) -> EnrollResult:
    t = now()
    did = new_id("dev")
    status = "active" if active else "pending"
    storage.insert_device(
        conn, device_id=did, hardware_id=hardware_id, name=name or hardware_id, device_type=device_type,
        public_key=public_key, status=status, claim_code=None if active else new_claim_code(conn),
        token_id=token_id, tags=json.dumps(tags), inventory=json.dumps(inventory),
        poll_interval=DEFAULT_POLL_INTERVAL, created_at=t, enrolled_at=t if active else None, last_addr=addr)
    audit.record(conn, Actor("device", did, hardware_id, addr), "device.enroll", did, status=status,
                 token=token_id, **audited)
    row = storage.device_by_id(conn, did)
    assert row is not None  # written in this transaction
    changed(conn, did)
    enrolled(conn, did, hardware_id, "connect", status)
    return EnrollResult(device_from_row(row), 0, True)


def enroll_by_factory_certificate(conn: sqlite3.Connection, *, hardware_id: str, device_type: str,
                                  public_key: bytes, name: str, inventory: dict[str, Any], addr: str | None,
                                  active: bool, tags: dict[str, str], manufacturer_ca: str, max_pending: int = 0
                                  ) -> EnrollResult:
    """Enroll a device whose factory certificate (checked by the caller: devices/factory.py) names ``hardware_id``:
    pending with a claim code, or active, as its manufacturer CA says. The certificate enrols one device once: for a
    hardware id already enrolled, only the same key is accepted (idempotent), never another (docs/protocol.md §5)."""
    check_enroll_fields(hardware_id, device_type, name)
    existing = storage.device_by_hardware_id(conn, hardware_id)
    if existing is not None:
        ensure_not_revoked(existing["status"])
        if not hmac.compare_digest(existing["public_key"], public_key):
            raise AlreadyExists(another_key_message(hardware_id))
        changed(conn, existing["id"])
        return EnrollResult(device_from_row(existing), existing["auth_epoch"], False)
    if not active and max_pending and storage.count_pending_devices(conn) >= max_pending:
        raise ResourceExhausted("too many devices are waiting to be claimed; claim or reject some ('fleetd devices "
                                "list --status pending') or raise max_pending_devices", retry_after=600)
    return _insert_new(conn, hardware_id, device_type, public_key, name, inventory, addr, active=active,
                       tags=tags, token_id=None, manufacturer_ca=manufacturer_ca)


def expire_pending(conn: sqlite3.Connection, silent_for: float) -> list[str]:
    """Delete the devices that enrolled without a token, were never claimed and have not been heard from for
    ``silent_for`` seconds; their ids. A device that got a token or was claimed is active, never pending."""
    cutoff = now() - silent_for
    rows = storage.silent_pending_devices(conn, cutoff)
    for r in rows:
        storage.delete_device(conn, r["id"])
        audit.record(conn, audit.SYSTEM, "device.expire", r["id"], hardware_id=r["hardware_id"],
                     days=round(silent_for / 86400, 2))
        effect(conn, DeviceGone(r["id"]))
    return [r["id"] for r in rows]


def claim(conn: sqlite3.Connection, actor: Actor, code: str, name: str = "", tags: dict[str, str] | None = None
          ) -> Device:
    code = normalize_claim_code(code)
    r = storage.pending_device_by_claim_code(conn, code)
    if r is None:
        raise NotFound(f"no pending device has claim code {code}; 'fleetd devices list --status pending' shows them")
    merged = {**json.loads(r["tags"]), **check_tags(dict(tags or {}))}
    storage.activate_claimed(conn, r["id"], enrolled_at=now(), name=name or r["name"], tags=json.dumps(merged))
    audit.record(conn, actor, "device.claim", r["id"], code=code)
    changed(conn, r["id"])
    enrolled(conn, r["id"], r["hardware_id"], "claim", "active")
    return get_device(conn, r["id"])


def reject(conn: sqlite3.Connection, actor: Actor, ref: str) -> None:
    """Refuse a pending device: it is deleted and must enroll again."""
    r = find_device_row(conn, ref)
    if r["status"] != "pending":
        raise FailedPrecondition(f"device {r['id']} is {r['status']}, not pending; revoke or delete it instead")
    storage.delete_device(conn, r["id"])
    audit.record(conn, actor, "device.reject", r["id"], hardware_id=r["hardware_id"])
    effect(conn, DeviceGone(r["id"]))


def revoke(conn: sqlite3.Connection, actor: Actor, ref: str) -> Device:
    r = find_device_row(conn, ref)
    storage.revoke_device(conn, r["id"])
    storage.cancel_open_actions(conn, r["id"], "device revoked", now())
    revoked = storage.revoke_certificates_of(conn, r["id"], now())  # on the CRL from now on (docs/pki.md)
    audit.record(conn, actor, "device.revoke", r["id"], certificates=revoked)
    changed(conn, r["id"])
    effect(conn, ActionsOpen((r["id"],), False))
    return get_device(conn, r["id"])


def delete(conn: sqlite3.Connection, actor: Actor, ref: str) -> str:
    r = find_device_row(conn, ref)
    storage.delete_device(conn, r["id"])
    revoked = storage.revoke_certificates_of(conn, r["id"], now())
    audit.record(conn, actor, "device.delete", r["id"], hardware_id=r["hardware_id"], certificates=revoked)
    effect(conn, DeviceGone(r["id"]))
    return str(r["id"])


def update(conn: sqlite3.Connection, actor: Actor, ref: str, *, name: str | None = None,
           set_tags: dict[str, str] | None = None, remove_tags: list[str] | None = None,
           poll_interval: int | None = None) -> Device:
    r = find_device_row(conn, ref)
    tags = json.loads(r["tags"])
    if set_tags:
        tags.update(check_tags(set_tags))
    for k in remove_tags or []:
        tags.pop(k, None)
    check_tags(tags)
    if name is not None:
        DEVICE_NAME.check(name, "name")
    if poll_interval is not None and not 5 <= poll_interval <= 86400:
        raise InvalidArgument("poll_interval must be between 5 and 86400 seconds")
    storage.update_device(conn, r["id"], name=name or r["name"], tags=json.dumps(tags),
                          poll_interval=poll_interval or r["poll_interval"])
    audit.record(conn, actor, "device.update", r["id"], name=name, set_tags=set_tags, remove_tags=remove_tags,
                 poll_interval=poll_interval)
    changed(conn, r["id"])
    return get_device(conn, r["id"])


def _filter(status: str | None, tags: dict[str, str] | None, search: str | None) -> str | None:
    """Check a device list's filters; the LIKE pattern of ``search``."""
    if status and status not in ("pending", "active", "revoked"):
        raise InvalidArgument("status must be pending, active or revoked")
    for k in tags or {}:
        TAG_KEY.check(k)
    return like_pattern(search, "search") if search else None


def select_ids(conn: sqlite3.Connection, *, status: str | None = None, tags: dict[str, str] | None = None,
               device_types: list[str] | None = None) -> list[str]:
    """Ids of the devices matching a target (tags ANDed, any of the device types: names or patterns)."""
    _filter(status, tags, None)
    ids = storage.device_ids_and_types(conn, status=status, tags=tags)
    return [r[0] for r in ids if device_types is None or matches_any(device_types, r[1])]


def list_devices(conn: sqlite3.Connection, *, status: str | None = None, device_type: str | None = None,
                 tags: dict[str, str] | None = None, search: str | None = None, limit: int = 1000,
                 offset: int = 0) -> tuple[list[Device], int]:
    pattern = _filter(status, tags, search)
    rows, total = storage.device_page(conn, status=status, device_type=device_type, tags=tags, pattern=pattern,
                                      limit=limit, offset=offset)
    comps = _components_by_device(conn, [r["id"] for r in rows])
    return [device_from_row(r, comps.get(r["id"])) for r in rows], total


def _components_by_device(conn: sqlite3.Connection, ids: list[str]) -> dict[str, list[ComponentState]]:
    """Components of many devices in one query (a page of the device list)."""
    out: dict[str, list[ComponentState]] = {}
    for r in storage.component_rows_of(conn, ids):
        out.setdefault(r["device_id"], []).append(_component(r))
    return out


# --- the in-memory directory -------------------------------------------------

def load_runtime(conn: sqlite3.Connection) -> Directory:
    """Every device's record, read a slice of rows at a time (never the whole table in memory at once); a revoked
    device keeps no epoch (its tokens are dead)."""
    return Directory.load(storage.runtime_rows(conn), no_epoch="revoked")


# --- effects: what the hub and the event stream learn once a device's change has committed ---------------

class DeviceChanged(Effect, frozen=True):
    """The device's record as the hub keeps it (a revoked status stops its tokens)."""

    device_id: str
    status: str
    poll_interval: int
    device_type: str
    epoch: int


class DeviceGone(Effect, frozen=True):
    device_id: str


class ActionsOpen(Effect, frozen=True):
    """These devices now have (``open``) or no longer have open actions; the check-in path reads only then."""

    device_ids: tuple[str, ...]
    open: bool


class NewActions(Effect, frozen=True):
    """New actions (``action_ids``) for these devices, in the same order: the MQTT part publishes them to the
    devices at once (docs/mqtt.md)."""

    device_ids: tuple[str, ...]
    action_ids: tuple[str, ...]


def changed(conn: sqlite3.Connection, device_id: str) -> None:
    """Record the device as this transaction leaves it, for the hub (gone, if it was deleted)."""
    r = storage.device_record(conn, device_id)
    effect(conn, DeviceGone(device_id) if r is None else DeviceChanged(device_id, r[0], r[1], r[2], r[3]))


def enrolled(conn: sqlite3.Connection, device_id: str, hardware_id: str, via: str, status: str) -> None:
    """``device.enrolled`` on the event stream: a device joined or re-joined the fleet (``via`` connect, ddi or
    claim; ``status`` pending or active)."""
    effect(conn, Publish("device.enrolled", {"id": device_id, "hardware_id": hardware_id, "via": via,
                                             "status": status}))


def ensure_not_revoked(status: str) -> None:
    if status == "revoked":
        raise PermissionDenied("this device was revoked; an admin must delete it before it can enroll again")
