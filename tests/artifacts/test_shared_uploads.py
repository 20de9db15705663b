"""Upload sessions across replicas (artifacts/uploads.py SharedUploadSessions): CreateUpload on one replica, the PUT
on another; single use, with one winner when two replicas claim the same upload."""

from __future__ import annotations

import asyncio

import pytest
from litestar.testing import TestClient

from fleetd.accounts.users import Principal
from fleetd.app import asgi_app
from fleetd.artifacts.uploads import PendingArtifact, SharedUploadSessions, UploadSessions, sessions_for
from fleetd.core.errors import NotFound
from fleetd.fleet import Fleet
from tests.artifacts.test_artifacts import error, open_upload, put
from tests.conftest import make_key, rpc


def test_the_sessions_are_chosen_by_the_store(two_replicas: list[Fleet], fleet: Fleet) -> None:
    assert type(sessions_for(fleet.store)) is UploadSessions
    assert all(type(f.uploads) is SharedUploadSessions for f in two_replicas)


def test_an_upload_opened_on_one_replica_is_sent_to_another(two_replicas: list[Fleet]) -> None:
    one, other = two_replicas
    key, someone = make_key(one, "operator"), make_key(one, "operator", "someone-else")
    spec = {"restart": "always", "env": {"MODE": "x"}}
    with TestClient(app=asgi_app(one)) as c1, TestClient(app=asgi_app(other)) as c2:
        ticket = open_upload(c1, key, size=3, kind="app", install_spec=spec).json()
        status, code, _ = error(put(c2, someone, ticket, b"abc"))
        assert (status, code) == (403, "permission_denied")  # and not used up by the refusal
        r = put(c2, key, ticket, b"abc")
        assert r.status_code == 201, r.text
        a = r.json()
        assert (a["name"], a["version"], a["size"], a["install_spec"]["env"]) == ("sensor-app", "1.0.0", 3,
                                                                                  {"MODE": "x"})
        # Recorded in the one database: replica 1 lists it.
        listed = rpc(c1, "ArtifactService", "GetArtifact", {"id": "sensor-app@1.0.0"}, key=key).json()
        assert listed["sha256"] == a["sha256"]
        for c in (c1, c2):  # used: on neither replica again
            status, code, message = error(put(c, key, ticket, b"abc"))
            assert (status, code) == (404, "not_found") and "already used" in message
    assert one.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM upload_sessions").fetchone()[0]) == 0


def test_two_replicas_claiming_one_upload_give_it_to_one(two_replicas: list[Fleet]) -> None:
    one, other = two_replicas
    who = Principal("key", "k1", "ci", "operator")
    pending = PendingArtifact(name="a", version="1.0.0", kind="app", device_types=["sim"], file_name="a.bin",
                              size=None, install_spec=None)

    async def race() -> list[str]:
        session = await one.uploads.open(pending, who)

        async def take(f: Fleet) -> str:
            try:
                return (await f.uploads.take(session.id, who)).artifact.name
            except NotFound:
                return "refused"
        return sorted(await asyncio.gather(*(take(f) for f in (one, other, one, other))))

    assert asyncio.run(race()) == ["a", "refused", "refused", "refused"]


def test_expired_sessions_are_refused_and_deleted(two_replicas: list[Fleet]) -> None:
    one, other = two_replicas
    who = Principal("user", "u1", "carol", "operator")
    pending = PendingArtifact(name="a", version="1.0.0", kind="app", device_types=["sim"], file_name="a.bin",
                              size=3, install_spec=None)
    one.uploads.ttl = 0.0

    async def go() -> None:
        old = await one.uploads.open(pending, who)
        with pytest.raises(NotFound, match="expired"):
            await other.uploads.take(old.id, who)
        await other.uploads.open(pending, who)  # opening deletes the expired ones

    asyncio.run(go())
    assert one.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM upload_sessions").fetchone()[0]) == 1
