"""The Connect protocol layer: method registry, JSON codec, routes, error mapping.

A service module declares its methods with :class:`Service`::

    users = Service("UserService")

    @users.method(auth="admin")
    async def CreateUser(ctx: Context, req: CreateUserRequest) -> User: ...

Every method must name its auth policy; there is no default. Requests are
decoded into msgspec Structs following protobuf's JSON mapping: snake_case and
lowerCamelCase field names, 64-bit integers as strings, unknown fields ignored.
A request in binary protobuf (``application/proto``) goes through :mod:`.proto_codec`,
imported on the first one, so the JSON path and the server's start never load protobuf.
Every method also answers gRPC-Web (:mod:`.grpc_web`) and gzip (:mod:`.compression`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import inspect
import logging
import typing
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.enums import HttpMethod
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler

from ..accounts.audit import Actor
from ..accounts.users import Principal
from ..core import disk
from ..core.decoding import decoding
from ..core.errors import (
    FleetdError,
    InvalidArgument,
    PayloadTooLarge,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unimplemented,
    UnsupportedMediaType,
)
from . import compression, grpc_web

if TYPE_CHECKING:
    from ..fleet import Fleet

log = logging.getLogger(__name__)

PACKAGE = "fleetd.v1"
# device_or_viewer: any device (the handler decides which resources it may see) or a viewer and up.
# ddi: hawkBit DDI routes (TargetToken / GatewayToken), authenticated by http_ddi; no RPC method uses it.
Policy = Literal["public", "device", "device_or_viewer", "viewer", "operator", "admin", "ddi"]
POLICIES: tuple[str, ...] = typing.get_args(Policy)
JSON = "application/json"
PROTO = "application/proto"
# the request Content-Types the RPC routes take
ACCEPT_POST = ", ".join((JSON, PROTO, *grpc_web.CONTENT_TYPES))


# --- context -----------------------------------------------------------------

@dataclass
class Context:
    """What a method handler gets beside its request message."""

    fleet: Fleet
    principal: Principal
    remote_addr: str | None
    # Litestar's request; None for the calls the device lane answers (http/device_lane.py).
    request: Request[Any, Any, Any] | None
    cookies: list[Cookie] = field(default_factory=list)

    @property
    def actor(self) -> Actor:
        return self.principal.actor(self.remote_addr)

    def set_cookie(self, cookie: Cookie) -> None:
        self.cookies.append(cookie)


Handler = Callable[[Context, Any], Awaitable[Any]]


# --- codec -------------------------------------------------------------------

def lower_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _struct_infos(t: Any) -> list[msgspec.inspect.StructType]:
    """Every Struct type reachable from ``t``."""
    found: dict[type, msgspec.inspect.StructType] = {}

    def walk(info: msgspec.inspect.Type) -> None:
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls in found:
                return
            found[info.cls] = info
            for f in info.fields:
                walk(f.type)
        elif isinstance(info, msgspec.inspect.UnionType):
            for u in info.types:
                walk(u)
        elif isinstance(info, (msgspec.inspect.ListType, msgspec.inspect.SetType,
                               msgspec.inspect.FrozenSetType, msgspec.inspect.VarTupleType)):
            walk(info.item_type)
        elif isinstance(info, msgspec.inspect.DictType):
            walk(info.value_type)

    walk(msgspec.inspect.type_info(t))
    return list(found.values())


def _renamer(info: msgspec.inspect.Type) -> Callable[[Any], Any] | None:
    """A function turning lowerCamelCase keys into the field names, only where the type has fields."""
    if isinstance(info, msgspec.inspect.StructType):
        fields = {}
        for f in info.fields:
            fields[f.encode_name] = (f.encode_name, f)
            fields.setdefault(lower_camel(f.encode_name), (f.encode_name, f))
        subs: dict[str, Callable[[Any], Any] | None] = {}

        def rename_struct(obj: Any) -> Any:
            if not isinstance(obj, dict):
                return obj
            out = {}
            for k, v in obj.items():
                target = fields.get(k)
                if target is None:
                    continue  # unknown field: ignored
                name, finfo = target
                if name not in subs:
                    subs[name] = _renamer(finfo.type)
                sub = subs[name]
                out[name] = sub(v) if sub else v
            return out

        return rename_struct
    if isinstance(info, msgspec.inspect.UnionType):
        parts = [r for r in (_renamer(t) for t in info.types) if r]
        if not parts:
            return None
        return parts[0]  # unions here are Optional[X]: one interesting member
    if isinstance(info, (msgspec.inspect.ListType, msgspec.inspect.VarTupleType)):
        item = _renamer(info.item_type)
        return (lambda obj: [item(x) for x in obj] if isinstance(obj, list) else obj) if item else None
    if isinstance(info, msgspec.inspect.DictType):
        val = _renamer(info.value_type)
        return (lambda obj: {k: val(v) for k, v in obj.items()} if isinstance(obj, dict) else obj) if val else None
    return None


class Codec:
    """Decodes one request type. Fast path: one msgspec decode straight into the Struct."""

    def __init__(self, t: type) -> None:
        self.type = t
        camel = set()
        for info in _struct_infos(t):
            for f in info.fields:
                c = lower_camel(f.encode_name)
                if c != f.encode_name:
                    camel.add(f'"{c}"'.encode())
        self._camel_keys = tuple(camel)
        self._rename = _renamer(msgspec.inspect.type_info(t))
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(t, strict=False)

    def decode(self, body: bytes) -> Any:
        if not body.strip():
            body = b"{}"
        with decoding("request", "request body"):
            if not any(k in body for k in self._camel_keys):
                return self._decoder.decode(body)
            raw = msgspec.json.decode(body)
            if not isinstance(raw, dict):
                raise InvalidArgument("the request body must be a JSON object")
            return msgspec.convert(self._rename(raw) if self._rename else raw, self.type, strict=False)


_encoder = msgspec.json.Encoder()


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


# --- registry ----------------------------------------------------------------

@dataclass
class Method:
    service: str
    name: str
    handler: Handler
    request_type: type
    response_type: type
    auth: str
    readonly: bool
    doc: str
    # Callable by a session whose user must change their password first (the calls that lead there).
    before_password_change: bool = False

    @functools.cached_property
    def codec(self) -> Codec:
        """Built on the method's first call: the 71 methods' codecs cost a start ~30 ms (docs/performance.md)."""
        return Codec(self.request_type)

    @property
    def path(self) -> str:
        return f"/{PACKAGE}.{self.service}/{self.name}"


class Empty(msgspec.Struct):
    """A message with no fields."""


class Service:
    def __init__(self, name: str, doc: str = "") -> None:
        self.name = name
        self.doc = doc
        self.methods: dict[str, Method] = {}

    def method(self, *, auth: Policy, readonly: bool = False, name: str | None = None,
               before_password_change: bool = False) -> Callable[[Handler], Handler]:
        """Register a handler. ``auth`` is mandatory; ``readonly`` methods also answer Connect GET;
        ``before_password_change`` methods answer a user who must change their password (see authorize)."""
        if auth not in POLICIES or auth == "ddi":
            raise ValueError(f"auth must be one of {POLICIES} other than ddi")

        def register(fn: Handler) -> Handler:
            hints = typing.get_type_hints(fn)
            params = list(inspect.signature(fn).parameters)
            if len(params) != 2:
                raise TypeError(f"{fn.__name__} must take (ctx, request)")
            mname = name or fn.__name__
            if mname in self.methods:
                raise ValueError(f"{self.name}.{mname} registered twice")
            self.methods[mname] = Method(
                service=self.name, name=mname, handler=fn, request_type=hints[params[1]],
                response_type=hints["return"], auth=auth, readonly=readonly,
                doc=inspect.getdoc(fn) or "", before_password_change=before_password_change,
            )
            return fn

        return register


# --- authorization -----------------------------------------------------------

def authorize(policy: str, principal: Principal, *, before_password_change: bool = False) -> None:
    """Raise unless ``principal`` may call something guarded by ``policy``.

    A session whose user must change their password may call only what is marked
    ``before_password_change`` (ChangePassword, WhoAmI, Logout) until they have.
    """
    if policy == "public":
        return
    if policy == "ddi":
        raise PermissionDenied("DDI routes take a TargetToken or GatewayToken")
    if principal.kind == "anonymous":
        raise Unauthenticated("this call needs credentials: an API key (Authorization: Bearer fk_...), "
                              "a device token, or a browser session")
    if principal.must_change_password and not before_password_change:
        raise PermissionDenied("change your password first: call UserService/ChangePassword (the web UI asks "
                               "for it after login); until then only ChangePassword, WhoAmI and Logout answer")
    if policy == "device":
        if principal.kind != "device":
            raise PermissionDenied("this call is for devices only")
        return
    if policy == "device_or_viewer":
        if principal.kind == "device":
            return
        policy = "viewer"
    if principal.kind == "device":
        raise PermissionDenied("devices may not call admin methods")
    if not principal.has_role(policy):
        raise PermissionDenied(f"this call needs the {policy} role; you are {principal.role}")


# --- HTTP routes -------------------------------------------------------------

def _client_addr(request: Request[Any, Any, Any]) -> str | None:
    return request.client.host if request.client else None


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    if content_type == JSON:
        return True
    return content_type is not None and _media_type(content_type) == JSON


def is_proto(content_type: str | None) -> bool:
    return content_type is not None and _media_type(content_type) == PROTO


def unsupported(content_type: str | None) -> UnsupportedMediaType:
    return UnsupportedMediaType(f"Content-Type must be {JSON} or {PROTO} (Connect), or {grpc_web.GRPC_WEB_PROTO} "
                                f"or {grpc_web.GRPC_WEB_JSON} (gRPC-Web) (got {content_type!r})")


def _limit(request: Request[Any, Any, Any]) -> int:
    """The body limit of the RPC routes, which also caps a decompressed message."""
    limit: int = request.app.state.fleet.settings.max_request_bytes
    return limit


def _get_message(request: Request[Any, Any, Any]) -> tuple[bytes, bool]:
    """A Connect GET's message and whether it is binary protobuf (``encoding=proto``)."""
    params = request.query_params
    encoding = params.get("encoding", "json")
    if encoding not in ("json", "proto"):
        raise UnsupportedMediaType(f"unsupported message encoding {encoding!r}; use encoding=json or encoding=proto")
    binary = encoding == "proto"
    message = _get_raw_message(request, binary)
    compressed = params.get("compression")
    if compressed is not None:  # Connect GET names the message's compression here, not in Content-Encoding
        message = compression.decode(message, compressed, _limit(request))
    return message, binary


