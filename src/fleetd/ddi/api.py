"""DdiService: hawkBit DDI credentials for admins (target tokens per device, gateway tokens per tenant)."""

from __future__ import annotations

import msgspec

from ..http.rpc import Context, Service
from . import state as ddi
from . import tokens as ddi_tokens
from .tokens import GatewayToken

service = Service("DdiService", "hawkBit DDI credentials: target tokens (one device) and gateway tokens (the tenant).")


class CreateTargetTokenRequest(msgspec.Struct, kw_only=True):
    # Device id, or the controller id (= hardware id) of a DDI device; created (active) when there is none.
    device: str
    # Device type of a device created now (default "ddi"), or a new type for an existing one.
    device_type: str = ""
    # Tags set on the device.
    tags: dict[str, str] = {}


class TargetToken(msgspec.Struct, kw_only=True):
    device_id: str
    controller_id: str
    # Send as "Authorization: TargetToken <token>"; shown once. The device's previous token stops working.
    token: str
    # Whether the device was created by this call.
    created: bool = False


@service.method(auth="admin")
async def CreateTargetToken(ctx: Context, req: CreateTargetTokenRequest) -> TargetToken:
    """A new target token for a DDI device (creating the device if needed); its previous token stops working."""
    fleet = ctx.fleet

    def create(conn):  # type: ignore[no-untyped-def]
        dev = ddi.ensure_device(conn, ctx.actor, req.device, req.device_type, req.tags)
        _, secret = ddi_tokens.replace_target(conn, ctx.actor, dev.device_id)
        return dev, secret

    dev, secret = await fleet.store.write(create)
    return TargetToken(device_id=dev.device_id, controller_id=dev.controller_id, token=secret, created=dev.created)


class RevokeTargetTokenRequest(msgspec.Struct, kw_only=True):
    # Device id or controller id.
    device: str


class RevokeTargetTokenResponse(msgspec.Struct, kw_only=True):
    device_id: str
    controller_id: str
    # How many live tokens were revoked (0 when the device had none).
    revoked: int


@service.method(auth="admin")
async def RevokeTargetToken(ctx: Context, req: RevokeTargetTokenRequest) -> RevokeTargetTokenResponse:
    """Revoke a DDI device's target token: its polls are refused (401) until it gets a new one."""
    def revoke(conn):  # type: ignore[no-untyped-def]
        dev = ddi.find_ddi_device(conn, req.device)
        return dev, ddi_tokens.revoke_targets(conn, ctx.actor, dev.device_id)

    dev, hashes = await ctx.fleet.store.write(revoke)
    return RevokeTargetTokenResponse(device_id=dev.device_id, controller_id=dev.controller_id, revoked=len(hashes))


class CreateGatewayTokenRequest(msgspec.Struct, kw_only=True):
    description: str = ""
    # Device type of the devices it registers (default "ddi").
    device_type: str = ""
    # Tags of the devices it registers.
    tags: dict[str, str] = {}


@service.method(auth="admin")
async def CreateGatewayToken(ctx: Context, req: CreateGatewayTokenRequest) -> GatewayToken:
    """A gateway token: it acts for every controller of the tenant and registers unknown ones (admin credential)."""
    tok, secret = await ctx.fleet.store.write(lambda c: ddi_tokens.create_gateway(
        c, ctx.actor, description=req.description, device_type=req.device_type, tags=req.tags))
    tok.token = secret
    return tok


class ListGatewayTokensRequest(msgspec.Struct, kw_only=True):
    include_revoked: bool = False


class ListGatewayTokensResponse(msgspec.Struct, kw_only=True):
    tokens: list[GatewayToken]


@service.method(auth="admin", readonly=True)
async def ListGatewayTokens(ctx: Context, req: ListGatewayTokensRequest) -> ListGatewayTokensResponse:
    """Gateway tokens (never their secrets)."""
    return ListGatewayTokensResponse(tokens=await ctx.fleet.store.read(
        lambda c: ddi_tokens.list_gateways(c, req.include_revoked)))


class RevokeGatewayTokenRequest(msgspec.Struct, kw_only=True):
    id: str


@service.method(auth="admin")
async def RevokeGatewayToken(ctx: Context, req: RevokeGatewayTokenRequest) -> GatewayToken:
    """Revoke a gateway token; devices it registered stay registered."""
    return await ctx.fleet.store.write(lambda c: ddi_tokens.revoke_gateway(c, ctx.actor, req.id))
