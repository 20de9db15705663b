"""ArtifactService, and ``PUT /v1/uploads/{id}`` that carries an upload's bytes."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec
from cryptography.hazmat.primitives import serialization
from litestar import Request, Response, route
from litestar.enums import HttpMethod
from litestar.exceptions import InternalServerException
from litestar.params import FromPath

from ..core.errors import Aborted, AlreadyExists, InvalidArgument
from ..core.fields import Int32, Int64, Offset, page_limit
from ..http import rpc
from ..http.rpc import Context, Empty, Service
from . import catalog as artifacts
from . import storage, uploads
from .catalog import Artifact, ArtifactDetail, InstallSpec

if TYPE_CHECKING:
    from ..fleet import Fleet

service = Service("ArtifactService", "Artifacts (one version of one component), their signed manifests and "
                  "offline signatures. Upload: CreateUpload, then PUT the file to the upload_url it returns.")


class CreateUploadRequest(msgspec.Struct, kw_only=True):
    name: str
    # A semantic version, e.g. 1.4.0 or 2.0.0-rc.1.
    version: str
    # app, agent or firmware
    kind: str = "app"
    device_types: list[str] = []
    # The original file name devices get.
    file_name: str
    # The bytes the PUT will carry; 0 = not announced. When given, any other length is refused.
    size: Int64 = 0
    # app only: how to run it. Without one the file itself is run.
    install_spec: InstallSpec | None = None
    # raw (the file as sent) or rtos-image (firmware only: the server wraps the file in a signed RTOS image).
    format: str = "raw"
    # rtos-image only: the image's anti-rollback counter, 0..4294967295; raise it to revoke older images.
    security_counter: Int64 = 0
    # app only: the update module that installs it on Linux devices (app, file, directory or the name of an
    # external module); unset = app. Signed into the manifest.
    module: str = ""
    # Metadata for the module (e.g. path for file and directory), signed into the manifest.
    meta: dict[str, str] = {}


class UploadTicket(msgspec.Struct, kw_only=True):
    upload_id: str
    # PUT the file here (same credentials), as the raw request body.
    upload_url: str
    expires_at: dt.datetime
    max_bytes: int


@service.method(auth="operator")
async def CreateUpload(ctx: Context, req: CreateUploadRequest) -> UploadTicket:
    """Check an artifact's metadata and open an upload for its file (valid for an hour, used once)."""
    fleet = ctx.fleet
    cap = fleet.settings.max_upload_bytes
    pending = uploads.check(uploads.PendingArtifact(
        name=req.name, version=req.version, kind=req.kind, device_types=req.device_types, file_name=req.file_name,
        size=req.size or None, install_spec=req.install_spec, format=req.format or "raw",
        security_counter=req.security_counter, module=req.module, meta=dict(req.meta)), cap)
    if await fleet.store.read(lambda c: storage.artifact_exists(c, pending.name, pending.version)):
        raise AlreadyExists(f"{pending.name}@{pending.version} already exists; versions are immutable, "
                            "push a new version")
    session = await fleet.uploads.open(pending, ctx.principal)
    base = fleet.settings.public_url.rstrip("/") or (str(ctx.request.base_url).rstrip("/") if ctx.request else "")
    return UploadTicket(upload_id=session.id, upload_url=f"{base}/v1/uploads/{session.id}",
                        expires_at=session.expires, max_bytes=cap)


class ListArtifactsRequest(msgspec.Struct, kw_only=True):
    # Only versions of this component.
    name: str = ""
    kind: str = ""
    # Only artifacts built for this device type.
    device_type: str = ""
    # 1..10000; 1000 when unset.
    limit: Int32 = 0
    offset: Offset = 0


class ListArtifactsResponse(msgspec.Struct, kw_only=True):
    artifacts: list[Artifact]
    # How many match in all.
    total: int = 0


@service.method(auth="viewer", readonly=True)
async def ListArtifacts(ctx: Context, req: ListArtifactsRequest) -> ListArtifactsResponse:
    """One page of the artifacts, by name, then version (oldest first)."""
    limit = page_limit(req.limit, 1000, 10_000)
    found, total = await ctx.fleet.store.read(lambda c: artifacts.list_page(
        c, name=req.name, kind=req.kind, device_type=req.device_type, limit=limit, offset=req.offset))
    return ListArtifactsResponse(artifacts=found, total=total)