def _get_raw_message(request: Request[Any, Any, Any], binary: bool) -> bytes:
    params = request.query_params
    if params.get("base64") == "1":
        message = params.get("message", "")
        try:
            return base64.urlsafe_b64decode(message + "=" * (-len(message) % 4))
        except (binascii.Error, ValueError):
            raise InvalidArgument("the message parameter is not valid base64") from None
    if binary:  # percent-encoded bytes, which the decoded (text) query parameters would mangle
        for part in request.scope["query_string"].split(b"&"):
            key, _, value = part.partition(b"=")
            if key == b"message":
                return urllib.parse.unquote_to_bytes(value.replace(b"+", b" "))
        return b""
    return params.get("message", "").encode()


def _route(method: Method) -> HTTPRouteHandler:
    async def endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
        if request.method == "GET":
            body, binary = _get_message(request)
        else:
            content_type = request.headers.get("content-type")
            binary = False
            if not is_json(content_type):
                if not is_proto(content_type):
                    web = grpc_web.media_type(content_type)
                    if web is None:
                        raise unsupported(content_type)
                    return await _grpc_web(method, request, web)
                binary = True
            body = await request.body()
            encoding = request.headers.get("content-encoding")
            if encoding is not None:
                body = compression.decode(body, encoding, _limit(request))
        if binary:
            return _answer(request, *await _binary(method, request, body), PROTO)
        message = method.codec.decode(body)
        ctx = Context(request.app.state.fleet, request.state.principal, _client_addr(request), request)
        return _answer(request, encode(await method.handler(ctx, message)), ctx, JSON)

    verbs = [HttpMethod.POST, HttpMethod.GET] if method.readonly else [HttpMethod.POST]
    return HTTPRouteHandler(
        path=method.path, http_method=verbs, name=f"{method.service}.{method.name}",
        opt={"auth": method.auth, "rpc": method, "before_password_change": method.before_password_change},
        include_in_schema=False,
    )(endpoint)


