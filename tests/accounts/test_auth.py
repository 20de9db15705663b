"""Admin auth: passwords, users, API keys, sessions with CSRF, login rate limit, audit entries."""

from __future__ import annotations

import pytest

from fleetd.accounts import users as auth
from fleetd.accounts.audit import SYSTEM
from fleetd.core.errors import AlreadyExists, InvalidArgument, Unauthenticated
from fleetd.fleet import open_offline
from fleetd.store.database import transaction
from tests.conftest import make_key, rpc

pytestmark = pytest.mark.both_backends
# Tests whose time goes to password hashing and the in-memory login limiter: the backend changes nothing there
# (the audit entries they write: test_audit_log.py, on both).
HASHING_ONLY = "password hashing and the in-memory login limiter"


def test_password_hash_verifies_and_is_salted() -> None:
    h1, h2 = auth.hash_password("correct horse"), auth.hash_password("correct horse")
    assert h1 != h2 and h1.startswith("scrypt$")
    assert auth.verify_password("correct horse", h1)
    assert not auth.verify_password("correct horsE", h1)
    assert not auth.verify_password("x", "garbage")


@pytest.mark.parametrize(("password", "message"), [
    ("short", "at least 10"),
    (" " * 12, "only spaces"),
    ("\t \n" * 4, "only spaces"),
    ("Carolina", "at least 10"),
    ("CAROLINA-X", "contain the username"),
    ("my-carolina-pw", "contain the username"),
])
def test_password_policy(password: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        auth.new_password(password, "carolina")


def test_password_policy_lets_short_names_be_letters() -> None:
    # Containment counts from 3 characters: user "v" may still have a "v" in their password.
    auth.check_password_strength("every valid word", "v")
    with pytest.raises(InvalidArgument, match="contain the username"):
        auth.check_password_strength("vvvvvvvvvv", "vvvvvvvvvv")
    assert all(len(auth.generate_password("a")) >= auth.MIN_PASSWORD for _ in range(20))


def test_password_policy_applies_to_every_entry_point(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    r = rpc(client, "UserService", "CreateUser", {"username": "frank", "role": "viewer",
                                                   "password": "Frank-is-my-name"}, key=admin_key)
    assert r.status_code == 400 and "username" in r.json()["message"]
    _make_user(fleet, "frank", "viewer")
    r = rpc(client, "UserService", "SetPassword", {"username": "frank", "password": " " * 16}, key=admin_key)
    assert r.status_code == 400 and "only spaces" in r.json()["message"]
    with pytest.raises(InvalidArgument, match="username"):
        fleet.store.write_sync(lambda c: auth.set_password(c, SYSTEM, "frank", "xx-FRANK-xx"))


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
    # Another process's connection: an offline CLI command's on SQLite, another server's on PostgreSQL.
    conn = open_offline(fleet.settings.data_dir) if fleet.store.dsn is None else fleet.store.connect(readonly=False)
    with transaction(conn):
        auth.revoke_api_key(conn, SYSTEM, "temp")
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


@pytest.mark.sqlite_only(HASHING_ONLY)
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


@pytest.mark.sqlite_only(HASHING_ONLY)
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


def _login(client, username: str, password: str = "a-long-password") -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Log in on ``client`` (its cookie jar keeps the session); the headers for state-changing calls."""
    r = rpc(client, "UserService", "Login", {"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"X-CSRF-Token": r.json()["csrf_token"]}


def _key_of(client, username: str) -> str:  # type: ignore[no-untyped-def]
    """An admin API key created by ``username`` (an admin, not the last) through their browser session."""
    csrf = _login(client, username)
    r = rpc(client, "UserService", "CreateKey", {"name": f"{username}-ci", "role": "admin"}, headers=csrf)
    assert r.status_code == 200, r.text
    client.cookies.clear()
    return str(r.json()["key"])


def test_keys_of_a_disabled_user_are_suspended_until_enabled(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    _make_user(fleet, "boss", "admin")
    _make_user(fleet, "kim", "admin")
    key = _key_of(client, "kim")
    # A key made with kim's key acts for kim too.
    r = rpc(client, "UserService", "CreateKey", {"name": "kim-child", "role": "viewer"}, key=key)
    child = r.json()["key"]
    assert r.json()["owner_id"] == fleet.store.read_sync(lambda c: auth.get_user(c, "kim")).id
    assert rpc(client, "AuditService", "List", key=key).status_code == 200

    assert rpc(client, "UserService", "UpdateUser", {"username": "kim", "disabled": True},
               key=admin_key).status_code == 200
    for k in (key, child):
        r = rpc(client, "UserService", "WhoAmI", key=k)
        assert r.status_code == 401 and "kim, who is disabled" in r.json()["message"]
    keys = rpc(client, "UserService", "ListKeys", key=admin_key).json()["keys"]
    assert {k["name"]: k["suspended"] for k in keys} == {"test-admin": False, "kim-ci": True, "kim-child": True}

    assert rpc(client, "UserService", "UpdateUser", {"username": "kim", "disabled": False},
               key=admin_key).status_code == 200
    assert rpc(client, "AuditService", "List", key=key).status_code == 200


def test_keys_of_a_deleted_user_are_revoked_and_audited(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    _make_user(fleet, "boss", "admin")
    _make_user(fleet, "lou", "admin")
    key = _key_of(client, "lou")
    assert rpc(client, "UserService", "DeleteUser", {"username": "lou"}, key=admin_key).status_code == 200
    r = rpc(client, "UserService", "WhoAmI", key=key)
    assert r.status_code == 401 and "revoked" in r.json()["message"]
    keys = rpc(client, "UserService", "ListKeys", {"include_revoked": True}, key=admin_key).json()["keys"]
    assert next(k for k in keys if k["name"] == "lou-ci")["revoked_at"]
    entries = rpc(client, "AuditService", "List", {"action": "key.revoke"}, key=admin_key).json()["entries"]
    assert any("lou deleted" in str(e["details"]) for e in entries)
    # A new user with the same name does not revive the key.
    _make_user(fleet, "lou", "admin")
    assert rpc(client, "UserService", "WhoAmI", key=key).status_code == 401


def test_a_key_never_does_more_than_its_owner_may_now(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    _make_user(fleet, "boss", "admin")
    _make_user(fleet, "mo", "admin")
    key = _key_of(client, "mo")
    assert rpc(client, "UserService", "ListUsers", key=key).status_code == 200
    rpc(client, "UserService", "UpdateUser", {"username": "mo", "role": "viewer"}, key=admin_key)
    assert rpc(client, "UserService", "WhoAmI", key=key).json()["role"] == "viewer"
    r = rpc(client, "UserService", "ListUsers", key=key)
    assert r.status_code == 403 and "admin role" in r.json()["message"]


def test_must_change_password_is_enforced_by_the_server(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    r = rpc(client, "UserService", "CreateUser", {"username": "nia", "role": "admin"}, key=admin_key)
    first = r.json()["password"]
    csrf = _login(client, "nia", first)
    r = rpc(client, "UserService", "ListUsers", headers=csrf)
    assert r.status_code == 403 and r.json()["message"].startswith("change your password first")
    assert client.get("/metrics").status_code == 403
    # What the web UI needs to show the change form, and the change itself, answer.
    assert client.get("/fleetd.v1.UserService/WhoAmI").json()["must_change_password"] is True
    r = rpc(client, "UserService", "ChangePassword", {"old_password": first, "new_password": "a-fresh-password"},
            headers=csrf)
    assert r.status_code == 200 and r.json()["must_change_password"] is False
    csrf = _login(client, "nia", "a-fresh-password")
    assert rpc(client, "UserService", "ListUsers", headers=csrf).status_code == 200
    # Logout answers a user who has not changed their password yet too.
    rpc(client, "UserService", "SetPassword", {"username": "nia", "password": "set-by-an-admin"}, key=admin_key)
    csrf = _login(client, "nia", "set-by-an-admin")
    assert rpc(client, "UserService", "Logout", headers=csrf).status_code == 200


def test_api_keys_do_not_carry_the_password_change(client, fleet) -> None:  # type: ignore[no-untyped-def]
    # Keys are not passwords: a key made by a user who now must change their password still works.
    _make_user(fleet, "boss", "admin")
    _make_user(fleet, "oz", "admin")
    key = _key_of(client, "oz")
    fleet.store.write_sync(lambda c: auth.set_password(c, SYSTEM, "oz", "set-by-an-admin", must_change_password=True))
    assert rpc(client, "UserService", "ListUsers", key=key).status_code == 200


def test_migration_gives_existing_keys_their_owner_from_the_audit_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil
    import time

    from fleetd.store.database import available_migrations, connect, migrate

    before = tmp_path / "before"
    before.mkdir()
    for version, _, path in available_migrations():
        if version < 8:
            shutil.copy(path, before)
    conn = connect(tmp_path / "fleetd.db")
    migrate(conn, before)
    t = time.time()
    conn.execute("INSERT INTO users (id, username, password_hash, role, created_at, updated_at) "
                 "VALUES ('usr_a', 'ann', 'x', 'admin', ?, ?)", (t, t))
    made = {"k_user": ("user", "usr_a"), "k_child": ("key", "k_user"), "k_grandchild": ("key", "k_child"),
            "k_gone": ("user", "usr_deleted"), "k_offline": ("local", None)}
    for kid, (kind, actor) in made.items():
        conn.execute("INSERT INTO api_keys (id, name, role, secret_hash, created_at) VALUES (?, ?, 'admin', x'00', ?)",
                     (kid, kid, t))
        conn.execute("INSERT INTO audit_log (ts, actor_kind, actor_id, action, target) VALUES (?, ?, ?, "
                     "'key.create', ?)", (t, kind, actor, kid))
    migrate(conn)
    rows = {r["id"]: (r["owner_user_id"], r["revoked_at"] is not None)
            for r in conn.execute("SELECT id, owner_user_id, revoked_at FROM api_keys")}
    conn.close()
    assert rows == {"k_user": ("usr_a", False), "k_child": ("usr_a", False), "k_grandchild": ("usr_a", False),
                    "k_gone": ("usr_deleted", True), "k_offline": (None, False)}
