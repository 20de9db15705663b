"""hawkBit DDI in-process: tokens, poll, deployments, feedback, cancel, config data, downloads, rollouts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from litestar.testing import TestClient

from fleetd.app import create_app
from fleetd.core.config import Settings
from fleetd.ddi import state as ddi
from fleetd.fleet import Fleet
from tests.conftest import make_key, rpc
from tests.devices.test_devices import make_artifact
from tests.rollouts.test_rollouts import enroll, report, runs

pytestmark = pytest.mark.both_backends

BASE = "/DEFAULT/controller/v1"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), tls=False, mdns=False, host="127.0.0.1", port=8420,
                    rollout_pass_seconds=0)


# --- helpers ------------------------------------------------------------------------------

def call(client: Any, key: str, service: str, method: str, **body: Any) -> dict[str, Any]:
    r = rpc(client, service, method, body, key=key)
    assert r.status_code == 200, r.text
    return dict(r.json())


def gateway(client: Any, key: str, **body: Any) -> str:
    return str(call(client, key, "DdiService", "CreateGatewayToken", **body)["token"])


def target(client: Any, key: str, device: str, **body: Any) -> dict[str, Any]:
    return call(client, key, "DdiService", "CreateTargetToken", device=device, **body)


class Ddi:
    """A DDI device's requests, as a hawkBit client makes them."""

    def __init__(self, client: Any, controller_id: str, token: str | None, scheme: str = "TargetToken",
                 tenant: str = "DEFAULT") -> None:
        self.client, self.cid = client, controller_id
        self.base = f"/{tenant}/controller/v1/{controller_id}"
        self.headers = {"Accept": "application/hal+json"}
        if token is not None:
            self.headers["Authorization"] = f"{scheme} {token}"

    def get(self, path: str = "", **kw: Any) -> Any:
        if path.startswith("http"):
            path = path.split("://", 1)[1].split("/", 1)[1]
            path = "/" + path
        else:
            path = self.base + path
        return self.client.get(path, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def poll(self) -> dict[str, Any]:
        r = self.get()
        assert r.status_code == 200, r.text
        return dict(r.json())

    def links(self) -> dict[str, str]:
        return {k: v["href"] for k, v in self.poll().get("_links", {}).items()}

    def feedback(self, num: int, execution: str, finished: str = "none", resource: str = "deploymentBase",
                 **status: Any) -> Any:
        body = {"time": "20250101T000000", "status": {"execution": execution, "result": {"finished": finished},
                                                       **status}}
        return self.client.post(f"{self.base}/{resource}/{num}/feedback", json=body, headers=self.headers)

    def config(self, data: Any, mode: str | None = None) -> Any:
        body: dict[str, Any] = {"data": data}
        if mode:
            body["mode"] = mode
        return self.client.put(f"{self.base}/configData", json=body, headers=self.headers)


def num(href: str) -> int:
    return int(href.split("?")[0].rstrip("/").rsplit("/", 1)[1])


def device_row(fleet: Fleet, hardware_id: str) -> dict[str, Any]:
    return dict(fleet.store.read_sync(lambda c: c.execute(
        "SELECT * FROM devices WHERE hardware_id = ?", (hardware_id,)).fetchone()))


def action(fleet: Fleet, action_id: str) -> dict[str, Any]:
    return dict(fleet.store.read_sync(lambda c: c.execute("SELECT * FROM actions WHERE id = ?",
                                                          (action_id,)).fetchone()))


def deploy(client: Any, key: str, device_id: str, artifact: str, **kw: Any) -> str:
    return str(call(client, key, "DeviceAdminService", "Deploy", device_ids=[device_id], artifact=artifact,
                    **kw)["action_ids"][0])


@pytest.fixture
def dev(client: Any, fleet: Fleet, admin_key: str) -> Ddi:
    """A DDI device 'ctl-1' (type sim) with a target token, and artifacts app@1.0.0 and app@2.0.0."""
    make_artifact(fleet, version="1.0.0", data=b"version one")
    make_artifact(fleet, version="2.0.0", data=b"version two " * 1000)
    tok = target(client, admin_key, "ctl-1", device_type="sim", tags={"site": "lab"})
    assert tok["created"] and tok["controller_id"] == "ctl-1"
    return Ddi(client, "ctl-1", tok["token"])


# --- tokens and registration ------------------------------------------------------------------

def test_gateway_poll_registers_an_active_device_with_the_tokens_defaults(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    gw = gateway(client, admin_key, device_type="rpi-cm4", tags={"site": "plant-2"})
    d = Ddi(client, "boiler-17", gw, scheme="GatewayToken")
    r = d.get()
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/hal+json")
    body = r.json()
    assert body["config"]["polling"]["sleep"] == "00:01:00"
    assert body["_links"] == {"configData": {"href": "http://testserver.local/DEFAULT/controller/v1/boiler-17/"
                                                     "configData"}}
    row = device_row(fleet, "boiler-17")
    assert (row["status"], row["device_type"], json.loads(row["tags"])) == ("active", "rpi-cm4", {"site": "plant-2"})
    assert fleet.hub.last_seen(row["id"]) is not None  # a poll is a check-in
    # Polling again changes nothing and the ETag lets the client skip the body.
    again = d.get(headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.headers["etag"] == r.headers["etag"]
    assert fleet.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM devices").fetchone()[0]) == 1
    entries = call(client, admin_key, "AuditService", "List", action="device.enroll")["entries"]
    assert entries[0]["actor_kind"] == "ddi_gateway" and entries[0]["details"]["ddi"] == "gateway"


def test_tokens_are_stored_hashed(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    gw = gateway(client, admin_key)
    tok = target(client, admin_key, "ctl-h")["token"]
    stored = fleet.store.read_sync(lambda c: [bytes(r[0]) for r in c.execute("SELECT secret_hash FROM ddi_tokens")])
    assert sorted(stored) == sorted([hashlib.sha256(gw.encode()).digest(), hashlib.sha256(tok.encode()).digest()])


def test_refusals_answer_401_with_hawkbits_error_shape(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    tok = target(client, admin_key, "ctl-a")["token"]
    target(client, admin_key, "ctl-b")
    cases = [
        (Ddi(client, "ctl-a", None), "Authorization: TargetToken"),
        (Ddi(client, "ctl-a", "nope"), "unknown or revoked target token"),
        (Ddi(client, "ctl-a", tok, scheme="Bearer"), "must be 'TargetToken <token>'"),
        (Ddi(client, "ctl-b", tok), "not valid for controller ctl-b"),
        (Ddi(client, "ctl-unknown", tok), "not valid for controller ctl-unknown"),
        (Ddi(client, "ctl-a", tok, scheme="GatewayToken"), "unknown or revoked gateway token"),
    ]
    for d, fragment in cases:
        r = d.get()
        assert r.status_code == 401, (d.headers, r.text)
        body = r.json()
        assert set(body) == {"exceptionClass", "errorCode", "message"} and fragment in body["message"], body
    assert Ddi(client, "ctl-a", tok).get().status_code == 200
    # hawkBit compares tenants case-insensitively; another tenant has nothing here.
    assert Ddi(client, "ctl-a", tok, tenant="default").get().status_code == 200
    for r in (Ddi(client, "ctl-a", tok, tenant="OTHER").get(), Ddi(client, "ctl-a", tok, tenant="OTHER").config({})):
        assert r.status_code == 404 and "unknown tenant 'OTHER'" in r.json()["message"]
        assert r.json()["errorCode"] == "hawkbit.server.error.repo.entitiyNotFound"
    assert client.get("/no-such-page.html").json()["code"] == "not_found"  # the web UI's 404 is unchanged


def test_a_new_target_token_replaces_the_old_and_revocation_locks_out(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    first = target(client, admin_key, "ctl-r")
    second = target(client, admin_key, first["device_id"])  # by device id this time
    assert not second["created"] and second["device_id"] == first["device_id"]
    assert Ddi(client, "ctl-r", first["token"]).get().status_code == 401
    assert Ddi(client, "ctl-r", second["token"]).get().status_code == 200
    done = call(client, admin_key, "DdiService", "RevokeTargetToken", device="ctl-r")
    assert done["revoked"] == 1
    assert Ddi(client, "ctl-r", second["token"]).get().status_code == 401
    third = target(client, admin_key, "ctl-r")["token"]
    assert Ddi(client, "ctl-r", third).get().status_code == 200
    # A revoked device is refused whatever its token.
    call(client, admin_key, "DeviceAdminService", "RevokeDevice", id=first["device_id"])
    r = Ddi(client, "ctl-r", third).get()
    assert r.status_code == 401 and "revoked" in r.json()["message"]
    r = rpc(client, "DdiService", "CreateTargetToken", {"device": "ctl-r"}, key=admin_key)
    assert r.status_code == 400 and "revoked" in r.json()["message"]


def test_revoked_gateway_token_and_deleted_devices(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    made = call(client, admin_key, "DdiService", "CreateGatewayToken", description="line 3")
    d = Ddi(client, "gw-dev", made["token"], scheme="GatewayToken")
    assert d.get().status_code == 200
    did = device_row(fleet, "gw-dev")["id"]
    call(client, admin_key, "DeviceAdminService", "DeleteDevice", id=did)
    assert d.get().status_code == 200  # the gateway registers it anew
    assert device_row(fleet, "gw-dev")["id"] != did
    listed = call(client, admin_key, "DdiService", "ListGatewayTokens")["tokens"]
    assert [t["id"] for t in listed] == [made["id"]] and listed[0].get("token") is None
    call(client, admin_key, "DdiService", "RevokeGatewayToken", id=made["id"])
    assert d.get().status_code == 401
    assert call(client, admin_key, "DdiService", "ListGatewayTokens")["tokens"] == []


def test_admin_calls_need_the_admin_role(client, fleet, operator_key) -> None:  # type: ignore[no-untyped-def]
    for method, body in (("CreateGatewayToken", {}), ("CreateTargetToken", {"device": "x"})):
        assert rpc(client, "DdiService", method, body, key=operator_key).status_code == 403


def test_controller_ids_are_checked(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    gw = gateway(client, admin_key)
    r = Ddi(client, "-bad!", gw, scheme="GatewayToken").get()
    assert r.status_code == 400 and "controller id" in r.json()["message"]
    r = rpc(client, "DdiService", "CreateTargetToken", {"device": "bad id"}, key=admin_key)
    assert r.status_code == 400


# --- deployments ---------------------------------------------------------------------------

def test_deployment_download_and_feedback_to_success(client, fleet, admin_key, dev) -> None:  # type: ignore[no-untyped-def]
    did = device_row(fleet, "ctl-1")["id"]
    aid = deploy(client, admin_key, did, "app@2.0.0")
    links = dev.links()
    assert set(links) == {"deploymentBase", "configData"}
    n = num(links["deploymentBase"])
    assert fleet.store.read_sync(lambda c: ddi.ref_of(c, "action", n)) == aid
    dep = dev.get(links["deploymentBase"]).json()
    assert dep["id"] == str(n)
    assert dep["deployment"]["download"] == dep["deployment"]["update"] == "forced"
    assert "maintenanceWindow" not in dep["deployment"]
    [chunk] = dep["deployment"]["chunks"]
    assert (chunk["part"], chunk["name"], chunk["version"]) == ("bApp", "app", "2.0.0")
    [art] = chunk["artifacts"]
    data = b"version two " * 1000
    assert art["filename"] == "app.bin" and art["size"] == len(data)
    assert art["hashes"] == {"sha1": hashlib.sha1(data).hexdigest(), "md5": hashlib.md5(data).hexdigest(),
                             "sha256": hashlib.sha256(data).hexdigest()}
    assert set(art["_links"]) == {"download", "download-http", "md5sum", "md5sum-http"}
    url = art["_links"]["download"]["href"]
    assert url.startswith("http://testserver.local/DEFAULT/controller/v1/ctl-1/softwaremodules/")
    assert dev.get(url).content == data
    part = dev.get(url, headers={"Range": "bytes=100-"})
    assert part.status_code == 206 and part.content == data[100:]
    assert part.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    head = dev.client.head(url.split("testserver.local", 1)[1], headers=dev.headers)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data)) and head.content == b""
    md5 = dev.get(art["_links"]["md5sum"]["href"])
    assert md5.status_code == 200 and md5.text == f"{hashlib.md5(data).hexdigest()}  app.bin\n"
    listed = dev.get(url.rsplit("/", 1)[0]).json()
    assert listed == [art]

    assert dev.feedback(n, "download", details=["fetching"]).status_code == 200
    assert action(fleet, aid)["state"] == "downloading"
    assert dev.feedback(n, "proceeding", progress=None, details=["writing"],
                        result={"finished": "none", "progress": {"cnt": 2, "of": 5}}).status_code == 200
    a = action(fleet, aid)
    assert (a["state"], a["progress"], a["message"]) == ("installing", 40, "writing")
    assert dev.feedback(n, "downloaded").status_code == 200  # never backwards
    assert action(fleet, aid)["state"] == "installing"
    assert dev.feedback(n, "closed", "success", details=["done"]).status_code == 200
    a = action(fleet, aid)
    assert (a["state"], a["open"]) == ("succeeded", 0)
    comps = call(client, admin_key, "DeviceAdminService", "GetDevice", id=did)["components"]
    assert [(c["name"], c["version"]) for c in comps] == [("app", "2.0.0")]
    assert did not in fleet.hub.open_actions
    links = dev.links()
    assert "deploymentBase" not in links and num(links["installedBase"]) == n
    installed = dev.get(links["installedBase"], params={"actionHistory": "5"}).json()
    assert installed["deployment"]["chunks"][0]["version"] == "2.0.0"
    assert installed["actionHistory"]["status"] == "SUCCEEDED" and installed["actionHistory"]["messages"]
    # The action is closed: more feedback is Gone; the deployment is no longer offered; downloads end.
    r = dev.feedback(n, "closed", "success")
    assert r.status_code == 410 and r.json()["errorCode"] == "fleetd.ddi.actionNotActive"
    assert dev.get(f"/deploymentBase/{n}").status_code == 404
    assert dev.get(url).status_code == 404


def test_feedback_failure_and_bad_feedback(client, fleet, admin_key, dev) -> None:  # type: ignore[no-untyped-def]
    did = device_row(fleet, "ctl-1")["id"]
    aid = deploy(client, admin_key, did, "app@1.0.0")
    n = num(dev.links()["deploymentBase"])
    for bad in (b"{", b"[]", b'{"status": {}}', b'{"status": {"execution": "closed"}}',
                b'{"status": {"execution": "exploded", "result": {"finished": "none"}}}',
                b'{"status": {"execution": "closed", "result": {"finished": "maybe"}}}'):
        r = dev.client.post(f"{dev.base}/deploymentBase/{n}/feedback", content=bad,
                            headers={**dev.headers, "Content-Type": "application/json"})
        assert r.status_code == 400, bad
        assert r.json()["errorCode"] == "hawkbit.server.error.rest.body.notReadable"
    assert action(fleet, aid)["state"] == "queued"
    assert dev.feedback(n + 1000, "proceeding").status_code == 404
    # Another device's action is as unknown as none.
    other = target(client, admin_key, "ctl-2", device_type="sim")
    r = Ddi(client, "ctl-2", other["token"]).feedback(n, "closed", "success")
    assert r.status_code == 404 and r.json()["errorCode"] == "hawkbit.server.error.repo.entitiyNotFound"
    assert action(fleet, aid)["state"] == "queued"
    assert dev.feedback(n, "closed", "failure", details=["flash write error"], code=17).status_code == 200
    a = action(fleet, aid)
    assert a["state"] == "failed" and a["message"] == "flash write error; device reported status code 17"
    assert call(client, admin_key, "DeviceAdminService", "GetDevice", id=did)["components"] == []


def test_rejected_and_consent(client, fleet, admin_key, dev) -> None:  # type: ignore[no-untyped-def]
    did = device_row(fleet, "ctl-1")["id"]
    aid = deploy(client, admin_key, did, "app@1.0.0", consent=True)
    href = dev.links()["deploymentBase"]
    dep = dev.get(href).json()
    assert dep["deployment"]["download"] == dep["deployment"]["update"] == "attempt"
    assert dev.feedback(num(href), "rejected", details=["user said no"]).status_code == 200
    assert action(fleet, aid)["state"] == "rejected"
    aid = deploy(client, admin_key, did, "app@1.0.0")
    assert dev.feedback(num(dev.links()["deploymentBase"]), "rejected").status_code == 200
    a = action(fleet, aid)
    assert a["state"] == "failed" and "rejected" in a["message"]


def test_cancelled_deployment_becomes_cancel_action_until_answered(client, fleet, admin_key, dev) -> None:  # type: ignore[no-untyped-def]
    did = device_row(fleet, "ctl-1")["id"]
    # Not fetched yet: a cancellation simply removes it.
    aid = deploy(client, admin_key, did, "app@1.0.0")
    call(client, admin_key, "DeviceAdminService", "CancelAction", id=aid)
    assert set(dev.links()) == {"configData"}
    # Fetched: the device hears about the cancellation, even while a newer deployment waits (cancel wins).
    aid = deploy(client, admin_key, did, "app@1.0.0")
    href = dev.links()["deploymentBase"]
    n = num(href)
    assert dev.get(href).status_code == 200
    assert dev.feedback(n, "download").status_code == 200
    call(client, admin_key, "DeviceAdminService", "CancelAction", id=aid)
    newer = deploy(client, admin_key, did, "app@2.0.0")
    links = dev.links()
    assert "deploymentBase" not in links and num(links["cancelAction"]) == n
    assert dev.get(links["cancelAction"]).json() == {"id": str(n), "cancelAction": {"stopId": str(n)}}
    assert dev.get(href).status_code == 404  # the deployment itself is gone
    assert dev.feedback(n, "download").status_code == 410
    assert dev.feedback(n, "proceeding", resource="cancelAction").status_code == 200  # still cancelling
    assert "cancelAction" in dev.links()
    assert dev.feedback(n, "closed", "success", resource="cancelAction").status_code == 200
    links = dev.links()
    assert "cancelAction" not in links and fleet.store.read_sync(
        lambda c: ddi.ref_of(c, "action", num(links["deploymentBase"]))) == newer
    assert dev.feedback(n, "closed", "success", resource="cancelAction").status_code == 410
    assert dev.get(f"/cancelAction/{n}").status_code == 404
    events = fleet.store.read_sync(lambda c: [r[0] for r in c.execute(
        "SELECT message FROM action_events WHERE action_id = ? ORDER BY id", (aid,))])
    assert events[-1] == "the device confirmed the cancellation"


def test_a_cancellation_the_device_rejected_and_installed_anyway_records_the_version(  # type: ignore[no-untyped-def]
        client, fleet, admin_key, dev) -> None:
    # rauc-hawkbit-updater, once installing, answers a cancellation with "rejected", finishes, and posts closed.
    did = device_row(fleet, "ctl-1")["id"]
    aid = deploy(client, admin_key, did, "app@2.0.0")
    href = dev.links()["deploymentBase"]
    n = num(href)
    assert dev.get(href).status_code == 200 and dev.feedback(n, "proceeding").status_code == 200
    call(client, admin_key, "DeviceAdminService", "CancelAction", id=aid)
    assert dev.feedback(n, "rejected", resource="cancelAction").status_code == 200
    assert dev.feedback(n, "closed", "success").status_code == 200
    assert action(fleet, aid)["state"] == "cancelled"
    comp = call(client, admin_key, "DeviceAdminService", "GetDevice", id=did)["components"]
    assert [(c["name"], c["version"]) for c in comp] == [("app", "2.0.0")]
    assert "cancelAction" not in dev.links()
    assert dev.feedback(n, "closed", "success").status_code == 200  # a retry changes nothing
    again = call(client, admin_key, "DeviceAdminService", "GetDevice", id=did)["components"]
    assert [(c["version"], c["previous_version"]) for c in again] == [("2.0.0", None)]
    assert dev.feedback(n, "closed", "failure").status_code == 410


def test_device_cancels_on_its_own(client, fleet, admin_key, dev) -> None:  # type: ignore[no-untyped-def]
    did = device_row(fleet, "ctl-1")["id"]
    aid = deploy(client, admin_key, did, "app@1.0.0")
    n = num(dev.links()["deploymentBase"])
    assert dev.feedback(n, "canceled").status_code == 200
    assert action(fleet, aid)["state"] == "cancelled"
    assert "cancelAction" not in dev.links()


def test_actions_ddi_cannot_express_end_as_failed_instead_of_blocking(client, fleet, admin_key, dev) -> None:  # type: ignore[no-untyped-def]
    did = device_row(fleet, "ctl-1")["id"]
    made = call(client, admin_key, "DeviceAdminService", "CreateAction", device_ids=[did], kind="reboot")
    [reboot] = made["action_ids"]
    made = call(client, admin_key, "DeviceAdminService", "CreateAction", device_ids=[did], kind="rollback",
                component="app")
    [rollback] = made["action_ids"]
    assert set(dev.links()) == {"configData"}
    assert action(fleet, reboot)["state"] == action(fleet, rollback)["state"] == "failed"
    assert "no reboot action" in action(fleet, reboot)["message"]
    assert "keeps what it runs" in action(fleet, rollback)["message"]
    assert did not in fleet.hub.open_actions
    deploy(client, admin_key, did, "app@1.0.0")  # the component is free again
    assert "deploymentBase" in dev.links()


def test_a_gateway_token_acts_for_registered_controllers(client, fleet, admin_key, dev) -> None:  # type: ignore[no-untyped-def]
    gw = gateway(client, admin_key)
    did = device_row(fleet, "ctl-1")["id"]
    aid = deploy(client, admin_key, did, "app@1.0.0")
    as_gateway = Ddi(client, "ctl-1", gw, scheme="GatewayToken")
    n = num(as_gateway.links()["deploymentBase"])
    assert as_gateway.feedback(n, "closed", "success").status_code == 200
    assert action(fleet, aid)["state"] == "succeeded"
    # Only a poll registers: other resources of an unknown controller are not found.
    r = Ddi(client, "ctl-new", gw, scheme="GatewayToken").feedback(n, "closed", "success")
    assert r.status_code == 404 and "not registered" in r.json()["message"]
    assert fleet.store.read_sync(lambda c: c.execute(
        "SELECT COUNT(*) FROM devices WHERE hardware_id = 'ctl-new'").fetchone()[0]) == 0


# --- config data -------------------------------------------------------------------------------

def test_config_data_modes_land_in_the_inventory(client, fleet, admin_key, dev) -> None:  # type: ignore[no-untyped-def]
    did = device_row(fleet, "ctl-1")["id"]

    def extra() -> dict[str, str]:
        return dict(call(client, admin_key, "DeviceAdminService", "GetDevice", id=did)["inventory"].get("extra", {}))

    assert "configData" in dev.links()
    assert dev.config({"hwRevision": "2", "mac": "aa"}).status_code == 200
    assert extra() == {"hwRevision": "2", "mac": "aa"}
    assert "configData" not in dev.links()  # asked for once
    assert dev.config({"mac": "bb", "serial": "7"}, "merge").status_code == 200
    assert extra() == {"hwRevision": "2", "mac": "bb", "serial": "7"}
    assert dev.config({"serial": ""}, "remove").status_code == 200
    assert extra() == {"hwRevision": "2", "mac": "bb"}
    assert dev.config({"only": "this"}, "replace").status_code == 200
    assert extra() == {"only": "this"}
    assert dev.config({"device_type": "rpi4"}).status_code == 200
    assert device_row(fleet, "ctl-1")["device_type"] == "rpi4" and fleet.hub.runtime[did].device_type == "rpi4"
    for bad in ({"data": {"k": 1}}, {"data": {"k": "v"}, "mode": "append"}, {"mode": "merge"},
                {"data": {"k": "v" * 200}}, {"data": {"device_type": "Not A Type"}}):
        r = dev.client.put(f"{dev.base}/configData", json=bad, headers=dev.headers)
        assert r.status_code == 400, bad
    assert extra() == {"only": "this", "device_type": "rpi4"}


# --- downloads -------------------------------------------------------------------------------

def test_downloads_need_a_token_unless_anonymous_download_is_on(tmp_path, client, fleet, admin_key, dev) -> None:  # type: ignore[no-untyped-def]
    did = device_row(fleet, "ctl-1")["id"]
    deploy(client, admin_key, did, "app@1.0.0")
    art = dev.get(dev.links()["deploymentBase"]).json()["deployment"]["chunks"][0]["artifacts"][0]
    path = art["_links"]["download"]["href"].split("testserver.local", 1)[1]
    assert client.get(path).status_code == 401
    other = target(client, admin_key, "ctl-2", device_type="sim")
    ctl2 = Ddi(client, "ctl-2", other["token"])
    assert ctl2.get(art["_links"]["download"]["href"]).status_code == 401  # ctl-1's URL, ctl-2's token
    r = ctl2.get(art["_links"]["download"]["href"].replace("/ctl-1/", "/ctl-2/"))
    assert r.status_code == 404  # not assigned to that controller
    assert dev.get(path.replace("app.bin", "other.bin")).status_code == 404
    fleet.settings.ddi_anonymous_download = True
    assert client.get(path).content == b"version one"
    assert client.get(path.rsplit("/", 2)[0] + "/artifacts").status_code == 401  # only downloads are anonymous


def test_anonymous_download_serves_only_what_is_assigned_to_the_controller_in_the_path(  # type: ignore[no-untyped-def]
        client, fleet, admin_key, dev) -> None:
    fleet.settings.ddi_anonymous_download = True
    did = device_row(fleet, "ctl-1")["id"]
    aid = deploy(client, admin_key, did, "app@1.0.0")
    art = dev.get(dev.links()["deploymentBase"]).json()["deployment"]["chunks"][0]["artifacts"][0]
    path = art["_links"]["download"]["href"].split("testserver.local", 1)[1]
    assert client.get(path).content == b"version one"
    target(client, admin_key, "ctl-2", device_type="sim")
    assert client.get(path.replace("/ctl-1/", "/ctl-2/")).status_code == 404  # registered, nothing assigned
    assert client.get(path.replace("/ctl-1/", "/nobody/")).status_code == 404  # not a controller
    # Another artifact on the server (say an agent app), under the controller that has a deployment: refused.
    other = fleet.store.read_sync(lambda c: ddi.num_of(c, "artifact", c.execute(
        "SELECT id FROM artifacts WHERE version = '2.0.0'").fetchone()[0]))
    module = path.split("/softwaremodules/", 1)[1].split("/", 1)[0]
    r = client.get(path.replace(f"/softwaremodules/{module}/", f"/softwaremodules/{other}/"))
    assert r.status_code == 404 and "not assigned to this controller" in r.text
    # Once the deployment is over, its artifact is no longer served to anyone without a token either.
    assert dev.feedback(num(dev.links()["deploymentBase"]), "closed", "success").status_code == 200
    assert action(fleet, aid)["open"] == 0
    assert client.get(path).status_code == 404
    call(client, admin_key, "DeviceAdminService", "RevokeDevice", id=did)
    assert client.get(path).status_code == 401  # a revoked controller's path is refused outright


# --- restarts, ids ---------------------------------------------------------------------------

def test_state_survives_a_restart(client, fleet, admin_key, dev) -> None:  # type: ignore[no-untyped-def]
    did = device_row(fleet, "ctl-1")["id"]
    aid = deploy(client, admin_key, did, "app@1.0.0")
    href = dev.links()["deploymentBase"]
    dev.get(href)
    call(client, admin_key, "DeviceAdminService", "CancelAction", id=aid)
    token = dev.headers["Authorization"].split()[1]
    asyncio.run(fleet.hub.flush(everything=True))
    fleet.close()
    again = Fleet(fleet.settings)
    try:
        with TestClient(app=create_app(again)) as c2:
            links = Ddi(c2, "ctl-1", token).links()
            assert num(links["cancelAction"]) == num(href) and "configData" in links
    finally:
        again.close()


def test_every_action_and_artifact_gets_a_distinct_integer(client, fleet, admin_key, dev) -> None:  # type: ignore[no-untyped-def]
    rows = fleet.store.read_sync(lambda c: c.execute("SELECT num, kind, ref FROM ddi_ids").fetchall())
    assert len({r[0] for r in rows}) == len(rows) and {r[1] for r in rows} == {"artifact"} and len(rows) == 2
    did = device_row(fleet, "ctl-1")["id"]
    aid = deploy(client, admin_key, did, "app@1.0.0")
    n = fleet.store.read_sync(lambda c: ddi.num_of(c, "action", aid))
    assert n > max(r[0] for r in rows)


# --- rollouts ----------------------------------------------------------------------------------

def _succeed(d: Ddi) -> int:
    href = d.links()["deploymentBase"]
    d.get(href)
    n = num(href)
    assert d.feedback(n, "proceeding").status_code == 200
    assert d.feedback(n, "closed", "success").status_code == 200
    return n


def test_ddi_devices_take_part_in_a_rollout_and_are_rolled_back(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    make_artifact(fleet, version="1.0.0", data=b"one")
    make_artifact(fleet, version="2.0.0", data=b"two")
    [agent] = enroll(fleet, 1, {"ring": "beta"}, version="1.0.0")  # a fleet-agent device beside them
    devices = {}
    for cid in ("r-1", "r-2"):
        tok = target(client, admin_key, cid, device_type="sim", tags={"ring": "beta"})
        devices[cid] = Ddi(client, cid, tok["token"])
        deploy(client, admin_key, tok["device_id"], "app@1.0.0")
        _succeed(devices[cid])  # both run 1.0.0, installed through fleetd
    rid = call(client, admin_key, "RolloutService", "CreateRollout", artifact="app@2.0.0", tags={"ring": "beta"},
               stages=[100], max_failure_percent=10, soak_seconds=60)["id"]
    t0 = time.time()
    asyncio.run(fleet.orchestrator.run_pass(t0))
    assert all("deploymentBase" in d.links() for d in devices.values())
    [agent_action] = [a for a in call(client, admin_key, "DeviceAdminService", "ListActions", device_id=agent)[
        "actions"] if a["rollout_id"] == rid]
    report(fleet, agent, agent_action["id"], "downloading", "installing", "succeeded")
    runs(fleet, [agent], "2.0.0")
    _succeed(devices["r-1"])
    href = devices["r-2"].links()["deploymentBase"]
    devices["r-2"].get(href)
    assert devices["r-2"].feedback(num(href), "closed", "failure", details=["boot loop"]).status_code == 200
    asyncio.run(fleet.orchestrator.run_pass(t0 + 5))
    got = call(client, admin_key, "RolloutService", "GetRollout", id=rid)
    assert got["state"] == "rolled_back" and "boot loop" in got["reason"]
    # The devices that installed 2.0.0, DDI or agent, get a rollback to the previous version, 1.0.0.
    [agent_back] = [a for a in call(client, admin_key, "DeviceAdminService", "ListActions", device_id=agent)[
        "actions"] if a["kind"] == "rollback"]
    assert agent_back["artifact"] == "app@1.0.0"
    back = devices["r-1"].get(devices["r-1"].links()["deploymentBase"]).json()
    assert back["deployment"]["chunks"][0]["version"] == "1.0.0"
    assert "deploymentBase" not in devices["r-2"].links()
    _succeed(devices["r-1"])
    r1 = device_row(fleet, "r-1")["id"]
    comps = call(client, admin_key, "DeviceAdminService", "GetDevice", id=r1)["components"]
    assert [(c["name"], c["version"]) for c in comps] == [("app", "1.0.0")]


# --- property: no feedback body breaks the server --------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 200) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=3), max_leaves=8)
feedbacks = st.fixed_dictionaries({"status": st.fixed_dictionaries({
    "execution": st.sampled_from(["closed", "proceeding", "canceled", "scheduled", "rejected", "resumed",
                                  "downloaded", "download", "bogus"]),
    "result": st.fixed_dictionaries({"finished": st.sampled_from(["success", "failure", "none", "x"])},
                                    optional={"progress": st.fixed_dictionaries(
                                        {"cnt": st.integers(-3, 300)}, optional={"of": st.integers(-1, 300)})}),
}, optional={"details": st.lists(st.text(max_size=30), max_size=3), "code": st.integers(-10, 10)})}) | json_values


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(feedbacks, min_size=1, max_size=4))
@example(bodies=[{"status": {"execution": "proceeding", "result": {"finished": "none"}, "details": ["a\x00b"]}}])
def test_any_feedback_gets_a_hawkbit_answer_and_a_valid_state(client, fleet, admin_key, dev, bodies) -> None:  # type: ignore[no-untyped-def]
    did = device_row(fleet, "ctl-1")["id"]
    aid = deploy(client, admin_key, did, "app@1.0.0")
    n = num(dev.links()["deploymentBase"])
    for body in bodies:
        before = action(fleet, aid)
        r = dev.client.post(f"{dev.base}/deploymentBase/{n}/feedback", content=json.dumps(body),
                            headers={**dev.headers, "Content-Type": "application/json"})
        assert r.status_code in (200, 400, 410), r.text
        after = action(fleet, aid)
        if r.status_code != 200:
            assert set(r.json()) == {"exceptionClass", "errorCode", "message"}
            assert after == before  # a refusal changes nothing
        assert 0 <= after["progress"] <= 100
    final = action(fleet, aid)
    if final["open"]:
        call(client, admin_key, "DeviceAdminService", "CancelAction", id=aid)
    # Answer any cancellation so the next example starts clean.
    dev.feedback(n, "closed", "success", resource="cancelAction")


config_bodies = st.fixed_dictionaries({"data": st.dictionaries(st.text(min_size=0, max_size=10),
                                                               st.text(max_size=10) | st.integers(), max_size=4)},
                                      optional={"mode": st.sampled_from(["merge", "replace", "remove", "x"])})


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(config_bodies | json_values, min_size=1, max_size=4))
def test_any_config_data_is_applied_whole_or_refused(client, fleet, admin_key, dev, bodies) -> None:  # type: ignore[no-untyped-def]
    did = device_row(fleet, "ctl-1")["id"]
    for body in bodies:
        before = device_row(fleet, "ctl-1")
        r = dev.client.put(f"{dev.base}/configData", content=json.dumps(body),
                           headers={**dev.headers, "Content-Type": "application/json"})
        assert r.status_code in (200, 400), r.text
        after = device_row(fleet, "ctl-1")
        if r.status_code == 400:
            assert after == before
            continue
        extra = json.loads(after["inventory"]).get("extra", {})
        old = json.loads(before["inventory"]).get("extra", {})
        data, mode = body["data"], body.get("mode", "merge")
        want = {"merge": {**old, **data}, "replace": data,
                "remove": {k: v for k, v in old.items() if k not in data}}[mode]
        assert extra == want
    assert fleet.hub.runtime[did].status == "active"


def test_a_second_fleet_sees_tokens_made_by_the_first(fleet, admin_key, client) -> None:  # type: ignore[no-untyped-def]
    tok = target(client, admin_key, "ctl-x")["token"]
    # A restart: the first server stops as `fleetd serve` does, its app (and background parts) before its store;
    # closing the store under a running app left its parts failing and once hung the next app's shutdown.
    client.__exit__(None, None, None)
    fleet.close()
    again = Fleet(fleet.settings)
    try:
        key = make_key(again, "admin", "again")
        with TestClient(app=create_app(again)) as c2:
            assert Ddi(c2, "ctl-x", tok).get().status_code == 200
            assert rpc(c2, "DdiService", "ListGatewayTokens", {}, key=key).status_code == 200
    finally:
        again.close()
