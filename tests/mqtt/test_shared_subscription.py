"""Two fleetd replicas on one PostgreSQL database share the MQTT subscription ($share/fleetd/...): the broker
gives each device message to one of them, so every telemetry batch is stored once and both take part; an action
made through either replica reaches the device once (the lease holder publishes it); the broker's configuration
comes from the fleet CA in the database (broker-config with FLEETD_DATABASE)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.e2e_helpers import Admin, wait_for
from tests.e2e.server import ServerProcess
from tests.mqtt.broker import MqttDevice, broker_for, issued_certificate
from tests.mqtt.test_bridge import points
from tests.support.devices_helper import TestDevice
from tests.support.services import Mosquitto, PostgresServer

pytestmark = pytest.mark.e2e

BATCHES = 40


@pytest.fixture(scope="module")
def replicas(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[Mosquitto, list[ServerProcess]]]:
    dsn = postgres_server.dsn(postgres_server.create_database())
    base = tmp_path_factory.mktemp("shared")
    broker = broker_for(base / "r1", dsn)
    url = f"mqtts://localhost:{broker.port}"
    servers = [ServerProcess(base / f"r{i}", database=dsn, extra_args=["--mqtt", url],
                             env={"FLEETD_LOG_LEVEL": "info"}) for i in (1, 2)]
    try:
        servers[0].start(timeout=60)  # migrates the database and makes the keys the broker's files come from
        with broker:
            servers[1].start(timeout=60)
            yield broker, servers
    finally:
        for s in servers:
            if s.proc is not None and s.proc.poll() is None:
                s.stop()


def lease_held(server: ServerProcess, key: str) -> bool:
    with server.client(key) as c:
        return re.search(r"^fleetd_fleet_lease_held 1(\.0)?$", c.get("/metrics").text, re.M) is not None


def handled(admin: Admin, server: ServerProcess, topic: str) -> float:
    with server.client(admin.key) as c:
        m = re.search(rf'^fleetd_mqtt_messages_total{{topic="{topic}"}} (\S+)$', c.get("/metrics").text, re.M)
    return float(m[1]) if m else 0.0


def test_two_replicas_share_the_subscription_and_store_each_batch_once(
        replicas: tuple[Mosquitto, list[ServerProcess]], tmp_path: Path) -> None:
    broker, servers = replicas
    admin = Admin(servers[0])
    with servers[0].client() as c:
        d = TestDevice(c)
        assert d.enroll(admin.token()["token"]).status_code == 200
        cert, key = issued_certificate(d, tmp_path)
    for s in servers:
        wait_for("both replicas on the broker", lambda s=s: "connected to the MQTT broker" in s.log(), 20, log=s.log)
    wait_for("a replica holding the fleet lease", lambda: sum(map(lease_held, servers, [admin.key] * 2)) == 1, 20)
    with MqttDevice(broker, d.device_id, cert, key) as dev:
        for i in range(BATCHES):
            dev.publish("telemetry", {"batch_id": f"s-{i}", "points": [{"name": "shared", "value": i}]})
        for via in servers:  # each replica runs the other's effects: only the lease holder publishes
            aid = Admin(via, admin.key).call("DeviceAdminService", "CreateAction", {
                "device_ids": [d.device_id], "kind": "reboot"})["action_ids"][0]
            assert dev.next("actions")["id"] == aid
            dev.publish("status", {"action_id": aid, "state": "succeeded"})
        time.sleep(1)
        assert [leaf for leaf, _ in list(dev.inbox.queue)] == []  # no second copy of either
    wait_for(f"{BATCHES} points", lambda: points(admin, d.device_id, "shared") >= BATCHES, 20)
    assert points(admin, d.device_id, "shared") == BATCHES
    each = [handled(admin, s, "telemetry") for s in servers]
    assert sum(each) == BATCHES and all(n > 0 for n in each), each
    # Each message reached one replica: none saw a batch the other had stored (the ids would have hidden it).
    assert [handled(admin, s, "duplicate") for s in servers] == [0, 0]
