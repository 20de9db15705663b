"""Who may talk DDI, and what wrong requests get: hawkBit's status codes, a clear message, nothing changed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import ServerProcess

from .client import DdiClient, feedback_body
from .conftest import Fleetd, start_server

pytestmark = pytest.mark.e2e


def says(r: httpx.Response, *words: str) -> str:
    """The error's message (a JSON body with one), checked to mention ``words``."""
    body = r.json()
    assert isinstance(body, dict) and body.get("message"), r.text
    message = str(body["message"])
    for w in words:
        assert w.lower() in message.lower(), message
    return message


@pytest.fixture(scope="module")
def board(fleetd: Fleetd) -> Iterator[dict[str, Any]]:
    """A DDI device with an open deployment it has fetched: {device_id, token, action (fleetd id), ddi_action}."""
    tok = fleetd.target_token("auth-board", device_type="ddi-auth")
    fleetd.push("authfw", "1.0.0", b"auth firmware\n" * 100, "ddi-auth", kind="firmware")
    act = fleetd.deploy(tok["device_id"], "authfw@1.0.0")
    with fleetd.ddi("auth-board", tok["token"]) as c:
        href = c.poll().links["deploymentBase"]
        dep = c.deployment(href)
        assert c.feedback(dep.action_id, "proceeding", progress=(1, 4), details=["step one"]).status_code == 200
        yield {"device_id": tok["device_id"], "token": tok["token"], "action": act, "ddi_action": dep.action_id,
               "href": href}


def snapshot(fleetd: Fleetd, board: dict[str, Any]) -> tuple[str, int, str]:
    a = fleetd.action(board["device_id"], board["action"])
    return a["state"], a["progress"], a["message"]


def test_target_tokens_are_made_replaced_and_revoked_by_the_cli(fleetd: Fleetd) -> None:
    made = fleetd.target_token("tok-board", "ddi-auth", {"site": "north"}, cli=True)
    device = fleetd.find_device("tok-board")
    assert device is not None and device["id"] == made["device_id"]
    assert device["status"] == "active" and device["device_type"] == "ddi-auth" and device["tags"]["site"] == "north"
    with fleetd.ddi("tok-board", made["token"]) as c:
        assert c.poll().status == 200

    # Asking again (by device id this time) gives a new token for the same device; the old one stops working.
    again = fleetd.target_token(made["device_id"], cli=True)
    assert again["device_id"] == made["device_id"] and again["token"] != made["token"]
    with fleetd.ddi("tok-board", made["token"]) as old, fleetd.ddi("tok-board", again["token"]) as new:
        assert old.poll().status == 401
        assert new.poll().status == 200

    revoked = fleetd.cli("devices", "ddi-token", "--revoke", made["device_id"])
    assert revoked.returncode == 0
    with fleetd.ddi("tok-board", again["token"]) as c:
        r = c.request("GET", "")
        assert r.status_code == 401
        says(r)
    # Revoking the token does not remove the device.
    assert fleetd.find_device("tok-board") is not None


def test_bad_credentials_get_401_and_register_nothing(fleetd: Fleetd, board: dict[str, Any]) -> None:
    gw = fleetd.gateway_token("ddi-auth")
    cases = [
        ("no-such-board", board["token"], "TargetToken"),  # a target token is for its own controller only
        ("auth-board", "0" * 32, "TargetToken"),  # a wrong secret
        ("auth-board", None, "TargetToken"),  # no Authorization header
        ("auth-board", board["token"], "GatewayToken"),  # a target token presented as a gateway token
        ("auth-board", board["token"], "Bearer"),  # an unknown scheme
        ("new-board-x", gw["token"], "TargetToken"),  # a gateway token presented as a target token
    ]
    before = snapshot(fleetd, board)
    for controller, token, scheme in cases:
        with fleetd.ddi(controller, token, scheme=scheme) as c:
            r = c.request("GET", "")
            assert r.status_code == 401, (controller, scheme, r.status_code, r.text)
            says(r)
            fb = c.feedback(board["ddi_action"], "closed", "success", details=["not allowed"])
            assert fb.status_code == 401, (controller, scheme, fb.status_code, fb.text)
    assert fleetd.find_device("no-such-board") is None and fleetd.find_device("new-board-x") is None
    assert snapshot(fleetd, board) == before


def test_a_revoked_gateway_token_registers_no_more_devices(fleetd: Fleetd) -> None:
    gw = fleetd.gateway_token("ddi-auth", {"batch": "g1"}, cli=True)
    with fleetd.ddi("gw-before", gw["token"], scheme="GatewayToken") as c:
        assert c.poll().status == 200
    fleetd.cli("tokens", "revoke", gw["id"])
    with fleetd.ddi("gw-after", gw["token"], scheme="GatewayToken") as c:
        assert c.poll().status == 401
    with fleetd.ddi("gw-before", gw["token"], scheme="GatewayToken") as c:
        assert c.poll().status == 401
    assert fleetd.find_device("gw-after") is None
    assert fleetd.find_device("gw-before") is not None


