"""Certificates cost nothing when unused (docs/pki.md): the server's start loads no certificate module; the first
call that needs one does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CERT_MODULES = ("fleetd.devices.certificates", "fleetd.devices.certificate_service", "fleetd.devices.factory",
                "fleetd.http.client_cert")


def test_the_start_loads_no_certificate_code(tmp_path: Path) -> None:
    code = f"""
import sys
from fleetd.app import asgi_app
from fleetd.core.config import load_settings
from fleetd.fleet import Fleet
from litestar.testing import TestClient
fleet = Fleet(load_settings({{"data_dir": {str(tmp_path / "data")!r}, "mdns": False, "tls": False}}, None))
with TestClient(app=asgi_app(fleet)) as client:
    assert client.get("/healthz").status_code == 200
    print(sorted(m for m in {CERT_MODULES!r} if m in sys.modules))
    assert client.get("/v1/crl.pem").status_code == 200
    print(sorted(m for m in {CERT_MODULES!r} if m in sys.modules))
fleet.close()
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    before, after = p.stdout.splitlines()
    assert before == "[]"
    assert after == "['fleetd.devices.certificate_service', 'fleetd.devices.certificates']"
