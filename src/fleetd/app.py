"""Builds the Litestar app from the Fleet: routes, the auth guard, error mapping, lifespan."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.connection import ASGIConnection
from litestar.exceptions import MethodNotAllowedException, NotFoundException
from litestar.handlers import BaseRouteHandler
from litestar.plugins import PluginProtocol
from litestar.static_files import create_static_files_router

from . import __version__
from .accounts import audit_api, users_api
from .accounts.users import CSRF_HEADER, SESSION_COOKIE
from .alerts import api as alerts_api
from .artifacts import api as artifacts_api
from .core import disk, lifecycle
from .core.config import Settings
from .core.errors import PermissionDenied
from .core.resources import data_dir
from .ddi import api as ddi_api
from .ddi import routes as http_ddi
from .devices import admin_api as devices_api
from .devices import certificates_api, device_api, enrollment_api
from .fleet import Fleet
from .http import agent_dist, openapi, rpc, security_headers
from .http import blobs as http_blobs
from .http import events as http_events
from .http.device_lane import DeviceLane
from .http.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .http.metrics import middleware as metrics_middleware
from .rollouts import api as rollouts_api
from .telemetry import api as telemetry_api

log = logging.getLogger(__name__)

# Where http/client_cert.py leaves a certificate a trusted proxy forwarded (not imported here: it loads only when
# client_cert_header is set).
CLIENT_CERT_KEY = "fleetd.client_cert"

SERVICES: list[rpc.Service] = [
    device_api.service, devices_api.service, enrollment_api.service, users_api.service, audit_api.service,
    artifacts_api.service, telemetry_api.service, alerts_api.service, rollouts_api.service, ddi_api.service,
    certificates_api.service,
]


async def auth_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Every route declares ``opt["auth"]``; a route without one is refused (fail closed)."""
    policy = handler.opt.get("auth")
    if policy not in rpc.POLICIES:
        raise PermissionDenied(f"route {connection.url.path} has no auth policy")
    if policy == "public":
        connection.state.principal = None
        return
    if policy == "ddi":
        connection.state.principal = await http_ddi.authenticate(connection, handler)
        return
    fleet: Fleet = connection.app.state.fleet
    headers = connection.headers
    forwarded_cert = connection.scope.get(CLIENT_CERT_KEY)  # set by http/client_cert.py
    if isinstance(forwarded_cert, bytes) and policy == "device" and not headers.get("authorization"):
        connection.state.principal = await fleet.client_certificates.authenticate(forwarded_cert)
        return
    principal = await fleet.authenticator.authenticate(
        str(connection.scope.get("method", "GET")), headers.get("authorization"),
        connection.cookies.get(SESSION_COOKIE), headers.get(CSRF_HEADER))
    rpc.authorize(policy, principal, before_password_change=bool(handler.opt.get("before_password_change")))
    connection.state.principal = principal


@get("/healthz", opt={"auth": "public"}, include_in_schema=False)
async def healthz(request: Request[Any, Any, Any]) -> Response[bytes]:
    fleet: Fleet = request.app.state.fleet
    reasons = disk.health_problems(fleet.data_dir, fleet.settings.disk_min_free_mib, db_full=fleet.store.disk_full,
                                   blobs_full=fleet.blobs.disk_full)
    try:
        await fleet.store.read(lambda c: c.execute("SELECT 1").fetchone())
    except Exception as e:
        reasons.insert(0, f"database unavailable: {e}")
    if reasons:
        return Response(rpc.encode({"status": "degraded", "version": __version__, "reasons": reasons}),
                        status_code=503, media_type=rpc.JSON)
    return Response(rpc.encode({"status": "ok", "version": __version__}), media_type=rpc.JSON)


@get("/v1/ca.pem", opt={"auth": "public"}, include_in_schema=False)
async def ca_pem(request: Request[Any, Any, Any]) -> Response[bytes]:
    fleet: Fleet = request.app.state.fleet
    return Response(fleet.keys.ca_pem, media_type="application/x-pem-file",
                    headers={"X-Fleetd-CA-Fingerprint": fleet.keys.ca_fingerprint})


@get("/v1/crl.pem", opt={"auth": "public"}, include_in_schema=False)
async def crl_pem(request: Request[Any, Any, Any]) -> Response[bytes]:
    fleet: Fleet = request.app.state.fleet
    return Response(await fleet.crl.pem(), media_type="application/x-pem-file")


@get("/metrics", opt={"auth": "viewer"}, include_in_schema=False)
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[str]:
    """Prometheus metrics, text format 0.0.4. Scrape with a viewer API key
    (``fleetd keys create --name prometheus --role viewer``)::

        scrape_configs:
          - job_name: fleetd
            scheme: https
            tls_config: {ca_file: /etc/prometheus/fleetd-ca.pem}   # from GET /v1/ca.pem
            authorization: {credentials: fk_...}                    # the viewer key
            static_configs: [{targets: ["fleet.example.net:8420"]}]
    """
    fleet: Fleet = request.app.state.fleet
    return Response(await fleet.metrics.render(), media_type=METRICS_CONTENT_TYPE)


