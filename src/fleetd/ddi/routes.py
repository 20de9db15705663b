"""The hawkBit DDI routes under ``/{tenant}/controller/v1/{controllerId}``, as hawkBit's DdiRootController.

Paths, JSON field names, HAL ``_links`` with absolute hrefs and status codes follow hawkBit, so that
SWUpdate's suricatta, rauc-hawkbit-updater and Zephyr's hawkBit client work unchanged. Errors carry
hawkBit's body shape ``{"exceptionClass", "errorCode", "message"}``. The poll answer is built from
memory for a device with nothing to do (the check-in hot path) and carries an ETag.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import msgspec
from litestar import Request, Response, get, post, put, route
from litestar.connection import ASGIConnection
from litestar.enums import HttpMethod
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler
from litestar.params import FromPath, PathParameter

from ..accounts.users import Principal
from ..core import disk
from ..core.errors import FleetdError, InvalidArgument, NotFound, ResourceExhausted, Unauthenticated
from ..devices.actions import TERMINAL
from ..http import ranges, rpc
from ..http.blobs import blob_response
from . import feedback as ddi_feedback
from . import state as ddi
from . import storage as ddi_storage
from .tokens import TokenEntry

if TYPE_CHECKING:
    from ..fleet import Fleet

# Action and software module numbers: SQLite integers (a larger one would overflow the query, not miss).
DDI_NUMBER_MAX = 2**63 - 1
DdiNumber = Annotated[int, PathParameter(ge=0, le=DDI_NUMBER_MAX)]

log = logging.getLogger(__name__)

HAL_JSON = "application/hal+json"
MD5SUM_SUFFIX = ".MD5SUM"
MAX_BODY = 64 * 1024
# Every chunk is part "bApp" (hawkBit's key for an application module), whatever the artifact's kind: Zephyr's
# client refuses any other part ("Only part 'bApp' is supported", subsys/mgmt/hawkbit/hawkbit.c), and
# SWUpdate and rauc-hawkbit-updater do not act on it.
CHUNK_PART = "bApp"


# --- authentication (called by the app's guard for policy "ddi") -----------------------------

@dataclass(frozen=True, slots=True)
class DdiCaller:
    kind: str  # target, gateway or anonymous
    controller_id: str
    device_id: str | None  # None: a controller that is not registered (yet)
    token: TokenEntry | None = None

    def device(self) -> str:
        if self.device_id is None:
            raise NotFound(f"controller {self.controller_id} is not registered; poll "
                           f"/{{tenant}}/controller/v1/{self.controller_id} first")
        return self.device_id


async def authenticate(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> Principal:
    """TargetToken / GatewayToken → the calling controller; no database read."""
    fleet: Fleet = connection.app.state.fleet
    # Only the configured tenant has routes (see :func:`routes`): another tenant's paths answer 404.
    controller_id = str(connection.path_params.get("controller_id", ""))
    header = connection.headers.get("authorization")
    state = fleet.ddi
    if not header:
        if handler.opt.get("ddi_download") and fleet.settings.ddi_anonymous_download:
            # As hawkBit: the artifacts assigned to the controller named in the path, nothing else.
            connection.state.ddi = DdiCaller("anonymous", controller_id, _registered(fleet, controller_id))
            return Principal("anonymous")
        raise Unauthenticated("send 'Authorization: TargetToken <token>' (fleetd devices ddi-token) or "
                              "'Authorization: GatewayToken <token>' (fleetd tokens create --ddi-gateway)")
    scheme, _, secret = header.strip().partition(" ")
    secret = secret.strip()
    kind = {"targettoken": "target", "gatewaytoken": "gateway"}.get(scheme.lower())
    if kind is None or not secret:
        raise Unauthenticated("the Authorization header must be 'TargetToken <token>' or 'GatewayToken <token>'")
    entry = state.tokens.lookup(kind, secret)
    if entry is None:
        raise Unauthenticated(f"unknown or revoked {'target' if kind == 'target' else 'gateway'} token")
    device_id = _registered(fleet, controller_id)
    if kind == "target" and (device_id is None or device_id != entry.device_id):
        raise Unauthenticated(f"this target token is not valid for controller {controller_id}")
    connection.state.ddi = DdiCaller(kind, controller_id, device_id, entry)
    if device_id is None:
        return Principal("ddi_gateway", entry.id, controller_id)
    # Every DDI request is a contact, as in hawkBit (its last poll time moves with each one).
    fleet.hub.note_seen(device_id, connection.client.host if connection.client else None)
    return Principal("device", device_id, controller_id)


def _registered(fleet: Fleet, controller_id: str) -> str | None:
    """The device of a registered controller (None if there is none); a revoked one is refused."""
    device_id = fleet.ddi.controllers.get(controller_id)
    if device_id is not None and device_id not in fleet.hub.runtime:
        device_id = None  # deleted by an offline command: the server's caches did not hear of it
    if device_id is not None and fleet.hub.runtime[device_id].status == "revoked":
        raise Unauthenticated(f"controller {controller_id} was revoked")
    return device_id


def _caller(request: Request[Any, Any, Any]) -> DdiCaller:
    caller: DdiCaller = request.state.ddi
    return caller


# --- errors, hawkBit's shape ---------------------------------------------------------------

_HAWKBIT_CODES = {
    400: ("org.eclipse.hawkbit.rest.exception.MessageNotReadableException",
          "hawkbit.server.error.rest.body.notReadable"),
    # hawkBit's own spelling ("entitiy"): some clients compare the string.
    404: ("org.eclipse.hawkbit.repository.exception.EntityNotFoundException",
          "hawkbit.server.error.repo.entitiyNotFound"),
}
_FLEETD_CODES = {401: "unauthorized", 403: "forbidden", 410: "actionNotActive", 413: "bodyTooLarge",
                 416: "rangeNotSatisfiable", 500: "internal", 503: "unavailable"}


def error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if disk.is_full(exc):
        exc = disk.full_error(request.app.state.fleet.data_dir, exc)
    headers: dict[str, str] = {}
    if isinstance(exc, FleetdError):
        status, message, cls = exc.http_status, exc.message, f"fleetd.{type(exc).__name__}"
        if isinstance(exc, ResourceExhausted):
            headers.update(exc.headers)
    elif isinstance(exc, HTTPException):
        status, message, cls = exc.status_code, str(exc.detail), f"litestar.{type(exc).__name__}"
        headers.update(exc.headers or {})
        if status == 413:
            message = f"the request body is larger than DDI accepts ({MAX_BODY} bytes)"
        elif isinstance(exc, ValidationException) and isinstance(exc.extra, list):
            # Path parameters out of range (DdiNumber): say which and why.
            message += ": " + "; ".join(f"{e.get('key')}: {e.get('message')}" for e in exc.extra
                                       if isinstance(e, dict))
    else:
        log.exception("internal error on %s %s", request.method, request.url.path)
        status, message, cls = 500, "internal error; the server log has the details", "fleetd.FleetdError"
    known = _HAWKBIT_CODES.get(status)
    if known:
        cls, code = known
    else:
        code = f"fleetd.ddi.{_FLEETD_CODES.get(status, 'error')}"
    body = msgspec.json.encode({"exceptionClass": cls, "errorCode": code, "message": message})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


# --- JSON as hawkBit writes it ---------------------------------------------------------

# Link roots by (scheme, Host header): building request.base_url on every poll cost ~9 % of the poll's loop time.
_roots: dict[tuple[str, str], str] = {}


def _root(request: Request[Any, Any, Any], fleet: Fleet) -> str:
    if fleet.settings.public_url:
        return fleet.settings.public_url.rstrip("/")
    key = (request.scope["scheme"], request.headers.get("host", ""))
    root = _roots.get(key)
    if root is None:
        root = str(request.base_url).rstrip("/")
        if len(_roots) < 64:  # the names a server is reached by; never grows with untrusted Host values
            _roots[key] = root
    return root


def _base(request: Request[Any, Any, Any], fleet: Fleet, controller_id: str) -> str:
    # The tenant in capitals, as hawkBit writes it in links whatever spelling the request used: older Zephyr
    # releases poll /default/controller/v1/... and then require "/DEFAULT/controller/v1" in download-http.
    tenant = fleet.settings.ddi_tenant.upper()
    return f"{_root(request, fleet)}/{quote(tenant, safe='')}/controller/v1/{quote(controller_id, safe='')}"


def _link(href: str) -> dict[str, str]:
    return {"href": href}


def _sleep(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _artifact_json(base: str, module: int, a: sqlite3.Row) -> dict[str, Any]:
    url = f"{base}/softwaremodules/{module}/artifacts/{quote(a['file_name'], safe='')}"
    return {"filename": a["file_name"], "hashes": {"sha1": a["sha1"], "md5": a["md5"], "sha256": a["sha256"]},
            "size": a["size"], "_links": {"download": _link(url), "download-http": _link(url),
                                          "md5sum": _link(url + MD5SUM_SUFFIX),
                                          "md5sum-http": _link(url + MD5SUM_SUFFIX)}}


def _deployment_json(base: str, row: ddi.ActionRow, a: sqlite3.Row, module: int,
                     hist: list[str] | None) -> dict[str, Any]:
    handling = "attempt" if row.state == "offered" else "forced"
    chunk = {"part": CHUNK_PART, "version": a["version"], "name": a["name"],
             "artifacts": [_artifact_json(base, module, a)],
             # fleetd's signed manifest rides along, for clients that can check it.
             "metadata": [{"key": "fleetd.manifest", "value": bytes(a["manifest"]).decode()},
                          {"key": "fleetd.signature", "value": a["signature"]}]}
    out: dict[str, Any] = {"id": str(row.num),
                           "deployment": {"download": handling, "update": handling, "chunks": [chunk]}}
    if hist is not None:
        out["actionHistory"] = {"status": row.state.upper(), "messages": hist}
    return out


def _json(obj: Any) -> Response[bytes]:
    return Response(msgspec.json.encode(obj), media_type=HAL_JSON)


def _count(request: Request[Any, Any, Any]) -> int | None:
    raw = request.query_params.get("actionHistory")
    if raw is None:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise InvalidArgument(f"actionHistory must be a number of messages, got {raw!r}") from None
    return 1000 if n < 0 else min(n, 1000)  # hawkBit: a negative count means all of them


async def _body(request: Request[Any, Any, Any]) -> bytes:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise HTTPException(status_code=413, detail="body too large")
    return body


# --- routes -------------------------------------------------------------------------------

async def _register(fleet: Fleet, caller: DdiCaller, addr: str | None) -> str:
    gateway, controller_id = caller.token, caller.controller_id
    if gateway is None:
        raise Unauthenticated("a token is needed to poll")
    device_id, _, _ = await fleet.store.write(lambda c: ddi.register_by_gateway(c, controller_id, gateway, addr))
    return device_id


async def poll(request: Request[Any, Any, Any], controller_id: FromPath[str]) -> Response[bytes]:
    fleet: Fleet = request.app.state.fleet
    caller, state, hub = _caller(request), fleet.ddi, fleet.hub
    addr = request.client.host if request.client else None
    device_id = caller.device_id
    if device_id is None:
        device_id = await _register(fleet, caller, addr)
        hub.note_seen(device_id, addr)
    rt = hub.runtime[device_id]
    links: dict[str, Any] = {}
    base = _base(request, fleet, controller_id)
    if device_id in hub.open_actions or device_id in state.watch:
        view = await fleet.store.read(lambda c: ddi.poll_view(c, device_id))
        if view.undeliverable:
            await fleet.store.write(lambda c: ddi.fail_undeliverable(c, device_id))
        if not view.watch:
            state.watch.discard(device_id)
        if view.cancel is not None:
            links["cancelAction"] = _link(f"{base}/cancelAction/{view.cancel}")
        elif view.deployment is not None:
            num, st = view.deployment
            key = hashlib.sha1(f"{num}:{st == 'offered'}".encode()).hexdigest()[:8]
            links["deploymentBase"] = _link(f"{base}/deploymentBase/{num}?c={key}")
    installed = state.installed.get(device_id)
    if installed is not None:
        links["installedBase"] = _link(f"{base}/installedBase/{installed}")
    if device_id in state.config_requested:
        links["configData"] = _link(f"{base}/configData")
    doc: dict[str, Any] = {"config": {"polling": {"sleep": _sleep(rt.poll_interval)}}}
    if links:
        doc["_links"] = links
    body = msgspec.json.encode(doc)
    etag = f'"{hashlib.sha1(body).hexdigest()}"'
    if ranges.if_none_match(request.headers.get("if-none-match"), etag):
        return Response(b"", status_code=304, headers={"ETag": etag})
    return Response(body, media_type=HAL_JSON, headers={"ETag": etag})


def _module(conn: sqlite3.Connection, artifact_id: str) -> tuple[sqlite3.Row, int]:
    a = ddi_storage.artifact_with_hashes(conn, artifact_id)
    if a is None:
        raise NotFound(f"artifact {artifact_id} is gone")
    return a, ddi.num_of(conn, "artifact", artifact_id)


Deployment = tuple[ddi.ActionRow, sqlite3.Row, int, list[str] | None]


async def _read_deployment(request: Request[Any, Any, Any], device_id: str, controller_id: str, action_id: int,
                           *, finished: bool) -> Deployment:
    """An open (``finished`` False) or successfully ended deployment of this device, with its artifact."""
    count = _count(request)

    def read(conn: sqlite3.Connection) -> Deployment:
        row = ddi.device_action(conn, device_id, controller_id, action_id)
        if finished and (row.state not in TERMINAL or row.state == "cancelled" or row.artifact_id is None):
            raise NotFound(f"action {action_id} is not a finished deployment (it is {row.state})")
        if not finished and (row.state in TERMINAL or row.artifact_id is None):
            raise NotFound(f"action {action_id} is not an active deployment (it is {row.state})")
        assert row.artifact_id is not None
        a, module = _module(conn, row.artifact_id)
        return row, a, module, ddi.history(conn, row.id, count) if count is not None else None

    fleet: Fleet = request.app.state.fleet
    return await fleet.store.read(read)


async def deployment_base(request: Request[Any, Any, Any], controller_id: FromPath[str],
                          action_id: DdiNumber) -> Response[bytes]:
    fleet: Fleet = request.app.state.fleet
    device_id = _caller(request).device()
    row, a, module, hist = await _read_deployment(request, device_id, controller_id, action_id, finished=False)
    if not row.fetched:
        await fleet.store.write(lambda c: ddi.mark_fetched(c, device_id, row.id))
    return _json(_deployment_json(_base(request, fleet, controller_id), row, a, module, hist))


async def installed_base(request: Request[Any, Any, Any], controller_id: FromPath[str],
                         action_id: DdiNumber) -> Response[bytes]:
    fleet: Fleet = request.app.state.fleet
    device_id = _caller(request).device()
    row, a, module, hist = await _read_deployment(request, device_id, controller_id, action_id, finished=True)
    return _json(_deployment_json(_base(request, fleet, controller_id), row, a, module, hist))


async def deployment_feedback(request: Request[Any, Any, Any], controller_id: FromPath[str],
                              action_id: DdiNumber) -> Response[bytes]:
    fleet: Fleet = request.app.state.fleet
    device_id = _caller(request).device()
    fb = ddi_feedback.decode_body(await _body(request), ddi_feedback.DdiActionFeedback)
    await fleet.store.write(lambda c: ddi_feedback.apply_feedback(c, device_id, controller_id, action_id, fb))
    return Response(b"", status_code=200)


async def cancel_action(request: Request[Any, Any, Any], controller_id: FromPath[str],
                        action_id: DdiNumber) -> Response[bytes]:
    fleet: Fleet = request.app.state.fleet
    device_id = _caller(request).device()
    row = await fleet.store.read(lambda c: ddi.device_action(c, device_id, controller_id, action_id))
    if row.state != "cancelled" or not row.fetched or row.cancel_acked:
        raise NotFound(f"action {action_id} has no cancellation pending")
    return _json({"id": str(row.num), "cancelAction": {"stopId": str(row.num)}})


async def cancel_feedback(request: Request[Any, Any, Any], controller_id: FromPath[str],
                          action_id: DdiNumber) -> Response[bytes]:
    fleet: Fleet = request.app.state.fleet
    device_id = _caller(request).device()
    fb = ddi_feedback.decode_body(await _body(request), ddi_feedback.DdiActionFeedback)
    await fleet.store.write(lambda c: ddi_feedback.apply_cancel_feedback(c, device_id, controller_id, action_id, fb))
    return Response(b"", status_code=200)


async def config_data(request: Request[Any, Any, Any], controller_id: FromPath[str]) -> Response[bytes]:
    fleet: Fleet = request.app.state.fleet
    device_id = _caller(request).device()
    cfg = ddi_feedback.decode_body(await _body(request), ddi_feedback.DdiConfigData)
    await fleet.store.write(lambda c: ddi_feedback.apply_config_data(c, device_id, controller_id, cfg))
    return Response(b"", status_code=200)


async def module_artifacts(request: Request[Any, Any, Any], controller_id: FromPath[str],
                           module_id: DdiNumber) -> Response[bytes]:
    fleet: Fleet = request.app.state.fleet
    device_id = _caller(request).device()
    a = await fleet.store.read(lambda c: ddi.module_artifact(c, module_id, device_id))
    return _json([_artifact_json(_base(request, fleet, controller_id), module_id, a)])


async def download(request: Request[Any, Any, Any], controller_id: FromPath[str], module_id: DdiNumber,
                   file_name: FromPath[str]) -> Response[Any]:
    fleet: Fleet = request.app.state.fleet
    device_id = _caller(request).device()
    a = await fleet.store.read(lambda c: ddi.module_artifact(c, module_id, device_id))
    disposition = {"Content-Disposition": f"attachment;filename={quote(file_name, safe='')}"}
    if file_name == a["file_name"]:
        return await blob_response(request, fleet, a["sha256"], disposition)
    if file_name == a["file_name"] + MD5SUM_SUFFIX:
        body = f"{a['md5']}  {a['file_name']}\n".encode()
        return Response(b"" if request.method == HttpMethod.HEAD else body, media_type="text/plain",
                        headers={**disposition, "Content-Length": str(len(body))})
    raise NotFound(f"software module {module_id} has no artifact {file_name!r}")


_DDI_PATH = re.compile(r"^/([^/]+)/controller/v1/")


def outside_routes(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """A 404 or 405 outside every route. A DDI path gets a DDI answer (under another tenant: saying so), the
    rest the usual one. Paths that start with a parameter reach the web UI's files, mounted at ``/``."""
    m = _DDI_PATH.match(request.url.path)
    if m is None:
        return rpc.error_response(request, exc)
    fleet: Fleet = request.app.state.fleet
    if m.group(1) not in tenant_spellings(fleet.settings.ddi_tenant):
        exc = NotFound(f"unknown tenant {m.group(1)!r}: this server answers DDI under "
                       f"/{fleet.settings.ddi_tenant}/controller/v1/")
    return error_response(request, exc)


