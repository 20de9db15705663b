"""Browser sessions and the login limit across replicas: sessions live only in the sessions table, so a logout, a
disabled user or a new password on one replica ends the session on every other at once (no per-process cache); the
login limit is counted in the database (store/ratelimits.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from fleetd.accounts import users as auth
from fleetd.accounts.audit import SYSTEM
from fleetd.app import asgi_app
from fleetd.fleet import Fleet
from tests.conftest import rpc
from tests.support.replica_fleets import replicas


def _login(client: TestClient[Any]) -> dict[str, str]:
    r = rpc(client, "UserService", "Login", {"username": "carol", "password": "a-long-password"})
    assert r.status_code == 200, r.text
    return {"X-CSRF-Token": r.json()["csrf_token"]}


@pytest.mark.parametrize("end", ["logout", "disable", "new password"])
def test_a_session_ended_on_one_replica_is_refused_by_the_other(two_replicas: list[Fleet], end: str) -> None:
    one, other = two_replicas
    one.store.write_sync(lambda c: auth.create_user(c, SYSTEM, "carol", "a-long-password", "admin"))
    one.store.write_sync(lambda c: auth.create_user(c, SYSTEM, "boss", "a-long-password", "admin"))
    with TestClient(app=asgi_app(one)) as c1, TestClient(app=asgi_app(other)) as c2:
        csrf = _login(c1)
        c2.cookies.update(c1.cookies)
        # The session made through replica 1 works on replica 2 (it read it from the database).
        assert c2.get("/fleetd.v1.UserService/WhoAmI").json()["name"] == "carol"
        assert rpc(c2, "AuditService", "List", headers=csrf).status_code == 200
        if end == "logout":
            assert rpc(c1, "UserService", "Logout", headers=csrf).status_code == 200
        elif end == "disable":
            one.store.write_sync(lambda c: auth.update_user(c, SYSTEM, "carol", disabled=True))
        else:
            one.store.write_sync(lambda c: auth.set_password(c, SYSTEM, "carol", "another-long-password"))
        r = c2.get("/fleetd.v1.UserService/WhoAmI")
        assert r.status_code == 401, r.text


def test_a_login_hammered_through_two_replicas_meets_one_limit(tmp_path: Path, postgres_server: Any,
                                                               pg_schema: str) -> None:
    name = postgres_server.create_database(template=pg_schema)
    try:
        with replicas(tmp_path, postgres_server.dsn(name), login_rate_per_minute=4) as (one, other):
            one.store.write_sync(lambda c: auth.create_user(c, SYSTEM, "carol", "a-long-password", "admin"))
            with TestClient(app=asgi_app(one)) as c1, TestClient(app=asgi_app(other)) as c2:
                codes = [rpc(c, "UserService", "Login", {"username": "carol", "password": "wrong-password!"}
                             ).status_code for c in (c1, c2) * 3]
                # Each replica alone would have let 4 through: together they let 4 through.
                assert codes == [401] * 4 + [429] * 2
                r = rpc(c2, "UserService", "Login", {"username": "carol", "password": "a-long-password"})
                assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    finally:
        postgres_server.drop_database(name)
