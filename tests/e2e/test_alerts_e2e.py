"""Alerts end to end: a real server, a device pushing telemetry, a real webhook receiver on loopback."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from tests.support.devices_helper import TestDevice
from tests.support.webhook_receiver import Receiver

from .server import ServerProcess, run_cli


def cli_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(run_cli(*args, "--json", env=env).stdout)


def push(d: TestDevice, *values: float) -> None:
    r = d.call("PushTelemetry", {"points": [{"name": "temp", "value": v} for v in values]})
    assert r.status_code == 200 and r.json()["accepted"] == len(values), r.text


def test_one_signed_webhook_per_incident_fired_and_resolved(server: ServerProcess, admin_key: str) -> None:
    env = {"FLEETD_SERVER": server.url, "FLEETD_API_KEY": admin_key, "FLEETD_CA": server.ca, "COLUMNS": "200"}
    site = f"alerts-{secrets.token_hex(3)}"
    with Receiver() as rx:
        hook = cli_json(env, "alerts", "webhooks", "create", rx.url, "--name", "e2e-receiver")
        rule = cli_json(env, "alerts", "rules", "create", "temp > 80", "--window", "2m", "--tag", f"site={site}")
        assert (rule["metric"], rule["comparison"], rule["threshold"], rule["tags"]) == ("temp", ">", 80, {
            "site": site})
        token = server.rpc("EnrollmentService", "CreateToken", {"tags": {"site": site}}, admin_key).json()["token"]
        try:
            with server.client() as http:
                d = TestDevice(http, hardware_id=f"alert-{secrets.token_hex(3)}")
                assert d.enroll(token).status_code == 200 and d.authenticate().status_code == 200
                push(d, 20)
                time.sleep(1.5)
                assert rx.received == []  # avg 20: nothing to say
                push(d, 150, 150)  # avg 106.7
                fired = rx.wait_for(1)
                push(d, 150, 150, 150)  # still hot: the same incident, no second webhook
                time.sleep(2)
                assert len(rx.received) == 1
                push(d, *[0.0] * 12)  # avg 1070 / 18 = 59.4
                got = rx.wait_for(2)
                time.sleep(1.5)
                assert len(rx.received) == 2
                log = cli_json(env, "alerts", "deliveries", "--webhook", hook["id"])
                assert [(x["event"], x["state"], x["attempts"], x["last_status"]) for x in log] == [
                    ("alert.resolved", "delivered", 1, 200), ("alert.fired", "delivered", 1, 200)]

                series = cli_json(env, "telemetry", "query", d.device_id, "temp", "--since", "10m",
                                  "--max-points", "1000")
                assert series["resolution"] == "raw" and sum(p["count"] for p in series["points"]) == 18
                assert max(p["max"] for p in series["points"]) == 150
        finally:
            assert "deleted" in run_cli("alerts", "rules", "delete", rule["id"], env=env).stdout
            assert server.rpc("AlertService", "DeleteWebhook", {"id": hook["id"]}, admin_key).status_code == 200

    first, second = got
    assert fired[0].body == first.body
    for req, event in ((first, "alert.fired"), (second, "alert.resolved")):
        assert req.signed_with(hook["secret"]), req.headers
        assert req.headers["x-fleetd-event"] == event and req.json["event"] == event
        assert req.headers["content-type"] == "application/json"
        assert req.json["rule"]["id"] == rule["id"] and req.json["incident"]["device_id"] == d.device_id
    assert first.json["incident"]["id"] == second.json["incident"]["id"]
    assert first.json["incident"]["state"] == "firing" and first.json["incident"]["value"] > 80
    assert second.json["incident"]["state"] == "resolved" and second.json["incident"]["resolution"] == "recovered"

    incidents = cli_json(env, "alerts", "list", "--device", d.device_id)
    assert [(i["state"], i["rule_id"]) for i in incidents] == [("resolved", rule["id"])]
    # The webhook is gone now, and its log with it; the incident stays in the history.
    assert cli_json(env, "alerts", "deliveries", "--webhook", hook["id"]) == []
