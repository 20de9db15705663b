"""`fleetd devices logs` with a real agent process: the app's log lines go through the agent's report queue and the
server into the CLI's output; with log upload turned off on the device, the CLI says which option to change."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import ServerProcess, run_cli

from .e2e_helpers import PYTHON, ROOT, Admin, AgentProcess, agent_env, wait_for
from .test_e2e_install import kill_apps

pytestmark = pytest.mark.e2e

CHATTY_APP = """#!/bin/sh
i=1
while [ $i -le 300 ]; do echo "chatty line $i"; i=$((i + 1)); done
while :; do sleep 1; done
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("logs") / "data").start()
    yield s
    s.stop()


def start_agent(state_dir: Path, log: Path, **env: str) -> AgentProcess:
    return AgentProcess([PYTHON, "-m", "fleet_agent", "run", "--state-dir", str(state_dir)], log, agent_env(
        PYTHONPATH=str(ROOT / "agent"), FLEET_AGENT_POLL_INTERVAL="1", FLEET_AGENT_SUPERVISOR="builtin", **env))


def test_an_apps_log_from_a_real_agent(server: ServerProcess, tmp_path: Path) -> None:
    admin = Admin(server)
    state_dir = tmp_path / "state"
    token = admin.token(description="logs")["token"]
    p = subprocess.run([PYTHON, "-m", "fleet_agent", "enroll", "--state-dir", str(state_dir), "--server", server.url,
                        "--json"], capture_output=True, text=True, timeout=60,
                       env=agent_env(FLEET_AGENT_TOKEN=token, PYTHONPATH=str(ROOT / "agent")))
    assert p.returncode == 0, p.stderr
    device_id = json.loads(p.stdout)["device_id"]
    cli_env = {"FLEETD_SERVER": server.url, "FLEETD_API_KEY": admin.key, "FLEETD_CA": server.ca}

    agent = start_agent(state_dir, tmp_path / "agent.log")
    try:
        device = wait_for("a check-in", lambda: (d := admin.device(device_id))["online"] and d, 20, log=agent.log)
        app = tmp_path / "chatty.sh"
        app.write_text(CHATTY_APP)
        admin.push(app, "chatty", "1.0.0", device["device_type"], "--health-grace", "1")
        admin.wait_action(device_id, admin.deploy(device_id, "chatty@1.0.0"), {"succeeded"}, 30, log=agent.log)
        wait_for("the app's lines in its log", lambda: "chatty line 300\n" in (
            state_dir / "apps" / "chatty" / "log").read_text(errors="replace"), 10)
        wait_for("the device to report chatty", lambda: [
            c for c in admin.device(device_id)["components"] if c["name"] == "chatty"], 15)

        p = run_cli("devices", "logs", device["name"], "--app", "chatty", "--lines", "4", env=cli_env, timeout=60)
        assert p.stdout.splitlines() == [f"chatty line {i}" for i in range(297, 301)], p.stdout + p.stderr
        assert "4 line(s) of chatty" in p.stderr
    finally:
        agent.stop()
        kill_apps(state_dir)

    # The device's own configuration turns it off: the action fails, and says what to change.
    agent = start_agent(state_dir, tmp_path / "agent-off.log", FLEET_AGENT_ALLOW_LOG_UPLOAD="0")
    try:
        p = run_cli("devices", "logs", device_id, "--app", "chatty", env=cli_env, check=False, timeout=60)
        assert p.returncode == 1 and p.stdout == "", p.stdout
        err = " ".join(p.stderr.split())
        assert "did not send the log of chatty" in err and "FLEET_AGENT_ALLOW_LOG_UPLOAD=0" in err, err
        assert "set FLEET_AGENT_ALLOW_LOG_UPLOAD=1" in err and "[failed]" in err, err
    finally:
        agent.stop()
        kill_apps(state_dir)
