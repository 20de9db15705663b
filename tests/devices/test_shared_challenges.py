"""Device authentication challenges across replicas (devices/challenges.py): GetChallenge on one replica,
Authenticate on another; still single use, bound to the device, and expiring."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from fleetd.app import asgi_app
from fleetd.core.errors import Unauthenticated
from fleetd.devices.challenges import MemoryChallenges, SignedChallenges
from fleetd.devices.devauth import challenge_message
from fleetd.fleet import Fleet
from tests.conftest import make_key
from tests.devices.test_devices import make_token
from tests.support.devices_helper import TestDevice
from tests.support.replica_fleets import replicas


@pytest.fixture
def two(tmp_path: Path, postgres_server: Any, pg_schema: str) -> Iterator[list[Fleet]]:
    name = postgres_server.create_database(template=pg_schema)
    try:
        with replicas(tmp_path, postgres_server.dsn(name)) as fleets:
            yield fleets
    finally:
        postgres_server.drop_database(name)


def _used(f: Fleet) -> int:
    return int(f.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM used_challenges").fetchone()[0]))


def test_the_challenges_are_chosen_by_the_store(two: list[Fleet], fleet: Fleet) -> None:
    assert type(fleet.challenges) is MemoryChallenges
    assert all(type(f.challenges) is SignedChallenges for f in two)


def test_a_challenge_from_one_replica_authenticates_on_another_once(two: list[Fleet]) -> None:
    one, other = two
    key = make_key(one, "admin")
    with TestClient(app=asgi_app(one)) as c1, TestClient(app=asgi_app(other)) as c2:
        d = TestDevice(c1)
        assert d.enroll(make_token(c1, key)).status_code == 200
        nonce = d.call("GetChallenge", {"device_id": d.device_id}, auth=False).json()["nonce"]
        sig = base64.b64encode(d.key.sign(challenge_message(d.device_id, nonce))).decode()
        body = {"device_id": d.device_id, "nonce": nonce, "signature": sig}
        d.client = c2
        r = d.call("Authenticate", body, auth=False)
        assert r.status_code == 200, r.text
        assert r.json()["token"].startswith("fdt.")
        for c in (c1, c2):  # used: refused on every replica
            d.client = c
            r = d.call("Authenticate", body, auth=False)
            assert r.status_code == 401 and "already used" in r.json()["message"]
    assert _used(one) == 1


def test_a_nonce_is_bound_to_its_device_and_its_mac(two: list[Fleet]) -> None:
    one, other = two
    nonce = one.challenges.new("dev-a")
    assert len(nonce) <= 64  # docs/protocol.md; the RTOS shim's buffer holds 79 (agent/rtos/src/client.c)
    body, _, mac = nonce.partition(".")
    for device, bad in (("dev-b", nonce), ("dev-a", f"{body}.{mac[:-2]}AA"), ("dev-a", "not a nonce"),
                        ("dev-a", "%%%.x"), ("dev-a", "")):
        with pytest.raises(Unauthenticated, match="unknown challenge"):
            asyncio.run(other.challenges.take(device, bad))
    asyncio.run(other.challenges.take("dev-a", nonce))
    assert _used(one) == 1


def test_expired_challenges_are_refused_and_their_uses_forgotten(two: list[Fleet]) -> None:
    one, other = two
    assert isinstance(one.challenges, SignedChallenges)
    asyncio.run(one.challenges.take("dev-a", one.challenges.new("dev-a")))
    assert _used(one) == 1
    one.challenges.ttl = -2  # every new one is expired already
    with pytest.raises(Unauthenticated, match="expired"):
        asyncio.run(other.challenges.take("dev-a", one.challenges.new("dev-a")))
    # The row of a use is kept until its nonce expires, then the next use deletes it.
    one.store.write_sync(lambda c: c.execute("UPDATE used_challenges SET expires_at = expires_at - 120"))
    one.challenges.ttl = 60
    asyncio.run(other.challenges.take("dev-a", one.challenges.new("dev-a")))
    assert _used(one) == 1