def tenant_spellings(tenant: str) -> list[str]:
    """hawkBit compares tenants case-insensitively; the usual spellings of the configured one get routes."""
    return list(dict.fromkeys([tenant, tenant.upper(), tenant.lower()]))


def routes(tenant: str) -> list[HTTPRouteHandler]:
    """The DDI routes for one tenant. The tenant is a fixed first path segment, not a parameter: the web UI's
    static files are mounted at ``/`` and would otherwise take every path that starts with a parameter."""
    bases = [f"/{t}/controller/v1/{{controller_id:str}}" for t in tenant_spellings(tenant)]

    def paths(suffix: str) -> list[str]:
        return [b + suffix for b in bases]

    common: dict[str, Any] = {"include_in_schema": False, "exception_handlers": {Exception: error_response}}
    ddi_opt = {"auth": "ddi"}
    return [
        get(paths(""), name="ddi.poll", opt=ddi_opt, **common)(poll),
        get(paths("/deploymentBase/{action_id:int}"), name="ddi.deployment", opt=ddi_opt, **common)(deployment_base),
        get(paths("/installedBase/{action_id:int}"), name="ddi.installed", opt=ddi_opt, **common)(installed_base),
        post(paths("/deploymentBase/{action_id:int}/feedback"), name="ddi.feedback", status_code=200, opt=ddi_opt,
             **common)(deployment_feedback),
        get(paths("/cancelAction/{action_id:int}"), name="ddi.cancel", opt=ddi_opt, **common)(cancel_action),
        post(paths("/cancelAction/{action_id:int}/feedback"), name="ddi.cancel_feedback", status_code=200,
             opt=ddi_opt, **common)(cancel_feedback),
        put(paths("/configData"), name="ddi.config_data", status_code=200, opt=ddi_opt, **common)(config_data),
        get(paths("/softwaremodules/{module_id:int}/artifacts"), name="ddi.artifacts", opt=ddi_opt,
            **common)(module_artifacts),
        route(paths("/softwaremodules/{module_id:int}/artifacts/{file_name:str}"),
              http_method=[HttpMethod.GET, HttpMethod.HEAD], name="ddi.download",
              opt={"auth": "ddi", "ddi_download": True}, **common)(download),
    ]

