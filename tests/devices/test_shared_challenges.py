"""Device authentication challenges across replicas (devices/challenges.py): GetChallenge on one replica,
Authenticate on another; still single use, bound to the device, and expiring."""

from __future__ import annotations

import asyncio
import base64

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


def _used(f: Fleet) -> int:
    return int(f.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM used_challenges").fetchone()[0]))


def test_the_challenges_are_chosen_by_the_store(two_replicas: list[Fleet], fleet: Fleet) -> None:
    assert type(fleet.challenges) is MemoryChallenges
    assert all(type(f.challenges) is SignedChallenges for f in two_replicas)


def test_a_challenge_from_one_replica_authenticates_on_another_once(two_replicas: list[Fleet]) -> None:
    one, other = two_replicas
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


def test_a_nonce_is_bound_to_its_device_and_its_mac(two_replicas: list[Fleet]) -> None:
    one, other = two_replicas
    nonce = one.challenges.new("dev-a")
    assert len(nonce) <= 64  # docs/protocol.md; the RTOS shim's buffer holds 79 (agent/rtos/src/client.c)
    body, _, mac = nonce.partition(".")
    for device, bad in (("dev-b", nonce), ("dev-a", f"{body}.{mac[:-2]}AA"), ("dev-a", "not a nonce"),
                        ("dev-a", "%%%.x"), ("dev-a", "")):
        with pytest.raises(Unauthenticated, match="unknown challenge"):
            asyncio.run(other.challenges.take(device, bad))
    asyncio.run(other.challenges.take("dev-a", nonce))
    assert _used(one) == 1


def test_expired_challenges_are_refused_and_their_uses_forgotten(two_replicas: list[Fleet]) -> None:
    one, other = two_replicas
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
