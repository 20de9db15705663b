"""`fleetd serve` as typer sees it: its options, their --help, and the errors for a command line it cannot parse.

The usual command lines never get here: fleetd.cli.main parses them with serve.parse_args, without importing typer
(and pydantic, which typer converts option values with: ~0.2 s of every start). Anything parse_args does not
recognise (--help, a mistake) comes here. serve.OPTIONS lists these options again for parse_args;
tests/cli/test_serve_args.py holds the two in step.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .serve import run


def serve(
    data_dir: Annotated[str | None, typer.Option(help="Where all state lives (env FLEETD_DATA_DIR; "
                                                  "default ./fleetd-data).", show_default=False)] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (env FLEETD_HOST; default 0.0.0.0, all "
                                             "interfaces, so that devices can reach it; 127.0.0.1: this machine "
                                             "only).", show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="Port (env FLEETD_PORT; default 8420).",
                                             show_default=False)] = None,
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
    blob_store: Annotated[str | None, typer.Option(
        help="Where artifacts' bytes live: s3://BUCKET/prefix for an S3-compatible bucket, credentials from the "
        "AWS_* environment (env FLEETD_BLOB_STORE; default: the data dir's blobs folder).",
        show_default=False)] = None,
    database: Annotated[str | None, typer.Option(
        help="A PostgreSQL database instead of the data dir's SQLite file: postgresql://USER:PASSWORD@HOST:5432/DB"
        "?sslmode=verify-full (env FLEETD_DATABASE; keep the password out of the command line: env PGPASSWORD or "
        "~/.pgpass). The data dir still holds the keys.", show_default=False)] = None,
    mqtt_url: Annotated[str | None, typer.Option(
        "--mqtt", help="An MQTT broker to connect to as fleetd's service client, mqtts://HOST:PORT (env "
        "FLEETD_MQTT_URL; docs/mqtt.md). Default: none, HTTPS polling only.", show_default=False)] = None,
) -> None:
    """Run the fleetd server (HTTPS, the API, the web UI, mDNS)."""
    run(data_dir=data_dir, host=host, port=port, no_tls=no_tls, no_mdns=no_mdns, public_url=public_url, config=config,
        log_level=log_level, ddi_tenant=ddi_tenant, ddi_anonymous_download=ddi_anonymous_download,
        webhook_allow_private=webhook_allow_private, webhook_allowed_network=webhook_allowed_network,
        trusted_proxy=trusted_proxy, blob_store=blob_store, database=database, mqtt_url=mqtt_url)
