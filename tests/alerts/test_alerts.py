"""Alert rules, the incident state machine (with an injected clock), webhooks and AlertService."""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fleetd.accounts.audit import SYSTEM
from fleetd.alerts import engine as alerts
from fleetd.alerts import webhooks
from fleetd.alerts.egress import Policy
from fleetd.alerts.engine import AlertEngine, AlertRule, Transition
from fleetd.alerts.webhooks import Deliverer
from fleetd.cli.alerts import parse_condition, rule_body
from fleetd.core.events import Event, EventBus
from fleetd.devices import join_tokens, registry
from fleetd.telemetry import rollups
from fleetd.telemetry.intake import Point
from fleetd.telemetry.rollups import Agg
from tests.conftest import rpc
from tests.support.webhook_receiver import Receiver

pytestmark = pytest.mark.both_backends

T0 = math.floor(time.time() / 60) * 60 - 3600.0  # a whole minute, an hour ago: devices may send it


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_device(fleet: Any, tags: dict[str, str] | None = None, active_since: float = 0.0) -> str:
    fp = fleet.keys.ca_fingerprint

    def run(conn):  # type: ignore[no-untyped-def]
        tok, secret = join_tokens.create_token(conn, SYSTEM, tags=tags or {})
        parsed = join_tokens.ParsedJoinToken(fp, tok.id, secret)
        res = registry.enroll(conn, hardware_id=f"hw-{secrets.token_hex(4)}", device_type="sim",
                              public_key=os.urandom(32), name="", inventory={}, addr=None,
                              token=lambda: join_tokens.check_token(conn, parsed, fp))
        conn.execute("UPDATE devices SET enrolled_at = ? WHERE id = ?", (active_since, res.device.id))
        return res.device.id

    return str(fleet.store.write_sync(run))


def rule(**kw: Any) -> AlertRule:
    base: dict[str, Any] = {"id": "", "name": "", "kind": "threshold", "metric": "temp", "aggregate": "avg",
                            "comparison": ">", "threshold": 80.0, "window_seconds": 120}
    return AlertRule(**{**base, **kw})


class Recorder:
    """Subscribes to the bus and keeps what it hears."""

    def __init__(self, bus: EventBus) -> None:
        self.events: list[Event] = []
        self.bus = bus

    async def __aenter__(self) -> Recorder:
        async def pump() -> None:
            async for ev in self.bus.subscribe():
                self.events.append(ev)
        self.task = asyncio.get_running_loop().create_task(pump())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()

    def types(self) -> list[str]:
        return [e.type for e in self.events]


def run(fleet: Any, scenario: Callable[[AlertEngine, Clock], Awaitable[None]], **engine_kw: Any) -> None:
    clock = Clock(T0)
    engine = AlertEngine(fleet.store, clock=clock, deliverer=Deliverer(fleet.store, clock=clock),
                         **engine_kw)
    asyncio.run(scenario(engine, clock))


async def push(fleet: Any, device_id: str, ts: float, *values: float, metric: str = "temp") -> None:
    await fleet.telemetry.add(device_id, [Point(name=metric, ts=ts, value=v) for v in values])


def incidents(fleet: Any, **kw: Any) -> list[alerts.Incident]:
    return fleet.store.read_sync(lambda c: alerts.list_incidents(c, **kw))


# --- the state machine on its own ----------------------------------------------------------

def test_decide_fires_resolves_and_needs_data_to_judge() -> None:
    r = rule(id="r1")
    targets = {"a": 0.0, "b": 0.0, "c": 0.0}
    aggs = {"a": Agg(2, 170.0, 80.0, 90.0), "b": Agg(1, 10.0, 10.0, 10.0)}  # a: avg 85; c: no data
    out = alerts.decide(r, targets, aggs, firing=set(), now=T0, since=0)
    assert [(t.kind, t.device_id, t.value) for t in out] == [("fire", "a", 85.0)]
    # Already firing: nothing new; c has no data, so its incident stays open.
    assert alerts.decide(r, targets, aggs, firing={"a", "c"}, now=T0, since=0) == []
    # b firing but fine now → resolved; a device that left the target → resolved.
    out = alerts.decide(r, targets, aggs, firing={"b", "gone"}, now=T0, since=0)
    assert [(t.kind, t.device_id, t.resolution) for t in out] == [
        ("resolve", "gone", "device no longer targeted"), ("fire", "a", ""), ("resolve", "b", "recovered")]
    # The aggregate and the comparison are the rule's.
    assert [t.device_id for t in alerts.decide(rule(id="r", aggregate="max", comparison=">=", threshold=90),
                                               targets, aggs, set(), T0, 0)] == ["a"]
    assert [t.device_id for t in alerts.decide(rule(id="r", aggregate="min", comparison="<", threshold=80),
                                               targets, aggs, set(), T0, 0)] == ["b"]