_DDI = "/{tenant}/controller/v1/{controllerId}"


def _param(name: str, kind: str, description: str, where: str = "path", maximum: int | None = None
           ) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": kind}
    if maximum is not None:
        schema.update(minimum=0, maximum=maximum)
    return {"name": name, "in": where, "required": where == "path", "schema": schema, "description": description}


_TENANT = _param("tenant", "string", "the tenant fleetd serves (ddi_tenant; hawkBit's default is DEFAULT)")
_CONTROLLER = _param("controllerId", "string", "the device's controller id (its hardware id)")
_ACTION = _param("actionId", "integer", "an action's DDI number, from the poll's links", maximum=DDI_NUMBER_MAX)
_MODULE = _param("moduleId", "integer", "a software module's DDI number, from a deployment", maximum=DDI_NUMBER_MAX)
_FILE = _param("fileName", "string", "the artifact's file name, or it + .MD5SUM")
_HISTORY = _param("actionHistory", "integer", "how many of the action's status messages to include "
                  "(negative: all)", "query")


def _body_schema(t: type) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": msgspec.json.schema(t)}}}


def _op(summary: str, ok: str, *params: dict[str, Any], body: type | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "x-fleetd-auth": "ddi", "parameters": [_TENANT, _CONTROLLER, *params],
                          "responses": {"200": {"description": ok}}}
    if body is not None:
        op["requestBody"] = _body_schema(body)
    return op


