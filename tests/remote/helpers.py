"""Helpers of the remote-access end-to-end tests (tests/remote, tests/ui): a real agent with its channel."""

from __future__ import annotations

import getpass
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.agent.e2e_helpers import PYTHON, ROOT, Admin, AgentProcess, agent_env, wait_for
from tests.e2e.server import ServerProcess

# Terminals run as the user running the tests (root in CI; another user on a laptop): agent.conf says so.
ME = getpass.getuser()
ALLOWED = f'remote_access = true\nremote_user = "{ME}"\n'


@dataclass
class Device:
    id: str
    agent: AgentProcess
    state_dir: Path


def enroll_and_run(server: ServerProcess, admin: Admin, where: Path, conf: str | None,
                   poll_interval: str = "5") -> Device:
    state_dir = where / "state"
    token = admin.token(description="remote")["token"]
    p = subprocess.run([PYTHON, "-m", "fleet_agent", "enroll", "--state-dir", str(state_dir), "--server", server.url,
                        "--hardware-id", f"remote-{where.name}", "--json"], capture_output=True, text=True, timeout=60,
                       env=agent_env(FLEET_AGENT_TOKEN=token, PYTHONPATH=str(ROOT / "agent")))
    assert p.returncode == 0, p.stderr
    if conf is not None:
        (state_dir / "agent.conf").write_text(conf)
    agent = AgentProcess([PYTHON, "-m", "fleet_agent", "run", "--state-dir", str(state_dir)], where / "agent.log",
                         agent_env(PYTHONPATH=str(ROOT / "agent"), FLEET_AGENT_POLL_INTERVAL=poll_interval,
                                   FLEET_AGENT_MAX_BACKOFF="1"))
    return Device(json.loads(p.stdout)["device_id"], agent, state_dir)


def ask(server: ServerProcess, key: str, device_id: str, **body: Any) -> httpx.Response:
    with server.client(key) as c:
        return c.post("/v1/remote/sessions", json={"device_id": device_id, **body})


def wait_channel(server: ServerProcess, admin: Admin, d: Device) -> None:
    def up() -> bool:
        r = ask(server, admin.key, d.id)
        assert r.status_code in (200, 400), r.text
        return r.status_code == 200

    wait_for("the device's remote-access channel", up, 20, 0.1, d.agent.log)