def test_decide_no_data_waits_a_whole_window_after_every_start() -> None:
    r = rule(id="r2", kind="no_data", window_seconds=600)
    r.created_at = None
    targets = {"old": T0 - 10_000, "new": T0 - 100, "sending": T0 - 10_000}
    aggs = {"sending": Agg(1, 1.0, 1.0, 1.0)}
    assert [t.device_id for t in alerts.decide(r, targets, aggs, set(), T0, since=T0 - 10_000)] == ["old"]
    assert alerts.decide(r, targets, aggs, set(), T0, since=T0 - 300) == []  # the server started 5 min ago
    out = alerts.decide(r, targets, aggs, {"old", "sending"}, T0, since=0)
    assert [(t.kind, t.device_id, t.resolution) for t in out] == [("resolve", "sending", "data again")]


# --- the engine: real SQLite, injected clock -----------------------------------------------

def test_threshold_incident_fires_once_resolves_and_fires_again(fleet) -> None:  # type: ignore[no-untyped-def]
    hot = make_device(fleet, {"site": "a"}, T0 - 3600)
    other = make_device(fleet, {"site": "b"}, T0 - 3600)
    hook = fleet.store.write_sync(lambda c: webhooks.create(c, SYSTEM, name="t", url="http://127.0.0.1:9/x"))

    async def scenario(engine: AlertEngine, clock: Clock) -> None:
        async with Recorder(fleet.events) as rec:
            r = await engine.create_rule(SYSTEM, rule(tags={"site": "a"}))
            assert r.name == "temp avg over 2m > 80"
            await push(fleet, hot, T0, 50)
            await push(fleet, other, T0, 99)  # hot, but not targeted
            assert await engine.evaluate() == []
            await push(fleet, hot, T0 + 1, 120)  # avg 85
            changes = await engine.evaluate()
            assert [(e, i.device_id, i.value) for e, i in changes] == [("alert.fired", hot, 85.0)]
            first = changes[0][1]
            assert first.message == "temp avg over 2m is 85 (> 80)"
            await push(fleet, hot, T0 + 2, 90)
            assert await engine.evaluate() == []  # still firing: no second incident
            # Even bypassing the engine's memory, the database refuses a second open incident.
            dup = Transition("fire", r, hot, 99.0, "dup")
            assert await fleet.store.write(lambda c: alerts.record(c, [dup], clock())) == []
            # Minutes later the window holds no data: a threshold rule cannot judge, the incident stays.
            clock.t = T0 + 600
            assert await engine.evaluate() == []
            await push(fleet, hot, clock.t, 10)
            changes = await engine.evaluate()
            assert [(e, i.id, i.last_value, i.resolution) for e, i in changes] == [
                ("alert.resolved", first.id, 10.0, "recovered")]
            await push(fleet, hot, clock.t + 1, 200)  # avg 105
            again = await engine.evaluate()
            assert [e for e, _ in again] == ["alert.fired"] and again[0][1].id != first.id
            await asyncio.sleep(0)
            assert rec.types() == ["alert.fired", "alert.resolved", "alert.fired"]
            assert rec.events[0].data["id"] == first.id and rec.events[0].data["device_id"] == hot

    run(fleet, scenario)
    assert [i.state for i in incidents(fleet)] == ["firing", "resolved"]
    # Half a year on, the resolved incident is forgotten; the open one and (pending) deliveries stay.
    late = AlertEngine(fleet.store, clock=lambda: T0 + 181 * 86400)
    assert asyncio.run(late.prune()) == (1, 0)
    assert [i.state for i in incidents(fleet)] == ["firing"]
    log = fleet.store.read_sync(lambda c: webhooks.list_deliveries(c, webhook_id=hook.id))
    assert [d.event for d in log] == ["alert.fired", "alert.resolved", "alert.fired"]  # newest first
    assert all(d.state == "pending" for d in log)


