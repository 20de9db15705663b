"""fleetd tokens: join tokens that let devices enroll as active at once."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..core.clock import parse_duration
from ..core.errors import InvalidArgument
from ..ddi.tokens import GATEWAY_ID_PREFIX
from ..devices.tags import parse_tag_args
from .common import ApiKeyOpt, CaOpt, JsonOpt, ServerOpt, call, errors_reported, remote
from .devices import hinted
from .output import console, print_json, print_table, show

tokens_app = typer.Typer(help="Join tokens: devices that enroll with one are active at once (through --server). "
                         "With --ddi-gateway: hawkBit DDI gateway tokens.", no_args_is_help=True)
DDI = "DdiService"
GATEWAY_COLUMNS = ["id", "description", "device_type", "tags", "created_by", "created_at", "revoked_at"]

TOKEN_FIELDS = ["id", "description", "tags", "uses", "max_uses", "expires_at", "created_by", "created_at",
                "revoked_at"]
TOKEN_COLUMNS = ["id", "description", "for", "tags", "used", "expires_at", "state", "created_by", "created_at"]
TagOpt = Annotated[list[str] | None, typer.Option(
    "--tag", help="key=value; repeat for more.", show_default=False)]


def expires_in(text: str) -> int:
    """'24h', '7d', … → seconds; 'never' (or 0) → 0, which the server reads as no expiry."""
    if text.strip().lower() in ("never", "0"):
        return 0
    seconds = int(parse_duration(text))
    if seconds < 1:
        raise InvalidArgument(f"--expires must be at least 1s, or 'never'; got {text!r}")
    return seconds


def token_state(tok: dict[str, Any], at: dt.datetime | None = None) -> str:
    """active, revoked, expired or used up, from a token as the API answers it."""
    at = at or dt.datetime.now(dt.UTC)
    if tok.get("revoked_at"):
        return "revoked"
    exp = tok.get("expires_at")
    if exp and dt.datetime.fromisoformat(exp.replace("Z", "+00:00")) <= at:
        return "expired"
    if tok.get("max_uses") is not None and tok.get("uses", 0) >= tok["max_uses"]:
        return "used up"
    return "active"


def _rows(tokens: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**t, "used": f"{t['uses']}/{t['max_uses'] if t.get('max_uses') is not None else '∞'}",
             "expires_at": t.get("expires_at") or "never", "state": token_state(t),
             "for": f"re-key {t['device_id']}" if t.get("device_id") else "new devices"} for t in tokens]


@tokens_app.command("create")
def tokens_create(
    expires: Annotated[str, typer.Option(help="Lifetime (90m, 24h, 7d) or 'never'.")] = "24h",
    uses: Annotated[int, typer.Option(help="How many devices may enroll with it; 0 = unlimited.", min=0)] = 0,
    tag: TagOpt = None,
    description: Annotated[str, typer.Option(help="What it is for, e.g. 'kitchen Pis'.")] = "",
    ddi_gateway: Annotated[bool, typer.Option("--ddi-gateway", help="A hawkBit DDI gateway token instead: it acts "
                                              "for every controller and registers new ones (admin credential; no "
                                              "expiry or use limit: revoke it with 'fleetd tokens revoke').")
                           ] = False,
    device_type: Annotated[str, typer.Option("--device-type", help="With --ddi-gateway: device type of the devices "
                                             "it registers (default ddi).", show_default=False)] = "",
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Create a join token and print it with the one-line agent installer (shown once)."""
    if ddi_gateway:
        _create_gateway(tag, description, device_type, server, api_key, ca, json)
        return
    with errors_reported():
        if device_type:
            raise InvalidArgument("--device-type goes with --ddi-gateway; agents report their own device type")
        body = {"expires_in": expires_in(expires), "uses": uses, "tags": parse_tag_args(tag or []),
                "description": description}
        tok = call(remote(server, api_key, ca), "EnrollmentService", "CreateToken", body)
    if json:
        print_json(tok)
        return
    show(_rows([tok])[0], False, ["id", "description", "tags", "used", "expires_at"])
    # Printed raw (no markup, no wrapping) so that a copy from the terminal is exactly the string.
    console.print("\n[bold]Join token[/bold] (shown once, keep it secret):")
    console.print(tok["token"], markup=False, highlight=False, soft_wrap=True)
    console.print("\n[bold]Install the agent[/bold] — run this on the device:")
    console.print(tok["install_command"], markup=False, highlight=False, soft_wrap=True, style="green")
    console.print("\n[dim]Devices that enroll with it show up in 'fleetd devices list' as active.[/dim]")


def _create_gateway(tag: list[str] | None, description: str, device_type: str, server: str | None,
                    api_key: str | None, ca: str | None, json: bool) -> None:
    with errors_reported():
        tok = call(remote(server, api_key, ca), DDI, "CreateGatewayToken",
                   {"description": description, "device_type": device_type, "tags": parse_tag_args(tag or [])})
    if json:
        print_json(tok)
        return
    show(tok, False, ["id", "description", "device_type", "tags"])
    console.print("\n[bold]DDI gateway token[/bold] (shown once; it acts for every controller, keep it secret):")
    console.print(tok["token"], markup=False, highlight=False, soft_wrap=True)
    console.print("\n[dim]Devices send it as 'Authorization: GatewayToken <token>'; see docs/ddi.md.[/dim]")


@tokens_app.command("list")
def tokens_list(
    all_: Annotated[bool, typer.Option("--all", help="Also expired, used-up and revoked tokens.")] = False,
    ddi_gateway: Annotated[bool, typer.Option("--ddi-gateway", help="List hawkBit DDI gateway tokens.")] = False,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """List join tokens (never their secrets)."""
    if ddi_gateway:
        with errors_reported():
            gateways = call(remote(server, api_key, ca), DDI, "ListGatewayTokens",
                            {"include_revoked": all_})["tokens"]
        if json:
            print_json(gateways)
        else:
            print_table(gateways, GATEWAY_COLUMNS,
                        empty="no DDI gateway tokens (create one: fleetd tokens create --ddi-gateway)")
        return
    with errors_reported():
        tokens = call(remote(server, api_key, ca), "EnrollmentService", "ListTokens",
                      {"include_inactive": all_})["tokens"]
    if json:
        print_json(tokens)
    else:
        print_table(_rows(tokens), TOKEN_COLUMNS,
                    empty="no active join tokens (create one: fleetd tokens create)" if not all_ else
                    "no join tokens (create one: fleetd tokens create)")


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (see 'fleetd tokens list').")],
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Revoke a join token or a DDI gateway token (ddg_...); devices already enrolled with it stay enrolled."""
    if token_id.startswith(GATEWAY_ID_PREFIX):
        with errors_reported(), hinted("'fleetd tokens list --ddi-gateway --all' shows every gateway token"):
            gw = call(remote(server, api_key, ca), DDI, "RevokeGatewayToken", {"id": token_id})
        if json:
            print_json(gw)
        else:
            console.print(f"revoked DDI gateway token {escape(gw['id'])}; devices it registered stay registered")
        return
    with errors_reported(), hinted("'fleetd tokens list --all' shows every join token and its id"):
        tok = call(remote(server, api_key, ca), "EnrollmentService", "RevokeToken", {"id": token_id})
    if json:
        print_json(tok)
        return
    show(_rows([tok])[0], False, ["id", "description", "used", "state", "revoked_at"])