def test_a_revoked_device_is_cut_off_whatever_token_it_has(fleetd: Fleetd) -> None:
    tok = fleetd.target_token("revoked-board", "ddi-auth")
    gw = fleetd.gateway_token("ddi-auth")
    with fleetd.ddi("revoked-board", tok["token"]) as c:
        assert c.poll().status == 200
    fleetd.cli("devices", "revoke", tok["device_id"])
    for token, scheme in ((tok["token"], "TargetToken"), (gw["token"], "GatewayToken")):
        with fleetd.ddi("revoked-board", token, scheme=scheme) as c:
            r = c.request("GET", "")
            assert r.status_code == 401, (scheme, r.text)
            says(r, "revoked")
    assert fleetd.device(tok["device_id"])["status"] == "revoked"  # the gateway did not register it again


def test_the_wrong_tenant_is_refused(fleetd: Fleetd, board: dict[str, Any]) -> None:
    before = snapshot(fleetd, board)
    gw = fleetd.gateway_token("ddi-auth")
    with fleetd.ddi("auth-board", board["token"], tenant="OTHER") as c:
        r = c.request("GET", "")
        assert r.status_code in (401, 404), r.text
        says(r, "tenant")
        fb = c.feedback(board["ddi_action"], "closed", "success")
        assert fb.status_code in (401, 404), fb.text
        says(fb, "tenant")
    with fleetd.ddi("tenant-board", gw["token"], scheme="GatewayToken", tenant="OTHER") as c:
        assert c.request("GET", "").status_code in (401, 404)
    assert fleetd.find_device("tenant-board") is None
    assert snapshot(fleetd, board) == before


def test_another_devices_action_is_not_found(fleetd: Fleetd, board: dict[str, Any]) -> None:
    before = snapshot(fleetd, board)
    other = fleetd.target_token("nosy-board", device_type="ddi-auth")
    with fleetd.ddi("nosy-board", other["token"]) as c:
        aid = board["ddi_action"]
        got = c.request("GET", f"/deploymentBase/{aid}")
        assert got.status_code == 404, got.text
        says(got)
        fb = c.feedback(aid, "closed", "success", details=["not mine"])
        assert fb.status_code == 404, fb.text
        says(fb)
        assert c.request("GET", f"/cancelAction/{aid}").status_code == 404
        assert c.request("GET", "/deploymentBase/999999999").status_code == 404
    assert snapshot(fleetd, board) == before


MALFORMED: list[tuple[str, bytes]] = [
    ("not JSON", b"{status: closed"),
    ("a JSON array", b"[]"),
    ("no status", json.dumps({"id": "1", "time": "20250101T000000"}).encode()),
    ("status not an object", json.dumps({"status": "closed"}).encode()),
    ("unknown execution", json.dumps(feedback_body("exploded", "success")).encode()),
    ("execution not a string", json.dumps({"status": {"execution": 3, "result": {"finished": "none"}}}).encode()),
    ("unknown finished", json.dumps(feedback_body("closed", "maybe")).encode()),
    ("no result", json.dumps({"status": {"execution": "closed"}}).encode()),
    ("details not a list", json.dumps({"status": {"execution": "proceeding", "result": {"finished": "none"},
                                                  "details": "text"}}).encode()),
    ("progress not numbers", json.dumps({"status": {"execution": "proceeding", "result": {
        "finished": "none", "progress": {"cnt": "one", "of": "two"}}}}).encode()),
]


@pytest.mark.parametrize(("what", "body"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_feedback_is_400_and_changes_nothing(fleetd: Fleetd, board: dict[str, Any], what: str,
                                                       body: bytes) -> None:
    before = snapshot(fleetd, board)
    with fleetd.ddi("auth-board", board["token"]) as c:
        r = c.request("POST", f"/deploymentBase/{board['ddi_action']}/feedback", content=body,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400, (what, r.status_code, r.text)
    says(r)
    assert snapshot(fleetd, board) == before


def test_downloads_need_credentials_unless_anonymous_download_is_on(fleetd: Fleetd, board: dict[str, Any],
                                                                    tmp_path: Path) -> None:
    with fleetd.ddi("auth-board", board["token"]) as c:
        link = c.deployment(board["href"]).chunks[0].artifacts[0].links["download"]
        assert c.download(link).status_code == 200
    with fleetd.ddi("auth-board", None) as anon:
        r = anon.download(link)
        assert r.status_code == 401 and r.content != b"auth firmware\n" * 100
        assert anon.download(link + ".MD5SUM").status_code == 401

    own: ServerProcess = start_server(tmp_path, "--ddi-anonymous-download")
    try:
        key = own.create_key("admin", "anon")
        f = Fleetd(own, key, tmp_path)
        tok = f.target_token("anon-board", device_type="ddi-auth")
        f.push("anonfw", "1.0.0", b"public bits\n" * 10, "ddi-auth", kind="firmware")
        f.deploy(tok["device_id"], "anonfw@1.0.0")
        with f.ddi("anon-board", tok["token"]) as c:
            art = c.deployment(c.poll().links["deploymentBase"]).chunks[0].artifacts[0]
        with DdiClient(own.url, "anon-board", None, ca=own.ca) as anon:
            got = anon.download(art.links["download"])
            assert got.status_code == 200 and got.content == b"public bits\n" * 10
            # Only downloads: the poll and the deployment still need a token.
            assert anon.request("GET", "").status_code == 401
    finally:
        own.stop()
