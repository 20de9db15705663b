"""fleetd ca fetch: get the fleet CA from a server, for a CLI on another folder or machine (--ca / FLEETD_CA); fleetd ca
trust-manufacturer / manufacturers / remove-manufacturer: the manufacturer CAs of factory provisioning (docs/pki.md)."""

from __future__ import annotations

import hashlib
import os
import secrets
import ssl
from pathlib import Path
from typing import Annotated

import typer

from .client import DEFAULT_SERVER
from .common import ApiKeyOpt, CaOpt, JsonOpt, ServerOpt, call, errors_reported, remote
from .output import console, data_table, fail, print_fitted, print_json

ca_app = typer.Typer(help="The fleet CA that the CLI trusts the server by, and the manufacturer CAs of factory "
                     "provisioning.", no_args_is_help=True)


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


CERTS = "CertificateService"
MANUFACTURER_FIELDS = ["id", "fingerprint", "subject", "tags", "auto_activate", "not_after", "created_at"]


@ca_app.command("trust-manufacturer")
def ca_trust_manufacturer(
    cert_file: Annotated[Path, typer.Argument(help="The manufacturer CA certificate (PEM).", show_default=False)],
    tag: Annotated[list[str] | None, typer.Option("--tag", help="key=value, given to every device it enrols "
                                                  "(repeatable).", show_default=False)] = None,
    auto_activate: Annotated[bool, typer.Option(
        "--auto-activate/--pending",
        help="Devices enrol active at once, or pending until claimed by their code (the default).")] = False,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Trust a manufacturer CA for factory provisioning (docs/pki.md).

    A device whose factory certificate chains to it, and names its hardware id, enrols without a join token.
    """
    from ..devices.tags import parse_tag_args

    try:
        pem = cert_file.expanduser().read_text()
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read {cert_file}: {getattr(e, 'strerror', None) or e}", "Give the CA certificate's PEM file.")
    with errors_reported():
        body = {"certificate": pem, "tags": parse_tag_args(tag or []), "auto_activate": auto_activate}
        found = call(remote(server, api_key, ca), CERTS, "TrustManufacturer", body)
    if json:
        print_json(found)
        return
    mode = "active at once" if found["auto_activate"] else "pending until claimed ('fleetd devices claim CODE')"
    console.print(f"trusted manufacturer CA {found['id']} ({found['subject']}); its devices enrol {mode}",
                  highlight=False)


@ca_app.command("manufacturers")
def ca_manufacturers(server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
                     json: JsonOpt = False) -> None:
    """The manufacturer CAs trusted for factory provisioning."""
    with errors_reported():
        found = call(remote(server, api_key, ca), CERTS, "ListManufacturers", {})["manufacturers"]
    if json:
        print_json(found)
        return
    if not found:
        console.print("no manufacturer CA is trusted; add one with 'fleetd ca trust-manufacturer ca.pem'",
                      highlight=False)
        return
    table = data_table(["id", "subject", "mode", "tags", "expires", "fingerprint"], whole={"id"})
    for m in found:
        table.add_row(m["id"], m["subject"], "active" if m["auto_activate"] else "pending",
                      ",".join(f"{k}={v}" for k, v in m["tags"].items()), m["not_after"][:10], m["fingerprint"][:16])
    print_fitted(table)


@ca_app.command("remove-manufacturer")
def ca_remove_manufacturer(
    ref: Annotated[str, typer.Argument(help="Its id or fingerprint ('fleetd ca manufacturers').",
                                       show_default=False)],
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
) -> None:
    """Stop trusting a manufacturer CA; the devices it enrolled stay enrolled."""
    with errors_reported():
        found = call(remote(server, api_key, ca), CERTS, "RemoveManufacturer", {"id": ref})
    console.print(f"no longer trusted: manufacturer CA {found['id']} ({found['subject']})", highlight=False)
