"""MQTT costs nothing when off: a server without mqtt_url imports neither aiomqtt, paho nor fleetd.mqtt; with it,
the MQTT part is in the Fleet's parts. (aiomqtt and paho cost about 35 ms and 5 MiB of RSS when on, docs/mqtt.md.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("mqtt_url", ["", "mqtts://127.0.0.1:1"])
def test_the_server_imports_mqtt_only_with_a_broker(tmp_path: Path, mqtt_url: str) -> None:
    code = f"""
import sys
from fleetd.app import asgi_app
from fleetd.core.config import load_settings
from fleetd.fleet import Fleet
fleet = Fleet(load_settings({{"data_dir": {str(tmp_path / "data")!r}, "mdns": False, "mqtt_url": {mqtt_url!r}}}, None))
asgi_app(fleet)
print([p.name for p in fleet.parts if p.name == "mqtt"])
fleet.close()
print(sorted({{m.partition(".")[0] for m in sys.modules if m.partition(".")[0] in ("aiomqtt", "paho")}}
             | {{m for m in sys.modules if m.startswith("fleetd.mqtt")}}))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    parts, modules = p.stdout.splitlines()
    if mqtt_url:
        assert parts == "['mqtt']" and "aiomqtt" in modules and "paho" in modules
    else:
        assert (parts, modules) == ("[]", "[]")


@pytest.mark.parametrize("mqtt", [False, True])
def test_the_simulator_imports_mqtt_only_with_the_flag(mqtt: bool) -> None:
    code = f"""
import asyncio, sys
from fleetd.cli.sim_engine import Engine, SimOptions, SimState
from fleetd.cli.sim_pacing import Pacer

async def main():
    opts = SimOptions(server="https://127.0.0.1:1", devices=2, mqtt={mqtt!r})
    state = SimState(None)
    eng = Engine(opts, None, {{n: state.identity(f"sim-{{n}}") for n in (1, 2)}}, Pacer("e"), Pacer("a"), 0.0)
    await eng.http.aclose()
    print(sorted({{type(d).__name__ for d in eng.devices}}),
          sorted({{m.partition(".")[0] for m in sys.modules if m.partition(".")[0] in ("aiomqtt", "paho")}}))
asyncio.run(main())
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    if mqtt:
        assert p.stdout.split() == ["['MqttSimDevice']", "['aiomqtt',", "'paho']"]
    else:
        assert p.stdout.split() == ["['SimDevice']", "[]"]
