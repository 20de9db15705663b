"""The agent's packaging: a reproducible zipapp, the /agent/ routes, and the install one-liner."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from fleetd.app import create_app
from fleetd.core import resources
from fleetd.core.config import Settings
from fleetd.fleet import Fleet
from fleetd.http import agent_dist
from tests.conftest import rpc

ROOT = Path(__file__).resolve().parents[2]


def _load_builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_zipapp", ROOT / "agent" / "build_zipapp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = _load_builder()


def fake_package(root: Path, version: str = "0.1.0") -> Path:
    pkg = root / "fleet_agent"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text(f'__version__ = "{version}"\n')
    (pkg / "cli.py").write_text("import sys\nfrom . import __version__\n\n"
                                "def main():\n    print('agent', __version__, sys.argv[1:])\n"
                                "    return len(sys.argv) - 1\n")
    (pkg / "sub").mkdir()
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"junk")
    return pkg


def test_zipapp_is_reproducible_runs_and_holds_only_the_package(tmp_path: Path) -> None:
    pkg = fake_package(tmp_path / "src")
    first = builder.build(pkg, tmp_path / "one").read_bytes()
    for f in pkg.rglob("*"):  # other timestamps, same content
        os.utime(f, (1_700_000_000, 1_700_000_000))
    second = builder.build(pkg, tmp_path / "two")
    assert second.read_bytes() == first
    assert first.startswith(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(second) as z:
        assert z.testzip() is None
        names = z.namelist()
        assert {i.date_time for i in z.infolist()} == {builder.FIXED_TIME}
    assert names == ["__main__.py", "fleet_agent/__init__.py", "fleet_agent/cli.py", "fleet_agent/sub/__init__.py"]
    assert os.access(second, os.X_OK)
    out = subprocess.run([str(second), "enroll", "--x"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "agent 0.1.0 ['enroll', '--x']", out.stderr
    assert out.returncode == 2  # main()'s return value is the exit status
    # Another version string is another file.
    bumped = fake_package(tmp_path / "bumped", version="0.2.0")
    assert builder.build(bumped, tmp_path / "three").read_bytes() != first
    # No launcher in the package: none is written; with one, it is copied beside the zipapp.
    assert not (tmp_path / "two" / builder.LAUNCHER_NAME).exists()
    (pkg / "launcher.py").write_text("print('launcher')\n")
    builder.build(pkg, tmp_path / "two")
    assert (tmp_path / "two" / builder.LAUNCHER_NAME).read_text() == "print('launcher')\n"


def test_build_refuses_a_folder_without_the_entry_point(tmp_path: Path) -> None:
    pkg = tmp_path / "fleet_agent"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    with pytest.raises(SystemExit, match=r"no cli\.py"):
        builder.build(pkg, tmp_path / "out")


@pytest.mark.skipif(not (ROOT / "agent" / "fleet_agent" / "cli.py").exists(), reason="the agent has no cli.py yet")
def test_the_real_agent_builds_and_starts(tmp_path: Path) -> None:
    pyz = builder.build(ROOT / "agent" / "fleet_agent", tmp_path)
    assert pyz.read_bytes() == builder.build(ROOT / "agent" / "fleet_agent", tmp_path / "again").read_bytes()
    with zipfile.ZipFile(pyz) as z:
        assert not [n for n in z.namelist() if n.startswith(("fleetd/", "httpx/")) or n.endswith(".pyc")]
    p = subprocess.run([sys.executable, str(pyz), "--help"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "enroll" in p.stdout, p.stderr


def test_the_agent_names_the_packages_of_missing_modules(tmp_path: Path) -> None:
    """A Python without httpx, zeroconf and cryptography (here: without site-packages) gets the Debian package
    names, not a traceback."""
    pyz = builder.build(ROOT / "agent" / "fleet_agent", tmp_path)
    p = subprocess.run([sys.executable, "-S", str(pyz), "enroll", "--server", "https://127.0.0.1:1"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "cannot import httpx, zeroconf, cryptography" in p.stderr
    assert "apt install python3-httpx python3-zeroconf python3-cryptography" in p.stderr


def test_without_zeroconf_mdns_says_which_package(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from fleet_agent import discovery
    monkeypatch.setitem(sys.modules, "zeroconf", None)  # importing it fails as if it were not installed
    assert discovery.browse(0.1) == []
    assert "apt install python3-zeroconf" in caplog.text and "--server" in caplog.text


def test_source_checkout_serves_the_checked_in_script_and_the_built_zipapp() -> None:
    script = resources.agent_file("install.sh")
    assert script == ROOT / "agent" / "install.sh"
    zipapp = resources.agent_file("fleet-agent.pyz")
    assert zipapp is None or zipapp == ROOT / "dist" / "fleet-agent.pyz"
    assert resources.agent_file("build_zipapp.py") is not None  # in agent/, but no route serves it
    assert resources.agent_file("no-such-file") is None


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    files = {name: tmp_path / "agent" / name for name in agent_dist.MEDIA_TYPES}
    files[agent_dist.ZIPAPP].parent.mkdir()
    files[agent_dist.ZIPAPP].write_bytes(b"#!/usr/bin/env python3\nPK...")
    files[agent_dist.INSTALL_SCRIPT].write_text("#!/bin/sh\necho hi\n")
    monkeypatch.setattr(agent_dist, "agent_file", lambda name: files[name] if files[name].exists() else None)
    agent_dist._cache.clear()
    return files


def test_agent_files_are_public_with_etag_and_revalidation(client: TestClient[Any], served: dict[str, Path]) -> None:
    body = served[agent_dist.ZIPAPP].read_bytes()
    r = client.get("/agent/fleet-agent.pyz")  # no credentials
    assert r.status_code == 200 and r.content == body
    etag = f'"{hashlib.sha256(body).hexdigest()}"'
    assert r.headers["etag"] == etag
    assert r.headers["content-length"] == str(len(body))
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["cache-control"] == "no-cache"
    again = client.get("/agent/fleet-agent.pyz", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""

    served[agent_dist.ZIPAPP].write_bytes(body + b"v2")  # a new build replaces the file: a new ETag
    r2 = client.get("/agent/fleet-agent.pyz", headers={"If-None-Match": etag})
    assert r2.status_code == 200 and r2.content == body + b"v2" and r2.headers["etag"] != etag

    s = client.get("/agent/install.sh")
    assert s.status_code == 200 and s.text == "#!/bin/sh\necho hi\n"
    assert s.headers["content-type"].startswith("text/x-shellscript")


def test_a_missing_agent_file_says_how_to_build_it(client: TestClient[Any], served: dict[str, Path]) -> None:
    r = client.get("/agent/fleet-agent-launcher.py")
    assert r.status_code == 404
    assert r.json()["code"] == "not_found" and "make agent" in r.json()["message"]


def test_the_routes_are_in_the_openapi_document(client: TestClient[Any]) -> None:
    paths = client.get("/schema/openapi.json").json()["paths"]
    for name in agent_dist.MEDIA_TYPES:
        assert paths[f"/agent/{name}"]["get"]["x-fleetd-auth"] == "public"


def test_install_command_pins_the_tls_key_for_the_script_and_its_downloads(tmp_path: Path) -> None:
    fleet = Fleet(Settings(data_dir=str(tmp_path / "tls"), tls=True, mdns=False, host="127.0.0.1", port=8420))
    try:
        from fleetd.accounts import users as auth
        from fleetd.accounts.audit import SYSTEM
        key = fleet.store.write_sync(lambda c: auth.create_api_key(c, SYSTEM, "t", "admin")).key
        with TestClient(app=create_app(fleet)) as c:
            tok = rpc(c, "EnrollmentService", "CreateToken", {}, key=key).json()
        pin = "sha256//" + base64.b64encode(fleet.keys.server_pubkey_sha256()).decode()
    finally:
        fleet.close()
    cmd = tok["install_command"]
    assert cmd.startswith(f"curl -fsSL -k --pinnedpubkey {pin} https://127.0.0.1:8420/agent/install.sh | sh -s --")
    assert f"--server https://127.0.0.1:8420 --pin {pin} --token {tok['token']}" in cmd
    assert cmd.endswith(f"--token {tok['token']}")


def test_install_command_without_tls_has_no_pin(client: TestClient[Any], admin_key: str) -> None:
    tok = rpc(client, "EnrollmentService", "CreateToken", {}, key=admin_key).json()
    assert tok["install_command"] == (f"curl -fsSL http://127.0.0.1:8420/agent/install.sh | sh -s -- "
                                      f"--server http://127.0.0.1:8420 --token {tok['token']}")
