"""fleetd serve: run the server."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer

from ..core.config import load_settings
from ..core.errors import FleetdError
from ..fleet import DataDirLocked, Fleet
from .output import fail


def _banner(username: str, password: str, url: str) -> None:
    # Straight to the console, never through logging: the password must not land in a log file.
    out = sys.stdout
    out.write(
        "\n"
        "  ┌──────────────────────────────────────────────────────────────┐\n"
        "  │  First start: an admin user was created. Shown this once.    │\n"
        f"  │  user:     {username:<50}│\n"
        f"  │  password: {password:<50}│\n"
        f"  │  log in at {url:<50}│\n"
        "  │  and change it, or: fleetd users passwd admin --data-dir ... │\n"
        "  └──────────────────────────────────────────────────────────────┘\n\n"
    )
    out.flush()


def _make_server(config: Any, app: Any) -> Any:
    """A uvicorn server that ends open /v1/events streams when shutdown begins (else each one would hold the
    shutdown for the whole graceful timeout)."""
    import uvicorn

    from ..http.events import close_streams

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            close_streams(app)
            super().handle_exit(sig, frame)

    return Server(config)


def _guarded_protocol(fleet: Fleet) -> type:
    """uvicorn's HTTP protocol with the slowloris limits (http/limits.py), its counts in /metrics."""
    from ..http.limits import guarded_protocol

    protocol, guard = guarded_protocol(fleet.settings.request_head_timeout, fleet.settings.max_unfinished_requests)
    m = fleet.metrics
    m.gauge("fleetd_http_unfinished_requests", "Connections waiting for their request head.", lambda: len(guard))
    m.counter("fleetd_http_closed_slow_total", "Connections closed for not sending their request head within "
              "request_head_timeout.", lambda: guard.closed_slow)
    m.counter("fleetd_http_closed_over_cap_total", "Connections waiting for their request head closed to make room "
              "(max_unfinished_requests).", lambda: guard.closed_over_cap)
    return protocol


def serve(
    data_dir: Annotated[str | None, typer.Option(help="Where all state lives (env FLEETD_DATA_DIR; "
                                                  "default ./fleetd-data).", show_default=False)] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 0.0.0.0).",
                                             show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8420).", show_default=False)] = None,
    no_tls: Annotated[bool, typer.Option("--no-tls", help="Serve plain HTTP (only behind a TLS proxy).")] = False,
    no_mdns: Annotated[bool, typer.Option("--no-mdns", help="Do not advertise on the LAN.")] = False,
    public_url: Annotated[str | None, typer.Option(help="URL devices use to reach this server.",
                                                   show_default=False)] = None,
    config: Annotated[str | None, typer.Option(help="TOML settings file (env FLEETD_CONFIG; default "
                                               "DATA_DIR/fleetd.toml).", show_default=False)] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.",
                                                  show_default=False)] = None,
    ddi_tenant: Annotated[str | None, typer.Option(help="hawkBit DDI tenant in /{tenant}/controller/v1/... "
                                                   "(env FLEETD_DDI_TENANT; default DEFAULT).",
                                                   show_default=False)] = None,
    ddi_anonymous_download: Annotated[bool, typer.Option(
        "--ddi-anonymous-download", help="Let DDI clients download their assigned artifacts without a token "
        "(env FLEETD_DDI_ANONYMOUS_DOWNLOAD=1).")] = False,
    webhook_allow_private: Annotated[bool, typer.Option(
        "--webhook-allow-private", help="Let webhooks reach private (LAN) addresses "
        "(env FLEETD_WEBHOOK_ALLOW_PRIVATE=1).")] = False,
    webhook_allowed_network: Annotated[list[str] | None, typer.Option(
        "--webhook-allowed-network", help="A CIDR webhooks may reach although refused otherwise, e.g. 127.0.0.1/32 "
        "for a receiver on this host; repeatable (env FLEETD_WEBHOOK_ALLOWED_NETWORKS, comma-separated).",
        show_default=False)] = None,
    trusted_proxy: Annotated[list[str] | None, typer.Option(
        "--trusted-proxy", help="A reverse proxy (IP or CIDR) whose X-Forwarded-For / X-Forwarded-Proto "
        "headers are believed; repeatable (env FLEETD_TRUSTED_PROXIES, comma-separated). Default: none.",
        show_default=False)] = None,
) -> None:
    """Run the fleetd server (HTTPS, the API, the web UI, mDNS)."""
    import uvicorn

    from ..app import create_app

    flags = {"data_dir": data_dir, "host": host, "port": port, "public_url": public_url, "log_level": log_level,
             "tls": False if no_tls else None, "mdns": False if no_mdns else None, "ddi_tenant": ddi_tenant,
             "ddi_anonymous_download": True if ddi_anonymous_download else None,
             "webhook_allow_private": True if webhook_allow_private else None,
             "webhook_allowed_networks": webhook_allowed_network or None,
             "trusted_proxies": trusted_proxy or None}
    try:
        settings = load_settings(flags, config)
    except FleetdError as e:
        fail(e.message)
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        fleet = Fleet(settings)
    except DataDirLocked as e:
        fail(str(e), "Stop the other server first, or use another --data-dir.")
    except FleetdError as e:
        fail(e.message)
    try:
        first = fleet.ensure_first_admin()
        if first:
            _banner(*first, fleet.public_url)
        app = create_app(fleet)
        certfile = str(fleet.keys.server_cert_path) if settings.tls else None
        keyfile = str(fleet.keys.server_key_path) if settings.tls else None
        print(f"fleetd listening on {settings.scheme}://{settings.host}:{settings.port} "
              f"(data dir {fleet.data_dir}, CA fingerprint {fleet.keys.ca_fingerprint})", flush=True)
        server = _make_server(uvicorn.Config(
            app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False,
            lifespan="on", server_header=False, log_config=None, timeout_graceful_shutdown=10,
            ssl_certfile=certfile, ssl_keyfile=keyfile,
            http=_guarded_protocol(fleet),
            # Forwarding headers only from the configured proxies (uvicorn would trust 127.0.0.1 and
            # $FORWARDED_ALLOW_IPS by default).
            proxy_headers=bool(settings.trusted_proxies), forwarded_allow_ips=settings.trusted_proxies or [],
        ), app)
        server.run()
    finally:
        fleet.close()
