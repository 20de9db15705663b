"""What a new user meets first (issue 15): how soon devices pick up actions, device refs by the start of an id,
error messages that say what exists, and the device count of each rollout stage at creation."""

from __future__ import annotations

from typing import Any

import pytest

from fleetd.devices import actions
from fleetd.rollouts.progress import stage_of
from fleetd.rollouts.rules import bucket
from tests.conftest import rpc
from tests.devices.test_devices import active_device, make_artifact
from tests.rollouts.test_rollouts import enroll
from tests.support.devices_helper import TestDevice

pytestmark = pytest.mark.both_backends

ADMIN = "DeviceAdminService"


def admin(client: Any, key: str, method: str, body: dict[str, Any]) -> Any:
    return rpc(client, ADMIN, method, body, key=key)


# --- check-in interval (item 4) ---------------------------------------------------------------------------

def test_next_checkin_is_sooner_only_while_an_action_is_worked_on(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    make_artifact(fleet)
    idle = d.call("CheckIn", {}).json()
    assert (idle["poll_interval"], idle["next_checkin"]) == (60, 60)

    made = admin(client, admin_key, "Deploy", {"device_ids": [d.device_id], "artifact": "app@1.0.0"}).json()
    assert made["pickup_within_seconds"] == 60  # what the CLI says: within ~60 s
    busy = d.call("CheckIn", {}).json()
    assert [a["state"] for a in busy["actions"]] == ["queued"]
    assert (busy["poll_interval"], busy["next_checkin"]) == (60, actions.WORKING_CHECKIN)
    assert d.call("ReportStatus", {"action_id": busy["actions"][0]["id"], "state": "succeeded"}).status_code == 200
    done = d.call("CheckIn", {}).json()
    assert (done["actions"], done["next_checkin"]) == ([], 60)


def test_an_offer_waiting_for_consent_keeps_the_plain_interval(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    make_artifact(fleet)
    admin(client, admin_key, "Deploy", {"device_ids": [d.device_id], "artifact": "app@1.0.0", "consent": True})
    r = d.call("CheckIn", {}).json()
    assert [a["state"] for a in r["actions"]] == ["offered"] and r["next_checkin"] == 60
    assert d.call("ReportStatus", {"action_id": r["actions"][0]["id"], "state": "accepted"}).status_code == 200
    assert d.call("CheckIn", {}).json()["next_checkin"] == actions.WORKING_CHECKIN


def test_next_checkin_is_never_under_5_s_nor_over_the_devices_own_interval(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    fast, slow = active_device(client, admin_key), active_device(client, admin_key)
    for dev, interval in ((fast, 5), (slow, 7)):
        assert admin(client, admin_key, "UpdateDevice", {"id": dev.device_id, "poll_interval": interval}
                     ).status_code == 200
    admin(client, admin_key, "CreateAction", {"device_ids": [fast.device_id, slow.device_id], "kind": "reboot"})
    assert fast.call("CheckIn", {}).json()["next_checkin"] == 5
    assert slow.call("CheckIn", {}).json()["next_checkin"] == 7
    assert actions.next_checkin(3, [actions.DeviceAction(id="a", kind="reboot", component="", state="queued")]) == 5


def test_pickup_time_is_the_longest_interval_of_the_devices(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    a, b = active_device(client, admin_key), active_device(client, admin_key)
    admin(client, admin_key, "UpdateDevice", {"id": b.device_id, "poll_interval": 300})
    made = admin(client, admin_key, "CreateAction", {"device_ids": [a.device_id, b.device_id], "kind": "reboot"})
    assert made.json()["pickup_within_seconds"] == 300


# --- device refs by the start of an id (item 5) ------------------------------------------------------------

def test_reads_and_deploys_take_a_unique_start_of_an_id(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    make_artifact(fleet)
    start = d.device_id[:10]
    assert admin(client, admin_key, "GetDevice", {"id": start}).json()["id"] == d.device_id
    r = admin(client, admin_key, "Deploy", {"device_ids": [start], "artifact": "app@1.0.0"})
    assert r.status_code == 200, r.text
    listed = admin(client, admin_key, "ListActions", {"device_id": start}).json()["actions"]
    assert [a["device_id"] for a in listed] == [d.device_id]


def test_an_ambiguous_start_lists_the_matches(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    ids = [active_device(client, admin_key).device_id for _ in range(3)]
    r = admin(client, admin_key, "GetDevice", {"id": "dev_"})
    assert r.status_code == 400
    message = r.json()["message"]
    assert "more than one device" in message and all(i in message for i in ids)


def test_destructive_calls_refuse_the_start_of_an_id(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    pending = TestDevice(client)
    assert pending.enroll().status_code == 200
    start, pending_start = d.device_id[:10], (pending.device_id or "")[:10]
    for method, body in (("DeleteDevice", {"id": start}), ("RevokeDevice", {"id": start})):
        r = admin(client, admin_key, method, body)
        assert r.status_code == 404 and "not the start of an id" in r.json()["message"], (method, r.text)
    r = rpc(client, "EnrollmentService", "RejectDevice", {"device_id": pending_start}, key=admin_key)
    assert r.status_code == 404 and "not the start of an id" in r.json()["message"]
    assert admin(client, admin_key, "GetDevice", {"id": d.device_id}).json()["status"] == "active"
    assert admin(client, admin_key, "GetDevice", {"id": pending.device_id}).json()["status"] == "pending"


# --- error wording (item 14) -----------------------------------------------------------------------------

def test_an_unknown_version_lists_the_versions_there_are(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    for v in ("1.0.0", "1.10.0", "1.2.0"):
        make_artifact(fleet, name="hello", version=v, data=v.encode())
    r = admin(client, admin_key, "Deploy", {"device_ids": [d.device_id], "artifact": "hello@9.9.9"})
    assert r.status_code == 404
    assert "no artifact 'hello@9.9.9'; hello has 1.10.0, 1.2.0, 1.0.0" in r.json()["message"]
    r = admin(client, admin_key, "Deploy", {"device_ids": [d.device_id], "artifact": "nope@1.0.0"})
    assert r.status_code == 404 and "no artifact named 'nope'" in r.json()["message"]


def test_a_device_of_another_type_is_named_as_typed_with_its_type(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    assert admin(client, admin_key, "UpdateDevice", {"id": d.device_id, "name": "kitchen"}).status_code == 200
    make_artifact(fleet, name="pi-only", device_types=["linux-aarch64", "linux-armv7"])
    r = admin(client, admin_key, "Deploy", {"device_ids": ["kitchen"], "artifact": "pi-only@1.0.0"})
    assert r.status_code == 400
    assert (f"pi-only@1.0.0 is built for linux-aarch64, linux-armv7, but kitchen ({d.device_id}) is of type sim"
            in r.json()["message"])


def test_a_bearer_token_that_is_no_api_key_says_so(client) -> None:  # type: ignore[no-untyped-def]
    r = client.post(f"/fleetd.v1.{ADMIN}/ListDevices", json={}, headers={"Authorization": "Bearer hunter2"})
    assert r.status_code == 401
    message = r.json()["message"]
    assert "not an API key" in message and "fk_" in message and "fleetd keys create" in message
    r = client.post(f"/fleetd.v1.{ADMIN}/ListDevices", json={}, headers={"Authorization": "Bearer fdt.x.y"})
    assert r.status_code == 401 and "device token is invalid or expired" in r.json()["message"]


# --- stage sizes at creation (item 15) --------------------------------------------------------------------

def test_create_rollout_answers_each_stages_device_count(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    ids = enroll(fleet, 10, tags={"site": "lab"})
    make_artifact(fleet)
    r = rpc(client, "RolloutService", "CreateRollout",
            {"artifact": "app@1.0.0", "tags": {"site": "lab"}, "stages": [50, 100]}, key=admin_key)
    assert r.status_code == 200, r.text
    ro = r.json()
    assert ro["counted"] is True
    first = sum(1 for did in ids if stage_of([50.0, 100.0], bucket(ro["id"], did)) == 0)
    assert [s["targeted"] for s in ro["stages"]] == [first, 10 - first]
    got = rpc(client, "RolloutService", "GetRollout", {"id": ro["id"]}, key=admin_key).json()
    assert [s["targeted"] for s in got["stages"]] == [first, 10 - first]
