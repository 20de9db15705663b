"""DeviceService: the calls devices make (enroll, authenticate, check in, report, telemetry)."""

from __future__ import annotations

import base64

import msgspec

from ..core.errors import Unauthenticated
from ..http.rpc import Context, Service
from . import device_calls, join_tokens, registry, storage
from .devauth import CHALLENGE_TTL, TOKEN_TTL, challenge_message, decode_b64_field, verify_signature
from .device_calls import (
    CheckInRequest,
    CheckInResponse,
    PushTelemetryRequest,
    PushTelemetryResponse,
    ReportStatusRequest,
    ReportStatusResponse,
)
from .inventory import Inventory, inventory_dict

service = Service("DeviceService", "Device-facing calls: enrollment, authentication, check-in, status, telemetry.")


class EnrollRequest(msgspec.Struct, kw_only=True):
    hardware_id: str
    device_type: str
    # The device's Ed25519 public key, 32 raw bytes in base64.
    public_key: str
    # A join token makes the device active at once; without one it waits to be claimed.
    token: str = ""
    name: str = ""
    inventory: Inventory | None = None


class EnrollResponse(msgspec.Struct, kw_only=True):
    device_id: str
    # pending, active or revoked
    status: str
    # Only while pending: the code an admin claims the device with.
    claim_code: str = ""
    poll_interval: int
    # The fleet's artifact-signing public key (32 raw bytes, base64): pin it.
    signing_public_key: str
    # SHA-256 of the fleet CA certificate (DER), hex.
    ca_fingerprint: str


@service.method(auth="public")
async def Enroll(ctx: Context, req: EnrollRequest) -> EnrollResponse:
    """Register a device with its public key; with a join token it becomes active at once."""
    fleet = ctx.fleet
    await fleet.enroll_limiter.hit(ctx.remote_addr or "?")
    public_key = decode_b64_field(req.public_key, "public_key", 32)
    registry.check_enroll_fields(req.hardware_id, req.device_type, req.name)
    parsed = join_tokens.parse_join_token(req.token) if req.token else None
    fp = fleet.keys.ca_fingerprint
    inventory = inventory_dict(req.inventory)

    def enroll(conn):  # type: ignore[no-untyped-def]
        token = (lambda: join_tokens.check_token(conn, parsed, fp)) if parsed else None
        return registry.enroll(conn, hardware_id=req.hardware_id, device_type=req.device_type,
                               public_key=public_key, name=req.name, token=token, inventory=inventory,
                               addr=ctx.remote_addr, max_pending=fleet.settings.max_pending_devices)

    try:
        result = await fleet.store.write(enroll)
    except registry.RekeyRefused as e:
        refused = e
        await fleet.store.write(lambda c: registry.record_rekey_refused(c, refused, ctx.remote_addr))
        raise
    d = result.device
    return EnrollResponse(device_id=d.id, status=d.status, claim_code=d.claim_code or "",
                          poll_interval=d.poll_interval,
                          signing_public_key=base64.b64encode(fleet.keys.signing_public_key).decode(),
                          ca_fingerprint=fp)


class ChallengeRequest(msgspec.Struct, kw_only=True):
    device_id: str


class ChallengeResponse(msgspec.Struct, kw_only=True):
    # Sign "fleetd-auth-v1:<device_id>:<nonce>" with the device key.
    nonce: str
    expires_in: int


@service.method(auth="public")
async def GetChallenge(ctx: Context, req: ChallengeRequest) -> ChallengeResponse:
    """A single-use nonce for Authenticate, valid for a minute."""
    await ctx.fleet.challenge_limiter.hit(ctx.remote_addr or "?")
    if req.device_id not in ctx.fleet.hub.runtime:
        raise Unauthenticated("unknown device; enroll first")
    return ChallengeResponse(nonce=ctx.fleet.challenges.new(req.device_id), expires_in=CHALLENGE_TTL)


class AuthenticateRequest(msgspec.Struct, kw_only=True):
    device_id: str
    nonce: str
    # Ed25519 signature (base64) of "fleetd-auth-v1:<device_id>:<nonce>".
    signature: str


class AuthenticateResponse(msgspec.Struct, kw_only=True):
    # Send as "Authorization: Bearer <token>".
    token: str
    expires_in: int
    status: str


@service.method(auth="public")
async def Authenticate(ctx: Context, req: AuthenticateRequest) -> AuthenticateResponse:
    """Trade a signed challenge for a short-lived bearer token."""
    hub = ctx.fleet.hub
    signature = decode_b64_field(req.signature, "signature", 64)
    await ctx.fleet.challenges.take(req.device_id, req.nonce)
    row = await ctx.fleet.store.read(lambda c: storage.device_auth(c, req.device_id))
    if row is None:
        raise Unauthenticated("unknown device; enroll first")
    if not verify_signature(bytes(row["public_key"]), signature, challenge_message(req.device_id, req.nonce)):
        raise Unauthenticated("the signature does not match this device's key")
    registry.ensure_not_revoked(row["status"])
    return AuthenticateResponse(token=hub.tokens.issue(req.device_id, row["auth_epoch"]), expires_in=TOKEN_TTL,
                                status=row["status"])


@service.method(auth="device")
async def CheckIn(ctx: Context, req: CheckInRequest) -> CheckInResponse:
    """Heartbeat: report inventory, get the poll interval and pending actions."""
    return await device_calls.check_in(ctx.fleet, ctx.principal.id, ctx.remote_addr, req)


@service.method(auth="device")
async def ReportStatus(ctx: Context, req: ReportStatusRequest) -> ReportStatusResponse:
    """Move one of this device's actions forward (downloading, installing, succeeded, failed, …)."""
    return await device_calls.report_status(ctx.fleet, ctx.principal.id, req)


@service.method(auth="device")
async def PushTelemetry(ctx: Context, req: PushTelemetryRequest) -> PushTelemetryResponse:
    """Store a batch of points; returns once they are committed."""
    return await device_calls.push_telemetry(ctx.fleet, ctx.principal.id, req.points)


__all__ = ["CheckInRequest", "CheckInResponse", "PushTelemetryRequest", "PushTelemetryResponse", "ReportStatusRequest",
           "ReportStatusResponse", "service"]
