"""fleetd serve --mqtt against Debian's mosquitto started with broker-config's configuration: check-ins, status
reports and telemetry from a device's certificate handled like the Connect API's, new actions published the
moment they are made, telemetry redeliveries stored once, and messages sent while fleetd or the broker was away
handled once both are back."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.core import pki
from tests.agent.e2e_helpers import Admin, wait_for
from tests.e2e.server import ServerProcess
from tests.mqtt.broker import MqttDevice, broker_for, issued_certificate
from tests.support.devices_helper import TestDevice
from tests.support.services import Mosquitto

BATCHES_ACROSS_RESTART = 150


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("mqtt") / "data"
    data.mkdir()
    pki.load_or_create(data)
    return data


@pytest.fixture(scope="module")
def broker(data_dir: Path) -> Iterator[Mosquitto]:
    with broker_for(data_dir) as b:
        yield b


@pytest.fixture(scope="module")
def server(data_dir: Path, broker: Mosquitto) -> Iterator[ServerProcess]:
    s = ServerProcess(data_dir, extra_args=["--mqtt", f"mqtts://localhost:{broker.port}"]).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Admin:
    return Admin(server)


@pytest.fixture(scope="module")
def device(server: ServerProcess, admin: Admin, data_dir: Path) -> tuple[str, Path, Path]:
    """An enrolled, active device and the certificate it asked for."""
    with server.client() as c:
        d = TestDevice(c)
        assert d.enroll(admin.token()["token"]).status_code == 200
        cert, key = issued_certificate(d, data_dir.parent / "certs")
    return d.device_id, cert, key


@pytest.fixture
def dev(broker: Mosquitto, device: tuple[str, Path, Path]) -> Iterator[MqttDevice]:
    with MqttDevice(broker, *device) as d:
        yield d


def connected(admin: Admin) -> bool:
    with admin.server.client(admin.key) as c:
        return "\nfleetd_mqtt_connected 1\n" in c.get("/metrics").text


def points(admin: Admin, device_id: str, metric: str) -> int:
    now = dt.datetime.now(dt.UTC)
    out = admin.call("TelemetryService", "Query", {
        "device": device_id, "metric": metric, "start": (now - dt.timedelta(minutes=10)).isoformat(),
        "end": (now + dt.timedelta(minutes=1)).isoformat(), "max_points": 3600})
    return sum(int(b["count"]) for b in out["points"])


def wait_points(admin: Admin, device_id: str, metric: str, n: int, server: ServerProcess) -> None:
    wait_for(f"{n} points of {metric}", lambda: points(admin, device_id, metric) >= n, 15, log=server.log)
    time.sleep(0.5)  # nothing more comes
    assert points(admin, device_id, metric) == n


def test_a_check_in_over_mqtt_answers_like_the_api_and_names_the_broker(
        dev: MqttDevice, server: ServerProcess, broker: Mosquitto, admin: Admin) -> None:
    wait_for("fleetd connected to the broker", lambda: connected(admin), 15, log=server.log)
    dev.publish("checkin", {"components": [{"name": "app", "version": "1.0.0"}]})
    answer = dev.next("checkin/answer")
    assert answer["status"] == "active" and answer["mqtt_url"] == f"mqtts://localhost:{broker.port}", answer
    wait_for("the component reported", lambda: admin.device(dev.device_id)["components"], 10)
    got = admin.device(dev.device_id)
    assert [(c["name"], c["version"]) for c in got["components"]] == [("app", "1.0.0")]
    assert got["last_addr"] == "127.0.0.1"  # an MQTT check-in shows no address: the enrolment's stays


def test_a_new_action_reaches_the_device_at_once_and_its_report_moves_it(dev: MqttDevice, admin: Admin) -> None:
    made = time.monotonic()
    aid = admin.call("DeviceAdminService", "CreateAction", {"device_ids": [dev.device_id], "kind": "reboot"})[
        "action_ids"][0]
    action = dev.next("actions", timeout=5)
    assert action["id"] == aid and action["kind"] == "reboot", action
    assert time.monotonic() - made < 5
    dev.publish("status", {"action_id": aid, "state": "succeeded", "message": "rebooted"})
    done = admin.wait_action(dev.device_id, aid, {"succeeded"}, 10)
    assert done["message"] == "rebooted"


def test_telemetry_lands_in_queries_and_a_redelivered_batch_counts_once(
        dev: MqttDevice, admin: Admin, server: ServerProcess) -> None:
    batch = {"batch_id": "b-1", "points": [{"name": "temp", "value": 21.5}, {"name": "temp", "value": 22.0}]}
    dev.publish("telemetry", batch)
    dev.publish("telemetry", batch)  # what a QoS 1 redelivery looks like to fleetd
    dev.publish("telemetry", {**batch, "batch_id": "b-2"})
    wait_points(admin, dev.device_id, "temp", 4, server)


def test_a_refused_message_is_answered_on_the_devices_errors_topic(dev: MqttDevice) -> None:
    dev.publish("telemetry", {"points": [{"name": "temp", "value": 1}]})
    error = dev.next("errors")
    assert error["topic"] == "telemetry" and error["code"] == "invalid_argument", error
    assert "batch_id" in error["message"]
    dev.publish("status", {"action_id": "act_nope", "state": "succeeded"})
    error = dev.next("errors")
    assert error["topic"] == "status" and error["code"] == "not_found", error


def test_a_revoked_device_is_refused_while_its_certificate_is_still_good(
        broker: Mosquitto, server: ServerProcess, admin: Admin, data_dir: Path) -> None:
    with server.client() as c:
        d = TestDevice(c)
        assert d.enroll(admin.token()["token"]).status_code == 200
        cert, key = issued_certificate(d, data_dir.parent / "certs")
    admin.call("DeviceAdminService", "RevokeDevice", {"id": d.device_id})
    with MqttDevice(broker, d.device_id, cert, key) as dev:
        dev.publish("checkin", {})
        leaf, error = dev.inbox.get(timeout=10)  # the first message back: no check-in answer before it
        assert leaf == "errors" and error["topic"] == "checkin" and error["code"] == "permission_denied", error


def test_messages_sent_while_fleetd_restarts_are_handled_once(
        broker: Mosquitto, server: ServerProcess, admin: Admin, device: tuple[str, Path, Path]) -> None:
    """A device publishes all along while fleetd stops and starts: what was in flight at the stop, what the broker
    queued for fleetd's session meanwhile and what came after are each stored once."""
    device_id = device[0]
    wait_for("fleetd connected", lambda: connected(admin), 15, log=server.log)
    sent = 0
    with MqttDevice(broker, *device) as dev:
        def publish_all_along() -> None:
            nonlocal sent
            for i in range(BATCHES_ACROSS_RESTART):
                dev.publish("telemetry", {"batch_id": f"away-{i}", "points": [{"name": "away", "value": i}]})
                sent += 1
                time.sleep(0.02)

        publisher = threading.Thread(target=publish_all_along)
        publisher.start()
        wait_for("some sent", lambda: sent >= 10, 10)
        server.stop()
        server.start()
        publisher.join(30)
        assert sent == BATCHES_ACROSS_RESTART
    wait_points(admin, device_id, "away", BATCHES_ACROSS_RESTART, server)


def test_fleetd_and_devices_reconnect_after_the_broker_restarts(
        broker: Mosquitto, server: ServerProcess, admin: Admin, device: tuple[str, Path, Path]) -> None:
    wait_for("fleetd connected", lambda: connected(admin), 15, log=server.log)
    broker.restart()
    wait_for("fleetd connected again", lambda: connected(admin), 30, log=server.log)
    with MqttDevice(broker, *device) as dev:
        dev.publish("checkin", {})
        assert dev.next("checkin/answer")["status"] == "active"