async def _binary(method: Method, request: Request[Any, Any, Any], body: bytes) -> tuple[bytes, Context]:
    """A call in binary protobuf: the same handler, the message in and out through proto_codec; the answer's
    bytes and the context. Errors stay Connect JSON error bodies (:func:`error_response`), as the protocol has
    it for unary calls (gRPC-Web: trailers)."""
    from . import proto_codec  # here, not at the top: only a binary request loads protobuf

    message: Any = proto_codec.decode(body, method.request_type)
    ctx = Context(request.app.state.fleet, request.state.principal, _client_addr(request), request)
    return proto_codec.encode(await method.handler(ctx, message)), ctx


def _answer(request: Request[Any, Any, Any], payload: bytes, ctx: Context, media_type: str) -> Response[bytes]:
    """A Connect unary success answer, gzip-compressed when the client accepts it and it is worth it
    (:data:`compression.MIN_BYTES`); the length test comes first so small answers never look at headers."""
    headers = None
    if len(payload) >= compression.MIN_BYTES and compression.accepts_gzip(request.headers.get("accept-encoding")):
        payload = compression.gzip(payload)
        headers = {"Content-Encoding": compression.GZIP, "Vary": "Accept-Encoding"}
    return Response(payload, media_type=media_type, status_code=200, headers=headers, cookies=ctx.cookies or None)