def test_rolled_up_or_not_a_window_counts_each_point_once(fleet) -> None:  # type: ignore[no-untyped-def]
    dev = make_device(fleet, {}, T0 - 3600)

    async def scenario(engine: AlertEngine, clock: Clock) -> None:
        clock.t = T0 + 170
        await push(fleet, dev, T0 + 60, 70, 95)
        await push(fleet, dev, T0 + 150, 79)
        await fleet.rollups.roll_up()
        await push(fleet, dev, T0 + 160, 82, 90)  # the raw tail
        live = await fleet.store.read(lambda c: rollups.window(c, "temp", clock.t - 120))
        await fleet.rollups.roll_up()
        rolled = await fleet.store.read(lambda c: rollups.window(c, "temp", clock.t - 120))
        assert live == rolled == {dev: Agg(5, 416.0, 70.0, 95.0)}
        await engine.create_rule(SYSTEM, rule(threshold=83))  # avg 83.2
        assert [(e, i.value) for e, i in await engine.evaluate()] == [("alert.fired", 83.2)]

    run(fleet, scenario)


def test_no_data_fires_after_the_window_and_resolves_as_data_arrives(fleet) -> None:  # type: ignore[no-untyped-def]
    quiet = make_device(fleet, {"site": "a"}, T0 - 3600)
    young = make_device(fleet, {"site": "a"}, T0 + 150)  # enrolled too recently to be judged

    async def scenario(engine: AlertEngine, clock: Clock) -> None:
        await engine.create_rule(SYSTEM, rule(kind="no_data", tags={"site": "a"}))
        await push(fleet, quiet, T0, 1)
        assert await engine.evaluate() == []
        clock.t = T0 + 200
        changes = await engine.evaluate()
        assert [(e, i.device_id, i.message) for e, i in changes] == [("alert.fired", quiet, "no temp data for 2m")]
        # Data arrives through the intake path: the engine looks again shortly, for that device only.
        points = [Point(name="temp", ts=clock.t, value=5)]
        await fleet.telemetry.add(quiet, points)
        engine.note_points(quiet, points)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not engine.firing:
                break
        assert engine.firing == {}

    run(fleet, scenario, debounce=0.01)
    assert [(i.state, i.resolution) for i in incidents(fleet, device_id=quiet)] == [("resolved", "data again")]
    assert incidents(fleet, device_id=young) == []


def test_untargeting_disabling_and_deleting_resolve_open_incidents(fleet) -> None:  # type: ignore[no-untyped-def]
    a, b, c = (make_device(fleet, {"site": "a"}, T0 - 3600) for _ in range(3))

    async def scenario(engine: AlertEngine, clock: Clock) -> None:
        r1 = await engine.create_rule(SYSTEM, rule(tags={"site": "a"}))
        r2 = await engine.create_rule(SYSTEM, rule(metric="load", threshold=1))
        for d in (a, b, c):
            await push(fleet, d, T0, 100)
            await push(fleet, d, T0, 5, metric="load")
        assert len(await engine.evaluate()) == 6
        await fleet.store.write(lambda conn: registry.update(conn, SYSTEM, a, remove_tags=["site"]))
        changes = await engine.evaluate()
        assert [(i.device_id, i.resolution) for _, i in changes] == [(a, "device no longer targeted")]
        await engine.update_rule(SYSTEM, r1.id, {"enabled": False})
        assert len(engine.firing) == 3  # r2's three stay
        await engine.delete_rule(SYSTEM, r2.id)
        assert engine.firing == {}
        assert await engine.evaluate() == []  # r1 disabled: nothing fires again

    run(fleet, scenario)
    got = sorted(i.resolution for i in incidents(fleet))
    assert got == sorted(["rule deleted"] * 3 + ["device no longer targeted"] + ["rule disabled"] * 2)
    assert all(i.state == "resolved" for i in incidents(fleet))


def test_rules_are_validated_with_clear_errors(fleet) -> None:  # type: ignore[no-untyped-def]
    for bad, fragment in [({"comparison": "=="}, "comparison must be one of"),
                          ({"window_seconds": 30}, "window must be between 1m and 24h"),
                          ({"metric": "a b"}, "metric .a b. must be 1-128 letters"),
                          ({"kind": "rate"}, "kind must be threshold or no_data"),
                          ({"aggregate": "p99"}, "aggregate must be one of"),
                          ({"threshold": float("nan")}, "threshold must be a finite number"),
                          ({"tags": {"bad key": "x"}}, "tag key")]:
        with pytest.raises(Exception, match=fragment):
            fleet.store.write_sync(lambda c, bad=bad: alerts.create_rule(c, SYSTEM, rule(**bad), T0))
    assert fleet.store.read_sync(alerts.list_rules) == []


