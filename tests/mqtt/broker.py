"""A mosquitto started with exactly what ``fleetd mqtt broker-config`` prints, and its command-line clients with
a client certificate."""

from __future__ import annotations

import getpass
import subprocess
from collections.abc import Sequence
from pathlib import Path

from typer.testing import CliRunner

from fleetd.cli import app
from tests.support.services import Mosquitto


def broker_for(data_dir: Path) -> Mosquitto:
    """A broker (not started: use it as a context manager) configured by broker-config for ``data_dir``'s fleet."""
    def config(where: Path, port: int) -> str:
        out = CliRunner().invoke(app, ["mqtt", "broker-config", "--dir", str(where / "fleetd"), "--listen",
                                       f"127.0.0.1:{port}", "--name", "localhost", "--name", "127.0.0.1",
                                       "--user", getpass.getuser(), "--data-dir", str(data_dir)])
        assert out.exit_code == 0, out.output
        return out.stdout
    return Mosquitto(config=config)


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
