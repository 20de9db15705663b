"""The logs action: an app's last lines, asked for by an admin, sent back by the device in its succeeded report."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fleetd.devices.actions import LOG_BYTES_MAX, RESULTS_KEPT
from tests.conftest import rpc
from tests.devices.test_devices import active_device

pytestmark = pytest.mark.both_backends


def device_with_app(client: Any, fleet: Any, key: str, app: str = "hello") -> Any:
    d = active_device(client, key)
    d.call("CheckIn", {"components": [{"name": app, "version": "1.0.0", "state": "running"}]})
    asyncio.run(fleet.hub.flush())
    return d


def ask_logs(client: Any, key: str, device_id: str, app: str = "hello", **params: str) -> Any:
    return rpc(client, "DeviceAdminService", "CreateAction",
               {"device_ids": [device_id], "kind": "logs", "component": app, "params": params}, key=key)


def get_action(client: Any, key: str, action_id: str) -> dict[str, Any]:
    r = rpc(client, "DeviceAdminService", "GetAction", {"id": action_id}, key=key)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_the_lines_come_back_in_the_succeeded_report(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = device_with_app(client, fleet, admin_key)
    r = ask_logs(client, admin_key, d.device_id, lines="3")
    assert r.status_code == 200, r.text
    [aid] = r.json()["action_ids"]
    [action] = d.call("CheckIn", {}).json()["actions"]
    assert (action["kind"], action["component"], action["params"]) == ("logs", "hello", {"lines": 3})
    assert get_action(client, admin_key, aid)["state"] == "queued"

    result = {"text": "two\nthree\nfour\n", "lines": 3, "truncated": False}
    r = d.call("ReportStatus", {"action_id": aid, "state": "succeeded", "message": "the last 3 lines",
                                "result": result})
    assert r.status_code == 200, r.text
    got = get_action(client, admin_key, aid)
    assert got["state"] == "succeeded" and got["result"] == result
    # A list does not carry the (up to 256 KiB) text of every result.
    listed = rpc(client, "DeviceAdminService", "ListActions", {"device_id": d.device_id}, key=admin_key).json()
    assert listed["actions"][0]["id"] == aid and listed["actions"][0]["result"] is None
    # A retried report is harmless and keeps the result.
    assert d.call("ReportStatus", {"action_id": aid, "state": "succeeded", "result": result}).status_code == 200
    assert get_action(client, admin_key, aid)["result"] == result


def test_the_request_is_checked_when_it_is_made(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = device_with_app(client, fleet, admin_key)
    r = ask_logs(client, admin_key, d.device_id, app="helo")
    assert r.status_code == 400 and "has no app 'helo'; it reports hello" in r.json()["message"], r.text
    r = ask_logs(client, admin_key, d.device_id, app="")
    assert r.status_code == 400 and "needs the app" in r.json()["message"]
    for bad in ("0", "2001", "many"):
        r = ask_logs(client, admin_key, d.device_id, lines=bad)
        assert r.status_code == 400 and "lines must be a whole number from 1 to 2000" in r.json()["message"], bad
    assert d.call("CheckIn", {}).json()["actions"] == []
    [aid] = ask_logs(client, admin_key, d.device_id).json()["action_ids"]
    assert d.call("CheckIn", {}).json()["actions"][0]["params"] == {"lines": 200}  # the default
    assert get_action(client, admin_key, aid)["kind"] == "logs"


def test_an_oversize_or_misplaced_result_is_refused(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = device_with_app(client, fleet, admin_key)
    [aid] = ask_logs(client, admin_key, d.device_id).json()["action_ids"]
    big = {"text": "x" * (LOG_BYTES_MAX + 1), "lines": 1}
    r = d.call("ReportStatus", {"action_id": aid, "state": "succeeded", "result": big})
    assert r.status_code == 400, r.text
    assert f"is {LOG_BYTES_MAX + 1} bytes; at most {LOG_BYTES_MAX} bytes (256 KiB)" in r.json()["message"]
    r = d.call("ReportStatus", {"action_id": aid, "state": "installing", "result": {"text": "a\n", "lines": 1}})
    assert r.status_code == 400 and "comes with the succeeded report" in r.json()["message"]
    r = d.call("ReportStatus", {"action_id": aid, "state": "succeeded", "result": {"text": "", "lines": 2001}})
    assert r.status_code == 400 and "lines must be 0..2000" in r.json()["message"]
    # Nothing of it was kept: the action is still open, without a result.
    got = get_action(client, admin_key, aid)
    assert got["state"] == "queued" and got.get("result") is None
    # Exactly the cap is fine.
    fits = {"text": "é" * (LOG_BYTES_MAX // 2), "lines": 1, "truncated": True}
    assert d.call("ReportStatus", {"action_id": aid, "state": "succeeded", "result": fits}).status_code == 200
    assert get_action(client, admin_key, aid)["result"]["truncated"] is True

    # Other kinds bring nothing back.
    r = rpc(client, "DeviceAdminService", "CreateAction", {"device_ids": [d.device_id], "kind": "restart",
                                                           "component": "hello"}, key=admin_key)
    [restart] = r.json()["action_ids"]
    r = d.call("ReportStatus", {"action_id": restart, "state": "succeeded", "result": {"text": "a\n", "lines": 1}})
    assert r.status_code == 400 and "a restart action brings no result back" in r.json()["message"]


def test_a_device_keeps_only_its_newest_results(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = device_with_app(client, fleet, admin_key)
    ids = []
    for i in range(RESULTS_KEPT + 2):
        [aid] = ask_logs(client, admin_key, d.device_id).json()["action_ids"]
        r = d.call("ReportStatus", {"action_id": aid, "state": "succeeded",
                                    "result": {"text": f"line {i}\n", "lines": 1}})
        assert r.status_code == 200
        ids.append(aid)
    assert get_action(client, admin_key, ids[0]).get("result") is None
    assert get_action(client, admin_key, ids[1]).get("result") is None
    assert get_action(client, admin_key, ids[2])["result"]["text"] == "line 2\n"
    assert get_action(client, admin_key, ids[-1])["result"]["text"] == f"line {RESULTS_KEPT + 1}\n"
    assert get_action(client, admin_key, ids[0])["state"] == "succeeded"  # the action itself stays


def test_a_viewer_reads_a_result_but_cannot_ask_for_one(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = device_with_app(client, fleet, admin_key)
    viewer = rpc(client, "UserService", "CreateKey", {"name": "v", "role": "viewer"}, key=admin_key).json()["key"]
    assert ask_logs(client, viewer, d.device_id).status_code == 403
    [aid] = ask_logs(client, admin_key, d.device_id).json()["action_ids"]
    assert get_action(client, viewer, aid)["kind"] == "logs"
