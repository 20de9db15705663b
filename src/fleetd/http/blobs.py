"""``GET``/``HEAD /v1/blobs/{sha256}``: blob downloads with ETag, If-None-Match and one byte range.

Bytes are streamed from disk a chunk at a time (:meth:`BlobReader.chunks`: on the event loop when the page
cache has them, else on a worker thread), straight into the ASGI ``send``: :class:`BlobStream` skips
Litestar's streaming response, whose per-chunk machinery (an async generator, a task group, bytes only) cost
more than the read. Memory stays flat however many downloads run at once. With an S3 blob store the chunks come
from one ranged GET of the bucket, or the answer is a redirect to a pre-signed URL (``s3_presigned_downloads``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from litestar import Request, Response, route
from litestar.enums import HttpMethod
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.response.base import ASGIResponse

from ..accounts.users import Principal
from ..core.errors import NotFound, PermissionDenied
from ..devices import actions
from ..store.blobs import check_sha256
from . import ranges

if TYPE_CHECKING:
    from litestar.types import HTTPResponseBodyEvent, Receive, Send

    from ..fleet import Fleet
    from ..store.blob_backend import Reader

CACHE_CONTROL = "private, max-age=31536000, immutable"
OCTET_STREAM = "application/octet-stream"


async def may_download(fleet: Fleet, principal: Principal, sha256: str) -> bool:
    """The one access decision for blob downloads.

    Admin principals (users, API keys; the route already required viewer) may
    fetch any blob. A device may fetch only what one of its open actions refers to.
    """
    if principal.kind == "device" and principal.id:
        device_id = principal.id
        return await fleet.store.read(lambda c: actions.may_download(c, device_id, sha256))
    return principal.kind in ("user", "key") and principal.has_role("viewer")


class _BlobBody(ASGIResponse):
    """The ASGI side of :class:`BlobStream`: headers, then the reader's chunks, each sent as it is read."""

    __slots__ = ("_end", "_reader", "_start")

    def __init__(self, reader: Reader, start: int, end: int, **kwargs: Any) -> None:
        super().__init__(content_length=end - start + 1, **kwargs)
        self._reader, self._start, self._end = reader, start, end

    async def send_body(self, send: Send, receive: Receive) -> None:
        gone = False

        async def note_disconnect() -> None:
            # uvicorn drops sends after a disconnect without a word: without this the loop would read the rest
            # of the file for nobody.
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True

        watcher = asyncio.ensure_future(note_disconnect())
        chunks = self._reader.chunks(self._start, self._end)
        try:
            async for chunk in chunks:
                if gone:
                    return
                # A bytearray, not bytes (typed so): read into without a copy; uvicorn writes any bytes-like body.
                await send(cast("HTTPResponseBodyEvent", {"type": "http.response.body", "body": chunk,
                                                          "more_body": True}))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            await chunks.aclose()  # closes the file however the loop ended


class BlobStream(Response[bytes]):
    """Bytes ``start`` through ``end`` of an open blob as the response body; the body's end closes the reader."""

    def __init__(self, reader: Reader, start: int, end: int, *, status_code: int,
                 headers: dict[str, str]) -> None:
        super().__init__(b"", status_code=status_code, headers=headers, media_type=OCTET_STREAM)
        self._reader, self._start, self._end = reader, start, end

    def to_asgi_response(self, app: Any, request: Request[Any, Any, Any], *, cookies: Iterable[Any] | None = None,
                         headers: dict[str, str] | None = None, **_: Any) -> ASGIResponse:
        return _BlobBody(self._reader, self._start, self._end, status_code=self.status_code,
                         headers={**(headers or {}), **self.headers}, cookies=[*self.cookies, *(cookies or ())],
                         media_type=OCTET_STREAM, background=self.background)


def _etag(sha256: str) -> str:
    return f'"{sha256}"'


@route("/v1/blobs/{sha256:str}", http_method=[HttpMethod.GET, HttpMethod.HEAD],
       opt={"auth": "device_or_viewer"}, include_in_schema=False, name="blobs.download")
async def download_blob(request: Request[Any, Any, Any], sha256: FromPath[str]) -> Response[Any]:
    fleet: Fleet = request.app.state.fleet
    sha = check_sha256(sha256)
    if not await may_download(fleet, request.state.principal, sha):
        raise PermissionDenied(f"you may not download blob {sha}")
    return await blob_response(request, fleet, sha, redirect=fleet.settings.s3_presigned_downloads)


