"""The MQTT test modules' shared setup: per module, a data dir with the fleet's keys, Debian's mosquitto started with
broker-config's configuration for it, and `fleetd serve --mqtt` on that broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.core import pki
from tests.agent.e2e_helpers import Admin
from tests.e2e.server import ServerProcess
from tests.mqtt.broker import broker_for
from tests.support.services import Mosquitto


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
