"""AlertService: alert rules, incidents, webhooks and their delivery log."""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from ..core.fields import Int32, page_limit
from ..devices import registry
from ..http.rpc import Context, Empty, Service
from . import engine as alerts
from . import webhooks
from .engine import AlertRule, Incident
from .webhooks import Delivery, Webhook

service = Service("AlertService", "Alert rules on telemetry, the incidents they raise, and the webhooks that "
                  "hear about them.")


class CreateRuleRequest(msgspec.Struct, kw_only=True):
    # Shown in incidents; unset: the condition, e.g. "cpu_temp avg over 5m > 80".
    name: str = ""
    # threshold (the default) or no_data.
    kind: str = "threshold"
    metric: str
    # avg (the default), min or max over the window.
    aggregate: str = "avg"
    # >, <, >= or <=; > when unset.
    comparison: str = ">"
    threshold: float = 0.0
    # 60..86400, counted in whole minutes; 300 when unset.
    window_seconds: Int32 = 300
    # Devices with all of these tags; none: every active device.
    tags: dict[str, str] = {}
    # Only devices of this type; empty: any.
    device_type: str = ""
    # true when unset.
    enabled: bool = True


@service.method(auth="operator")
async def CreateRule(ctx: Context, req: CreateRuleRequest) -> AlertRule:
    """Create an alert rule; it is evaluated at once and then every few seconds."""
    rule = AlertRule(id="", **msgspec.structs.asdict(req))
    return await ctx.fleet.alerts.create_rule(ctx.actor, rule)


class ListRulesResponse(msgspec.Struct, kw_only=True):
    rules: list[AlertRule]


@service.method(auth="viewer", readonly=True)
async def ListRules(ctx: Context, req: Empty) -> ListRulesResponse:
    """Every alert rule, oldest first."""
    return ListRulesResponse(rules=await ctx.fleet.store.read(alerts.list_rules))


class UpdateRuleRequest(msgspec.Struct, kw_only=True):
    id: str
    # Fields left unset keep their value.
    name: str | None = None
    aggregate: str | None = None
    comparison: str | None = None
    threshold: float | None = None
    window_seconds: Int32 | None = None
    # Disabling a rule resolves its open incidents.
    enabled: bool | None = None


@service.method(auth="operator")
async def UpdateRule(ctx: Context, req: UpdateRuleRequest) -> AlertRule:
    """Change a rule's name, condition or window, or enable / disable it."""
    changes: dict[str, Any] = {k: v for k, v in msgspec.structs.asdict(req).items() if k != "id" and v is not None}
    return await ctx.fleet.alerts.update_rule(ctx.actor, req.id, changes)


class RuleRef(msgspec.Struct, kw_only=True):
    id: str


@service.method(auth="operator")
async def DeleteRule(ctx: Context, req: RuleRef) -> Empty:
    """Delete a rule; its open incidents resolve and stay in the history."""
    await ctx.fleet.alerts.delete_rule(ctx.actor, req.id)
    return Empty()


class ListIncidentsRequest(msgspec.Struct, kw_only=True):
    # firing or resolved; empty: both.
    state: str = ""
    rule_id: str = ""
    # Device id, hardware id or name.
    device: str = ""
    # 1..1000; 100 when unset.
    limit: Int32 = 0


class ListIncidentsResponse(msgspec.Struct, kw_only=True):
    incidents: list[Incident]


@service.method(auth="viewer", readonly=True)
async def ListIncidents(ctx: Context, req: ListIncidentsRequest) -> ListIncidentsResponse:
    """Incidents, newest first."""
    def run(conn: sqlite3.Connection) -> list[Incident]:
        device_id = registry.find_device_row(conn, req.device)["id"] if req.device else ""
        return alerts.list_incidents(conn, state=req.state, rule_id=req.rule_id, device_id=device_id,
                                     limit=page_limit(req.limit, 100, 1000))

    return ListIncidentsResponse(incidents=await ctx.fleet.store.read(run))


class CreateWebhookRequest(msgspec.Struct, kw_only=True):
    name: str = ""
    # http:// or https:// URL that receives a POST per event.
    url: str
    # alert.fired and/or alert.resolved; none: both.
    events: list[str] = []
    # HMAC key for X-Fleetd-Signature, at least 16 characters; unset: a random one, returned once.
    secret: str = ""


@service.method(auth="admin")
async def CreateWebhook(ctx: Context, req: CreateWebhookRequest) -> Webhook:
    """Register a webhook; the answer holds its signing secret (shown once).

    Its host may not be, or resolve to, a loopback, link-local, metadata or (unless the server allows it) private
    address: docs/telemetry.md, "Webhooks"."""
    await webhooks.check_destination(req.url, ctx.fleet.egress)
    return await ctx.fleet.store.write(lambda c: webhooks.create(c, ctx.actor, name=req.name, url=req.url,
                                                                 events=req.events, secret=req.secret))


class ListWebhooksResponse(msgspec.Struct, kw_only=True):
    webhooks: list[Webhook]


@service.method(auth="operator", readonly=True)
async def ListWebhooks(ctx: Context, req: Empty) -> ListWebhooksResponse:
    """Every webhook (never the secrets)."""
    return ListWebhooksResponse(webhooks=await ctx.fleet.store.read(webhooks.list_webhooks))


class WebhookRef(msgspec.Struct, kw_only=True):
    id: str


@service.method(auth="admin")
async def DeleteWebhook(ctx: Context, req: WebhookRef) -> Empty:
    """Delete a webhook and its delivery log."""
    await ctx.fleet.store.write(lambda c: webhooks.delete(c, ctx.actor, req.id))
    return Empty()


class ListDeliveriesRequest(msgspec.Struct, kw_only=True):
    webhook_id: str = ""
    # pending, delivered or failed; empty: all.
    state: str = ""
    # 1..1000; 100 when unset.
    limit: Int32 = 0


class ListDeliveriesResponse(msgspec.Struct, kw_only=True):
    deliveries: list[Delivery]


@service.method(auth="operator", readonly=True)
async def ListDeliveries(ctx: Context, req: ListDeliveriesRequest) -> ListDeliveriesResponse:
    """The webhook delivery log, newest first: attempts, last HTTP status, last error."""
    return ListDeliveriesResponse(deliveries=await ctx.fleet.store.read(lambda c: webhooks.list_deliveries(
        c, webhook_id=req.webhook_id, state=req.state, limit=page_limit(req.limit, 100, 1000))))