async def blob_response(request: Request[Any, Any, Any], fleet: Fleet, sha: str,
                        extra_headers: dict[str, str] | None = None, *, redirect: bool = False) -> Response[Any]:
    """Stream one stored blob (GET or HEAD) with ETag, If-None-Match, If-Range and one Range; the caller has
    already decided that the requester may have it. ``redirect``: a GET is answered with a pre-signed URL of the
    bucket instead (``s3_presigned_downloads``; fleetd's own devices follow it, DDI clients are not asked to)."""
    reader = await fleet.blobs.open(sha)
    if reader is None:
        raise NotFound(f"no blob {sha}")
    streaming = False
    try:
        size = reader.info.size
        etag = _etag(sha)
        headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL, "Accept-Ranges": "bytes",
                   **(extra_headers or {})}
        if ranges.if_none_match(request.headers.get("if-none-match"), etag):
            return Response(b"", status_code=304, headers=headers)
        if fleet.settings.download_offload and request.method == HttpMethod.GET:
            from .offload import x_accel_response  # only when an operator has put nginx in front

            return x_accel_response(fleet.settings, sha, headers, OCTET_STREAM)
        if redirect and request.method == HttpMethod.GET:
            return presigned_redirect(fleet, sha)
        # Range is defined for GET only (RFC 9110 §14.2); HEAD describes the whole file.
        rng: ranges.RangeResult = None
        if request.method == HttpMethod.GET and ranges.if_range_allows(request.headers.get("if-range"), etag):
            rng = ranges.parse_range(request.headers.get("range"), size)
        if isinstance(rng, ranges.Unsatisfiable):
            raise HTTPException(status_code=416, detail=f"the range lies outside the blob's {size} bytes",
                                headers={"Content-Range": rng.content_range})
        status, start, end = 200, 0, size - 1
        if isinstance(rng, ranges.ByteRange):
            status, start, end = 206, rng.start, rng.end
            headers["Content-Range"] = rng.content_range
        headers["Content-Length"] = str(end - start + 1)
        if request.method == HttpMethod.HEAD:
            return Response(b"", status_code=status, headers=headers, media_type=OCTET_STREAM)
        streaming = True
        return BlobStream(reader, start, end, status_code=status, headers=headers)
    finally:
        if not streaming:
            reader.close()


def presigned_redirect(fleet: Fleet, sha: str) -> Response[Any]:
    """``s3_presigned_downloads``: after fleetd's own decision, a 307 to a pre-signed URL of the blob's object,
    valid for a few minutes; the client sends its Range there. The device still checks the signed manifest and the
    sha256, so the bucket's own TLS certificate is trusted for the bytes only (docs/operations.md)."""
    from ..store.blobs_s3 import S3BlobStore  # the setting requires an S3 blob store

    url = cast("S3BlobStore", fleet.blobs).presigned_url(sha)
    return Response(b"", status_code=307, headers={"Location": url, "Cache-Control": "no-store"})


ROUTES = [download_blob]

_BLOB_RESPONSES: dict[str, Any] = {
    "200": {"description": "The whole blob", "content": {OCTET_STREAM: {}}},
    "206": {"description": "One byte range (Content-Range says which)", "content": {OCTET_STREAM: {}}},
    "304": {"description": "Not modified (If-None-Match matched the ETag)"},
    "307": {"description": "s3_presigned_downloads: fetch the bytes from this pre-signed bucket URL (Location)"},
    "400": {"description": "invalid_argument: not a SHA-256"},
    "401": {"description": "unauthenticated"},
    "403": {"description": "permission_denied"},
    "404": {"description": "not_found: unknown or corrupt blob"},
    "416": {"description": "out_of_range: the Range lies past the end (Content-Range: bytes */size)"},
}
_BLOB_PARAMS = [
    {"name": "sha256", "in": "path", "required": True,
     "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
    {"name": "Range", "in": "header", "schema": {"type": "string"},
     "description": "bytes=a-b, bytes=a- or bytes=-n"},
    {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
    {"name": "If-Range", "in": "header", "schema": {"type": "string"}},
]

OPENAPI_PATHS: dict[str, Any] = {
    "/v1/blobs/{sha256}": {
        "get": {"summary": "Download a blob by SHA-256 (ETag, Range)", "parameters": _BLOB_PARAMS,
                "responses": _BLOB_RESPONSES, "x-fleetd-auth": "device_or_viewer"},
        "head": {"summary": "A blob's headers (size, ETag) without the body", "parameters": _BLOB_PARAMS[:1],
                 "responses": {k: v for k, v in _BLOB_RESPONSES.items() if k not in ("206", "416")},
                 "x-fleetd-auth": "device_or_viewer"},
    },
}

__all__ = ["OPENAPI_PATHS", "ROUTES", "BlobStream", "blob_response", "download_blob", "may_download"]
