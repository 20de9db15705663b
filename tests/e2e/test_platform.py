"""Issue 'server platform', end to end: a real `fleetd serve` over HTTPS."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import stat
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .server import ServerProcess, run_cli


def test_healthz_over_https_verified_against_the_data_dir_ca(server: ServerProcess) -> None:
    with server.client() as c:
        r = c.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    # A client that trusts only the system CAs refuses the server.
    with pytest.raises(httpx.ConnectError), httpx.Client(verify=ssl.create_default_context()) as c:
        c.get(server.url + "/healthz")


def test_ca_is_served_without_auth_and_matches_the_file(server: ServerProcess) -> None:
    with server.client() as c:
        r = c.get("/v1/ca.pem")
    assert r.status_code == 200
    assert r.content == Path(server.ca).read_bytes()
    der = x509.load_pem_x509_certificate(r.content).public_bytes(serialization.Encoding.DER)
    assert r.headers["x-fleetd-ca-fingerprint"] == hashlib.sha256(der).hexdigest()


def test_connect_auth_and_errors(server: ServerProcess, admin_key: str) -> None:
    r = server.rpc("UserService", "ListUsers")
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    r = server.rpc("UserService", "ListUsers", api_key=admin_key)
    assert r.status_code == 200 and any(u["username"] == "admin" for u in r.json()["users"])
    viewer = server.create_key("viewer", "e2e-viewer")
    r = server.rpc("UserService", "CreateUser", {"username": "v", "role": "viewer"}, api_key=viewer)
    assert r.status_code == 403 and r.json()["code"] == "permission_denied"
    with server.client(admin_key) as c:
        r = c.post("/fleetd.v1.UserService/CreateUser", content=b'{"username": ',
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
        r = c.post("/fleetd.v1.UserService/ListUsers", content=b"{}", headers={"Content-Type": "text/plain"})
        assert r.status_code == 415


def test_data_dir_layout_and_key_modes(server: ServerProcess) -> None:
    d = server.data_dir
    for name in ("fleetd.db", "ca.pem", "ca.key", "server.pem", "server.key", "signing.key", "signing.pub",
                 "token.key"):
        assert (d / name).exists(), name
    assert (d / "blobs").is_dir()
    for name in ("ca.key", "server.key", "signing.key", "token.key"):
        assert stat.S_IMODE(os.stat(d / name).st_mode) == 0o600, name
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_first_admin_password_shown_once_on_console_only(own_server: ServerProcess) -> None:
    own_server.start()
    first_log = own_server.log()
    assert "password:" in first_log
    password = first_log.split("password:")[1].split()[0].strip("│ ")
    own_server.stop()
    own_server.start()
    # Shown once: the second start prints no new password.
    assert own_server.log().count("password:") == 1
    # It works: log in with it.
    r = own_server.rpc("UserService", "Login", {"username": "admin", "password": password})
    assert r.status_code == 200 and r.json()["user"]["must_change_password"] is True
    # Not in any file of the data dir (the console is the server's stdout here).
    for p in own_server.data_dir.rglob("*"):
        if p.is_file():
            assert password.encode() not in p.read_bytes(), p


def test_cli_remote_commands_with_json(server: ServerProcess, admin_key: str) -> None:
    env = {"FLEETD_SERVER": server.url, "FLEETD_API_KEY": admin_key, "FLEETD_CA": server.ca}
    p = run_cli("users", "create", "frank", "--role", "operator", "--generate", "--json", env=env)
    assert json.loads(p.stdout)["username"] == "frank"
    users = json.loads(run_cli("users", "list", "--json", env=env).stdout)
    assert {"admin", "frank"} <= {u["username"] for u in users}
    entries = json.loads(run_cli("audit", "--action", "user.create", "--json", env=env).stdout)
    assert any(e["target"] == next(u["id"] for u in users if u["username"] == "frank") for e in entries)
    # A bad key: a clear error and exit code 1.
    p = run_cli("users", "list", env={**env, "FLEETD_API_KEY": "fk_nope_nope"}, check=False)
    assert p.returncode == 1 and "unauthenticated" in p.stderr


def test_offline_key_is_usable_on_running_server_at_once(server: ServerProcess) -> None:
    key = server.create_key("operator", "late-key")
    r = server.rpc("UserService", "WhoAmI", api_key=key)
    assert r.status_code == 200 and r.json()["role"] == "operator"
    run_cli("keys", "revoke", "late-key", "--data-dir", str(server.data_dir))
    assert server.rpc("UserService", "WhoAmI", api_key=key).status_code == 401


def test_second_server_on_same_data_dir_is_refused(server: ServerProcess) -> None:
    p = run_cli("serve", "--data-dir", str(server.data_dir), "--port", "1", "--no-mdns", check=False, timeout=60)
    assert p.returncode != 0
    assert server.proc is not None and f"another fleetd server (pid {server.proc.pid} " in " ".join(p.stderr.split())


def test_version_prints_version_and_commit() -> None:
    out = run_cli("version").stdout
    assert out.startswith("fleetd ") and "commit" in out
