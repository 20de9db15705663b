"""Remote access costs nothing when off: the server's start imports neither fleetd.remote nor a WebSocket library
unless ``remote_access`` is on, and the agent imports its remote module (and websockets) only when its agent.conf
turns remote access on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("remote_access", [False, True])
def test_the_server_loads_remote_access_only_when_on(tmp_path: Path, remote_access: bool) -> None:
    code = f"""
import sys
from fleetd.app import asgi_app
from fleetd.core.config import load_settings
from fleetd.fleet import Fleet
fleet = Fleet(load_settings({{"data_dir": {str(tmp_path / "data")!r}, "mdns": False,
                              "remote_access": {remote_access}}}, None), first_admin=True)
app = asgi_app(fleet)
paths = sorted(r.path for r in app.app.routes if r.path.startswith("/v1/remote"))
fleet.close()
print(sorted(m for m in sys.modules if m.partition(".")[0] == "websockets" or m.startswith("fleetd.remote")), paths)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    if remote_access:
        assert "'fleetd.remote.api'" in p.stdout and "/v1/remote/device" in p.stdout
    else:
        assert p.stdout.strip() == "[] []"


@pytest.mark.parametrize("conf", [None, "remote_access = false\n"])
def test_the_agent_loads_remote_access_only_when_its_config_says(tmp_path: Path, conf: str | None) -> None:
    if conf is not None:
        (tmp_path / "agent.conf").write_text(conf)
    code = f"""
import sys
from fleet_agent.cli import _start_remote_access
from fleet_agent.config import Settings
assert _start_remote_access(Settings.from_env({str(tmp_path)!r}, {{}}), None) is None
print(sorted(m for m in sys.modules if m.partition(".")[0] == "websockets" or m == "fleet_agent.remote"))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(ROOT / "agent"), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_the_agent_loads_websockets_without_importlib_metadata() -> None:
    """websockets imports importlib.metadata for nothing in a release (0.85 MiB of the agent's idle memory): the
    agent loads it without, and importlib.metadata still imports normally afterwards."""
    code = """
import sys
from fleet_agent import remote_config
remote = remote_config.import_remote()
assert remote.ConnectionClosed and "websockets" in sys.modules
assert "fleet_agent.remote_streams" not in sys.modules  # file copy, forwards, logs: with the first such session
print("importlib.metadata" in sys.modules)
import importlib.metadata
print(bool(importlib.metadata.version("msgspec")))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(ROOT / "agent"), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["False", "True"]


def test_the_channel_keeps_a_small_tls_buffer_and_no_session_code() -> None:
    """With the channel set up and no session, the agent holds no pty code, and asyncio's TLS receive buffer is
    64 KiB instead of 256 (the agent's idle RSS, docs/performance.md)."""
    code = """
import asyncio, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_agent import remote_config
from fleet_agent.client import ServerClient
remote = remote_config.import_remote()
client = ServerClient("https://fleet.example:8443", CA, Ed25519PrivateKey.generate(), "d1")
r = remote.RemoteAccess(client, CA, remote_config.RemoteConfig(True, "root"))
r.loop.close()
print(r.ssl is not None, getattr(asyncio.sslproto.SSLProtocol, "max_size", 0) <= 64 * 1024,
      [m for m in ("fleet_agent.remote_terminal", "fleet_agent.remote_streams", "termios") if m in sys.modules])
"""
    from cryptography.hazmat.primitives import serialization

    from fleetd.core.pki import _make_ca

    ca = _make_ca()[0].public_bytes(serialization.Encoding.PEM).decode()
    p = subprocess.run([sys.executable, "-c", f"CA = {ca!r}\n" + code], capture_output=True, text=True,
                       timeout=60, env={"PYTHONPATH": str(ROOT / "agent"), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "True True []"
