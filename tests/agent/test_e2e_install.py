"""The README's journey, for real: the install one-liner, the installed agent, an app deployed, a bad one undone.

A real ``fleetd serve`` over HTTPS; the one-liner that ``CreateToken`` answers,
run by a shell with real curl (``sudo`` dropped, ``--prefix`` added); the agent
that it installed, as its own process; an app pushed with ``fleetd artifacts
push`` that writes a heartbeat file.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import ServerProcess

from .e2e_helpers import (
    PYTHON,
    ROOT,
    Admin,
    AgentProcess,
    advancing,
    agent_env,
    build_served_agent,
    heartbeat,
    wait_for,
)

pytestmark = pytest.mark.e2e

HEARTBEAT_APP = """#!/bin/sh
# A tiny app: writes the time to $HEARTBEAT every 0.2 s ({version}).
while :; do
  date +%s.%N > "$HEARTBEAT.tmp" && mv "$HEARTBEAT.tmp" "$HEARTBEAT"
  sleep 0.2
done
"""
BROKEN_APP = """#!/bin/sh
echo "2.0.0 cannot start: missing configuration" >&2
exit 3
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    build_served_agent()
    s = ServerProcess(tmp_path_factory.mktemp("install") / "data").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Admin:
    return Admin(server)


def one_liner(command: str, prefix: Path) -> str:
    """The install command as a test runs it: as given (no sudo in it, so it runs in a root shell without one),
    into a temp dir, no systemd."""
    assert command.count(" | sh -s -- ") == 1 and "sudo" not in command, command
    return command + f" --prefix {prefix} --no-systemd"


def run_shell(command: str) -> subprocess.CompletedProcess[str]:
    # pipefail: a failed download must fail the pipeline, not feed sh an empty script.
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True,
                          env=agent_env(), timeout=120)


