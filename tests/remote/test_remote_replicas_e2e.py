"""Two `fleetd serve` replicas on one PostgreSQL database: sessions are not relayed between replicas (yet), so a
session asked of the replica that does not hold the device's channel fails with an error that says so, while the
replica that holds it grants sessions (docs/remote-access.md, "Several replicas")."""

from __future__ import annotations

import getpass
import json
import subprocess
from pathlib import Path

import pytest

from tests.agent.e2e_helpers import PYTHON, ROOT, Admin, AgentProcess, agent_env, wait_for
from tests.e2e.server import ServerProcess, fleetd_cmd

pytestmark = pytest.mark.e2e


def test_a_session_on_the_other_replica_fails_clearly(postgres_dsn: str, tmp_path: Path) -> None:
    env = {"FLEETD_REMOTE_ACCESS": "true"}
    r1 = ServerProcess(tmp_path / "r1", database=postgres_dsn, env=env).start(timeout=60)
    r2 = ServerProcess(tmp_path / "r2", database=postgres_dsn, env=env)
    agent = None
    try:
        r2.start(timeout=60)
        admin = Admin(r1)
        state = tmp_path / "state"
        token = admin.token(description="replicas")["token"]
        p = subprocess.run([PYTHON, "-m", "fleet_agent", "enroll", "--state-dir", str(state), "--server", r1.url,
                            "--hardware-id", "remote-replicas", "--json"], capture_output=True, text=True,
                           timeout=60, env=agent_env(FLEET_AGENT_TOKEN=token, PYTHONPATH=str(ROOT / "agent")))
        assert p.returncode == 0, p.stderr
        device_id = json.loads(p.stdout)["device_id"]
        (state / "agent.conf").write_text(f'remote_access = true\nremote_user = "{getpass.getuser()}"\n')
        agent = AgentProcess([PYTHON, "-m", "fleet_agent", "run", "--state-dir", str(state)], tmp_path / "agent.log",
                             agent_env(PYTHONPATH=str(ROOT / "agent"), FLEET_AGENT_POLL_INTERVAL="5"))

        def channel_on_r1() -> bool:
            with r1.client(admin.key) as c:
                return c.post("/v1/remote/sessions", json={"device_id": device_id}).status_code == 200

        # r1 grants sessions (the e2e tests of test_remote_e2e.py run them through such a grant)
        wait_for("the device's channel to the replica it enrolled with", channel_on_r1, 30, 0.1, agent.log)
        other = subprocess.run([*fleetd_cmd(), "devices", "shell", device_id, "--", "echo on-the-device"],
                               capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, env={
                                   **agent_env(), "FLEETD_SERVER": r2.url, "FLEETD_API_KEY": admin.key,
                                   "FLEETD_CA": r1.ca})
        assert other.returncode == 1
        said = " ".join(other.stderr.split())
        assert "no remote-access channel open to this server" in said
        assert "sessions are not relayed between replicas yet" in said
    finally:
        if agent is not None:
            agent.stop()
        r2.stop()
        r1.stop()
