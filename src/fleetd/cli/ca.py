"""fleetd ca fetch: get the fleet CA from a server, for a CLI on another folder or machine (--ca / FLEETD_CA)."""

from __future__ import annotations

import hashlib
import os
import secrets
import ssl
from pathlib import Path
from typing import Annotated

import typer

from .client import DEFAULT_SERVER
from .common import ServerOpt
from .output import console, fail

ca_app = typer.Typer(help="The fleet CA that the CLI trusts the server by.", no_args_is_help=True)


@ca_app.command("fetch")
def ca_fetch(
    server: ServerOpt = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Where to save it.")] = "fleetd-ca.pem",
    fingerprint: Annotated[str | None, typer.Option(
        help="Save it only if its SHA-256 is this (the 'CA fingerprint' that fleetd serve prints).",
        show_default=False)] = None,
) -> None:
    """Download the server's fleet CA (GET /v1/ca.pem), show its fingerprint and save it.

    Nothing is trusted while it downloads, so compare the fingerprint with the one 'fleetd serve' printed at
    start (or pass it as --fingerprint), then point the CLI at the file: export FLEETD_CA=FILE.
    """
    import httpx

    url = (server or DEFAULT_SERVER).rstrip("/")
    if not url.startswith("https://"):
        fail(f"{url} is not an https:// URL: a server without TLS has no CA to fetch")
    try:
        # Not verified, by design: this is how the CA is obtained; the fingerprint check below is the trust.
        r = httpx.get(url + "/v1/ca.pem", verify=False, timeout=15)
    except httpx.HTTPError as e:
        fail(f"cannot reach {url}: {e}", "Is 'fleetd serve' running there, and is --server (or FLEETD_SERVER) "
             "its address and port?")
    if r.status_code != 200:
        fail(f"GET {url}/v1/ca.pem answered HTTP {r.status_code}; is {url} a fleetd server?")
    try:
        der = ssl.PEM_cert_to_DER_cert(r.text)
    except ValueError:
        fail(f"{url}/v1/ca.pem is not a PEM certificate; is {url} a fleetd server?")
    got = hashlib.sha256(der).hexdigest()
    if fingerprint is not None and not secrets.compare_digest(got, fingerprint.strip().lower()):
        fail(f"the server's CA has fingerprint {got}, not {fingerprint}: nothing saved",
             "Someone may be in the middle, or --server is another fleetd than the one whose banner you read.")
    path = Path(out).expanduser().absolute()
    try:
        path.write_text(r.text)
    except OSError as e:
        fail(f"cannot write {path}: {e.strerror}", "Pass --out with a file you may write.")
    console.print(f"saved {url}'s fleet CA to {path}", highlight=False)
    console.print(f"CA fingerprint {got}", highlight=False)
    if fingerprint is None:
        console.print("Compare it with the 'CA fingerprint' that 'fleetd serve' printed at start; if they differ, "
                      "delete the file.", highlight=False)
    env = f"export FLEETD_CA={path}" + ("" if os.environ.get("FLEETD_SERVER") == url else f" FLEETD_SERVER={url}")
    console.print(f"Then: {env}", highlight=False, soft_wrap=True)
