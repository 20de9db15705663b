"""The hub's in-memory directory: one DeviceRuntime per device carries status, auth epoch and last seen."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import TestClient

from fleetd.app import create_app
from fleetd.core.config import Settings
from fleetd.devices.registry import DeviceRuntime
from fleetd.fleet import Fleet
from tests.conftest import make_key, rpc
from tests.devices.test_devices import active_device

pytestmark = pytest.mark.both_backends


def test_record_replacement_keeps_last_seen_and_revocation_stops_tokens(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    assert d.call("CheckIn", {}).status_code == 200
    rt = fleet.hub.runtime[d.device_id]
    seen = rt.last_seen
    assert seen is not None and rt.epoch is not None
    assert fleet.hub.last_seen(d.device_id) == seen

    # An admin change replaces the record: the new one keeps the last contact, the token keeps working.
    r = rpc(client, "DeviceAdminService", "UpdateDevice", {"id": d.device_id, "poll_interval": 120}, key=admin_key)
    assert r.status_code == 200, r.text
    new = fleet.hub.runtime[d.device_id]
    assert new.poll_interval == 120 and new.last_seen == seen and new.epoch == rt.epoch
    assert d.call("CheckIn", {}).status_code == 200

    assert rpc(client, "DeviceAdminService", "RevokeDevice", {"id": d.device_id}, key=admin_key).status_code == 200
    assert fleet.hub.runtime[d.device_id].epoch is None
    assert fleet.hub.tokens.verify(d.token) is None
    assert d.call("CheckIn", {}).status_code == 401


def test_tokens_follow_the_shared_directory(fleet) -> None:  # type: ignore[no-untyped-def]
    hub = fleet.hub
    assert hub.tokens.devices is hub.runtime  # shared, not a copy that could drift
    hub.set_device("dev_x", DeviceRuntime("active", 60, "sim"), 3)
    token = hub.tokens.issue("dev_x", 3)
    assert hub.tokens.verify(token) is not None
    hub.set_device("dev_x", DeviceRuntime("active", 60, "sim"), 4)  # epoch bumped: old tokens die
    assert hub.tokens.verify(token) is None
    token = hub.tokens.issue("dev_x", 4)
    assert hub.tokens.verify(token) is not None
    hub.set_device("dev_x", DeviceRuntime("active", 60, "sim"), None)  # e.g. a DDI device: no bearer tokens
    assert hub.tokens.verify(token) is None
    hub.set_device("dev_x", DeviceRuntime("active", 60, "sim"), 4)
    assert hub.tokens.verify(token) is not None  # the cached verification checks the epoch again
    hub.set_device("dev_x", None, None)
    assert "dev_x" not in hub.runtime and hub.tokens.verify(token) is None and hub.last_seen("dev_x") is None


def test_last_seen_survives_a_restart(settings: Settings) -> None:
    fleet = Fleet(settings)
    try:
        key = make_key(fleet, "admin")
        with TestClient(app=create_app(fleet)) as client:
            d = active_device(client, key)
            assert d.call("CheckIn", {}).status_code == 200
            seen = fleet.hub.last_seen(d.device_id)
            assert seen is not None
            revoked = active_device(client, key)
            assert rpc(client, "DeviceAdminService", "RevokeDevice", {"id": revoked.device_id},
                       key=key).status_code == 200
        # the lifespan's end wrote every last-seen time, including those not yet due
    finally:
        fleet.close()
    again = Fleet(settings)
    try:
        rt: Any = again.hub.runtime[d.device_id]
        assert rt.last_seen == seen and rt.status == "active" and rt.epoch is not None
        assert again.hub.runtime[revoked.device_id].epoch is None
        assert again.hub.tokens.verify(d.token) is not None
        assert again.hub.tokens.verify(revoked.token) is None
    finally:
        again.close()
