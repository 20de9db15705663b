"""fleetd devices: the device registry and direct actions (through --server)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..core.errors import InvalidArgument
from ..devices.actions import TERMINAL
from ..devices.tags import parse_tag_args
from .client import Client, RemoteError
from .common import ApiKeyOpt, CaOpt, JsonOpt, ServerOpt, call, errors_reported, remote
from .output import console, data_table, fail, fitted, print_fitted, print_json, print_object

devices_app = typer.Typer(help="Devices: list, inspect, tag, claim, revoke, deploy to, restart (through --server).",
                          no_args_is_help=True)

ADMIN = "DeviceAdminService"
ENROLL = "EnrollmentService"
DEVICE_FIELDS = ["id", "name", "hardware_id", "device_type", "status", "online", "last_seen", "last_addr",
                 "transport", "certificate_expires", "poll_interval", "tags", "claim_code", "created_at",
                 "enrolled_at"]
TRANSPORT = {"mqtt": "MQTT", "https": "HTTPS poll"}
STATUS_STYLE = {"active": "green", "pending": "yellow", "revoked": "red"}
STATE_STYLE = {"succeeded": "green", "failed": "red", "rolled_back": "red", "cancelled": "yellow",
               "rejected": "yellow", "queued": "dim", "offered": "magenta"}

# Commands that read or deploy take the start of an id too (when only one id starts so); those that change or
# remove the device record take only the whole id, hardware id or name.
DeviceArg = Annotated[str, typer.Argument(help="Device id (or the start of one that only it has), hardware id or "
                                               "name.", show_default=False)]
WholeDeviceArg = Annotated[str, typer.Argument(help="Device id, hardware id or name (whole: not the start of an id).",
                                               show_default=False)]
DevicesArg = Annotated[list[str] | None, typer.Argument(metavar="DEVICE", show_default=False,
                                                        help="Device ids (or their unique starts), hardware ids or "
                                                             "names.")]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="key=value; repeat for more.", show_default=False)]
TargetTagOpt = Annotated[list[str] | None, typer.Option(
    "--tag", help="Target every active device with this key=value (repeat: all must match).", show_default=False)]
AppOpt = Annotated[str, typer.Option("--app", help="The app (component) it concerns.", show_default=False)]


# --- formatting ------------------------------------------------------------------

def parse_time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def ago(value: str | None, at: dt.datetime | None = None) -> str:
    """An API timestamp as '12s ago', '5m ago', '3h ago', '4d ago'; '-' for none."""
    t = parse_time(value)
    if t is None:
        return "-"
    secs = int(((at or dt.datetime.now(dt.UTC)) - t).total_seconds())
    if secs < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit} ago"
    return f"{secs}s ago"


def _tags(tags: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(tags.items())) or "-"


def _online(d: dict[str, Any]) -> str:
    return "[green]● online[/green]" if d.get("online") else "[red]○ offline[/red]"


def _status(d: dict[str, Any]) -> str:
    s = d["status"]
    text = f"[{STATUS_STYLE.get(s, 'white')}]{escape(s)}[/]"
    if s == "pending" and d.get("claim_code"):
        text += f" [dim]({escape(d['claim_code'])})[/dim]"
    return text


def _state(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'cyan')}]{escape(state)}[/]"


def device_table(devices: list[dict[str, Any]]) -> Table:
    table = data_table(("id", "name", "type", "status", "online", "last_seen", "via", "cert_expires", "tags",
                        "versions"))
    for d in devices:
        versions = ", ".join(f"{c['name']} {c['version']}" for c in d.get("components") or []) or "-"
        expires = (d.get("certificate_expires") or "-")[:10]
        table.add_row(escape(d["id"]), escape(d["name"]), escape(d["device_type"]), _status(d), _online(d),
                      ago(d.get("last_seen")), TRANSPORT.get(d.get("transport") or "", "-"), expires,
                      escape(_tags(d.get("tags") or {})), escape(versions))
    return fitted(table)


def action_table(actions: list[dict[str, Any]], caption: str | None = None) -> Table:
    table = data_table(("id", "kind", "component", "artifact", "state", "progress", "message", "created", "ended"),
                       caption=caption)
    for a in actions:
        ended = a["state"] in TERMINAL
        progress = f"{a.get('progress', 0)}%" if a.get("progress") or a["state"] == "succeeded" else "-"
        table.add_row(escape(a["id"]), escape(a["kind"]), escape(a.get("component") or "-"),
                      escape(a.get("artifact") or "-"), _state(a["state"]), progress,
                      escape(a.get("message") or ""), ago(a.get("created_at")),
                      ago(a.get("finished_at")) if ended else "-")
    return fitted(table)


def print_device(d: dict[str, Any]) -> None:
    print_object({**d, "transport": TRANSPORT.get(d.get("transport") or "", "-")}, DEVICE_FIELDS)
    if d.get("inventory"):
        console.print("\n[bold]inventory[/bold]")
        print_object(d["inventory"])
    comps = d.get("components") or []
    console.print("\n[bold]components[/bold]")
    if not comps:
        console.print("[dim]none reported yet[/dim]")
        return
    table = data_table(("name", "version", "previous", "state", "health", "restarts", "updated"))
    for c in comps:
        health = c.get("health") or "-"
        style = {"healthy": "green", "unhealthy": "red"}.get(health, "white")
        table.add_row(escape(c["name"]), escape(c["version"]), escape(c.get("previous_version") or "-"),
                      escape(c.get("state") or "-"), f"[{style}]{escape(health)}[/]", str(c.get("restarts", 0)),
                      ago(c.get("updated_at")))
    print_fitted(table)


# --- calling --------------------------------------------------------------------

@contextmanager
def hinted(hint: str) -> Iterator[None]:
    """Add what to do next to a not-found answer that does not say it already."""
    try:
        yield
    except RemoteError as e:
        if e.code == "not_found" and "fleetd " not in e.message:
            fail(f"{e.message} [not_found]", hint)
        raise


def targets(devices: list[str] | None, tag: list[str] | None, usage: str) -> dict[str, Any]:
    tags = parse_tag_args(tag or [])
    if not devices and not tags:
        raise InvalidArgument(f"say which devices: give device ids (or names), or --tag key=value; e.g. {usage}")
    return {"device_ids": list(devices or []), "tags": tags}


def _queued(created: dict[str, Any], json: bool, what: str, devices: list[str] | None, state: str = "queued"
            ) -> None:
    if json:
        print_json(created)
        return
    ids = created["action_ids"]
    console.print(f"[green]{what} on {len(ids)} device(s):[/green] {', '.join(ids)}")
    within = created.get("pickup_within_seconds") or 0
    if within:
        console.print(f"Devices pick this up at their next check-in, within ~{within} s (their poll interval); "
                      f"until then the action says {state}.")
    follow = devices[0] if devices and len(devices) == 1 else "DEVICE"
    console.print(f"[dim]Follow it: fleetd devices actions {escape(follow)} --watch[/dim]")


# --- commands ---------------------------------------------------------------------

@devices_app.command("list")
def devices_list(
    tag: TagOpt = None,
    status: Annotated[str | None, typer.Option(help="pending, active or revoked.", show_default=False)] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Device type, e.g. linux-aarch64.",
                                              show_default=False)] = None,
    search: Annotated[str | None, typer.Option(help="Part of the id, name or hardware id.",
                                               show_default=False)] = None,
    limit: Annotated[int, typer.Option(help="At most this many (1-10000).")] = 1000,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """List devices, with their status, whether they are online and what they run."""
    with errors_reported():
        body = {"tags": parse_tag_args(tag or []), "status": status or "", "device_type": type_ or "",
                "search": search or "", "limit": limit}
        answer = call(remote(server, api_key, ca), ADMIN, "ListDevices", body)
    devices = answer["devices"]
    if json:
        print_json(devices)
        return
    if not devices:
        filtered = tag or status or type_ or search
        console.print("[dim]no devices match[/dim]" if filtered else
                      "[dim]no devices yet: make a join token with 'fleetd tokens create' and run its install "
                      "command on a device[/dim]")
        return
    console.print(device_table(devices))
    if answer["total"] > len(devices):
        console.print(f"[dim]showing {len(devices)} of {answer['total']}; narrow with --tag, --status, --type, "
                      "--search or raise --limit[/dim]")
    if any(d["status"] == "pending" for d in devices):
        console.print("[dim]pending devices wait to be claimed: fleetd devices claim CODE[/dim]")


@devices_app.command("show")
def devices_show(device: DeviceArg, server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
                 json: JsonOpt = False) -> None:
    """Show one device: identity, status, inventory, components (versions, state, health), tags."""
    with errors_reported():
        d = call(remote(server, api_key, ca), ADMIN, "GetDevice", {"id": device})
    print_json(d) if json else print_device(d)


def _update(server: str | None, api_key: str | None, ca: str | None, json: bool, body: dict[str, Any]) -> None:
    with errors_reported():
        d = call(remote(server, api_key, ca), ADMIN, "UpdateDevice", body)
    print_json(d) if json else print_object(d, ["id", "name", "status", "tags"])


@devices_app.command("tag")
def devices_tag(
    device: WholeDeviceArg,
    tags: Annotated[list[str], typer.Argument(help="key=value ...", show_default=False)],
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Set tags on a device (an existing key gets the new value)."""
    with errors_reported():
        parsed = parse_tag_args(tags)
    _update(server, api_key, ca, json, {"id": device, "set_tags": parsed})


