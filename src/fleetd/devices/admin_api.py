"""DeviceAdminService: the device registry and direct actions, for admins."""

from __future__ import annotations

import shlex
import sqlite3
from collections.abc import Callable

import msgspec

from ..core.clock import now, to_dt
from ..core.errors import InvalidArgument
from ..core.fields import Int32, Seconds, page_limit
from ..ddi import storage as ddi_storage
from ..http.rpc import Context, Empty, Service
from . import actions, join_tokens, registry, storage
from .actions import Action
from .join_tokens import JoinToken
from .registry import Device

service = Service("DeviceAdminService", "The device registry and direct actions (deploy, restart, rollback, "
                  "reboot, logs).")


def fresh(ctx: Context, d: Device) -> Device:
    """Overlay the last check-in the hub has seen but not yet written, and how the device connects."""
    seen = ctx.fleet.hub.last_seen(d.id)
    if seen is not None and (d.last_seen is None or seen > d.last_seen.timestamp()):
        d.last_seen = to_dt(seen)
        d.online = registry.is_online(seen, d.poll_interval)
    if registry.is_online(ctx.fleet.hub.mqtt_seen.get(d.id), d.poll_interval):
        d.transport = "mqtt"
    elif d.last_seen is not None:
        d.transport = "https"
    return d


class ListDevicesRequest(msgspec.Struct, kw_only=True):
    status: str = ""
    device_type: str = ""
    # Devices with all of these tags.
    tags: dict[str, str] = {}
    # Substring of the id, name or hardware id.
    search: str = ""
    limit: Int32 = 1000
    offset: Int32 = 0


class ListDevicesResponse(msgspec.Struct, kw_only=True):
    devices: list[Device]
    total: int


@service.method(auth="viewer", readonly=True)
async def ListDevices(ctx: Context, req: ListDevicesRequest) -> ListDevicesResponse:
    """Devices, filtered and paged (limit 1..10000)."""
    limit = page_limit(req.limit, 1000, 10_000)
    if req.offset < 0:
        raise InvalidArgument("offset must not be negative")
    def read(conn: sqlite3.Connection) -> tuple[list[Device], int]:
        devices, total = registry.list_devices(
            conn, status=req.status or None, device_type=req.device_type or None, tags=req.tags,
            search=req.search or None, limit=limit, offset=req.offset)
        return with_certificate_expiry(conn, devices), total

    devices, total = await ctx.fleet.store.read(read)
    return ListDevicesResponse(devices=[fresh(ctx, d) for d in devices], total=total)


def with_certificate_expiry(conn: sqlite3.Connection, devices: list[Device]) -> list[Device]:
    expiry = storage.certificate_expiry(conn, [d.id for d in devices], now())
    for d in devices:
        d.certificate_expires = to_dt(expiry.get(d.id))
    return devices


class DeviceRef(msgspec.Struct, kw_only=True):
    # Device id, hardware id or unique name.
    id: str


@service.method(auth="viewer", readonly=True)
async def GetDevice(ctx: Context, req: DeviceRef) -> Device:
    """One device with its inventory and components (and its controller id when it speaks hawkBit DDI)."""
    def read(conn: sqlite3.Connection) -> Device:
        d = registry.get_device(conn, req.id)
        d.ddi_controller_id = ddi_storage.controller_id_of(conn, d.id)
        return with_certificate_expiry(conn, [d])[0]

    return fresh(ctx, await ctx.fleet.store.read(read))


class UpdateDeviceRequest(msgspec.Struct, kw_only=True):
    id: str
    name: str | None = None
    set_tags: dict[str, str] = {}
    remove_tags: list[str] = []
    poll_interval: Int32 | None = None


@service.method(auth="operator")
async def UpdateDevice(ctx: Context, req: UpdateDeviceRequest) -> Device:
    """Rename, tag, untag, or change the poll interval."""
    d = await ctx.fleet.store.write(lambda c: registry.update(
        c, ctx.actor, req.id, name=req.name, set_tags=req.set_tags, remove_tags=req.remove_tags,
        poll_interval=req.poll_interval))
    return fresh(ctx, d)


@service.method(auth="operator")
async def RevokeDevice(ctx: Context, req: DeviceRef) -> Device:
    """Stop a device at once: its token stops working and its open actions are cancelled."""
    return await ctx.fleet.store.write(lambda c: registry.revoke(c, ctx.actor, req.id))


@service.method(auth="admin")
async def DeleteDevice(ctx: Context, req: DeviceRef) -> Empty:
    """Forget a device and its history; it may enroll again."""
    await ctx.fleet.store.write(lambda c: registry.delete(c, ctx.actor, req.id))
    return Empty()


class RekeyDeviceRequest(msgspec.Struct, kw_only=True):
    # Device id, hardware id or unique name.
    id: str
    # Seconds until the token expires (1 s to 30 days).
    expires_in: Seconds = registry.REKEY_TOKEN_TTL


class RekeyDeviceResponse(msgspec.Struct, kw_only=True):
    # The single-use re-key token; its secret (token.token) is shown only here.
    token: JoinToken
    # Run on the device when its agent is installed: stops it, enrolls with the new key, starts it.
    agent_command: str
    # The device as it is now: one that is online still has its key and needs no re-key.
    device: Device


