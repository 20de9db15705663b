"""os-image end to end: a real server, real agent processes (``fleet-agent run``) and Debian's RAUC on the test
board of tests/agent/rauc_board.py. The agent's reboot command leaves a marker; the test then kills the agent,
boots the board and starts the agent again. The new slot is confirmed only after that agent has checked in with
the server; an agent that cannot reach the server (FLEET_AGENT_SERVER pointing nowhere, as a new OS with a broken
network would) gives the slot up when its trial window ends, and the action ends rolled_back in the old slot."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.rauc_board import Board, tools_missing
from tests.e2e.server import ServerProcess

from .e2e_helpers import PYTHON, ROOT, Admin, AgentProcess, agent_env, wait_for

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(bool(tools_missing()), reason=f"needs {tools_missing()} (.ci/run installs them)")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("osimage") / "data").start()
    yield s
    s.stop()


def test_rauc_update_confirmed_after_check_in_and_rolled_back_when_the_server_is_never_reached(
        server: ServerProcess, tmp_path: Path) -> None:
    admin = Admin(server)
    board = Board(tmp_path / "board")
    state = tmp_path / "agent"
    marker = tmp_path / "reboot-requested"
    token = admin.token(description="os-image")["token"]
    p = subprocess.run([PYTHON, "-m", "fleet_agent", "enroll", "--state-dir", str(state), "--server", server.url,
                        "--hardware-id", "os-image-board", "--json"], capture_output=True, text=True, timeout=60,
                       env=agent_env(FLEET_AGENT_TOKEN=token, PYTHONPATH=str(ROOT / "agent")))
    assert p.returncode == 0, p.stderr
    device = str(json.loads(p.stdout)["device_id"])
    logs: list[Path] = []

    def start(**extra: str) -> AgentProcess:
        logs.append(tmp_path / f"agent-{len(logs)}.log")
        return AgentProcess([PYTHON, "-m", "fleet_agent", "run", "--state-dir", str(state)], logs[-1], agent_env(
            PYTHONPATH=str(ROOT / "agent"), FLEET_AGENT_POLL_INTERVAL="0.5", FLEET_AGENT_REBOOT_CMD=f"touch {marker}",
            **board.env, **extra))

    agent = start()
    try:
        device_type = admin.device(device)["device_type"]
        for version, image in (("2.0.0", b"os two\n" * 500), ("3.0.0", b"os three\n" * 500)):
            bundle = tmp_path / f"os-{version}.raucb"
            bundle.write_bytes(board.bundle(version, image))
            admin.push(bundle, "os", version, device_type, "--module", "os-image", "--meta",
                       f"trial_seconds={60 if version == '2.0.0' else 2}")
        # 2.0.0: installed, reboot, the new agent checks in: confirmed.
        action = admin.deploy(device, "os@2.0.0")
        wait_for("the agent to ask for a reboot", marker.exists, 60, log=agent.log)
        agent.stop()
        marker.unlink()
        assert board.boot() == "B"
        agent = start()
        done = admin.wait_action(device, action, {"succeeded"}, 60, log=agent.log)
        assert done["message"] == "os 2.0.0 is installed by the os-image module"
        assert board.state("B") == "good" and board.booted() == "B"

        # 3.0.0: the new slot's agent never reaches the server: rolled back to 2.0.0's slot.
        action = admin.deploy(device, "os@3.0.0")
        wait_for("the agent to ask for a reboot", marker.exists, 60, log=agent.log)
        agent.stop()
        marker.unlink()
        assert board.boot() == "A"
        agent = start(FLEET_AGENT_SERVER="https://127.0.0.1:9")  # nothing listens there
        wait_for("the trial window to end in a reboot", marker.exists, 30, log=agent.log)
        agent.stop()
        assert board.state("A") == "bad" and board.primary() == "B"
        assert board.boot() == "B"
        agent = start()
        done = admin.wait_action(device, action, {"rolled_back"}, 60, log=agent.log)
        assert "did not reach the server within its trial window (2.0 s)" in done["message"], done
        assert "rolled back to version 2.0.0" in done["message"], done
        assert board.state("B") == "good" and board.booted() == "B"
    finally:
        agent.stop()
        board.close()