@devices_app.command("untag")
def devices_untag(
    device: WholeDeviceArg,
    keys: Annotated[list[str], typer.Argument(help="Tag keys to remove.", show_default=False)],
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Remove tags from a device by key."""
    _update(server, api_key, ca, json, {"id": device, "remove_tags": keys})


@devices_app.command("rename")
def devices_rename(
    device: WholeDeviceArg,
    name: Annotated[str, typer.Argument(help="The new name.", show_default=False)],
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Give a device a new name."""
    _update(server, api_key, ca, json, {"id": device, "name": name})


@devices_app.command("delete")
def devices_delete(
    device: WholeDeviceArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
) -> None:
    """Forget a device and its history (it may enroll again)."""
    with errors_reported(), remote(server, api_key, ca) as client:
        d = client.call(ADMIN, "GetDevice", {"id": device})
        if device not in (d["id"], d["hardware_id"], d["name"]):
            fail(f"{device!r} is only the start of {d['id']} ({d['name']}); delete takes the whole id, hardware id "
                 "or name", f"fleetd devices delete {d['id']}")
        if not yes and not typer.confirm(f"Delete {d['name']} ({d['id']}, {d['status']}) and all its history?"):
            fail("not deleted")
        client.call(ADMIN, "DeleteDevice", {"id": d["id"]})
    console.print(f"deleted {escape(d['name'])} ({d['id']})")


@devices_app.command("rekey")
def devices_rekey(
    device: WholeDeviceArg,
    expires: Annotated[str, typer.Option(help="Lifetime of the token (90m, 24h, 7d; at most 30d).")] = "24h",
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Let a device that lost its key enroll again with a new one: prints a single-use token for it alone."""
    from .tokens import expires_in
    with errors_reported():
        seconds = expires_in(expires)
        if not seconds:
            raise InvalidArgument("a re-key token always expires; give --expires like 24h (at most 30d)")
        answer = call(remote(server, api_key, ca), ADMIN, "RekeyDevice", {"id": device, "expires_in": seconds})
    if json:
        print_json(answer)
        return
    d, tok = answer["device"], answer["token"]
    if d.get("online"):
        console.print(f"[yellow]note:[/yellow] {escape(d['name'])} checked in {ago(d.get('last_seen'))}; a device "
                      "that still has its key does not need re-keying (made anyway: it works once, for this "
                      "device only)")
    console.print(f"[bold]Re-key token[/bold] for {escape(d['name'])} ({d['id']}, hardware id "
                  f"{escape(d['hardware_id'])}): single use, expires {tok['expires_at']}, shown once:")
    console.print(tok["token"], markup=False, highlight=False, soft_wrap=True)
    console.print("\n[bold]On the device[/bold], with the agent installed:")
    console.print(answer["agent_command"], markup=False, highlight=False, soft_wrap=True, style="green")
    console.print("\n[bold]Or install the agent afresh[/bold] (a new SD card):")
    console.print(tok["install_command"], markup=False, highlight=False, soft_wrap=True, style="green")
    console.print("\n[dim]It keeps its id, tags, apps and pending actions; bearer tokens issued before stop "
                  "working.[/dim]")


@devices_app.command("claim")
def devices_claim(
    code: Annotated[str, typer.Argument(help="The claim code the device shows, e.g. ABCD-EFGH.", show_default=False)],
    name: Annotated[str, typer.Option(help="Name it (default: its hardware id).")] = "",
    tag: TagOpt = None,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Make a pending device active by its claim code."""
    with errors_reported():
        d = call(remote(server, api_key, ca), ENROLL, "ClaimDevice",
                 {"claim_code": code, "name": name, "tags": parse_tag_args(tag or [])})
    if json:
        print_json(d)
        return
    console.print(f"[green]claimed[/green] {escape(d['name'])} ({d['id']}): it is active now")


@devices_app.command("reject")
def devices_reject(device: WholeDeviceArg, server: ServerOpt = None, api_key: ApiKeyOpt = None,
                   ca: CaOpt = None) -> None:
    """Refuse a pending device (it is removed and must enroll again)."""
    with errors_reported():
        call(remote(server, api_key, ca), ENROLL, "RejectDevice", {"device_id": device})
    console.print(f"rejected {escape(device)}")


@devices_app.command("revoke")
def devices_revoke(device: WholeDeviceArg, server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
                   json: JsonOpt = False) -> None:
    """Cut a device off at once: its token stops working and its open actions are cancelled."""
    with errors_reported():
        d = call(remote(server, api_key, ca), ADMIN, "RevokeDevice", {"id": device})
    if json:
        print_json(d)
        return
    console.print(f"[red]revoked[/red] {escape(d['name'])} ({d['id']}); to let it back in: "
                  f"fleetd devices delete {d['id']}, then enroll it again")


@devices_app.command("cert")
def devices_cert(device: DeviceArg, server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
                 json: JsonOpt = False) -> None:
    """The client certificates the fleet CA issued to a device: serial, expiry, revoked (docs/pki.md). A deleted
    device's are shown by its id."""
    with errors_reported():
        answer = call(remote(server, api_key, ca), "CertificateService", "ListDeviceCertificates", {"id": device})
    if json:
        print_json(answer)
        return
    certs = answer["certificates"]
    if not certs:
        console.print(f"device {answer['device_id']} has no certificate; a device asks for one with a CSR (agent: "
                      "certificates on, docs/pki.md)", highlight=False)
        return
    styles = {"valid": "green", "expired": "yellow", "revoked": "red"}
    table = data_table(["serial", "state", "not_before", "expires", "revoked"], whole={"serial"})
    for c in certs:
        table.add_row(c["serial"], Text(c["state"], style=styles.get(c["state"], "")), c["not_before"][:19],
                      c["not_after"][:19], (c.get("revoked_at") or "")[:19])
    print_fitted(table)


@devices_app.command("deploy")
def devices_deploy(
    devices: DevicesArg = None,
    # The artifact comes last, after any number of devices; click fills it first.
    artifact: Annotated[str, typer.Argument(metavar="NAME@VERSION", show_default=False,
                                            help="The artifact: NAME@VERSION or its id.")] = ...,  # type: ignore[assignment]
    tag: TargetTagOpt = None,
    consent: Annotated[bool, typer.Option("--consent", help="Offer it; each device installs once it accepts.")
                       ] = False,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Install an artifact on devices now (all or none), outside any rollout.

    fleetd devices deploy dev_1 dev_2 app@1.2.0

    fleetd devices deploy --tag site=home app@1.2.0
    """
    with errors_reported():
        usage = "fleetd devices deploy dev_1 dev_2 app@1.2.0, or --tag site=home app@1.2.0"
        if not devices and not tag and "@" not in artifact:
            raise InvalidArgument(f"the last argument is the artifact (NAME@VERSION), so {artifact!r} is not "
                                  f"taken as a device; give the devices first, then the artifact: {usage}")
        body = {**targets(devices, tag, usage), "artifact": artifact, "consent": consent}
        created = call(remote(server, api_key, ca), ADMIN, "Deploy", body)
    _queued(created, json, f"{'Offered' if consent else 'Queued'} {artifact}", devices,
            "offered" if consent else "queued")


def _action(kind: str, devices: list[str] | None, tag: list[str] | None, component: str,
            server: str | None, api_key: str | None, ca: str | None, json: bool) -> None:
    with errors_reported():
        usage = f"fleetd devices {kind} dev_1{' --app NAME' if component else ''}, or --tag site=home"
        body = {**targets(devices, tag, usage), "kind": kind, "component": component}
        created = call(remote(server, api_key, ca), ADMIN, "CreateAction", body)
    _queued(created, json, f"Queued {kind}{' of ' + component if component else ''}", devices)


@devices_app.command("restart")
def devices_restart(app: AppOpt, devices: DevicesArg = None, tag: TargetTagOpt = None,
                    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
                    json: JsonOpt = False) -> None:
    """Restart an app on devices."""
    _action("restart", devices, tag, app, server, api_key, ca, json)


@devices_app.command("rollback")
def devices_rollback(app: AppOpt, devices: DevicesArg = None, tag: TargetTagOpt = None,
                     server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
                     json: JsonOpt = False) -> None:
    """Put an app back to each device's previous known-good version."""
    _action("rollback", devices, tag, app, server, api_key, ca, json)


@devices_app.command("reboot")
def devices_reboot(devices: DevicesArg = None, tag: TargetTagOpt = None, server: ServerOpt = None,
                   api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False) -> None:
    """Reboot devices."""
    _action("reboot", devices, tag, "", server, api_key, ca, json)


def _all_ended(actions: list[dict[str, Any]]) -> bool:
    return all(a["state"] in TERMINAL for a in actions)


def _watch(client: Client, body: dict[str, Any], interval: float) -> list[dict[str, Any]]:
    """Redraw the action table until every action has ended (Ctrl-C stops early)."""
    actions = client.call(ADMIN, "ListActions", body)["actions"]
    caption = f"refreshing every {interval:g}s until all have ended; Ctrl-C stops watching"

    def view(rows: list[dict[str, Any]], text: str) -> RenderableType:
        return action_table(rows, text) if rows else Group(Text("no actions", style="dim"))

    with Live(view(actions, caption), console=console, auto_refresh=False) as live:
        try:
            while not _all_ended(actions):
                time.sleep(interval)
                actions = client.call(ADMIN, "ListActions", body)["actions"]
                live.update(view(actions, caption), refresh=True)
            live.update(view(actions, "all actions have ended"), refresh=True)
        except KeyboardInterrupt:
            live.update(view(actions, "stopped watching"), refresh=True)
    return actions


@devices_app.command("actions")
def devices_actions(
    device: DeviceArg,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until every action has ended "
                                                                "(with --json: wait, then print).")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.", min=0.2)] = 2.0,
    limit: Annotated[int, typer.Option(help="The newest this many (1-1000).")] = 50,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """A device's actions, newest first: kind, component, artifact, state, progress, message, times."""
    body = {"device_id": device, "limit": limit}
    with errors_reported(), remote(server, api_key, ca) as client:
        if watch and not json:
            _watch(client, body, interval)
            return
        actions = client.call(ADMIN, "ListActions", body)["actions"]
        while watch and not _all_ended(actions):
            time.sleep(interval)
            actions = client.call(ADMIN, "ListActions", body)["actions"]
    if json:
        print_json(actions)
    elif actions:
        console.print(action_table(actions))
    else:
        console.print("[dim]no actions for this device yet[/dim]")


@devices_app.command("cancel")
def devices_cancel(
    action_id: Annotated[str, typer.Argument(help="The action's id (see 'fleetd devices actions DEVICE').",
                                             show_default=False)],
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Cancel an action that has not ended."""
    with errors_reported(), hinted("'fleetd devices actions DEVICE' lists a device's actions and their ids"):
        a = call(remote(server, api_key, ca), ADMIN, "CancelAction", {"id": action_id})
    if json:
        print_json(a)
        return
    console.print(f"{escape(a['id'])} ({a['kind']} on {escape(a['device_id'])}) is now {_state(a['state'])}")


@devices_app.command("ddi-token")
def devices_ddi_token(
    device: Annotated[str, typer.Argument(metavar="CONTROLLER_ID_OR_DEVICE_ID", show_default=False,
                                          help="A DDI device's controller id or device id; an unknown controller "
                                               "id registers a new active DDI device.")],
    revoke: Annotated[bool, typer.Option("--revoke", help="Revoke the device's target token instead.")] = False,
    device_type: Annotated[str, typer.Option("--device-type", help="Device type of a new device (default ddi), "
                                             "or a new type for this one.", show_default=False)] = "",
    tag: TagOpt = None,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Print a new hawkBit DDI target token for a device (its previous one stops working), or revoke it."""
    client = remote(server, api_key, ca)
    with errors_reported():
        if revoke:
            if device_type or tag:
                raise InvalidArgument("--revoke takes no --device-type or --tag")
            done = call(client, "DdiService", "RevokeTargetToken", {"device": device})
        else:
            tok = call(client, "DdiService", "CreateTargetToken",
                       {"device": device, "device_type": device_type, "tags": parse_tag_args(tag or [])})
    if revoke:
        if json:
            print_json(done)
        else:
            console.print(f"revoked {done['revoked']} target token(s) of {escape(done['controller_id'])} "
                          f"({done['device_id']}); its DDI requests are refused until it gets a new one")
        return
    if json:
        print_json(tok)
        return
    if tok.get("created"):
        console.print(f"registered DDI device {escape(tok['controller_id'])} ({tok['device_id']})")
    console.print(f"[bold]Target token[/bold] for {escape(tok['controller_id'])} (shown once; configure the device "
                  "with it, sent as 'Authorization: TargetToken <token>'):")
    console.print(tok["token"], markup=False, highlight=False, soft_wrap=True)