def _openapi_route(settings: Settings) -> Any:
    """GET /schema/openapi.json, the document built on its first request: not at every start, before the first
    answer (~25 ms), for a page few ask for."""
    @functools.cache
    def body() -> bytes:
        doc = openapi.build(SERVICES, PLAIN_PATHS)
        # The web UI shows DDI clients their base URL. Not secret: every DDI URL carries both.
        doc["info"]["x-fleetd-ddi"] = {"tenant": settings.ddi_tenant, "public_url": settings.public_url.rstrip("/")}
        return rpc.encode(doc)

    @get("/schema/openapi.json", opt={"auth": "public"}, include_in_schema=False)
    async def openapi_json() -> Response[bytes]:
        return Response(body(), media_type="application/json")

    return openapi_json


PLAIN_PATHS: dict[str, Any] = {
    **http_blobs.OPENAPI_PATHS,
    **artifacts_api.OPENAPI_PATHS,
    **agent_dist.OPENAPI_PATHS,
    **http_events.OPENAPI_PATHS,
    **http_ddi.OPENAPI_PATHS,
    "/healthz": {"get": {"summary": "Liveness, database and disk check (no auth)", **openapi.auth("public"),
                         "responses": {"200": {"description": '{"status": "ok", "version": ...}'},
                                       "503": {"description": '{"status": "degraded", "version": ..., "reasons": '
                                                              '[...]}: the database does not answer, or the data '
                                                              "dir's disk is (nearly) full"}}}},
    "/v1/ca.pem": {"get": {"summary": "The fleet CA certificate (no auth)", **openapi.auth("public"),
                           "responses": {"200": {"description": "PEM"}}}},
    "/v1/crl.pem": {"get": {"summary": "The CRL of revoked device certificates, signed by the fleet CA (no auth)",
                            **openapi.auth("public"), "responses": {"200": {"description": "PEM"}}}},
    "/metrics": {"get": {"summary": "Prometheus metrics, text format 0.0.4 (viewer role; an API key works)",
                         **openapi.auth("viewer"),
                         "responses": {"200": {"description": "text/plain; version=0.0.4"},
                                       "401": {"description": "no credentials"},
                                       "403": {"description": "a device, or a role below viewer"}}}},
}


class _Litestar(Litestar):
    @staticmethod
    def _get_default_plugins(plugins: list[PluginProtocol]) -> list[PluginProtocol]:
        """Only msgspec's: Litestar would add its pydantic plugins whenever pydantic is installed (typer needs it),
        importing pydantic (~50 ms of every start) for models fleetd does not have (msgspec throughout;
        tests/test_start_imports.py holds this)."""
        from litestar.plugins.core import MsgspecDIPlugin

        return [*plugins, MsgspecDIPlugin()]


def create_app(fleet: Fleet) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        log.info("fleetd %s serving data dir %s", __version__, fleet.data_dir)
        async with lifecycle.running(fleet.parts):
            yield

    web = create_static_files_router(path="/", directories=[data_dir("web")], html_mode=True,
                                     opt={"auth": "public"}, include_in_schema=False, name="web",
                                     after_request=security_headers.ui_headers,
                                     exception_handlers={NotFoundException: http_ddi.outside_routes})
    remote_api: Any = None
    if fleet.settings.remote_access:  # imported only then (docs/remote-access.md)
        from .remote import api as remote_api
    app = _Litestar(
        route_handlers=[*(remote_api.ROUTES if remote_api else []),
                        *rpc.routes(SERVICES), healthz, ca_pem, crl_pem, metrics_endpoint, *http_blobs.ROUTES,
                        *artifacts_api.ROUTES, *agent_dist.ROUTES, *http_events.ROUTES,
                        *http_ddi.routes(fleet.settings.ddi_tenant),
                        _openapi_route(fleet.settings), web],
        guards=[auth_guard],
        middleware=[metrics_middleware(fleet.metrics)],
        before_send=[security_headers.every_response(fleet.settings.tls)],
        exception_handlers={Exception: rpc.error_response, MethodNotAllowedException: http_ddi.outside_routes},
        lifespan=[lifespan],
        openapi_config=None,
        logging_config=None,  # fleetd configures logging itself (cli/serve.py); no extra listener thread
        request_max_body_size=fleet.settings.max_request_bytes,
        debug=False,
    )
    app.state.fleet = fleet
    if remote_api is not None:
        app.state.remote = remote_api.make_hub(fleet)
    app.state.rpc_paths = frozenset(m.path for s in SERVICES for m in s.methods.values())
    return app


def asgi_app(fleet: Fleet) -> DeviceLane:
    """What ``fleetd serve`` runs: the Litestar app behind the device lane (http/device_lane.py)."""
    device_methods = [m for m in device_api.service.methods.values() if m.auth == "device"]
    return DeviceLane(create_app(fleet), fleet, device_methods, security_headers.response_headers(fleet.settings.tls))
