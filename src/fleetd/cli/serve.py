"""fleetd serve: run the server."""

from __future__ import annotations

import errno
import gc
import ipaddress
import logging
import socket
import sys
from typing import Any, NoReturn

import msgspec

from ..core.config import Settings, load_settings
from ..core.dsn import redact
from ..core.errors import FleetdError
from ..fleet import DataDirLocked, Fleet


def fail(message: str, hint: str | None = None) -> NoReturn:
    """Print the error as every command does (rich, loaded only then) and exit 1; SystemExit, not typer's Exit:
    `fleetd serve` usually runs without typer (parse_args)."""
    from .output import error

    error(message, hint)
    raise SystemExit(1)


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
        "  │  The first login asks you to choose a new password.          │\n"
        "  └──────────────────────────────────────────────────────────────┘\n\n"
    )
    out.flush()


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else happens: a busy port must stop the start before a data
    dir, keys or an admin user are created (uvicorn would only find out after all that, with a traceback)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        fail(f"cannot listen on host {host!r}: {e.strerror}", "Pass --host with an address of this machine "
             "(0.0.0.0: all interfaces; 127.0.0.1: this machine only).")
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart over TIME_WAIT
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            fail(f"port {port} is in use; pass --port with a free one (or set FLEETD_PORT; with make: make serve "
                 f"PORT=...)", f"Another fleetd or another program listens there: ss -ltnp 'sport = :{port}' shows "
                 "which.")
        if e.errno == errno.EACCES:
            fail(f"not allowed to listen on port {port}: ports below 1024 need root",
                 "Pass --port 1024 or higher (the default is 8420).")
        if e.errno == errno.EADDRNOTAVAIL:
            fail(f"{host} is not an address of this machine",
                 "Pass --host with one of its addresses (0.0.0.0: all interfaces; 127.0.0.1: this machine only).")
        fail(f"cannot listen on {host}:{port}: {e.strerror or e}")
    return sock


def _lan_addresses(ipv6: bool) -> list[str]:
    """This machine's addresses that other machines can use (not loopback, not link-local), IPv4 first."""
    from ..core.pki import local_names_and_addresses

    found = []
    for a in local_names_and_addresses()[1]:
        ip = ipaddress.ip_address(a)
        if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified) and (ipv6 or ip.version == 4):
            found.append(ip)
    return [str(ip) for ip in sorted(found, key=lambda ip: (ip.version, ip))]


def _url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}/"


def reachability(scheme: str, host: str, port: int, lan: list[str]) -> list[str]:
    """The banner's lines on where the web UI and the API can be reached from (docs/decisions.md: the default is
    every interface, for the devices; the banner says so, and how to keep it to this machine)."""
    wildcard = host in ("0.0.0.0", "::", "")
    if not wildcard:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if loopback:
            return [f"web UI and API: {_url(scheme, host, port)} (this machine only: devices and other computers "
                    "cannot reach it; --host 0.0.0.0 opens it to the network)"]
        return [f"web UI and API: {_url(scheme, host, port)} (from the networks {host} is on)"]
    lines = [f"web UI and API on this machine: {_url(scheme, '127.0.0.1', port)}"]
    if lan:
        lines.append("from the network (devices, and any computer that can reach this one): "
                     + ", ".join(_url(scheme, a, port) for a in lan))
    else:
        lines.append("from the network: no address other than loopback was found")
    lines.append("fleetd listens on all interfaces so that devices can reach it: the admin web UI is reachable "
                 "from the network too. To keep everything to this machine: --host 127.0.0.1 (then no device "
                 "elsewhere can reach it)")
    return lines


def _listening(settings: Settings, fleet: Fleet) -> None:
    lines = [f"fleetd listening on {settings.scheme}://{settings.host}:{settings.port}",
             *reachability(settings.scheme, settings.host, settings.port, _lan_addresses(":" in settings.host)),
             f"data dir {fleet.data_dir}, CA fingerprint {fleet.keys.ca_fingerprint} (CLI elsewhere: fleetd ca "
             "fetch)"]
    if settings.database:
        lines.append(f"database {redact(settings.database)}")
    print("\n  ".join(lines), flush=True)


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


# `fleetd serve`'s options (declared for typer in serve_command.py) -> run()'s parameter and how it takes a value.
VALUE, NUMBER, FLAG, REPEATED = "value", "number", "flag", "repeated"
OPTIONS: dict[str, tuple[str, str]] = {
    "--data-dir": ("data_dir", VALUE), "--host": ("host", VALUE), "--port": ("port", NUMBER),
    "--no-tls": ("no_tls", FLAG), "--no-mdns": ("no_mdns", FLAG), "--public-url": ("public_url", VALUE),
    "--config": ("config", VALUE), "--log-level": ("log_level", VALUE), "--ddi-tenant": ("ddi_tenant", VALUE),
    "--ddi-anonymous-download": ("ddi_anonymous_download", FLAG),
    "--webhook-allow-private": ("webhook_allow_private", FLAG),
    "--webhook-allowed-network": ("webhook_allowed_network", REPEATED), "--trusted-proxy": ("trusted_proxy", REPEATED),
    "--blob-store": ("blob_store", VALUE), "--database": ("database", VALUE),
    "--mqtt": ("mqtt_url", VALUE),
}


