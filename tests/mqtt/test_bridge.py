"""fleetd serve --mqtt against Debian's mosquitto started with broker-config's configuration: check-ins, status
reports and telemetry from a device's certificate handled like the Connect API's, new actions published the
moment they are made, telemetry redeliveries stored once, and messages sent while fleetd or the broker was away
handled once both are back."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetd.mqtt import broker_config, revocation
from tests.agent.e2e_helpers import Admin, wait_for
from tests.e2e.server import ServerProcess
from tests.mqtt.broker import MqttDevice, issued_certificate, pub, sub, tls_args
from tests.support.devices_helper import TestDevice
from tests.support.services import Mosquitto

BATCHES_ACROSS_RESTART = 150


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


def test_the_cli_and_api_show_how_a_device_connects_and_its_certificate_expiry(
        dev: MqttDevice, admin: Admin, server: ServerProcess, device: tuple[str, Path, Path]) -> None:
    from cryptography import x509
    from typer.testing import CliRunner

    from fleetd.cli import app

    device_id, cert, _ = device
    with server.client() as c:  # a device that only polls over HTTPS
        https_only = TestDevice(c)
        assert https_only.enroll(admin.token()["token"]).status_code == 200
        assert https_only.authenticate().status_code == 200 and https_only.call("CheckIn", {}).status_code == 200
    dev.publish("checkin", {})
    dev.next("checkin/answer")
    not_after = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
    shown = admin.device(device_id)
    assert shown["transport"] == "mqtt" and shown["certificate_expires"] == not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    listed = {d["id"]: d for d in admin.devices()}
    assert listed[device_id]["transport"] == "mqtt" and listed[https_only.device_id]["transport"] == "https"
    assert listed[device_id]["certificate_expires"] == shown["certificate_expires"]
    assert listed[https_only.device_id].get("certificate_expires") is None  # none issued
    where = ["--server", server.url, "--api-key", admin.key, "--ca", server.ca]
    out = CliRunner().invoke(app, ["devices", "list", "--search", device_id, *where], env={"COLUMNS": "250"})
    assert out.exit_code == 0 and "MQTT" in out.output and not_after.strftime("%Y-%m-%d") in out.output, out.output
    out = CliRunner().invoke(app, ["devices", "show", https_only.device_id, *where], env={"COLUMNS": "250"})
    assert out.exit_code == 0 and "HTTPS poll" in out.output, out.output


def test_telemetry_lands_in_queries_and_a_redelivered_batch_counts_once(
        dev: MqttDevice, admin: Admin, server: ServerProcess) -> None:
    batch = {"batch_id": "b-1", "points": [{"name": "temp", "value": 21.5}, {"name": "temp", "value": 22.0}]}
    dev.publish("telemetry", batch)
    dev.publish("telemetry", batch)  # what a QoS 1 redelivery looks like to fleetd
    dev.publish("telemetry", {**batch, "batch_id": "b-2"})
    wait_points(admin, dev.device_id, "temp", 4, server)


def test_a_burst_of_mixed_messages_is_handled_in_order_and_each_batch_stored_once(
        dev: MqttDevice, admin: Admin, server: ServerProcess) -> None:
    """Sent without waiting, so that fleetd takes many at once: every batch sent twice is stored once, a refused
    batch amid them is answered alone, and the action's reports are applied in the order sent (a "succeeded"
    taken before its "installing" would have the later one refused on the errors topic)."""
    aid = admin.call("DeviceAdminService", "CreateAction", {"device_ids": [dev.device_id], "kind": "reboot"})[
        "action_ids"][0]
    sent = []
    for i in range(120):
        if i == 40:
            body: dict[str, Any] = {"action_id": aid, "state": "installing", "progress": 50}
            sent.append(dev.client.publish(f"fleetd/v1/devices/{dev.device_id}/status", json.dumps(body), qos=1))
        if i == 60:
            sent.append(dev.client.publish(f"fleetd/v1/devices/{dev.device_id}/telemetry",
                                           json.dumps({"points": [{"name": "burst", "value": -1}]}), qos=1))
        if i == 41:
            body = {"action_id": aid, "state": "succeeded", "message": "burst done"}
            sent.append(dev.client.publish(f"fleetd/v1/devices/{dev.device_id}/status", json.dumps(body), qos=1))
        batch = {"batch_id": f"burst-{i // 2}", "points": [{"name": "burst", "value": i // 2}]}
        sent.append(dev.client.publish(f"fleetd/v1/devices/{dev.device_id}/telemetry", json.dumps(batch), qos=1))
    for info in sent:
        info.wait_for_publish(10)
    wait_points(admin, dev.device_id, "burst", 60, server)
    assert admin.wait_action(dev.device_id, aid, {"succeeded"}, 10)["message"] == "burst done"
    error = dev.next("errors")
    assert error["topic"] == "telemetry" and "batch_id" in error["message"], error
    with pytest.raises(AssertionError, match="no errors message"):
        dev.next("errors", timeout=1)


def test_a_refused_message_is_answered_on_the_devices_errors_topic(dev: MqttDevice) -> None:
    dev.publish("telemetry", {"points": [{"name": "temp", "value": 1}]})
    error = dev.next("errors")
    assert error["topic"] == "telemetry" and error["code"] == "invalid_argument", error
    assert "batch_id" in error["message"]
    dev.publish("status", {"action_id": "act_nope", "state": "succeeded"})
    error = dev.next("errors")
    assert error["topic"] == "status" and error["code"] == "not_found", error


def test_a_revoked_device_is_refused_by_fleetd_too(
        broker: Mosquitto, server: ServerProcess, admin: Admin, data_dir: Path) -> None:
    """Where the broker lets a revoked device in (one that cannot shut it out: here its role taken away again),
    fleetd refuses its messages while its certificate is still good."""
    with server.client() as c:
        d = TestDevice(c)
        assert d.enroll(admin.token()["token"]).status_code == 200
        cert, key = issued_certificate(d, data_dir.parent / "certs")
    admin.call("DeviceAdminService", "RevokeDevice", {"id": d.device_id})
    wait_for("the broker to shut the device out", lambda: "Not authorized" in pub(
        broker, cert, key, f"fleetd/v1/devices/{d.device_id}/status", "{}").stderr, 10)
    control = json.dumps({"commands": [{"command": "removeClientRole", "username": d.device_id,
                                        "rolename": revocation.DENY_ROLE},
                                       {"command": "enableClient", "username": d.device_id}]})
    service = data_dir / "mqtt-client.pem", data_dir / "mqtt-client.key"
    done = subprocess.run(["mosquitto_rr", *tls_args(broker, *service),
                           "-t", revocation.CONTROL, "-e", revocation.RESPONSE, "-m", control, "-W", "10"],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0 and "error" not in done.stdout, (done.stdout, done.stderr)
    with MqttDevice(broker, d.device_id, cert, key) as dev:
        dev.publish("checkin", {})
        leaf, error = dev.inbox.get(timeout=10)  # the first message back: no check-in answer before it
        assert leaf == "errors" and error["topic"] == "checkin" and error["code"] == "permission_denied", error


def test_a_revoked_device_is_disconnected_at_once_and_shut_out(
        broker: Mosquitto, server: ServerProcess, admin: Admin, data_dir: Path) -> None:
    """fleetd kicks it through the broker's dynamic security plugin; what it reconnects with can neither publish
    nor subscribe; and once the broker has reloaded the CRL (SIGHUP: what the operator's CRL refresh does, docs/
    mqtt.md), its certificate is refused at the handshake."""
    with server.client() as c:
        d = TestDevice(c)
        assert d.enroll(admin.token()["token"]).status_code == 200
        cert, key = issued_certificate(d, data_dir.parent / "certs")
    with MqttDevice(broker, d.device_id, cert, key) as dev:
        gone = threading.Event()
        dev.client.on_disconnect = lambda *_: gone.set()
        dev.client.reconnect_delay_set(60, 60)  # paho's own retry would race the checks below
        revoked = time.monotonic()
        admin.call("DeviceAdminService", "RevokeDevice", {"id": d.device_id})
        assert gone.wait(10), "the revoked device is still connected 10 s later"
        kicked = time.monotonic() - revoked
    assert kicked < 5, f"disconnected {kicked:.2f} s after the revocation"
    topic = f"fleetd/v1/devices/{d.device_id}/status"
    assert "Not authorized" in pub(broker, cert, key, topic, "{}").stderr
    subscribed = sub(broker, cert, key, [f"fleetd/v1/devices/{d.device_id}/actions"], "-d", "-W", "3")
    out, _ = subscribed.communicate(timeout=20)
    assert "Subscribed (mid: 1): 135" in out, out  # 0x87: not authorized
    with server.client() as c:
        (broker.dir / "fleetd" / "crl.pem").write_bytes(c.get("/v1/crl.pem").content)  # the operator's refresh
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)
    verify_failures = broker.log_path.read_text().count("certificate verify failed")

    def refused() -> bool:  # at the TLS handshake now: the client sees the connection end, the broker says why
        done = pub(broker, cert, key, topic, "{}")
        return done.returncode != 0 and "Not authorized" not in done.stderr and \
            broker.log_path.read_text().count("certificate verify failed") > verify_failures
    wait_for("the broker to refuse the revoked certificate", refused, 10, log=lambda: broker.log_path.read_text())


def test_a_broker_that_lost_its_plugin_state_has_revoked_devices_shut_out_again(
        broker: Mosquitto, server: ServerProcess, admin: Admin, data_dir: Path) -> None:
    """fleetd sends every revoked device (one with a revoked certificate not yet expired) again when it connects."""
    with server.client() as c:
        d = TestDevice(c)
        assert d.enroll(admin.token()["token"]).status_code == 200
        cert, key = issued_certificate(d, data_dir.parent / "certs")
    topic = f"fleetd/v1/devices/{d.device_id}/status"
    admin.call("DeviceAdminService", "RevokeDevice", {"id": d.device_id})
    wait_for("the broker to shut the device out", lambda: "Not authorized" in pub(broker, cert, key, topic,
                                                                                   "{}").stderr, 10)
    with broker.down():  # its plugin state lost: started again with the file broker-config writes
        (broker.dir / "fleetd" / "data" / broker_config.DYNSEC_FILE).write_text(json.dumps(revocation.plugin_config()))
    wait_for("fleetd to shut the device out again", lambda: "Not authorized" in pub(broker, cert, key, topic,
                                                                                    "{}").stderr, 30)


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


