"""EnrollmentService: join tokens and claiming pending devices."""

from __future__ import annotations

import base64
import shlex

import msgspec

from ..core.clock import now
from ..core.errors import InvalidArgument
from ..core.fields import Int32, Int64, Offset, Seconds, page_limit
from ..http.rpc import Context, Empty, Service
from . import join_tokens, registry
from .admin_api import fresh
from .join_tokens import JoinToken
from .registry import Device

service = Service("EnrollmentService", "Join tokens, and claiming or rejecting pending devices.")


class CreateTokenRequest(msgspec.Struct, kw_only=True):
    description: str = ""
    # Tags every device enrolled with this token gets.
    tags: dict[str, str] = {}
    # How many devices may enroll with it; 0 = unlimited.
    uses: Int64 = 0
    # Seconds until it expires; 0 = never.
    expires_in: Seconds = 86400


def install_command(ctx: Context, token: str) -> str:
    """The one-liner that installs the agent on a Linux device, pinned to this server's TLS key."""
    fleet = ctx.fleet
    url = fleet.public_url
    script = shlex.quote(url + "/agent/install.sh")
    if not fleet.settings.tls:
        return f"curl -fsSL {script} | sh -s -- --server {shlex.quote(url)} --token {shlex.quote(token)}"
    pin = "sha256//" + base64.b64encode(fleet.keys.server_pubkey_sha256()).decode()
    # -k skips the system CA store (the fleet CA is not in it); the pinned key is checked instead. The
    # script gets the same pin for its own downloads (the zipapp and its launcher).
    return (f"curl -fsSL -k --pinnedpubkey {shlex.quote(pin)} {script} | sh -s -- --server {shlex.quote(url)} "
            f"--pin {shlex.quote(pin)} --token {shlex.quote(token)}")


@service.method(auth="operator")
async def CreateToken(ctx: Context, req: CreateTokenRequest) -> JoinToken:
    """Create a join token; the answer holds the token (shown once) and an install one-liner."""
    if req.uses < 0 or req.expires_in < 0:
        raise InvalidArgument("uses and expires_in must be 0 (unlimited) or positive")
    fleet = ctx.fleet
    tok, secret = await fleet.store.write(lambda c: join_tokens.create_token(
        c, ctx.actor, description=req.description, tags=req.tags, max_uses=req.uses or None,
        expires_at=now() + req.expires_in if req.expires_in else None))
    tok.token = join_tokens.format_join_token(fleet.keys.ca_fingerprint, tok.id, secret)
    tok.install_command = install_command(ctx, tok.token)
    return tok


class ListTokensRequest(msgspec.Struct, kw_only=True):
    # Also expired, used-up and revoked tokens.
    include_inactive: bool = False
    # 1..10000; 1000 when unset.
    limit: Int32 = 0
    offset: Offset = 0


class ListTokensResponse(msgspec.Struct, kw_only=True):
    tokens: list[JoinToken]
    # How many match in all.
    total: int = 0


@service.method(auth="operator", readonly=True)
async def ListTokens(ctx: Context, req: ListTokensRequest) -> ListTokensResponse:
    """One page of the join tokens, newest first (never their secrets). Used-up tokens are kept: with one
    single-use token per device, the inactive ones grow with the fleet."""
    limit = page_limit(req.limit, 1000, 10_000)
    found, total = await ctx.fleet.store.read(lambda c: join_tokens.list_tokens(c, req.include_inactive, limit,
                                                                             req.offset))
    return ListTokensResponse(tokens=found, total=total)


class RevokeTokenRequest(msgspec.Struct, kw_only=True):
    id: str


@service.method(auth="operator")
async def RevokeToken(ctx: Context, req: RevokeTokenRequest) -> JoinToken:
    """Revoke a join token; devices already enrolled with it stay enrolled."""
    return await ctx.fleet.store.write(lambda c: join_tokens.revoke_token(c, ctx.actor, req.id))


class ClaimDeviceRequest(msgspec.Struct, kw_only=True):
    # The code the device shows, e.g. ABCD-EFGH.
    claim_code: str
    name: str = ""
    tags: dict[str, str] = {}


@service.method(auth="operator")
async def ClaimDevice(ctx: Context, req: ClaimDeviceRequest) -> Device:
    """Make a pending device active by its claim code."""
    device = await ctx.fleet.store.write(lambda c: registry.claim(c, ctx.actor, req.claim_code, req.name, req.tags))
    return fresh(ctx, device)


class RejectDeviceRequest(msgspec.Struct, kw_only=True):
    device_id: str


@service.method(auth="operator")
async def RejectDevice(ctx: Context, req: RejectDeviceRequest) -> Empty:
    """Refuse a pending device (it is removed and must enroll again)."""
    did = await ctx.fleet.store.read(lambda c: registry.find_device_row(c, req.device_id)["id"])
    await ctx.fleet.store.write(lambda c: registry.reject(c, ctx.actor, did))
    return Empty()
