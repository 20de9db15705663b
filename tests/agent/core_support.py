"""Helpers for the agent core's tests: run `python -m fleet_agent` as a real process against a real server."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.e2e.server import ServerProcess

T = TypeVar("T")
AGENT = [sys.executable, "-m", "fleet_agent"]


def agent_env(**extra: str) -> dict[str, str]:
    """The environment agents run in: mDNS only on loopback, quickly."""
    env = dict(os.environ, FLEET_AGENT_MDNS_INTERFACES="127.0.0.1", FLEET_AGENT_MDNS_TIMEOUT="2")
    env.pop("FLEET_AGENT_TOKEN", None)
    env.pop("FLEET_AGENT_SERVER", None)
    env.update(extra)
    return env


def run_agent(state_dir: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENT, *args, "--state-dir", str(state_dir)], capture_output=True, text=True,
                          env=env or agent_env(), timeout=timeout)


def ok(p: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert p.returncode == 0, f"{p.args} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def call(server: ServerProcess, key: str, service: str, method: str, body: Any = None) -> Any:
    r = server.rpc(service, method, body or {}, api_key=key)
    assert r.status_code == 200, f"{service}.{method}: {r.status_code} {r.text}"
    return r.json()


def make_token(server: ServerProcess, key: str, **kw: Any) -> str:
    body = {"uses": 0, "expires_in": 3600, **kw}
    return str(call(server, key, "EnrollmentService", "CreateToken", body)["token"])


def device(server: ServerProcess, key: str, hardware_id: str) -> dict[str, Any] | None:
    found = call(server, key, "DeviceAdminService", "ListDevices", {"search": hardware_id})["devices"]
    return next((d for d in found if d["hardware_id"] == hardware_id), None)


def telemetry_names(server: ServerProcess, device_id: str) -> dict[str, int]:
    """Metric name → how many points the server stored for the device."""
    conn = sqlite3.connect(f"file:{server.data_dir / 'fleetd.db'}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT name, count(*) FROM telemetry WHERE device_id = ? GROUP BY name",
                                 (device_id,)).fetchall())
    finally:
        conn.close()


def server_ca_fingerprint(server: ServerProcess) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(Path(server.ca).read_text())).hexdigest()


def state(state_dir: Path) -> dict[str, Any]:
    return dict(json.loads((state_dir / "state.json").read_text()))


def wait_for(fn: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
