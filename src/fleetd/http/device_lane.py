"""The device lane: the calls every device makes every poll, answered straight from ASGI.

CheckIn, ReportStatus and PushTelemetry are most of a fleet's traffic. Litestar's per-request work
(routing, the guard, connection copies, middleware and ``before_send`` wrappers) cost more than the
calls themselves, so :class:`DeviceLane` sits in front of the Litestar app and answers these three
when they come as a device sends them: ``POST`` with an ``Authorization`` header. It does what the
Litestar route does, in the same order and with the same functions: body size limit, Content-Type,
authentication and the ``device`` policy (:func:`rpc.authorize`), the method's codec and handler,
errors through :func:`rpc.error_parts`, the security headers and the request metrics. Anything else
(another verb, no Authorization header, a binary protobuf or gRPC-Web body, a compressed body
(``Content-Encoding``), every other path) goes to Litestar unchanged: those calls are rare and their
codec or inflating costs more than Litestar's overhead. The lane does not compress its answers (a
server may always answer uncompressed; a check-in's answer is mostly below compression.MIN_BYTES).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import grpc_web, rpc

if TYPE_CHECKING:
    from ..fleet import Fleet

ASGIApp = Any


def _binary(content_type: bytes | None) -> bool:
    """Binary protobuf or gRPC-Web: the calls the lane leaves to Litestar."""
    if content_type is None:
        return False
    text = content_type.decode("latin-1")
    return rpc.is_proto(text) or grpc_web.media_type(text) is not None


class _Disconnected(Exception):
    """The client went away before its body arrived."""


class DeviceLane:
    def __init__(self, app: ASGIApp, fleet: Fleet, methods: list[rpc.Method], extra_headers: list[tuple[bytes, bytes]]
                 ) -> None:
        for m in methods:
            if m.auth != "device":
                raise ValueError(f"{m.path} is not a device method: the lane serves auth='device' only")
        self.app = app
        self.fleet = fleet
        self.methods = {m.path: m for m in methods}
        self.max_body = fleet.settings.max_request_bytes
        # nosniff (and HSTS with TLS): what security_headers.every_response adds to every Litestar answer.
        self.headers = [(b"content-type", rpc.JSON.encode()), *extra_headers]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            method = self.methods.get(scope["path"])
            if method is not None:
                authorization = content_type = length = encoding = None
                for name, value in scope["headers"]:
                    if name == b"authorization":
                        authorization = value
                    elif name == b"content-type":
                        content_type = value
                    elif name == b"content-length":
                        length = value
                    elif name == b"content-encoding":
                        encoding = value
                if (authorization is not None and encoding is None
                        and (content_type == b"application/json" or not _binary(content_type))):
                    await self._serve(method, authorization, content_type, length, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, method: rpc.Method, authorization: bytes, content_type: bytes | None,
                     length: bytes | None, scope: dict[str, Any], receive: Any, send: Any) -> None:
        start = time.perf_counter()
        status = 500
        try:
            try:
                body = await self._answer(method, authorization, content_type, length, scope, receive)
                status, headers = 200, self.headers
            except _Disconnected:
                status = 499  # nobody to answer; counted like nginx counts it
                return
            except Exception as exc:  # every error becomes a Connect error body, as on the Litestar routes
                err, extra = rpc.error_parts(exc, self.fleet.data_dir, f"POST {method.path}")
                status, body = err.http_status, rpc.encode(err.to_json())
                headers = [*self.headers, *((k.lower().encode(), v.encode()) for k, v in extra.items())]
            await send({"type": "http.response.start", "status": status,
                        "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.fleet.metrics.observe(method.path, "POST", status, time.perf_counter() - start)

    async def _answer(self, method: rpc.Method, authorization: bytes, content_type: bytes | None,
                      length: bytes | None, scope: dict[str, Any], receive: Any) -> bytes:
        # The Litestar route's order: the guard authenticates first, then the handler checks the body.
        principal = await self.fleet.authenticator.authenticate("POST", authorization.decode("latin-1"), None, None)
        rpc.authorize(method.auth, principal)
        ctype = content_type.decode("latin-1") if content_type is not None else None
        if not rpc.is_json(ctype):
            raise rpc.unsupported(ctype)
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise rpc.too_large(self.max_body)
        message = method.codec.decode(await self._body(receive))
        client = scope.get("client")
        ctx = rpc.Context(self.fleet, principal, client[0] if client else None, None)
        return rpc.encode(await method.handler(ctx, message))

    async def _body(self, receive: Any) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.max_body:
                    raise rpc.too_large(self.max_body)
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
