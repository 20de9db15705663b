"""fleetd alerts: rules on telemetry, their incidents, webhooks and the delivery log (through --server)."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from ..core.clock import parse_duration
from ..core.errors import InvalidArgument
from ..devices.tags import parse_tag_args
from .common import ApiKeyOpt, CaOpt, JsonOpt, ServerOpt, call, errors_reported, remote
from .devices import hinted
from .output import console, print_json, print_table, show

alerts_app = typer.Typer(help="Alerts: rules on telemetry, incidents, webhooks (through --server).",
                         no_args_is_help=True)
rules_app = typer.Typer(help="Alert rules: a condition on a metric, checked for every targeted device.",
                        no_args_is_help=True)
webhooks_app = typer.Typer(help="Webhooks: URLs that get a signed POST when an incident fires or resolves.",
                           no_args_is_help=True)
alerts_app.add_typer(rules_app, name="rules")
alerts_app.add_typer(webhooks_app, name="webhooks")

SERVICE = "AlertService"
CONDITION = re.compile(r"\s*(?:(avg|min|max)\(\s*([A-Za-z_][A-Za-z0-9_.:-]*)\s*\)|([A-Za-z_][A-Za-z0-9_.:-]*))"
                       r"\s*(>=|<=|>|<)\s*(-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*")
RULE_COLUMNS = ["id", "name", "condition", "target", "enabled"]
INCIDENT_COLUMNS = ["id", "state", "rule_name", "device", "message", "started_at", "resolved_at"]
DELIVERY_COLUMNS = ["id", "webhook_id", "event", "incident_id", "state", "attempts", "last_status", "last_error",
                    "created_at"]


def parse_condition(text: str) -> dict[str, Any]:
    """'cpu_temp > 80', 'max(cpu_temp) >= 90' → the rule's metric, aggregate, comparison and threshold."""
    m = CONDITION.fullmatch(text)
    if not m:
        raise InvalidArgument(f"cannot read condition {text!r}; write METRIC OP NUMBER with OP one of > < >= <=, "
                              "optionally as avg(METRIC), min(METRIC) or max(METRIC): e.g. 'cpu_temp > 80' or "
                              "'max(cpu_temp) >= 90'")
    agg, inner, bare, op, number = m.groups()
    return {"metric": inner or bare, "aggregate": agg or "avg", "comparison": op, "threshold": float(number)}


def rule_body(condition: str | None, no_data: str | None, window: str, tags: list[str] | None,
              device_type: str | None, name: str | None) -> dict[str, Any]:
    if bool(condition) == bool(no_data):
        raise InvalidArgument("give a condition ('cpu_temp > 80') or --no-data METRIC, not both")
    seconds = parse_duration(window)
    if seconds != int(seconds):
        raise InvalidArgument(f"--window must be whole seconds, got {window!r}")
    body: dict[str, Any] = parse_condition(condition) if condition else {"kind": "no_data", "metric": no_data}
    body.update(window_seconds=int(seconds), tags=parse_tag_args(tags or []), device_type=device_type or "",
                name=name or "")
    return body


def _condition(r: dict[str, Any]) -> str:
    w = r["window_seconds"]
    window = next((f"{w // s}{u}" for u, s in (("d", 86400), ("h", 3600), ("m", 60)) if w % s == 0), f"{w}s")
    if r["kind"] == "no_data":
        return f"no {r['metric']} for {window}"
    return f"{r['aggregate']}({r['metric']}) over {window} {r['comparison']} {r['threshold']:g}"


def _target(r: dict[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in sorted(r.get("tags", {}).items())]
    if r.get("device_type"):
        parts.append(f"type {r['device_type']}")
    return ", ".join(parts) or "all devices"


def _rule_rows(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "condition": _condition(r), "target": _target(r)} for r in rules]


# --- rules ------------------------------------------------------------------------------

