"""X-Forwarded-For counts only from a configured proxy: rate limits and audit use the real peer otherwise."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from .server import ServerProcess

pytestmark = pytest.mark.e2e
FORWARDED = ["203.0.113.1", "203.0.113.2", "203.0.113.3"]


def failed_logins(server: ServerProcess) -> list[int]:
    """One wrong login per forwarded address; the HTTP statuses."""
    with server.client() as c:
        return [c.post("/fleetd.v1.UserService/Login", json={"username": "mallory", "password": "guess"},
                       headers={"X-Forwarded-For": addr}).status_code for addr in FORWARDED]


def audited_addresses(server: ServerProcess) -> set[str]:
    with sqlite3.connect(server.data_dir / "fleetd.db") as conn:
        return {r[0] for r in conn.execute("SELECT remote_addr FROM audit_log WHERE action = 'auth.login'")}


@pytest.mark.parametrize("trusted", [False, True], ids=["no-proxy", "trusted-proxy"])
def test_forwarded_for_is_believed_only_from_a_trusted_proxy(tmp_path: Path, trusted: bool) -> None:
    server = ServerProcess(tmp_path / "data", extra_args=["--trusted-proxy", "127.0.0.1"] if trusted else [],
                           env={"FLEETD_LOGIN_RATE_PER_MINUTE": "2"}).start()
    try:
        statuses = failed_logins(server)
        if trusted:
            assert statuses == [401, 401, 401]  # three clients behind the proxy, one attempt each
            assert audited_addresses(server) == set(FORWARDED)
        else:
            assert statuses == [401, 401, 429]  # one client, whatever its header claims
            assert audited_addresses(server) == {"127.0.0.1"}
    finally:
        server.stop()


def test_env_lists_trusted_proxies_and_ignores_uvicorns_variable(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"FLEETD_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.0/8",
                                                   "FORWARDED_ALLOW_IPS": "*"}).start()
    try:
        failed_logins(server)
        assert audited_addresses(server) == set(FORWARDED)
    finally:
        server.stop()
    server = ServerProcess(tmp_path / "data", env={"FORWARDED_ALLOW_IPS": "*"}).start()
    try:
        with server.client() as c:
            c.post("/fleetd.v1.UserService/Login", json={"username": "eve", "password": "guess"},
                   headers={"X-Forwarded-For": "198.51.100.7"})
        assert "198.51.100.7" not in audited_addresses(server)
    finally:
        server.stop()