def kill_apps(state_dir: Path) -> None:
    """The apps run in their own process groups: make sure none outlives the test."""
    for pidfile in state_dir.glob("apps/*/pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.killpg(int(pidfile.read_text().split()[0]), signal.SIGKILL)


def test_agent_files_are_served_as_built(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, verify=False) as c:  # public: a device has no credentials yet
        r = c.get("/agent/fleet-agent.pyz")
        assert r.status_code == 200 and r.content.startswith(b"#!/usr/bin/env python3\n")
        assert r.headers["etag"] == f'"{hashlib.sha256(r.content).hexdigest()}"'
        assert int(r.headers["content-length"]) == len(r.content)
        assert c.get("/agent/fleet-agent.pyz", headers={"If-None-Match": r.headers["etag"]}).status_code == 304
        script = c.get("/agent/install.sh")
        assert script.status_code == 200 and script.text.startswith("#!/bin/sh")
        launcher = c.get("/agent/fleet-agent-launcher.py")
        assert launcher.status_code == 200 and "trial" in launcher.text


def test_a_wrong_pin_installs_nothing(server: ServerProcess, admin: Admin, tmp_path: Path) -> None:
    command = admin.token(description="wrong pin")["install_command"]
    real_pin = command.split("--pinnedpubkey ", 1)[1].split()[0]
    wrong_pin = "sha256//" + base64.b64encode(hashlib.sha256(b"someone else's key").digest()).decode()
    p = run_shell(one_liner(command.replace(real_pin, wrong_pin), tmp_path / "root"))
    assert p.returncode != 0
    assert "pinned" in p.stderr.lower() or "public key" in p.stderr.lower(), p.stderr
    assert not (tmp_path / "root" / "opt").exists()

    # The script itself (fetched with the right pin) refuses a download pinned to another key as well.
    p = run_shell(one_liner(command.replace(f"--pin {real_pin}", f"--pin {wrong_pin}"), tmp_path / "root2"))
    assert p.returncode != 0 and "could not download" in p.stderr, p.stdout + p.stderr
    assert not (tmp_path / "root2" / "opt" / "fleet-agent" / "fleet-agent.pyz").exists()
    assert not (tmp_path / "root2" / "var" / "lib" / "fleet-agent" / "state.json").exists()


@pytest.mark.parametrize(("args", "says"), [
    (["--token", "t"], "--server URL is missing"),
    (["--server", "https://fleet:8420", "--token", "t"], "--pin sha256//KEY is missing"),
    (["--server", "https://fleet:8420", "--token", "t", "--pin", "abc"], "--pin must look like sha256//"),
    (["--server", "ftp://fleet", "--token", "t"], "must be an http:// or https:// URL"),
    (["--server", "https://fleet:8420", "--tokn", "t"], "unknown option '--tokn'"),
    (["--server"], "--server needs a value"),
])
def test_install_script_says_what_is_wrong(args: list[str], says: str, tmp_path: Path) -> None:
    p = subprocess.run(["sh", str(ROOT / "agent" / "install.sh"), *args, "--prefix", str(tmp_path)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and says in p.stderr, p.stderr
    assert not (tmp_path / "opt").exists()


def fake_bin(tmp_path: Path, *, sudo: bool) -> Path:
    """A PATH on which this shell is not root (a fake `id`), with curl and mktemp, and a fake `sudo` that records
    what it was asked to run (or none)."""
    import shutil
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")
    if sudo:
        (bin_dir / "sudo").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path}/sudo-args\n"
                                      f"cat > {tmp_path}/sudo-stdin\nexit 7\n")
    for tool in ("sh", "curl", "mktemp", "rm", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def test_not_root_runs_itself_again_with_sudo(server: ServerProcess, admin: Admin, tmp_path: Path) -> None:
    command = admin.token(description="not root")["install_command"]
    env = dict(agent_env(), PATH=str(fake_bin(tmp_path, sudo=True)), PYTHON="/opt/py/bin/python3")
    p = subprocess.run(["/bin/sh", "-c", command + " --name kitchen --no-systemd"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert p.returncode == 7, p.stdout + p.stderr  # sudo's exit status is the script's
    assert "not root: running again with sudo" in p.stdout
    args = (tmp_path / "sudo-args").read_text().splitlines()
    pin = command.split("--pin ", 1)[1].split()[0]
    token = command.split("--token ", 1)[1].split()[0]
    assert args == ["sh", "-s", "--", "--server", server.url, "--token", token, "--python", "/opt/py/bin/python3",
                    "--pin", pin, "--name", "kitchen", "--no-systemd"]
    # The script, fetched again (pinned) for sudo to run: the one the server serves.
    assert (tmp_path / "sudo-stdin").read_text() == (ROOT / "agent" / "install.sh").read_text()


def test_not_root_without_sudo_says_how(server: ServerProcess, admin: Admin, tmp_path: Path) -> None:
    command = admin.token(description="no sudo")["install_command"]
    env = dict(agent_env(), PATH=str(fake_bin(tmp_path, sudo=False)))
    p = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 1 and "run it as root (there is no sudo here" in p.stderr, p.stdout + p.stderr


def test_install_script_help_names_every_option() -> None:
    p = subprocess.run(["sh", str(ROOT / "agent" / "install.sh"), "--help"], capture_output=True, text=True,
                       timeout=30)
    script = (ROOT / "agent" / "install.sh").read_text()
    options = set(re.findall(r"^    (--[a-z-]+)\)", script, re.M))
    assert options >= {"--server", "--token", "--pin", "--name", "--python", "--prefix", "--no-systemd"}
    doc = (ROOT / "docs" / "agent.md").read_text()
    for o in [*options, "PYTHON="]:
        assert o in p.stdout, f"{o} is not in install.sh --help"
        assert f"`{o}" in doc, f"{o} is not in docs/agent.md"
    assert "python3-httpx python3-zeroconf" in p.stdout


def test_install_enroll_deploy_and_roll_back(server: ServerProcess, admin: Admin, tmp_path: Path) -> None:
    # 1. A join token, and the one-liner that comes with it.
    tok = admin.token(description="e2e install", tags={"site": "lab"})
    prefix = tmp_path / "root"
    p = run_shell(one_liner(tok["install_command"], prefix) + " --name 'lab pi'")
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    opt, state_dir = prefix / "opt" / "fleet-agent", prefix / "var" / "lib" / "fleet-agent"
    served = httpx.get(server.url + "/agent/fleet-agent.pyz", verify=False).content
    assert (opt / "fleet-agent.pyz").read_bytes() == served
    assert (opt / "fleet-agent-launcher.py").is_file()
    assert (state_dir / "device.key").stat().st_mode & 0o077 == 0
    # No systemd: it says how to run the agent (through the launcher, with this state dir).
    assert f"fleet-agent-launcher.py --state-dir {state_dir}" in p.stdout, p.stdout

    devices = [d for d in admin.devices() if d["tags"].get("site") == "lab"]
    assert len(devices) == 1 and devices[0]["status"] == "active" and devices[0]["name"] == "lab pi", devices
    device = devices[0]
    admin.call("DeviceAdminService", "UpdateDevice", {"id": device["id"], "poll_interval": 5})

    # 2. The installed agent runs; the device shows up online.
    agent = AgentProcess([PYTHON, str(opt / "fleet-agent.pyz"), "run", "--state-dir", str(state_dir)],
                         tmp_path / "agent.log", agent_env())
    try:
        seen = wait_for("the device to be listed online", lambda: [
            d for d in admin.devices() if d["id"] == device["id"] and d["online"] and d["status"] == "active"], 20,
            log=agent.log)[0]
        assert seen["status"] == "active" and seen["inventory"].get("agent_version")

        # 3. A real app: pushed with the CLI, deployed, running, healthy.
        beat = tmp_path / "heartbeat"
        app = tmp_path / "heartbeat.sh"
        app.write_text(HEARTBEAT_APP.format(version="1.0.0"))
        admin.push(app, "heartbeat", "1.0.0", device["device_type"], "--env", f"HEARTBEAT={beat}",
                   "--health-grace", "2")
        act = admin.deploy(device["id"], "heartbeat@1.0.0")
        done = admin.wait_action(device["id"], act, {"succeeded"}, 30, log=agent.log)
        assert "passed its health check" in done["message"]
        assert advancing(beat), "the app's heartbeat does not advance"
        wait_for("the device to report heartbeat 1.0.0", lambda: [
            c for c in admin.device(device["id"])["components"]
            if c["name"] == "heartbeat" and c["version"] == "1.0.0" and c["state"] == "running"], 15)

        # 4. A broken next version: it exits at once, and the agent goes back to 1.0.0 by itself.
        broken = tmp_path / "heartbeat-2.sh"
        broken.write_text(BROKEN_APP)
        admin.push(broken, "heartbeat", "2.0.0", device["device_type"], "--health-grace", "2")
        act2 = admin.deploy(device["id"], "heartbeat@2.0.0")
        undone = admin.wait_action(device["id"], act2, {"rolled_back"}, 30, log=agent.log)
        assert "2.0.0" in undone["message"] and "1.0.0" in undone["message"], undone["message"]
        before = heartbeat(beat)
        assert advancing(beat), "1.0.0 does not run again after the rollback"
        assert heartbeat(beat) > before
        # Healthy, as the server shows it: the agent watched 1.0.0 again after going back (not "—").
        wait_for("the device to report heartbeat 1.0.0 again, healthy", lambda: [
            c for c in admin.device(device["id"])["components"] if c["name"] == "heartbeat"
            and c["version"] == "1.0.0" and c["state"] == "running" and c["health"] == "healthy"], 15)
        assert re.search(r"INFO fleet_agent\.apps: heartbeat 2\.0\.0 failed its health check \(.+\); rolling back "
                         r"to 1\.0\.0", agent.log()), agent.log()
        assert admin.device(device["id"])["online"]
        assert agent.proc.poll() is None, agent.log()
    finally:
        agent.stop()
        time.sleep(0.3)
        app_stopped = not advancing(beat, within=1.0)
        kill_apps(state_dir)
    # No systemd here, so the agent supervised the app itself, and stopped it when it stopped.
    assert app_stopped
