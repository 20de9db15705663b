"""The agent updates itself, for real: a new zipapp deployed as an ``agent`` artifact takes over after a
trial run, and a broken one is reverted by the launcher, with the old agent reporting ``rolled_back``.

The agent runs as it does under systemd: through ``fleet-agent-launcher.py``.
The new versions are built from this very source with only the version
string changed (and, for the broken one, a package that dies on import).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import ServerProcess

from .e2e_helpers import AGENT_SRC, PYTHON, Admin, AgentProcess, agent_env, builder, wait_for

pytestmark = pytest.mark.e2e

AGENT_NAME = "fleet-agent"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("selfupdate") / "data").start()
    yield s
    s.stop()


def agent_build(tmp: Path, version: str, broken: bool = False) -> Path:
    """The agent zipapp from this source with ``__version__`` set to ``version``."""
    src = tmp / f"src-{version}" / "fleet_agent"
    shutil.copytree(AGENT_SRC, src, ignore=shutil.ignore_patterns("__pycache__"))
    init = src / "__init__.py"
    text, n = re.subn(r'__version__ = "[^"]*"', f'__version__ = "{version}"', init.read_text())
    assert n == 1, "fleet_agent/__init__.py has no __version__ line to patch"
    if broken:
        text += '\nraise SystemExit("this agent build is broken on purpose")\n'
    init.write_text(text)
    return Path(builder.build(src, tmp / f"out-{version}"))


def test_agent_updates_itself_and_reverts_a_broken_update(server: ServerProcess, tmp_path: Path) -> None:
    admin = Admin(server)
    base = agent_build(tmp_path, "0.1.0")
    launcher = base.parent / builder.LAUNCHER_NAME
    assert launcher.is_file(), "the agent package has no launcher.py"
    state_dir = tmp_path / "state"
    token = admin.token(description="self-update")["token"]
    p = subprocess.run([PYTHON, str(base), "enroll", "--state-dir", str(state_dir), "--server", server.url,
                        "--json"], capture_output=True, text=True, env=agent_env(FLEET_AGENT_TOKEN=token), timeout=60)
    assert p.returncode == 0, p.stderr
    device_id = json.loads(p.stdout)["device_id"]
    admin.call("DeviceAdminService", "UpdateDevice", {"id": device_id, "poll_interval": 5})

    # As the systemd unit runs it.
    agent = AgentProcess([PYTHON, str(launcher), "--state-dir", str(state_dir), "--agent", str(base)],
                         tmp_path / "agent.log", agent_env())
    try:
        device = wait_for("a check-in", lambda: (d := admin.device(device_id))["online"] and d, 20, log=agent.log)
        assert device["inventory"]["agent_version"] == "0.1.0"
        device_type = device["device_type"]

        # A new agent: staged, started on trial by the launcher, confirmed by its first check-in.
        admin.push(agent_build(tmp_path, "0.2.0"), AGENT_NAME, "0.2.0", device_type, "--kind", "agent")
        act = admin.deploy(device_id, f"{AGENT_NAME}@0.2.0")
        done = admin.wait_action(device_id, act, {"succeeded"}, 40, log=agent.log)
        assert "0.2.0" in done["message"]
        assert os.readlink(state_dir / "agent" / "current") == "0.2.0"
        wait_for("0.2.0 in the inventory", lambda: admin.device(device_id)["inventory"].get("agent_version")
                 == "0.2.0", 15, log=agent.log)
        wait_for("the agent as a component", lambda: [
            c for c in admin.device(device_id)["components"] if c["name"] == AGENT_NAME and c["version"] == "0.2.0"],
            15, log=agent.log)

        # A broken agent: it dies at start, the launcher puts 0.2.0 back, and 0.2.0 says what happened.
        admin.push(agent_build(tmp_path, "0.3.0", broken=True), AGENT_NAME, "0.3.0", device_type, "--kind", "agent")
        act2 = admin.deploy(device_id, f"{AGENT_NAME}@0.3.0")
        undone = admin.wait_action(device_id, act2, {"rolled_back"}, 40, log=agent.log)
        assert "0.3.0" in undone["message"] and "exited" in undone["message"], undone["message"]
        assert os.readlink(state_dir / "agent" / "current") == "0.2.0"
        assert not (state_dir / "agent" / "next").exists()
        device = wait_for("a check-in after the rollback", lambda: (
            d := admin.device(device_id))["online"] and d["inventory"].get("agent_version") == "0.2.0" and d, 15,
            log=agent.log)
        assert [c["version"] for c in device["components"] if c["name"] == AGENT_NAME] == ["0.2.0"]
        assert agent.proc.poll() is None, "the launcher exited:\n" + agent.log()
        assert "broken on purpose" in agent.log()
    finally:
        agent.stop()
