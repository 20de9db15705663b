"""`fleetd simulate --mqtt` end to end against Debian's mosquitto (broker-config's configuration) and `fleetd serve
--mqtt`: the simulated devices get their certificates, connect to the broker, check in and send telemetry through
it, and a deploy reaches them long before their 60 s poll would have brought it."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.agent.e2e_helpers import Admin, wait_for
from tests.e2e.server import ServerProcess, fleetd_cmd

DEVICES = 24


def stored_points(server: ServerProcess, prefix: str) -> int:
    conn = sqlite3.connect(f"file:{server.data_dir / 'fleetd.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM telemetry t JOIN devices d ON d.id = t.device_id "
                                "WHERE d.hardware_id LIKE ?", (f"{prefix}-%",)).fetchone()[0])
    finally:
        conn.close()


def sim_devices(admin: Admin, prefix: str) -> list[dict[str, Any]]:
    listed = admin.call("DeviceAdminService", "ListDevices", {"search": f"{prefix}-", "limit": 1000})["devices"]
    return [d for d in listed if d["hardware_id"].startswith(f"{prefix}-")]


def test_simulated_devices_check_in_over_mqtt_and_a_deploy_reaches_them_at_once(
        server: ServerProcess, admin: Admin, tmp_path: Path) -> None:
    artifact = tmp_path / "simapp.bin"
    artifact.write_bytes(b"simulated app over MQTT\n" * 1000)
    admin.push(artifact, "mqapp", "1.0.0", "sim")
    token = admin.token(uses=0, expires_in=3600)["token"]
    # No --interval: the server's 60 s poll, so only the broker can bring the deploy within the test's ceiling.
    sim = subprocess.Popen([*fleetd_cmd(), "simulate", "--server", server.url, "--ca", server.ca, "--token", token,
                            "--devices", str(DEVICES), "--prefix", "mq", "--mqtt", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def all_on_mqtt() -> list[dict[str, Any]] | None:
            found = sim_devices(admin, "mq")
            return found if len(found) == DEVICES and all(d["transport"] == "mqtt" for d in found) else None

        devices = wait_for(f"{DEVICES} simulated devices checked in over MQTT", all_on_mqtt, 60, log=server.log)
        assert all(d["status"] == "active" and d["certificate_expires"] for d in devices), devices
        made = time.monotonic()
        ids = admin.call("DeviceAdminService", "Deploy", {"device_ids": [d["id"] for d in devices],
                                                          "artifact": "mqapp@1.0.0"})["action_ids"]
        assert len(ids) == DEVICES

        def all_installed() -> bool:
            return all(any(c["name"] == "mqapp" and c["version"] == "1.0.0" for c in d["components"])
                       for d in (admin.device(d["id"]) for d in devices))

        # The reports go over MQTT; the new version shows after each device's check-in, which follows at once.
        wait_for("the deploy installed on every device", all_installed, 30, log=server.log)
        assert time.monotonic() - made < 30  # against a 60 s poll
    finally:
        sim.send_signal(signal.SIGINT)
        out, err = sim.communicate(timeout=30)
    assert sim.returncode == 0, f"simulate exited {sim.returncode}\nstdout:{out}\nstderr:{err}"
    summary = json.loads(out)
    m = summary["mqtt"]
    assert summary["enrolled"] == summary["active"] == DEVICES and summary["errors"] == 0, summary
    assert m["devices_connected"] == DEVICES and m["connections"] == DEVICES, m
    assert summary["actions_succeeded"] == DEVICES and summary["actions_failed"] == 0, summary
    assert m["actions_over_mqtt"] == m["actions_received"] == DEVICES, m
    assert m["delivery_max_ms"] < 30_000, m
    for action_id, d in zip(ids, devices, strict=True):
        assert admin.action(d["id"], action_id)["state"] == "succeeded"
    # Telemetry through the broker lands in the store, each batch once.
    wait_for("the telemetry stored", lambda: stored_points(server, "mq") >= summary["telemetry_points"], 15)
    assert stored_points(server, "mq") == summary["telemetry_points"] > 0
