"""A mosquitto started with exactly what ``fleetd mqtt broker-config`` prints, and its command-line clients with
a client certificate."""

from __future__ import annotations

import getpass
import json
import queue
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from fleetd.cli import app
from fleetd.core import clock, pki
from fleetd.devices import certificates
from tests.support.devices_helper import TestDevice
from tests.support.pki_helper import csr_pem
from tests.support.services import Mosquitto


def broker_for(data_dir: Path, database: str = "") -> Mosquitto:
    """A broker (not started: use it as a context manager) configured by broker-config for ``data_dir``'s fleet
    (its keys in ``database`` when that is a PostgreSQL DSN). Its port is known before it starts."""
    def config(where: Path, port: int) -> str:
        out = CliRunner().invoke(app, ["mqtt", "broker-config", "--dir", str(where / "fleetd"), "--listen",
                                       f"127.0.0.1:{port}", "--name", "localhost", "--name", "127.0.0.1",
                                       "--user", getpass.getuser(), "--data-dir", str(data_dir)],
                                 env={"FLEETD_DATABASE": database})
        assert out.exit_code == 0, out.output
        return out.stdout
    return Mosquitto(config=config)


def _write(out: Path, name: str, cert_pem: str, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{name}.pem", out / f"{name}.key"
    cert_path.write_text(cert_pem)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def issued_certificate(device: TestDevice, out: Path) -> tuple[Path, Path]:
    """An enrolled device's client certificate as the fleet issues it (IssueCertificate, so recorded and revocable),
    for a P-256 key of its own: written to ``out``/<device id>.pem and .key."""
    if not device.token:
        assert device.authenticate().status_code == 200
    key = ec.generate_private_key(ec.SECP256R1())
    r = device.call("IssueCertificate", {"csr": csr_pem(key)})
    assert r.status_code == 200, r.text
    return _write(out, device.device_id, r.json()["certificate"], key)


def unrecorded_certificate(ca: pki.KeyMaterial, device_id: str, out: Path, *, at: float | None = None,
                           days: float = 90) -> tuple[Path, Path]:
    """What IssueCertificate cannot give: a certificate from the fleet's issuing code for any CA (another fleet's,
    for the broker to refuse) or at another time (``at`` in the past: expired), not recorded in any store."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certificates.issue(ca.ca_cert, ca.ca_key, device_id, key.public_key(), days=days,
                              at=clock.now() if at is None else at)
    return _write(out, device_id, certificates.pem(cert), key)


def tls_args(broker: Mosquitto, cert: Path, key: Path) -> list[str]:
    return ["-h", "localhost", "-p", str(broker.port), "--cafile", str(broker.dir / "fleetd" / "ca.pem"),
            "--cert", str(cert), "--key", str(key), "-V", "mqttv5", "-q", "1"]


def pub(broker: Mosquitto, cert: Path, key: Path, topic: str, message: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mosquitto_pub", *tls_args(broker, cert, key), "-t", topic, "-m", message],
                          capture_output=True, text=True, timeout=20)


def sub(broker: Mosquitto, cert: Path, key: Path, topics: Sequence[str], *extra: str) -> subprocess.Popen[str]:
    """mosquitto_sub on ``topics`` printing "topic payload" lines (``-v``)."""
    args = [a for t in topics for a in ("-t", t)]
    return subprocess.Popen(["mosquitto_sub", *tls_args(broker, cert, key), "-v", *args, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class MqttDevice:
    """A device's MQTT client (paho, as the agent uses) with its certificate: ``with MqttDevice(...) as d:`` connects
    and subscribes to its downlink topics; what arrives waits in ``d.inbox`` as (leaf, JSON)."""

    def __init__(self, broker: Mosquitto, device_id: str, cert: Path, key: Path, *, client_id: str = "",
                 clean: bool = True) -> None:
        import paho.mqtt.client as paho

        self.device_id = device_id
        self.inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{device_id}",
                                  protocol=paho.MQTTv5)
        self.client.tls_set(ca_certs=str(broker.dir / "fleetd" / "ca.pem"), certfile=str(cert), keyfile=str(key))
        self.client.on_message = lambda _c, _u, m: self.inbox.put(
            (m.topic.removeprefix(f"fleetd/v1/devices/{device_id}/"), json.loads(m.payload)))
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_connect = lambda c, *_: c.subscribe([(f"fleetd/v1/devices/{device_id}/{leaf}", 1)
                                                            for leaf in ("actions", "checkin/answer", "errors")])
        self._broker, self._clean = broker, clean

    def __enter__(self) -> MqttDevice:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0 if self._clean else 3600
        self.client.connect("localhost", self._broker.port, clean_start=self._clean, properties=props)
        self.client.loop_start()
        assert self._subscribed.wait(10), "not subscribed within 10 s"
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, leaf: str, body: Any) -> None:
        info = self.client.publish(f"fleetd/v1/devices/{self.device_id}/{leaf}", json.dumps(body), qos=1)
        info.wait_for_publish(10)

    def next(self, leaf: str, timeout: float = 10) -> Any:
        """The next message on ``leaf`` (others before it are dropped)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                got, body = self.inbox.get(timeout=left)
            except queue.Empty:
                break
            if got == leaf:
                return body
        raise AssertionError(f"no {leaf} message for {self.device_id} within {timeout} s")
