"""A DDI device's whole life against a real `fleetd serve`: registered by a gateway token's first poll,
polling with ETags, a deployment fetched, its artifact downloaded in two ranged parts and checked against all
three hashes and the .MD5SUM file, feedback sent, and the fleetd action and component moving with it."""

from __future__ import annotations

import os
import re

import pytest

from .client import Deployment, action_id_of, hashes_of, parse_sleep
from .conftest import Fleetd, wait_for

pytestmark = pytest.mark.e2e


def test_sleep_and_action_links_parse_as_hawkbit_clients_parse_them() -> None:
    assert parse_sleep("00:05:00") == 300 and parse_sleep("12:00:01") == 43201
    assert action_id_of("https://h:1/DEFAULT/controller/v1/c/deploymentBase/17?c=-2122565939") == 17
    assert action_id_of("https://h:1/DEFAULT/controller/v1/c/cancelAction/9") == 9
    with pytest.raises(AssertionError):
        parse_sleep("5m")


def test_a_gateway_tokens_first_poll_registers_an_active_device(fleetd: Fleetd) -> None:
    gw = fleetd.gateway_token("ddi-board", {"site": "lab"}, cli=True)
    assert gw["token"] and gw["id"]
    assert fleetd.find_device("gw-board-1") is None
    with fleetd.ddi("gw-board-1", gw["token"], scheme="GatewayToken") as c:
        first = c.poll()
        assert first.status == 200, first.body
        assert 0 < first.sleep <= 24 * 3600
        # Nothing to do yet; hawkBit asks a new controller for its attributes.
        assert "deploymentBase" not in first.links and "cancelAction" not in first.links
        assert "configData" in first.links
        assert first.links["configData"] == c.base + "/configData"
        assert first.etag

        device = fleetd.find_device("gw-board-1", cli=True)  # `fleetd devices list --json`
        assert device is not None, "the first poll did not register the controller"
        assert device["status"] == "active" and device["device_type"] == "ddi-board"
        assert device["tags"].get("site") == "lab"
        # Polls are check-ins: the device is online (last-seen writes are coalesced, so give it a moment).
        wait_for("the device online", lambda: (d := fleetd.find_device("gw-board-1")) and d["online"], 5)

        # Unchanged: 304 without a body; a second poll registers nothing new.
        again = c.poll(first.etag)
        assert again.status == 304 and again.body is None
        assert len([d for d in fleetd.cli_json("devices", "list", "--search", "gw-board-1")
                    if d["hardware_id"] == "gw-board-1"]) == 1