async def _grpc_web(method: Method, request: Request[Any, Any, Any], media_type: str) -> Response[bytes]:
    """A gRPC-Web unary call: the same handler, the message framed (:mod:`.grpc_web`) in either codec.
    Errors become trailers-only answers in :func:`error_response`."""
    headers = request.headers
    message = grpc_web.request_message(await request.body(), headers.get("grpc-encoding"), _limit(request))
    if media_type == grpc_web.GRPC_WEB_JSON:
        ctx = Context(request.app.state.fleet, request.state.principal, _client_addr(request), request)
        payload = encode(await method.handler(ctx, method.codec.decode(message)))
    else:
        payload, ctx = await _binary(method, request, message)
    body, extra = grpc_web.response_body(payload, headers.get(grpc_web.ACCEPT_ENCODING))
    return Response(body, media_type=media_type, status_code=200, headers=extra, cookies=ctx.cookies or None)


def routes(services: list[Service]) -> list[HTTPRouteHandler]:
    return [_route(m) for s in services for m in s.methods.values()]


# --- errors ------------------------------------------------------------------

_HTTP_TO_CONNECT = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied",
                    404: "not_found", 405: "unimplemented", 409: "already_exists", 413: "resource_exhausted",
                    415: "invalid_argument", 416: "out_of_range", 429: "resource_exhausted",
                    501: "unimplemented", 503: "unavailable"}


def error_parts(exc: Exception, data_dir: Any, where: str) -> tuple[FleetdError, dict[str, str]]:
    """A fleetd error for any exception but Litestar's own, and the headers it brings (Retry-After).
    An unexpected exception is logged with ``where`` (method and path) and answered as internal."""
    if disk.is_full(exc):
        exc = disk.full_error(data_dir, exc)
    if isinstance(exc, UnsupportedMediaType):
        return exc, {"Accept-Post": ACCEPT_POST}
    if isinstance(exc, FleetdError):
        if isinstance(exc, (ResourceExhausted, compression.UnsupportedEncoding)):
            return exc, dict(exc.headers)
        return exc, {}
    log.error("internal error on %s", where, exc_info=exc)
    return FleetdError("internal error; the server log has the details"), {}


def error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """The one place an exception becomes an HTTP response (the device lane uses :func:`error_parts` too)."""
    headers: dict[str, str] = {}
    if isinstance(exc, HTTPException):
        status = exc.status_code
        path = request.url.path
        if status in (404, 405) and path.startswith(f"/{PACKAGE}."):
            if path in getattr(request.app.state, "rpc_paths", ()):
                err = FleetdError(f"{path.lstrip('/')} does not answer {request.method}; use POST")
                err.code, err.http_status = "unimplemented", 405
            else:
                err = Unimplemented(f"unknown method {path.lstrip('/')}; see /schema/openapi.json "
                                    f"for the methods this server has")
        elif status == 413:
            handler = request.scope.get("route_handler")
            limit = handler.resolve_request_max_body_size() if isinstance(handler, HTTPRouteHandler) else None
            err = too_large(limit)
        else:
            err = FleetdError(str(exc.detail))
            err.code = _HTTP_TO_CONNECT.get(status, "internal" if status >= 500 else "invalid_argument")
            err.http_status = status
        headers.update(exc.headers or {})
    else:
        err, headers = error_parts(exc, request.app.state.fleet.data_dir, f"{request.method} {request.url.path}")
    if request.method == "POST" and request.url.path.startswith(f"/{PACKAGE}."):
        web = grpc_web.media_type(request.headers.get("content-type"))
        if web is not None:  # trailers-only: HTTP 200, the status in the headers, no body
            headers.update(grpc_web.status_lines(err.code, err.message))
            return Response(b"", status_code=200, media_type=web, headers=headers)
    return Response(encode(err.to_json()), status_code=err.http_status, media_type=JSON, headers=headers)


def too_large(limit: int | None) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is larger than this endpoint accepts ({limit} bytes)"
                           if limit else "the request body is too large")