def parse_args(args: list[str]) -> dict[str, Any] | None:
    """run()'s arguments for `fleetd serve ARGS`, the same as typer would give; None when ARGS are anything but
    known options spelled plainly (``--name value``, ``--name=value``, flags, each at most once but the repeatable
    ones), e.g. --help or a mistake: typer then helps or says what is wrong (serve_command.py). Typer is not
    imported for the usual start: with pydantic, which typer converts option values with, it costs ~0.2 s."""
    kwargs: dict[str, Any] = {}
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        name, eq, value = arg.partition("=")
        if name not in OPTIONS:
            return None
        dest, kind = OPTIONS[name]
        if kind == FLAG:
            if eq or dest in kwargs:
                return None
            kwargs[dest] = True
            continue
        if not eq:
            if not rest or rest[0].startswith("-"):
                return None  # a missing value, or one click may read differently: typer decides
            value = rest.pop(0)
        if kind == REPEATED:
            kwargs.setdefault(dest, []).append(value)
        elif dest in kwargs or (kind == NUMBER and not (value.isascii() and value.isdigit())):
            return None
        else:
            kwargs[dest] = int(value) if kind == NUMBER else value
    return kwargs


def _tune_interpreter() -> None:
    """Once started (docs/performance.md, "Interpreter settings"):

    - The cyclic garbage collector scans its youngest generation every 700 container allocations by default, several
      times per request here, each time walking every young object still alive (the requests in flight): every
      10,000 instead, and without the objects of the start (modules, the device directory), which stay. It is off
      during the start (cli.main), so the few hundred objects of the start that were garbage stay too (~100 KB).
    - The database threads release the GIL inside SQLite and wait for it afterwards; while the event loop is busy
      that wait lasts the switch interval, 5 ms by default: 0.5 ms instead.
    """
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    gc.enable()  # off during the start (cli.main)
    sys.setswitchinterval(0.0005)


def run(*, data_dir: str | None = None, host: str | None = None, port: int | None = None, no_tls: bool = False,
        no_mdns: bool = False, public_url: str | None = None, config: str | None = None, log_level: str | None = None,
        ddi_tenant: str | None = None, ddi_anonymous_download: bool = False, webhook_allow_private: bool = False,
        webhook_allowed_network: list[str] | None = None, trusted_proxy: list[str] | None = None,
        blob_store: str | None = None, database: str | None = None, mqtt_url: str | None = None) -> None:
    """Run the fleetd server (HTTPS, the API, the web UI, mDNS)."""
    import uvicorn

    from ..app import asgi_app

    flags = {"data_dir": data_dir, "host": host, "port": port, "public_url": public_url, "log_level": log_level,
             "tls": False if no_tls else None, "mdns": False if no_mdns else None, "ddi_tenant": ddi_tenant,
             "ddi_anonymous_download": True if ddi_anonymous_download else None,
             "webhook_allow_private": True if webhook_allow_private else None,
             "webhook_allowed_networks": webhook_allowed_network or None,
             "trusted_proxies": trusted_proxy or None, "blob_store": blob_store, "database": database,
             "mqtt_url": mqtt_url}
    try:
        settings = load_settings(flags, config)
    except FleetdError as e:
        fail(e.message)
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = bind(settings.host, settings.port)
    if settings.port == 0:  # the port the system picked, for the banner and the devices' URL
        settings = msgspec.structs.replace(settings, port=sock.getsockname()[1])
    try:
        fleet = Fleet(settings, first_admin=True)
    except DataDirLocked as e:
        sock.close()
        fail(str(e), "Stop the other server first, or use another --data-dir.")
    except FleetdError as e:
        sock.close()
        fail(e.message)
    try:
        if fleet.first_admin:
            _banner(*fleet.first_admin, fleet.public_url)
        app = asgi_app(fleet)
        certfile = str(fleet.keys.server_cert_path) if settings.tls else None
        keyfile = str(fleet.keys.server_key_path) if settings.tls else None
        _listening(settings, fleet)
        served: Any = app
        if settings.client_cert_header:  # client certificates through a proxy (docs/pki.md): only then
            from ..http.client_cert import with_client_certificates
            served = with_client_certificates(app, settings)
        server = _make_server(uvicorn.Config(
            served, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False,
            lifespan="on", server_header=False, log_config=None, timeout_graceful_shutdown=10,
            ssl_certfile=certfile, ssl_keyfile=keyfile,
            http=_guarded_protocol(fleet),
            # WebSockets only for remote access (docs/remote-access.md); else no library is loaded for them.
            ws="websockets-sansio" if settings.remote_access else "none",
            # Forwarding headers only from the configured proxies (uvicorn would trust 127.0.0.1 and
            # $FORWARDED_ALLOW_IPS by default); with client certificates through a proxy, read inside that
            # middleware (http/client_cert.py), which must see the TCP peer first.
            proxy_headers=bool(settings.trusted_proxies) and not settings.client_cert_header,
            forwarded_allow_ips=settings.trusted_proxies or [],
        ), app.app)
        _tune_interpreter()
        server.run(sockets=[sock])
    finally:
        sock.close()
        fleet.close()
