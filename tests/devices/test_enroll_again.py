"""Enrolling a hardware id that is already known (docs/protocol.md §5, "Enrolling again"), re-key tokens, and the
limits on what an unauthenticated Enroll may store: inventory caps, the pending-device cap, pending expiry."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from fleet_agent import inventory as agent_inventory
from fleetd.app import create_app
from fleetd.core.config import Settings
from fleetd.devices.inventory import Inventory, inventory_dict
from fleetd.fleet import Fleet
from fleetd.maintenance import expire_pending
from tests.conftest import make_key, rpc
from tests.ddi.test_ddi_server import Ddi, target
from tests.devices.test_devices import active_device, make_token
from tests.support.devices_helper import TestDevice

pytestmark = pytest.mark.both_backends


def token_row(fleet: Fleet, token: str) -> dict[str, Any]:
    tid = token.split(".")[2]
    return dict(fleet.store.read_sync(lambda c: c.execute("SELECT * FROM join_tokens WHERE id = ?",
                                                          (tid,)).fetchone()))


def audit_actions(fleet: Fleet, target: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in fleet.store.read_sync(lambda c: c.execute(
        "SELECT action, outcome FROM audit_log WHERE target = ? ORDER BY id", (target,)).fetchall())]


def admin(client: Any, key: str, method: str, body: dict[str, Any], status: int = 200) -> Any:
    r = rpc(client, "DeviceAdminService", method, body, key=key)
    assert r.status_code == status, r.text
    return r.json()


def victim_with_config(client: Any, key: str) -> tuple[TestDevice, str]:
    """An active device tagged site=a with an open config action (the payload an attacker would want)."""
    d = TestDevice(client)
    assert d.enroll(make_token(client, key, tags={"site": "a"})).status_code == 200
    assert d.authenticate().status_code == 200
    [action] = admin(client, key, "CreateAction", {"device_ids": [d.device_id], "kind": "config",
                                                   "params": {"wifi_psk": "secret"}})["action_ids"]
    return d, action


# --- item 1: a join token no longer takes over an existing device ------------------------------------

def test_a_join_token_of_another_site_does_not_take_over_an_active_device(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    victim, action = victim_with_config(client, admin_key)
    other_site = make_token(client, admin_key, tags={"site": "b"}, uses=1)

    attacker = TestDevice(client, hardware_id=victim.hardware_id)
    r = attacker.enroll(other_site)
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "already_exists"
    assert r.json()["message"] == (
        f"hardware id {victim.hardware_id} is already enrolled with another key (did this device lose its key?). "
        f"An admin runs 'fleetd devices rekey {victim.hardware_id}' and gives the device the token it prints, or "
        "deletes the device.")
    assert token_row(fleet, other_site)["uses"] == 0  # not used: still good for the device it was meant for

    # The victim keeps its bearer token, its key, its action and its tags.
    checkin = victim.call("CheckIn", {})
    assert checkin.status_code == 200 and [a["id"] for a in checkin.json()["actions"]] == [action]
    assert victim.authenticate().status_code == 200
    assert admin(client, admin_key, "GetDevice", {"id": victim.device_id})["tags"] == {"site": "a"}
    assert ("device.rekey_refused", "denied") in audit_actions(fleet, victim.device_id)


def test_a_rekey_token_replaces_the_key_of_its_own_device_only(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    victim, action = victim_with_config(client, admin_key)
    bystander = active_device(client, admin_key)
    assert victim.call("CheckIn", {}).status_code == 200
    answer = admin(client, admin_key, "RekeyDevice", {"id": victim.hardware_id})
    rekey = answer["token"]["token"]
    assert answer["token"]["device_id"] == victim.device_id and answer["token"]["max_uses"] == 1
    assert answer["device"]["id"] == victim.device_id and answer["device"]["online"]
    assert "fleet-agent enroll" in answer["agent_command"] and rekey in answer["agent_command"]
    listed = rpc(client, "EnrollmentService", "ListTokens", {}, key=admin_key).json()["tokens"]
    assert [t["device_id"] for t in listed if t["id"] == answer["token"]["id"]] == [victim.device_id]

    # Not for another device, not for a new hardware id: refused and not used.
    for hardware_id in (bystander.hardware_id, "hw-brand-new"):
        r = TestDevice(client, hardware_id=hardware_id).enroll(rekey)
        assert r.status_code == 403, r.text
        assert r.json()["message"] == f"this token re-keys device {victim.device_id} only"
    assert token_row(fleet, rekey)["uses"] == 0
    assert bystander.call("CheckIn", {}).status_code == 200

    # For its device: the key is replaced; id, tags and the open action stay; bearer tokens issued before die.
    renewed = TestDevice(client, hardware_id=victim.hardware_id)
    r = renewed.enroll(rekey)
    assert r.status_code == 200 and r.json()["device_id"] == victim.device_id and r.json()["status"] == "active"
    assert victim.call("CheckIn", {}).status_code == 401
    assert victim.authenticate().status_code == 401  # the old key no longer signs for it
    assert renewed.authenticate().status_code == 200
    assert [a["id"] for a in renewed.call("CheckIn", {}).json()["actions"]] == [action]
    assert admin(client, admin_key, "GetDevice", {"id": victim.device_id})["tags"] == {"site": "a"}
    assert token_row(fleet, rekey)["uses"] == 1
    assert ("device.rekey", "ok") in audit_actions(fleet, victim.device_id)
    assert ("device.rekey_token", "ok") in audit_actions(fleet, victim.device_id)
    # Single use: a third key with the same token gets nowhere.
    assert TestDevice(client, hardware_id=victim.hardware_id).enroll(rekey).status_code == 401


def test_only_admins_make_rekey_tokens_and_never_for_a_revoked_device(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    r = rpc(client, "DeviceAdminService", "RekeyDevice", {"id": d.device_id}, key=make_key(fleet, "operator"))
    assert r.status_code == 403
    admin(client, admin_key, "RevokeDevice", {"id": d.device_id})
    r = rpc(client, "DeviceAdminService", "RekeyDevice", {"id": d.device_id}, key=admin_key)
    assert r.status_code == 400 and "revoked" in r.json()["message"]


def test_a_pending_squatter_is_replaced_by_the_device_with_a_token(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    # Anyone may enroll any hardware id without a token; that proves nothing, so it must not lock the real
    # device out. (This row of the table is the old behaviour, kept: the test guards it against the new rule.)
    squatter = TestDevice(client)
    assert squatter.enroll().json()["status"] == "pending"
    assert squatter.authenticate().status_code == 200
    real = TestDevice(client, hardware_id=squatter.hardware_id)
    token = make_token(client, admin_key, tags={"site": "a"}, uses=1)
    r = real.enroll(token)
    assert r.status_code == 200 and r.json()["status"] == "active"
    assert squatter.call("CheckIn", {}).status_code == 401
    assert real.authenticate().status_code == 200 and real.call("CheckIn", {}).json()["status"] == "active"
    assert token_row(fleet, token)["uses"] == 1
    # Without a token the real device is told what to do instead.
    later = TestDevice(client, hardware_id=squatter.hardware_id).enroll()
    assert later.status_code == 409 and "fleetd devices rekey" in later.json()["message"]


# --- item 3: what an unauthenticated Enroll may store ------------------------------------------------

@pytest.mark.parametrize("inventory, fragment", [
    ({"hostname": "h" * 257}, "hostname"),
    ({"addresses": ["10.0.0.1"] * 129}, "addresses"),
    ({"addresses": ["a" * 65]}, "addresses"),
    ({"extra": {f"k{i}": "v" for i in range(101)}}, "extra"),
    ({"extra": {"k" * 129: "v"}}, "extra"),
    ({"extra": {"k": "v" * 1025}}, "extra"),
    ({"extra": {f"k{i:03d}": "v" * 1000 for i in range(40)}}, "at most 32768 are stored"),
])
def test_inventory_is_capped_at_enroll_and_check_in(client, fleet, admin_key, inventory, fragment) -> None:  # type: ignore[no-untyped-def]
    d = TestDevice(client)
    r = d.enroll(inventory=inventory)
    assert r.status_code == 400 and fragment in r.json()["message"], r.text
    assert fleet.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM devices").fetchone()[0]) == 0
    d = active_device(client, admin_key)
    r = d.call("CheckIn", {"inventory": inventory})
    assert r.status_code == 400 and fragment in r.json()["message"], r.text
    asyncio.run(fleet.hub.flush())
    assert admin(client, admin_key, "GetDevice", {"id": d.device_id})["inventory"] == {}


def test_the_agent_keeps_its_inventory_within_the_limits(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A host with a container per veth has hundreds of link-local addresses; the server would refuse them all.
    many = [f"fe80::{i:x}" for i in range(300)]
    monkeypatch.setattr(agent_inventory, "addresses", lambda: many)
    monkeypatch.setattr(agent_inventory, "read_model", lambda root: "m" * 1000)
    inv = agent_inventory.collect()
    assert inv["addresses"] == many[:agent_inventory.MAX_ADDRESSES] and len(inv["model"]) == 256
    inventory_dict(msgspec.convert(inv, Inventory))  # within every limit


def test_ddi_config_data_cannot_grow_the_inventory_without_bound(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    tok = target(client, admin_key, "ctl-grow", device_type="sim")
    dev = Ddi(client, "ctl-grow", tok["token"])
    for batch in range(2):  # each request is within hawkBit's 100 attributes; merged they would not be
        r = dev.config({f"b{batch}-{i}": "v" for i in range(60)})
        assert r.status_code == (200 if batch == 0 else 400), r.text
    assert "at most 100 config data attributes" in r.json()["message"]
    assert len(admin(client, admin_key, "GetDevice", {"id": tok["device_id"]})["inventory"]["extra"]) == 60
    assert dev.config({f"r{i}": "v" for i in range(60)}, "replace").status_code == 200


@pytest.fixture
def capped(tmp_path: Path) -> Any:
    settings = Settings(data_dir=str(tmp_path / "capped"), tls=False, mdns=False, host="127.0.0.1", port=8420,
                        max_pending_devices=2, pending_expiry_days=1)
    f = Fleet(settings)
    with TestClient(app=create_app(f)) as c:
        yield f, c
    f.close()


def test_pending_devices_are_capped(capped) -> None:  # type: ignore[no-untyped-def]
    fleet, client = capped
    for _ in range(2):
        assert TestDevice(client).enroll().json()["status"] == "pending"
    r = TestDevice(client).enroll()
    assert r.status_code == 429 and r.json()["code"] == "resource_exhausted" and r.headers["retry-after"] == "600"
    assert r.json()["message"] == ("2 devices are waiting to be claimed; claim or reject some ('fleetd devices list "
                                   "--status pending') or raise max_pending_devices")
    # A device with a token is not waiting for anyone: it still enrolls.
    admin_key = make_key(fleet, "admin")
    assert TestDevice(client).enroll(make_token(client, admin_key)).json()["status"] == "active"


def test_silent_token_less_pending_devices_expire(capped) -> None:  # type: ignore[no-untyped-def]
    fleet, client = capped
    admin_key = make_key(fleet, "admin")
    claimed = TestDevice(client)
    code = claimed.enroll().json()["claim_code"]
    assert rpc(client, "EnrollmentService", "ClaimDevice", {"claim_code": code}, key=admin_key).status_code == 200
    silent, talking = TestDevice(client), TestDevice(client)
    for d in (silent, talking):
        assert d.enroll().json()["status"] == "pending"
        assert d.authenticate().status_code == 200
    with_token = active_device(client, admin_key)
    two_days_ago = "strftime('%s', 'now') - 2 * 86400"
    fleet.store.write_sync(lambda c: c.execute(f"UPDATE devices SET created_at = {two_days_ago}, last_seen = NULL"))
    fleet.store.write_sync(lambda c: c.execute(f"UPDATE devices SET last_seen = {two_days_ago} + 86400 + 3600 "
                                               "WHERE id = ?", (talking.device_id,)))

    assert asyncio.run(expire_pending(fleet)) == "1 deleted"
    left = {d["id"] for d in admin(client, admin_key, "ListDevices", {})["devices"]}
    assert left == {talking.device_id, claimed.device_id, with_token.device_id}
    assert audit_actions(fleet, silent.device_id)[-1] == ("device.expire", "ok")
    assert silent.call("CheckIn", {}).status_code == 401  # the hub forgot it too
    assert json.loads(fleet.store.read_sync(lambda c: c.execute(
        "SELECT details FROM audit_log WHERE action = 'device.expire'").fetchone()[0]))["hardware_id"] == \
        silent.hardware_id