class ArtifactId(msgspec.Struct, kw_only=True):
    # The artifact's id or NAME@VERSION.
    id: str


@service.method(auth="viewer", readonly=True)
async def GetArtifact(ctx: Context, req: ArtifactId) -> ArtifactDetail:
    """One artifact with its manifest, signatures and where it is deployed."""
    return await ctx.fleet.store.read(lambda c: artifacts.detail(c, req.id))


@service.method(auth="admin")
async def DeleteArtifact(ctx: Context, req: ArtifactId) -> Artifact:
    """Delete an artifact no device uses; refused while an open action or an installed device refers to it."""
    await ctx.fleet.hub.flush()  # count what devices reported in the last second too
    return await ctx.fleet.store.write(lambda c: artifacts.delete(c, ctx.actor, req.id))


class AddSignatureRequest(msgspec.Struct, kw_only=True):
    # The artifact's id or NAME@VERSION.
    id: str
    # Ed25519 public key, 32 raw bytes in base64.
    public_key: str
    # Ed25519 signature over the manifest bytes, base64.
    signature: str


@service.method(auth="operator")
async def AddSignature(ctx: Context, req: AddSignatureRequest) -> ArtifactDetail:
    """Attach an offline signature (made with a key the server never holds); it must verify."""
    def add(conn):  # type: ignore[no-untyped-def]
        a = artifacts.add_offline_signature(conn, ctx.actor, req.id, req.public_key, req.signature)
        return artifacts.detail(conn, a.id)
    return await ctx.fleet.store.write(add)


class SigningKey(msgspec.Struct, kw_only=True):
    algorithm: str
    # 32 raw bytes, base64: what devices pin at enrollment.
    public_key: str
    public_key_pem: str


@service.method(auth="viewer", readonly=True)
async def GetSigningKey(ctx: Context, req: Empty) -> SigningKey:
    """The fleet's manifest-signing public key."""
    pub = ctx.fleet.keys.signing_key.public_key()
    pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return SigningKey(algorithm="ed25519", public_key=base64.b64encode(ctx.fleet.keys.signing_public_key).decode(),
                      public_key_pem=pem.decode())


# --- the upload's bytes -------------------------------------------------------------

async def _body(request: Request[Any, Any, Any]) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except InternalServerException as e:  # litestar's word for a client that went away
        raise Aborted(f"the upload was cut off ({e.detail}); nothing was stored") from None


def _content_length(request: Request[Any, Any, Any]) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise InvalidArgument(f"Content-Length must be a number of bytes, got {raw[:40]!r}")
    return int(raw)


@route("/v1/uploads/{upload_id:str}", http_method=[HttpMethod.PUT], opt={"auth": "operator"},
       include_in_schema=False, name="uploads.put", request_max_body_size=None)
async def put_upload(request: Request[Any, Any, Any], upload_id: FromPath[str]) -> Response[bytes]:
    # No framework body limit here: uploads.receive enforces max_upload_bytes while streaming.
    fleet: Fleet = request.app.state.fleet
    principal = request.state.principal
    session = await fleet.uploads.take(upload_id, principal)
    actor = principal.actor(request.client.host if request.client else None)
    detail = await uploads.receive(fleet, session, actor, _body(request), _content_length(request))
    return Response(rpc.encode(detail), status_code=201, media_type=rpc.JSON)


ROUTES = [put_upload]

OPENAPI_PATHS: dict[str, Any] = {
    "/v1/uploads/{upload_id}": {
        "put": {
            "summary": "Send an artifact's file for an upload opened with ArtifactService.CreateUpload",
            "description": "The raw file is the request body (any Content-Type), streamed; at most "
                           "max_upload_bytes. Answers the new artifact as GetArtifact does.",
            "parameters": [{"name": "upload_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {"application/octet-stream": {}}},
            "responses": {
                "201": {"description": "The artifact (as ArtifactService.GetArtifact answers it)",
                        "content": {rpc.JSON: {}}},
                "400": {"description": "invalid_argument: the body is empty or not the announced size"},
                "403": {"description": "permission_denied: another principal opened this upload"},
                "404": {"description": "not_found: unknown, expired or already used upload"},
                "409": {"description": "already_exists: NAME@VERSION was stored meanwhile"},
                "413": {"description": "resource_exhausted: larger than max_upload_bytes"},
            },
            "x-fleetd-auth": "operator",
        },
    },
}

__all__ = ["OPENAPI_PATHS", "ROUTES", "put_upload", "service"]