# --- webhooks: a real receiver on loopback -----------------------------------------------------

LOOPBACK = Policy.of(False, ["127.0.0.1/32"])  # the receiver is on this host: allowed by name, as an admin would

def test_deliveries_are_signed_retried_with_backoff_in_order_and_logged(fleet) -> None:  # type: ignore[no-untyped-def]
    clock = Clock(T0)
    with Receiver(statuses=[500]) as rx:
        good = fleet.store.write_sync(lambda c: webhooks.create(c, SYSTEM, name="rx", url=rx.url,
                                                                secret="s" * 20))
        dead = fleet.store.write_sync(lambda c: webhooks.create(c, SYSTEM, name="dead",
                                                                url="http://127.0.0.1:9/nothing-listens"))
        for n in (1, 2):
            fleet.store.write_sync(lambda c, n=n: webhooks.enqueue(c, "alert.fired", {"incident": {"id": f"inc{n}"}},
                                                                   clock()))
        d = Deliverer(fleet.store, clock=clock, backoff_base=10, max_attempts=3, policy=LOOPBACK)

        async def scenario() -> None:
            assert await d.run_once() == 2  # good: 500 on the first, so the second waits; dead: refused
            assert await d.run_once() == 0  # nothing due before the backoff
            clock.t += 10
            assert await d.run_once() == 3  # good: first, then second; dead: attempt 2
            clock.t += 19
            assert await d.run_once() == 0
            clock.t += 1
            assert await d.run_once() == 1  # dead: attempt 3, the last
            assert await d.run_once() == 1  # dead: its first has failed for good, so the second goes now
            clock.t += 10_000
            assert await d.run_once() == 1  # dead: the second's attempt 2; good: nothing left
            await d.stop()

        asyncio.run(scenario())
        got = rx.wait_for(3)
    assert [r.json["incident"]["id"] for r in got] == ["inc1", "inc1", "inc2"]
    assert got[0].body == got[1].body  # a retry sends the same bytes
    assert all(r.signed_with("s" * 20) and r.headers["x-fleetd-event"] == "alert.fired" for r in got)
    assert not got[0].signed_with("t" * 20)
    log = {(x.webhook_id, x.incident_id): x for x in fleet.store.read_sync(lambda c: webhooks.list_deliveries(c))}
    first = log[(good.id, "inc1")]
    assert (first.state, first.attempts, first.last_status, first.last_error) == ("delivered", 2, 200, "")
    second = log[(dead.id, "inc2")]
    assert (second.state, second.attempts) == ("pending", 2)
    assert log[(good.id, "inc2")].state == "delivered"
    dead1 = log[(dead.id, "inc1")]
    assert (dead1.state, dead1.attempts, dead1.last_status) == ("failed", 3, None)
    assert "ConnectError" in dead1.last_error
    # Finished deliveries are kept 30 days; a pending one stays whatever its age.
    assert fleet.store.write_sync(lambda c: webhooks.prune(c, clock() + 29 * 86400)) == 0
    assert fleet.store.write_sync(lambda c: webhooks.prune(c, clock() + 31 * 86400)) == 3
    assert [x.id for x in fleet.store.read_sync(lambda c: webhooks.list_deliveries(c))] == [second.id]


def test_backoff_doubles_up_to_its_cap(fleet) -> None:  # type: ignore[no-untyped-def]
    d = Deliverer(fleet.store, backoff_base=2, backoff_max=600)
    assert [d.backoff(n) for n in range(1, 12)] == [2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]


def test_webhook_urls_events_and_secrets_are_checked(fleet) -> None:  # type: ignore[no-untyped-def]
    for kw, fragment in [({"url": "ftp://x"}, "http:// or https://"), ({"url": "http://"}, "http:// or https://"),
                         ({"url": "http://x", "events": ["alert.maybe"]}, "unknown webhook events"),
                         ({"url": "http://x", "secret": "short"}, "at least 16 characters")]:
        with pytest.raises(Exception, match=fragment):
            fleet.store.write_sync(lambda c, kw=kw: webhooks.create(c, SYSTEM, name="", **kw))