@service.method(auth="admin")
async def RekeyDevice(ctx: Context, req: RekeyDeviceRequest) -> RekeyDeviceResponse:
    """A single-use token that lets this one device enroll with a new key (it lost its old one); audited."""
    from .enrollment_api import install_command
    if not 1 <= req.expires_in <= 30 * 86400:
        raise InvalidArgument("expires_in must be 1 s to 30 days")
    fleet = ctx.fleet
    tok, secret, d = await fleet.store.write(lambda c: registry.create_rekey_token(
        c, ctx.actor, req.id, now() + req.expires_in))
    tok.token = join_tokens.format_join_token(fleet.keys.ca_fingerprint, tok.id, secret)
    tok.install_command = install_command(ctx, tok.token)
    agent = (f"sudo systemctl stop fleet-agent; sudo FLEET_AGENT_TOKEN={shlex.quote(tok.token)} fleet-agent enroll "
             f"--server {shlex.quote(fleet.public_url)} && sudo systemctl start fleet-agent")
    return RekeyDeviceResponse(token=tok, agent_command=agent, device=fresh(ctx, d))


class TargetedRequest(msgspec.Struct, kw_only=True):
    # Explicit devices (ids, hardware ids or names) ...
    device_ids: list[str] = []
    # ... and/or every active device with all of these tags.
    tags: dict[str, str] = {}


class DeployRequest(TargetedRequest, kw_only=True):
    # NAME@VERSION or artifact id.
    artifact: str
    # Offer the update; the device installs only after it accepts.
    consent: bool = False


class ActionsCreated(msgspec.Struct, kw_only=True):
    action_ids: list[str]
    # Devices get their actions at their next check-in: within this many seconds (their longest poll interval).
    pickup_within_seconds: int


async def _created(ctx: Context, make: Callable[[sqlite3.Connection], list[str]]) -> ActionsCreated:
    def write(conn: sqlite3.Connection) -> ActionsCreated:
        ids = make(conn)
        return ActionsCreated(action_ids=ids, pickup_within_seconds=actions.longest_poll_interval(conn, ids))
    return await ctx.fleet.store.write(write)


def _targets(conn, req: TargetedRequest, device_type: list[str] | None = None) -> list[str]:  # type: ignore[no-untyped-def]
    ids = list(req.device_ids)
    if req.tags:
        ids += registry.select_ids(conn, status="active", tags=req.tags, device_types=device_type)
    if not ids:
        raise InvalidArgument("no device matches: give device ids or tags that match active devices")
    return ids


@service.method(auth="operator")
async def Deploy(ctx: Context, req: DeployRequest) -> ActionsCreated:
    """Install an artifact on devices now (all or none), outside any rollout."""
    def deploy(conn: sqlite3.Connection) -> list[str]:
        from ..artifacts import catalog as artifacts
        art = artifacts.get(conn, req.artifact)
        return actions.create_install(conn, ctx.actor, _targets(conn, req, art.device_types), art.id,
                                      consent=req.consent)
    return await _created(ctx, deploy)


class CreateActionRequest(TargetedRequest, kw_only=True):
    # restart, reboot, rollback, config or logs
    kind: str
    # The app it concerns (restart, rollback, logs).
    component: str = ""
    # For logs: lines, 1..2000 (200 when unset).
    params: dict[str, str] = {}


@service.method(auth="operator")
async def CreateAction(ctx: Context, req: CreateActionRequest) -> ActionsCreated:
    """Restart an app, reboot, roll an app back to its previous version, push config, or fetch an app's log."""
    def create(conn: sqlite3.Connection) -> list[str]:
        targets = _targets(conn, req)
        if req.kind == "rollback":
            if not req.component:
                raise InvalidArgument("rollback needs the app (component) to roll back")
            return actions.create_rollback(conn, ctx.actor, targets, req.component)
        return actions.create_simple(conn, ctx.actor, targets, req.kind, req.component, dict(req.params))
    return await _created(ctx, create)


class ListActionsRequest(msgspec.Struct, kw_only=True):
    device_id: str
    limit: Int32 = 100


class ListActionsResponse(msgspec.Struct, kw_only=True):
    actions: list[Action]


@service.method(auth="viewer", readonly=True)
async def ListActions(ctx: Context, req: ListActionsRequest) -> ListActionsResponse:
    """A device's actions, newest first."""
    limit = page_limit(req.limit, 100, 1000)
    return ListActionsResponse(actions=await ctx.fleet.store.read(
        lambda c: actions.list_for_device(c, req.device_id, limit)))


class ActionRef(msgspec.Struct, kw_only=True):
    id: str


@service.method(auth="viewer", readonly=True)
async def GetAction(ctx: Context, req: ActionRef) -> Action:
    """One action, with what it brought back (a logs action's lines) while the server keeps it."""
    return await ctx.fleet.store.read(lambda c: actions.get(c, req.id, with_result=True))


@service.method(auth="operator")
async def CancelAction(ctx: Context, req: ActionRef) -> Action:
    """Cancel an action that has not ended."""
    return await ctx.fleet.store.write(lambda c: actions.cancel(c, ctx.actor, req.id))
