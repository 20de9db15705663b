"""Helpers for the agent's end-to-end tests: the built zipapp, agent processes, admin calls, waiting."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.e2e.server import ServerProcess, run_cli

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
AGENT_SRC = ROOT / "agent" / "fleet_agent"
# The venv's python3 has httpx, zeroconf and cryptography, as a Pi's system Python would with its packages.
PYTHON = sys.executable
VENV_BIN = str(Path(sys.executable).parent)


def load_builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_zipapp", ROOT / "agent" / "build_zipapp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = load_builder()


def build_served_agent() -> None:
    """What `make agent` does, so that the server serves the agent from this source tree.

    A binary under test ($FLEETD_BIN) serves the agent bundled in it instead.
    """
    if not os.environ.get("FLEETD_BIN"):
        builder.build(AGENT_SRC, ROOT / "dist")


def agent_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    for k in [k for k in env if k.startswith("FLEET_AGENT_")]:
        del env[k]
    env.update(extra)
    return env


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 20, interval: float = 0.2,
             log: Callable[[], str] | None = None) -> T:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` (and a log) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})"
                         + (f"\n--- log ---\n{log()[-6000:]}" if log else ""))


class Admin:
    """Admin API calls against a ServerProcess, with an admin API key."""

    def __init__(self, server: ServerProcess, key: str | None = None) -> None:
        self.server = server
        self.key = key or server.create_key("admin", "agent-e2e")

    def call(self, service: str, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = self.server.rpc(service, method, body or {}, api_key=self.key)
        assert r.status_code == 200, f"{service}.{method}: {r.status_code} {r.text}"
        return dict(r.json())

    def token(self, **body: Any) -> dict[str, Any]:
        return self.call("EnrollmentService", "CreateToken", body)

    def device(self, device_id: str) -> dict[str, Any]:
        return self.call("DeviceAdminService", "GetDevice", {"id": device_id})

    def devices(self) -> list[dict[str, Any]]:
        return list(self.call("DeviceAdminService", "ListDevices")["devices"])

    def actions(self, device_id: str) -> list[dict[str, Any]]:
        return list(self.call("DeviceAdminService", "ListActions", {"device_id": device_id})["actions"])

    def action(self, device_id: str, action_id: str) -> dict[str, Any]:
        return next(a for a in self.actions(device_id) if a["id"] == action_id)

    def deploy(self, device_id: str, artifact: str) -> str:
        ids = self.call("DeviceAdminService", "Deploy", {"device_ids": [device_id], "artifact": artifact})["action_ids"]
        assert len(ids) == 1, ids
        return str(ids[0])

    def push(self, file: Path, name: str, version: str, device_type: str, *args: str) -> dict[str, Any]:
        """``fleetd artifacts push`` (the CLI, as a user would)."""
        p = run_cli("artifacts", "push", str(file), "--name", name, "--version", version, "--device-type",
                    device_type, *args, "--server", self.server.url, "--api-key", self.key, "--ca", self.server.ca,
                    "--json")
        return dict(json.loads(p.stdout))

    def wait_action(self, device_id: str, action_id: str, states: set[str], timeout: float,
                    log: Callable[[], str] | None = None) -> dict[str, Any]:
        """The action once it is in one of ``states``; fails at once if it ends in another final state."""
        final = {"succeeded", "failed", "rolled_back", "rejected", "cancelled"}

        def check() -> dict[str, Any] | None:
            a = self.action(device_id, action_id)
            if a["state"] in states:
                return a
            if a["state"] in final:
                raise AssertionError(f"action {action_id} ended {a['state']}: {a['message']}"
                                     + (f"\n--- log ---\n{log()[-6000:]}" if log else ""))
            return None

        return wait_for(f"action {action_id} to be {'/'.join(sorted(states))}", check, timeout, 0.25, log)


class AgentProcess:
    """A real agent process (``fleet-agent run``), logging to a file."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then SIGKILL; also whatever else is left in its session (the apps it supervises)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()
        return self.proc.returncode


def heartbeat(path: Path) -> float:
    """The number an app wrote in its heartbeat file (a counter or a time), 0 when there is none yet."""
    try:
        return float(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def advancing(path: Path, within: float = 5.0) -> bool:
    """Does the heartbeat in ``path`` move forward within ``within`` seconds?"""
    first = heartbeat(path)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if heartbeat(path) > first:
            return True
        time.sleep(0.1)
    return False