OPENAPI_PATHS: dict[str, Any] = {
    _DDI: {"get": _op("hawkBit DDI poll (TargetToken or GatewayToken; docs/ddi.md)", "DdiControllerBase")},
    _DDI + "/deploymentBase/{actionId}": {"get": _op("hawkBit DDI deployment", "DdiDeploymentBase", _ACTION,
                                                     _HISTORY)},
    _DDI + "/deploymentBase/{actionId}/feedback": {"post": _op("hawkBit DDI deployment feedback", "OK", _ACTION,
                                                               body=ddi_feedback.DdiActionFeedback)},
    _DDI + "/configData": {"put": _op("hawkBit DDI config data", "OK", body=ddi_feedback.DdiConfigData)},
    _DDI + "/cancelAction/{actionId}": {"get": _op("hawkBit DDI cancel action", "DdiCancel", _ACTION)},
    _DDI + "/cancelAction/{actionId}/feedback": {"post": _op("hawkBit DDI cancel feedback", "OK", _ACTION,
                                                             body=ddi_feedback.DdiActionFeedback)},
    _DDI + "/installedBase/{actionId}": {"get": _op("hawkBit DDI installed deployment", "DdiDeploymentBase",
                                                    _ACTION, _HISTORY)},
    _DDI + "/softwaremodules/{moduleId}/artifacts": {"get": _op("hawkBit DDI artifacts of a module",
                                                                "[DdiArtifact]", _MODULE)},
    _DDI + "/softwaremodules/{moduleId}/artifacts/{fileName}": {
        "get": {**_op("hawkBit DDI artifact download (Range; also {fileName}.MD5SUM)", "the file", _MODULE, _FILE),
                "responses": {"200": {"description": "the file"}, "206": {"description": "one range"}}},
        "head": _op("hawkBit DDI artifact headers (size, ETag) without the body", "the headers", _MODULE, _FILE)},
}

__all__ = ["OPENAPI_PATHS", "DdiCaller", "authenticate", "error_response", "outside_routes", "routes"]