# --- AlertService over the in-process app --------------------------------------------------------

def test_alert_service_crud_and_roles(client, fleet, admin_key, operator_key, viewer_key) -> None:  # type: ignore[no-untyped-def]
    body = {"metric": "cpu_temp", "threshold": 80, "window_seconds": 300, "tags": {"site": "lab"}}
    assert rpc(client, "AlertService", "CreateRule", body, key=viewer_key).status_code == 403
    r = rpc(client, "AlertService", "CreateRule", body, key=operator_key)
    assert r.status_code == 200, r.text
    created = r.json()
    assert (created["name"], created["kind"], created["aggregate"], created["enabled"]) == (
        "cpu_temp avg over 5m > 80", "threshold", "avg", True)
    r = rpc(client, "AlertService", "CreateRule", {**body, "comparison": "=>"}, key=operator_key)
    assert r.status_code == 400 and "comparison must be one of" in r.json()["message"]
    r = rpc(client, "AlertService", "UpdateRule", {"id": created["id"], "threshold": 90, "enabled": False},
            key=operator_key)
    assert (r.json()["threshold"], r.json()["enabled"], r.json()["window_seconds"]) == (90, False, 300)
    rules = rpc(client, "AlertService", "ListRules", {}, key=viewer_key).json()["rules"]
    assert [x["id"] for x in rules] == [created["id"]]
    assert rpc(client, "AlertService", "DeleteRule", {"id": created["id"]}, key=operator_key).status_code == 200
    r = rpc(client, "AlertService", "DeleteRule", {"id": created["id"]}, key=operator_key)
    assert r.status_code == 404 and "fleetd alerts rules list" in r.json()["message"]

    wh = {"url": "https://hooks.example.net/fleet", "name": "ops"}
    assert rpc(client, "AlertService", "CreateWebhook", wh, key=operator_key).status_code == 403
    w = rpc(client, "AlertService", "CreateWebhook", wh, key=admin_key).json()
    assert len(w["secret"]) >= 32 and w["events"] == ["alert.fired", "alert.resolved"]
    listed = rpc(client, "AlertService", "ListWebhooks", {}, key=operator_key).json()["webhooks"]
    assert [x["id"] for x in listed] == [w["id"]] and "secret" not in listed[0]
    assert rpc(client, "AlertService", "ListDeliveries", {}, key=operator_key).json() == {"deliveries": []}
    assert rpc(client, "AlertService", "ListIncidents", {"state": "firing"}, key=viewer_key).json() == {
        "incidents": []}
    r = rpc(client, "AlertService", "ListIncidents", {"state": "open"}, key=viewer_key)
    assert r.status_code == 400 and "firing or resolved" in r.json()["message"]
    assert rpc(client, "AlertService", "DeleteWebhook", {"id": w["id"]}, key=admin_key).status_code == 200
    audit = rpc(client, "AuditService", "List", {}, key=admin_key).json()["entries"]
    assert {"alert_rule.create", "alert_rule.update", "alert_rule.delete", "webhook.create",
            "webhook.delete"} <= {e["action"] for e in audit}


# --- the CLI's condition syntax -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [
    ("cpu_temp > 80", ("cpu_temp", "avg", ">", 80.0)),
    ("max(cpu_temp)>=95.5", ("cpu_temp", "max", ">=", 95.5)),
    (" min( battery ) < -3.4e0 ", ("battery", "min", "<", -3.4)),
    ("net.rx <= .5", ("net.rx", "avg", "<=", 0.5)),
])
def test_conditions_parse(text: str, want: tuple[Any, ...]) -> None:
    got = parse_condition(text)
    assert (got["metric"], got["aggregate"], got["comparison"], got["threshold"]) == want


@pytest.mark.parametrize(("args", "fragment"), [
    (("cpu_temp == 80", None, "5m"), "cannot read condition"),
    (("p99(cpu) > 1", None, "5m"), "cannot read condition"),
    (("cpu > 1", "cpu", "5m"), "not both"),
    ((None, None, "5m"), "give a condition"),
    (("cpu > 1", None, "five minutes"), "cannot read duration"),
])
def test_bad_conditions_say_what_to_write(args: tuple[Any, ...], fragment: str) -> None:
    with pytest.raises(Exception, match=fragment):
        rule_body(*args, None, None, None)
