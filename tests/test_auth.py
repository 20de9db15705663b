"""Admin auth: passwords, users, API keys, sessions with CSRF, login rate limit, audit entries."""

from __future__ import annotations

import pytest

from fleetd import auth
from fleetd.audit import SYSTEM
from fleetd.errors import AlreadyExists, InvalidArgument, Unauthenticated
from fleetd.fleet import open_offline

from .conftest import make_key, rpc


def test_password_hash_verifies_and_is_salted() -> None:
    h1, h2 = auth.hash_password("correct horse"), auth.hash_password("correct horse")
    assert h1 != h2 and h1.startswith("scrypt$")
    assert auth.verify_password("correct horse", h1)
    assert not auth.verify_password("correct horsE", h1)
    assert not auth.verify_password("x", "garbage")


def test_short_password_refused() -> None:
    with pytest.raises(InvalidArgument, match="at least"):
        auth.hash_password("short")


def test_users_unique_and_last_admin_protected(fleet) -> None:  # type: ignore[no-untyped-def]
    w = fleet.store.write_sync
    w(lambda c: auth.create_user(c, SYSTEM, "alice", "a-long-password", "admin"))
    with pytest.raises(AlreadyExists):
        w(lambda c: auth.create_user(c, SYSTEM, "ALICE", "a-long-password", "viewer"))
    with pytest.raises(InvalidArgument, match="last admin"):
        w(lambda c: auth.update_user(c, SYSTEM, "alice", role="viewer"))
    with pytest.raises(InvalidArgument, match="last admin"):
        w(lambda c: auth.delete_user(c, SYSTEM, "alice"))
    with pytest.raises(InvalidArgument, match="role"):
        w(lambda c: auth.create_user(c, SYSTEM, "bob", "a-long-password", "root"))


def test_key_revoked_offline_stops_working_at_once(client, fleet) -> None:  # type: ignore[no-untyped-def]
    key = make_key(fleet, "admin", "temp")
    assert rpc(client, "UserService", "WhoAmI", key=key).status_code == 200
    conn = open_offline(fleet.settings.data_dir)
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        auth.revoke_api_key(conn, SYSTEM, "temp")
        conn.execute("COMMIT")
    conn.close()
    r = rpc(client, "UserService", "WhoAmI", key=key)
    assert r.status_code == 401 and "revoked" in r.json()["message"]


def test_wrong_secret_for_existing_key_id_is_refused(client, fleet) -> None:  # type: ignore[no-untyped-def]
    key = make_key(fleet, "admin")
    forged = key[: key.rindex("_") + 1] + "A" * 32
    assert rpc(client, "UserService", "WhoAmI", key=forged).status_code == 401
    assert rpc(client, "UserService", "WhoAmI", headers={"Authorization": "Basic abc"}).status_code == 401


def _make_user(fleet, name: str = "carol", role: str = "operator") -> None:  # type: ignore[no-untyped-def]
    fleet.store.write_sync(lambda c: auth.create_user(c, SYSTEM, name, "a-long-password", role))


def test_session_login_csrf_and_logout(client, fleet) -> None:  # type: ignore[no-untyped-def]
    _make_user(fleet)
    r = rpc(client, "UserService", "Login", {"username": "carol", "password": "a-long-password"})
    assert r.status_code == 200, r.text
    csrf = r.json()["csrf_token"]
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    # Connect GET with the cookie alone works; every POST needs the CSRF header too.
    assert client.get("/fleetd.v1.UserService/WhoAmI").json()["name"] == "carol"
    r = rpc(client, "AuditService", "List")
    assert r.status_code == 403 and "CSRF" in r.json()["message"]
    r = rpc(client, "AuditService", "List", headers={"X-CSRF-Token": "not-the-token"})
    assert r.status_code == 403
    r = rpc(client, "AuditService", "List", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200
    assert rpc(client, "UserService", "Logout", headers={"X-CSRF-Token": csrf}).status_code == 200
    client.cookies.clear()
    assert client.get("/fleetd.v1.UserService/WhoAmI").status_code == 401


def test_failed_logins_are_audited_and_rate_limited(client, fleet) -> None:  # type: ignore[no-untyped-def]
    _make_user(fleet)
    codes = [rpc(client, "UserService", "Login", {"username": "carol", "password": "wrong-password!"}).status_code
             for _ in range(fleet.settings.login_rate_per_minute + 2)]
    assert codes[0] == 401 and codes[-1] == 429
    r = rpc(client, "UserService", "Login", {"username": "carol", "password": "wrong-password!"})
    assert r.headers.get("retry-after")
    denied = fleet.store.read_sync(lambda c: c.execute(
        "SELECT COUNT(*) FROM audit_log WHERE action='auth.login' AND outcome='denied'").fetchone()[0])
    assert denied == fleet.settings.login_rate_per_minute


def test_unknown_user_and_wrong_password_look_alike(client, fleet) -> None:  # type: ignore[no-untyped-def]
    _make_user(fleet)
    a = rpc(client, "UserService", "Login", {"username": "nobody", "password": "whatever-pass"}).json()
    b = rpc(client, "UserService", "Login", {"username": "carol", "password": "whatever-pass"}).json()
    assert a == b


def test_admin_actions_are_audited(client, admin_key) -> None:  # type: ignore[no-untyped-def]
    r = rpc(client, "UserService", "CreateUser", {"username": "dave", "role": "viewer"}, key=admin_key)
    assert r.status_code == 200 and r.json()["password"]
    r = rpc(client, "UserService", "CreateKey", {"name": "ci", "role": "viewer"}, key=admin_key)
    key_id = r.json()["id"]
    entries = rpc(client, "AuditService", "List", {"action": "", "limit": 10}, key=admin_key).json()["entries"]
    actions = [(e["action"], e["actor_kind"]) for e in entries]
    assert ("user.create", "key") in actions and ("key.create", "key") in actions
    key_entry = next(e for e in entries if e["action"] == "key.create")
    assert key_entry["target"] == key_id
    # The secret never lands in the audit log.
    assert r.json()["key"] not in str(entries)


def test_check_login_raises_for_disabled_user(fleet) -> None:  # type: ignore[no-untyped-def]
    _make_user(fleet, "erin", "viewer")
    fleet.store.write_sync(lambda c: auth.update_user(c, SYSTEM, "erin", disabled=True))
    with pytest.raises(Unauthenticated):
        fleet.store.read_sync(lambda c: auth.check_login(c, "erin", "a-long-password"))
