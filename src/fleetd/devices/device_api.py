"""DeviceService: the calls devices make (enroll, authenticate, check in, report, telemetry)."""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from ..core.errors import InvalidArgument, Unauthenticated
from ..core.fields import Int64
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
    # Optional: a PEM certificate signing request for public_key (its signature proves the device holds the key);
    # an active device gets its client certificate in the answer (docs/pki.md).
    csr: str = ""
    # Factory provisioning, instead of a token (docs/pki.md): the device's factory certificate (PEM, then any
    # intermediates) from a trusted manufacturer CA, naming hardware_id; the nonce of GetChallenge{hardware_id}; and
    # the certificate key's signature (base64) of "fleetd-factory-v1:<hardware_id>:<nonce>:<public_key as hex>".
    factory_certificate: str = ""
    factory_nonce: str = ""
    factory_signature: str = ""


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
    # With a csr, once the device is active: its client certificate (PEM) from the fleet CA.
    certificate: str = ""


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
    csr_key = _enrolment_csr_key(req.csr, public_key) if req.csr else None
    issued: list[str] = []

    factory = await _factory_proof(ctx, req, public_key) if req.factory_certificate else None

    def enroll(conn):  # type: ignore[no-untyped-def]
        if factory is not None:
            result = factory(conn)
        else:
            token = (lambda: join_tokens.check_token(conn, parsed, fp)) if parsed else None
            result = registry.enroll(conn, hardware_id=req.hardware_id, device_type=req.device_type,
                                     public_key=public_key, name=req.name, token=token, inventory=inventory,
                                     addr=ctx.remote_addr, max_pending=fleet.settings.max_pending_devices)
        if csr_key is not None and result.device.status == "active":
            issued.append(_issue(conn, ctx, result.device.id, csr_key))
        return result

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
                          ca_fingerprint=fp, certificate=issued[0] if issued else "")


async def _factory_proof(ctx: Context, req: EnrollRequest, public_key: bytes) -> Any:
    """Take the factory enrolment's challenge; the write that checks the certificate and enrolls the device."""
    import json

    from ..core import clock
    from . import factory

    if req.token:
        raise InvalidArgument("give a join token or a factory certificate, not both")
    if not req.factory_nonce or not req.factory_signature:
        raise InvalidArgument("a factory enrolment needs factory_nonce (GetChallenge with hardware_id) and "
                              "factory_signature")
    signature = decode_b64_field(req.factory_signature, "factory_signature")
    await ctx.fleet.challenges.take(factory.challenge_subject(req.hardware_id), req.factory_nonce)
    message = factory.factory_message(req.hardware_id, req.factory_nonce, public_key)
    inventory = inventory_dict(req.inventory)

    def enroll(conn):  # type: ignore[no-untyped-def]
        ca = factory.verify(conn, req.factory_certificate, req.hardware_id, signature, message, clock.now())
        return registry.enroll_by_factory_certificate(
            conn, hardware_id=req.hardware_id, device_type=req.device_type, public_key=public_key, name=req.name,
            inventory=inventory, addr=ctx.remote_addr, active=bool(ca["auto_activate"]), tags=json.loads(ca["tags"]),
            manufacturer_ca=ca["id"], max_pending=ctx.fleet.settings.max_pending_devices)

    return enroll


def _enrolment_csr_key(csr: str, public_key: bytes) -> Any:
    """The key of an enrolment's CSR: the key being enrolled, which the CSR's signature proves the device holds."""
    from . import certificates  # certificates are optional: loaded when a device asks for one

    key = certificates.load_csr(csr)
    if certificates.ed25519_raw(key) != public_key:
        raise InvalidArgument("the enrolment CSR must be for public_key, the key being enrolled (a certificate for "
                              "another key comes later, through IssueCertificate)")
    return key


def _issue(conn: Any, ctx: Context, device_id: str, key: Any) -> str:
    """Issue and record a client certificate for the device; its PEM."""
    from . import certificate_service, certificates

    fleet = ctx.fleet
    cert = certificate_service.issue_and_record(conn, fleet.keys, device_id, key,
                                                days=fleet.settings.device_certificate_days)
    return certificates.pem(cert)


class ChallengeRequest(msgspec.Struct, kw_only=True):
    device_id: str = ""
    # Instead of device_id, for a factory enrolment (docs/pki.md): the hardware id the factory certificate names.
    hardware_id: str = ""


class ChallengeResponse(msgspec.Struct, kw_only=True):
    # Sign "fleetd-auth-v1:<device_id>:<nonce>" with the device key.
    nonce: str
    expires_in: int


@service.method(auth="public")
async def GetChallenge(ctx: Context, req: ChallengeRequest) -> ChallengeResponse:
    """A single-use nonce for Authenticate, valid for a minute."""
    await ctx.fleet.challenge_limiter.hit(ctx.remote_addr or "?")
    if req.hardware_id and not req.device_id:
        from .factory import challenge_subject

        registry.check_enroll_fields(req.hardware_id, "factory", "")
        return ChallengeResponse(nonce=ctx.fleet.challenges.new(challenge_subject(req.hardware_id)),
                                 expires_in=CHALLENGE_TTL)
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


class IssueCertificateRequest(msgspec.Struct, kw_only=True):
    # A PEM certificate signing request for an Ed25519 or ECDSA P-256 key the device holds (the CSR's signature is
    # the proof): its enrolled key, or another one (a secure element's).
    csr: str


class IssueCertificateResponse(msgspec.Struct, kw_only=True):
    # The client certificate (PEM), from the fleet CA: CN and URI SAN urn:fleetd:device:<id>, EKU clientAuth.
    certificate: str
    # Its serial number, lowercase hex.
    serial: str
    # Seconds since the epoch.
    not_after: Int64
    # When to ask for the next one (about two thirds of the lifetime), seconds since the epoch.
    renew_after: Int64
    # The fleet CA certificate (PEM) that issued it.
    ca_certificate: str


@service.method(auth="device")
async def IssueCertificate(ctx: Context, req: IssueCertificateRequest) -> IssueCertificateResponse:
    """A client certificate from the fleet CA for a key the device proves it holds; renew by calling it again."""
    from . import certificate_service, certificates

    fleet = ctx.fleet
    device_id, _ = device_calls.calling_device(fleet, ctx.principal.id, active_to="get a certificate")
    key = certificates.load_csr(req.csr)

    cert = await fleet.store.write(lambda c: certificate_service.issue_and_record(
        c, fleet.keys, device_id, key, days=fleet.settings.device_certificate_days))
    start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    return IssueCertificateResponse(certificate=certificates.pem(cert), serial=certificates.serial_hex(
        cert.serial_number), not_after=int(end), renew_after=int(start + (end - start) * 2 / 3),
        ca_certificate=fleet.keys.ca_pem.decode())


__all__ = [
    "CheckInRequest",
    "CheckInResponse",
    "IssueCertificateRequest",
    "IssueCertificateResponse",
    "PushTelemetryRequest",
    "PushTelemetryResponse",
    "ReportStatusRequest",
    "ReportStatusResponse",
    "service",
]