def test_deploy_download_resumed_verify_and_feedback(fleetd: Fleetd) -> None:
    tok = fleetd.target_token("board-flow", device_type="ddi-board", cli=True)
    assert tok["controller_id"] == "board-flow" and tok["token"] and tok["device_id"]
    device_id = tok["device_id"]
    payload = os.urandom(300_000)
    fleetd.push("flowfw", "1.1.0", payload, "ddi-board", kind="firmware", file_name="flowfw-1.1.0.swu")

    with fleetd.ddi("board-flow", tok["token"]) as c:
        idle = c.poll()
        assert idle.status == 200 and "deploymentBase" not in idle.links
        act = fleetd.deploy(device_id, "flowfw@1.1.0", cli=True)

        # The ETag of the idle answer no longer matches: the poll now carries the deployment.
        poll = c.poll(idle.etag)
        assert poll.status == 200 and poll.etag != idle.etag
        assert "deploymentBase" in poll.links and "cancelAction" not in poll.links
        dep = c.deployment(poll.links["deploymentBase"])
        assert dep.action_id == action_id_of(poll.links["deploymentBase"])
        assert isinstance(dep.raw["id"], str) and dep.raw["id"].isdigit()  # hawkBit writes it as a string
        assert (dep.download, dep.update, dep.maintenance_window) == ("forced", "forced", None)
        [chunk] = dep.chunks
        # "bApp" for firmware too: Zephyr's client accepts no other part (tests/ddi/test_ddi_real_clients.py).
        assert (chunk.part, chunk.name, chunk.version) == ("bApp", "flowfw", "1.1.0")
        [art] = chunk.artifacts
        assert art.filename == "flowfw-1.1.0.swu" and art.size == len(payload)
        assert art.hashes == hashes_of(payload)
        assert {"download", "md5sum"} <= set(art.links)
        assert art.links["md5sum"] == art.links["download"] + ".MD5SUM"

        # Download in two parts, as a client resuming after a dropped connection; all three hashes match.
        data = c.download_resumed(art, first=len(payload) // 3)
        assert data == payload and art.mismatches(data) == []
        head = c.download(art.links["download"], method="HEAD")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) == len(payload) and head.headers.get("etag")
        assert head.headers.get("accept-ranges") == "bytes"
        md5 = c.request("GET", art.links["md5sum"])
        assert md5.status_code == 200
        assert md5.text.split() == [hashes_of(payload)["md5"], "flowfw-1.1.0.swu"]

        # The software module's artifact list says the same.
        module = re.search(r"/softwaremodules/(\d+)/artifacts/", art.links["download"])
        assert module is not None
        listed = c.request("GET", f"/softwaremodules/{module.group(1)}/artifacts")
        assert listed.status_code == 200
        [entry] = listed.json()
        assert entry["filename"] == art.filename and entry["size"] == art.size and entry["hashes"] == art.hashes

        # Progress feedback moves the fleetd action, with the device's words as its message.
        r = c.feedback(dep.action_id, "proceeding", progress=(1, 3), details=["writing slot B"])
        assert r.status_code == 200, r.text
        during = fleetd.action(device_id, act)
        assert during["state"] in ("downloading", "verifying", "installing")
        assert 30 <= during["progress"] <= 34 and "writing slot B" in during["message"]

        r = c.feedback(dep.action_id, "closed", "success", details=["rebooted into 1.1.0"])
        assert r.status_code == 200, r.text
        done = fleetd.action(device_id, act)
        assert done["state"] == "succeeded" and "rebooted into 1.1.0" in done["message"]
        assert fleetd.component(device_id, "flowfw") == "1.1.0"

        # The action is closed: no deployment any more, the installed base shows it, more feedback is 410.
        after = c.poll()
        assert after.status == 200 and "deploymentBase" not in after.links
        assert action_id_of(after.links["installedBase"]) == dep.action_id
        installed = Deployment.parse(c.request("GET", after.links["installedBase"]).json())
        assert installed.action_id == dep.action_id and installed.chunks[0].version == "1.1.0"
        late = c.feedback(dep.action_id, "closed", "failure", details=["too late"])
        assert late.status_code == 410
        assert fleetd.action(device_id, act)["state"] == "succeeded"
        assert fleetd.component(device_id, "flowfw") == "1.1.0"


def test_failure_feedback_fails_the_action_with_the_devices_details(fleetd: Fleetd) -> None:
    tok = fleetd.target_token("board-fails", device_type="ddi-board")
    fleetd.push("failfw", "2.0.0", b"will not install\n" * 50, "ddi-board", kind="firmware")
    with fleetd.ddi("board-fails", tok["token"]) as c:
        act = fleetd.deploy(tok["device_id"], "failfw@2.0.0")
        dep = c.deployment(c.poll().links["deploymentBase"])
        assert c.feedback(dep.action_id, "download").status_code == 200
        assert fleetd.action(tok["device_id"], act)["state"] == "downloading"
        r = c.feedback(dep.action_id, "closed", "failure", details=["signature check failed"])
        assert r.status_code == 200, r.text
        failed = fleetd.action(tok["device_id"], act)
        assert failed["state"] == "failed" and "signature check failed" in failed["message"]
        assert fleetd.component(tok["device_id"], "failfw") is None


