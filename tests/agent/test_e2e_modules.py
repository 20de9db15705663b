"""Update modules for real: a real server on loopback, two real agent processes (one with an external v3 module
in its modules directory, one without), artifacts pushed with `fleetd artifacts push --module … --meta …`.

The file module installs; the v3 shell module (tests/agent/v3_module.py) installs, fails an ArtifactInstall and
is rolled back, and asks for a reboot that takes its agent down (kill -9, as a reboot would) — the restarted
agent verifies, commits and reports. The server refuses a deploy and a rollout to the device that lacks the
module, saying which device and what to do."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_agent.modules import ModuleName, os_image_tool
from tests.e2e.server import ServerProcess, run_cli

from .e2e_helpers import PYTHON, ROOT, Admin, AgentProcess, agent_env, wait_for
from .v3_module import calls, write_module

BUILTIN = [m.value for m in ModuleName]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("modules") / "data").start()
    yield s
    s.stop()


def enroll(admin: Admin, server: ServerProcess, state_dir: Path) -> str:
    token = admin.token(description="modules")["token"]
    p = subprocess.run([PYTHON, "-m", "fleet_agent", "enroll", "--state-dir", str(state_dir), "--server", server.url,
                        "--hardware-id", f"modules-{state_dir.name}", "--json"], capture_output=True, text=True,
                       timeout=60, env=agent_env(FLEET_AGENT_TOKEN=token, PYTHONPATH=str(ROOT / "agent")))
    assert p.returncode == 0, p.stderr
    return str(json.loads(p.stdout)["device_id"])


def start_agent(state_dir: Path, log: Path, modules: Path, runtime: str) -> AgentProcess:
    return AgentProcess([PYTHON, "-m", "fleet_agent", "run", "--state-dir", str(state_dir)], log, agent_env(
        PYTHONPATH=str(ROOT / "agent"), FLEET_AGENT_POLL_INTERVAL="0.5", FLEET_AGENT_MODULES_DIR=str(modules),
        FLEET_AGENT_CONTAINER_RUNTIME=runtime))


def reported_modules(admin: Admin, device_id: str) -> str:
    return str(((admin.device(device_id).get("inventory") or {}).get("extra") or {}).get("update_modules") or "")


def test_update_modules_with_a_real_server_and_agents(server: ServerProcess, tmp_path: Path) -> None:
    admin = Admin(server)
    dest = tmp_path / "dest"
    modules = tmp_path / "modules"
    write_module(modules, dest, reboot='kill -9 "$PPID"')  # ArtifactReboot takes the agent down
    with_module, without = enroll(admin, server, tmp_path / "a"), enroll(admin, server, tmp_path / "b")
    a = start_agent(tmp_path / "a", tmp_path / "a.log", modules, "/bin/true")  # a "container runtime"
    b = start_agent(tmp_path / "b", tmp_path / "b.log", tmp_path / "no-modules", "/nonexistent/podman")
    builtin = [m for m in BUILTIN if m != "os-image" or os_image_tool()]  # os-image: with RAUC or SWUpdate here
    try:
        wait_for("the agent to report its modules", lambda: reported_modules(admin, with_module) ==
                 ",".join([*builtin, "v3-test"]), 30, log=a.log)
        assert reported_modules(admin, without) == ",".join(m for m in builtin if m != "container")
        device_type = admin.device(with_module)["device_type"]

        # The built-in file module.
        conf = tmp_path / "app.conf"
        conf.write_text("port = 8080\n")
        target = tmp_path / "etc" / "app.conf"
        target.parent.mkdir()
        pushed = admin.push(conf, "conf", "1.0.0", device_type, "--module", "file", "--meta", f"path={target}")
        manifest = json.loads(pushed["manifest"])
        assert (manifest["module"], manifest["meta"]) == ("file", {"path": str(target)}), "signed into the manifest"
        admin.wait_action(with_module, admin.deploy(with_module, "conf@1.0.0"), {"succeeded"}, 30, log=a.log)
        assert target.read_text() == "port = 8080\n"

        # An external module: refused for the device that lacks it (deploy and rollout), installed on the other.
        payload = tmp_path / "payload.txt"
        payload.write_text("v1\n")
        admin.push(payload, "thing", "1.0.0", device_type, "--module", "v3-test", "--meta", "colour=blue")
        r = server.rpc("DeviceAdminService", "Deploy", {"device_ids": [with_module, without],
                                                        "artifact": "thing@1.0.0"}, api_key=admin.key)
        assert r.status_code == 400 and r.json()["code"] == "failed_precondition", r.text
        message = r.json()["message"]
        assert f"which 1 device(s) do not have: {without}" in message, message
        assert "install the module on them (an executable named v3-test in the agent's modules directory" in message
        cli_env = {"FLEETD_SERVER": server.url, "FLEETD_API_KEY": admin.key, "FLEETD_CA": server.ca}
        p = run_cli("rollouts", "create", "--artifact", "thing@1.0.0", "--device", without, env=cli_env, check=False,
                    timeout=60)
        assert p.returncode != 0 and "do not have: " + without in " ".join(p.stderr.split()), p.stdout + p.stderr
        assert admin.actions(without) == [], "all or none: nothing was queued"

        # The container module: listed only by the agent that has a runtime; the other is refused by the server.
        compose = tmp_path / "compose.yaml"
        compose.write_text("services:\n  web:\n    image: registry.example/web@sha256:" + "0" * 64 + "\n")
        admin.push(compose, "stack", "1.0.0", device_type, "--module", "container")
        r = server.rpc("DeviceAdminService", "Deploy", {"device_ids": [without], "artifact": "stack@1.0.0"},
                       api_key=admin.key)
        assert r.status_code == 400 and "install podman or docker on them" in r.json()["message"], r.text

        admin.wait_action(with_module, admin.deploy(with_module, "thing@1.0.0"), {"succeeded"}, 30, log=a.log)
        assert (dest / "current").read_text() == "v1\n"
        assert json.loads((dest / "meta-data").read_text()) == {"colour": "blue"}

        # A failing ArtifactInstall is rolled back.
        payload.write_text("v2 fail-install\n")
        admin.push(payload, "thing", "2.0.0", device_type, "--module", "v3-test")
        done = admin.wait_action(with_module, admin.deploy(with_module, "thing@2.0.0"), {"rolled_back"}, 30,
                                 log=a.log)
        assert "the payload asked to fail" in done["message"] and (dest / "current").read_text() == "v1\n"

        # NeedsArtifactReboot Yes: ArtifactReboot kills the agent; the next one verifies, commits and reports.
        payload.write_text("v3 reboot-yes\n")
        admin.push(payload, "thing", "3.0.0", device_type, "--module", "v3-test")
        action = admin.deploy(with_module, "thing@3.0.0")
        wait_for("the module to take the agent down", lambda: a.proc.poll() is not None, 30, log=a.log)
        assert a.proc.returncode == -9 and calls(dest)[-1] == "ArtifactReboot"
        a.stop()
        a = start_agent(tmp_path / "a", tmp_path / "a2.log", modules, "/bin/true")
        done = admin.wait_action(with_module, action, {"succeeded"}, 30, log=a.log)
        assert done["message"] == "thing 3.0.0 is installed by the v3-test module (was 1.0.0)"
        assert calls(dest)[-3:] == ["ArtifactVerifyReboot", "ArtifactCommit", "Cleanup"]
        wait_for("the device to report thing 3.0.0", lambda: [
            c for c in admin.device(with_module)["components"] if (c["name"], c["version"]) == ("thing", "3.0.0")],
            15)
    finally:
        a.stop()
        b.stop()