@rules_app.command("create")
def rules_create(
    condition: Annotated[str | None, typer.Argument(
        help="METRIC OP NUMBER, e.g. 'cpu_temp > 80' or 'max(cpu_temp) >= 90' (avg unless given).",
        show_default=False)] = None,
    no_data: Annotated[str | None, typer.Option("--no-data", metavar="METRIC",
                                                help="Fire when a device sends no METRIC for the window.",
                                                show_default=False)] = None,
    window: Annotated[str, typer.Option(help="Window the condition is judged over, 1m..24h (whole minutes).")] = "5m",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only devices with this key=value (repeat: all "
                                                  "must match).", show_default=False)] = None,
    device_type: Annotated[str | None, typer.Option("--device-type", help="Only devices of this type.",
                                                    show_default=False)] = None,
    name: Annotated[str | None, typer.Option(help="Shown in incidents; default: the condition.",
                                             show_default=False)] = None,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Create an alert rule: an incident fires per device while the condition holds, and resolves after."""
    with errors_reported():
        body = rule_body(condition, no_data, window, tag, device_type, name)
        rule = call(remote(server, api_key, ca), SERVICE, "CreateRule", body)
    if json:
        print_json(rule)
        return
    show(_rule_rows([rule])[0], False, ["id", "name", "condition", "target", "enabled"])


@rules_app.command("list")
def rules_list(server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False) -> None:
    """List alert rules."""
    with errors_reported():
        rules = call(remote(server, api_key, ca), SERVICE, "ListRules", {})["rules"]
    if json:
        print_json(rules)
    else:
        print_table(_rule_rows(rules), RULE_COLUMNS,
                    empty="no alert rules (create one: fleetd alerts rules create 'cpu_temp > 80' --window 5m)")


@rules_app.command("delete")
def rules_delete(
    rule_id: Annotated[str, typer.Argument(help="The rule's id (see 'fleetd alerts rules list').")],
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
) -> None:
    """Delete a rule; its open incidents resolve and stay in the history."""
    with errors_reported():
        call(remote(server, api_key, ca), SERVICE, "DeleteRule", {"id": rule_id})
    console.print(f"deleted alert rule {rule_id}")


# --- incidents ------------------------------------------------------------------------------

@alerts_app.command("list")
def alerts_list(
    state: Annotated[str | None, typer.Option(help="firing or resolved.", show_default=False)] = None,
    device: Annotated[str | None, typer.Option(help="Only this device (id, hardware id or name).",
                                               show_default=False)] = None,
    rule: Annotated[str | None, typer.Option(help="Only this rule's id.", show_default=False)] = None,
    limit: Annotated[int, typer.Option(help="At most this many (1-1000).")] = 100,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """List incidents, newest first."""
    with errors_reported(), hinted("'fleetd devices list' shows the devices"):
        body = {"state": state or "", "device": device or "", "rule_id": rule or "", "limit": limit}
        incidents = call(remote(server, api_key, ca), SERVICE, "ListIncidents", body)["incidents"]
    if json:
        print_json(incidents)
        return
    rows = [{**i, "device": i.get("device_name") or i["device_id"]} for i in incidents]
    print_table(rows, INCIDENT_COLUMNS, empty="no incidents")


# --- webhooks -------------------------------------------------------------------------------

@webhooks_app.command("create")
def webhooks_create(
    url: Annotated[str, typer.Argument(help="http:// or https:// URL that receives a POST per event.")],
    name: Annotated[str | None, typer.Option(help="A label; default: the URL's host.", show_default=False)] = None,
    event: Annotated[list[str] | None, typer.Option("--event", help="alert.fired or alert.resolved (repeat); "
                                                    "default both.", show_default=False)] = None,
    secret: Annotated[str | None, typer.Option(help="HMAC key (16+ characters); default: a random one.",
                                               show_default=False)] = None,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """Register a webhook and print its signing secret (shown once)."""
    with errors_reported():
        body = {"url": url, "name": name or "", "events": event or [], "secret": secret or ""}
        hook = call(remote(server, api_key, ca), SERVICE, "CreateWebhook", body)
    if json:
        print_json(hook)
        return
    show(hook, False, ["id", "name", "url", "events"])
    console.print("\n[bold]Signing secret[/bold] (shown once): requests carry "
                  "X-Fleetd-Signature: sha256=HMAC-SHA256(secret, body) in hex")
    console.print(hook["secret"], markup=False, highlight=False, soft_wrap=True)


@webhooks_app.command("list")
def webhooks_list(server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
                  json: JsonOpt = False) -> None:
    """List webhooks (never their secrets)."""
    with errors_reported():
        hooks = call(remote(server, api_key, ca), SERVICE, "ListWebhooks", {})["webhooks"]
    if json:
        print_json(hooks)
    else:
        print_table(hooks, ["id", "name", "url", "events", "enabled", "created_at"],
                    empty="no webhooks (add one: fleetd alerts webhooks create https://...)")


@webhooks_app.command("delete")
def webhooks_delete(
    webhook_id: Annotated[str, typer.Argument(help="The webhook's id (see 'fleetd alerts webhooks list').")],
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None,
) -> None:
    """Delete a webhook and its delivery log."""
    with errors_reported():
        call(remote(server, api_key, ca), SERVICE, "DeleteWebhook", {"id": webhook_id})
    console.print(f"deleted webhook {webhook_id}")


@alerts_app.command("deliveries")
def alerts_deliveries(
    webhook: Annotated[str | None, typer.Option(help="Only this webhook's id.", show_default=False)] = None,
    state: Annotated[str | None, typer.Option(help="pending, delivered or failed.", show_default=False)] = None,
    limit: Annotated[int, typer.Option(help="At most this many (1-1000).")] = 100,
    server: ServerOpt = None, api_key: ApiKeyOpt = None, ca: CaOpt = None, json: JsonOpt = False,
) -> None:
    """The webhook delivery log, newest first: attempts, last HTTP status, last error."""
    with errors_reported():
        body = {"webhook_id": webhook or "", "state": state or "", "limit": limit}
        deliveries = call(remote(server, api_key, ca), SERVICE, "ListDeliveries", body)["deliveries"]
    if json:
        print_json(deliveries)
    else:
        print_table(deliveries, DELIVERY_COLUMNS, empty="no webhook deliveries")