def test_an_admin_cancel_reaches_a_device_that_fetched_its_deployment_as_cancel_action(fleetd: Fleetd) -> None:
    tok = fleetd.target_token("board-cancel", device_type="ddi-board")
    fleetd.push("cancelfw", "1.0.0", b"cancel me\n" * 100, "ddi-board", kind="firmware")
    with fleetd.ddi("board-cancel", tok["token"]) as c:
        act = fleetd.deploy(tok["device_id"], "cancelfw@1.0.0")
        dep = c.deployment(c.poll().links["deploymentBase"])
        assert c.feedback(dep.action_id, "proceeding", progress=(0, 1)).status_code == 200
        fleetd.cli("devices", "cancel", act)

        poll = c.poll()
        assert "cancelAction" in poll.links and "deploymentBase" not in poll.links  # cancel wins
        cancel = c.cancel_action(poll.links["cancelAction"])
        assert int(cancel["cancelAction"]["stopId"]) == dep.action_id
        r = c.feedback(int(cancel["id"]), "closed", "success", details=["stopped"], resource="cancelAction")
        assert r.status_code == 200, r.text
        assert fleetd.action(tok["device_id"], act)["state"] == "cancelled"
        done = c.poll()
        assert "cancelAction" not in done.links and "deploymentBase" not in done.links
        # The deployment itself is gone for the device, and feedback on it is refused as closed.
        assert c.request("GET", f"/deploymentBase/{dep.action_id}").status_code in (404, 410)
        assert c.feedback(dep.action_id, "closed", "success").status_code == 410


def test_an_offered_update_is_an_attempt_the_device_may_reject(fleetd: Fleetd) -> None:
    tok = fleetd.target_token("board-consent", device_type="ddi-board")
    fleetd.push("consentapp", "1.0.0", b"ask first\n" * 50, "ddi-board")
    [act] = fleetd.cli_json("devices", "deploy", "--consent", tok["device_id"], "consentapp@1.0.0")["action_ids"]
    with fleetd.ddi("board-consent", tok["token"]) as c:
        dep = c.deployment(c.poll().links["deploymentBase"])
        assert (dep.download, dep.update) == ("attempt", "attempt")
        assert [ch.part for ch in dep.chunks] == ["bApp"]  # an app
        assert fleetd.action(tok["device_id"], act)["state"] == "offered"
        r = c.feedback(dep.action_id, "rejected", details=["the user said no"])
        assert r.status_code == 200, r.text
        rejected = fleetd.action(tok["device_id"], act)
        assert rejected["state"] == "rejected" and "the user said no" in rejected["message"]
        assert "deploymentBase" not in c.poll().links
        assert fleetd.component(tok["device_id"], "consentapp") is None


def test_action_history_carries_the_devices_feedback(fleetd: Fleetd) -> None:
    tok = fleetd.target_token("board-history", device_type="ddi-board")
    fleetd.push("histfw", "1.0.0", b"history\n" * 50, "ddi-board", kind="firmware")
    fleetd.deploy(tok["device_id"], "histfw@1.0.0")
    with fleetd.ddi("board-history", tok["token"]) as c:
        dep = c.deployment(c.poll().links["deploymentBase"])
        assert "actionHistory" not in dep.raw  # only when asked for
        # fleetd keeps one history entry per state change (a repeated state updates the action's message).
        for execution, step in (("download", "download started"), ("proceeding", "image written")):
            assert c.feedback(dep.action_id, execution, details=[step]).status_code == 200
        r = c.request("GET", f"/deploymentBase/{dep.action_id}?actionHistory=2")
        assert r.status_code == 200
        history = r.json()["actionHistory"]
        assert len(history["messages"]) == 2  # the count asked for, newest first
        assert "image written" in history["messages"][0] and "download started" in history["messages"][1]
        assert history["status"] == "INSTALLING"
