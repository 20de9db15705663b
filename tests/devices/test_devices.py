"""The device protocol in-process: enrollment, auth, check-in, actions, telemetry — and every hostile case."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.accounts.audit import SYSTEM
from fleetd.artifacts import catalog as artifacts
from fleetd.core.errors import InvalidArgument
from fleetd.devices import devauth, join_tokens
from tests.conftest import rpc
from tests.support.devices_helper import TestDevice

pytestmark = pytest.mark.both_backends


def make_token(client: Any, key: str, **body: Any) -> str:
    r = rpc(client, "EnrollmentService", "CreateToken", body, key=key)
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def active_device(client: Any, key: str, **kw: Any) -> TestDevice:
    d = TestDevice(client, **kw)
    assert d.enroll(make_token(client, key)).status_code == 200
    assert d.authenticate().status_code == 200
    return d


def make_artifact(fleet: Any, name: str = "app", version: str = "1.0.0", data: bytes = b"payload",
                  device_types: list[str] | None = None) -> artifacts.Artifact:
    blob = asyncio.run(fleet.blobs.put_bytes(data))
    return fleet.store.write_sync(lambda c: artifacts.create(
        c, SYSTEM, fleet.keys.signing_key, name=name, version=version, kind="app", device_types=device_types or ["sim"],
        sha256=blob.sha256, size=blob.size, file_name=f"{name}.bin", install_spec=None))


# --- join tokens -----------------------------------------------------------------

def test_token_embeds_ca_fingerprint_and_grants_tags(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    token = make_token(client, admin_key, tags={"site": "lab"})
    assert join_tokens.parse_join_token(token).ca_fingerprint == fleet.keys.ca_fingerprint
    d = TestDevice(client)
    r = d.enroll(token)
    assert r.status_code == 200 and r.json()["status"] == "active"
    assert r.json()["ca_fingerprint"] == fleet.keys.ca_fingerprint
    dev = rpc(client, "DeviceAdminService", "GetDevice", {"id": d.device_id}, key=admin_key).json()
    assert dev["tags"] == {"site": "lab"}


@pytest.mark.parametrize("case", ["expired", "used_up", "revoked", "wrong_secret", "other_server", "garbage"])
def test_bad_join_tokens_are_refused_and_change_nothing(client, fleet, admin_key, case) -> None:  # type: ignore[no-untyped-def]
    r = rpc(client, "EnrollmentService", "CreateToken", {"uses": 1, "expires_in": 3600}, key=admin_key).json()
    token, tid = r["token"], r["id"]
    if case == "expired":
        fleet.store.write_sync(lambda c: c.execute("UPDATE join_tokens SET expires_at = 1 WHERE id = ?", (tid,)))
    elif case == "used_up":
        assert TestDevice(client).enroll(token).status_code == 200
    elif case == "revoked":
        assert rpc(client, "EnrollmentService", "RevokeToken", {"id": tid}, key=admin_key).status_code == 200
    elif case == "wrong_secret":
        token = token[:-4] + ("0000" if not token.endswith("0000") else "1111")
    elif case == "other_server":
        parts = token.split(".")
        token = ".".join([parts[0], "0" * 64, parts[2], parts[3]])
    else:
        token = "fdj1.not-a-token"
    before = fleet.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM devices").fetchone()[0])
    r = TestDevice(client).enroll(token)
    assert r.status_code in (400, 401), r.text
    expected = {"expired": "expired", "used_up": "used up", "revoked": "revoked", "wrong_secret": "unknown",
                "other_server": "another fleetd", "garbage": "join token"}[case]
    assert expected in r.json()["message"]
    after = fleet.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM devices").fetchone()[0])
    assert after == before


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_join_token_parser_is_total(text: str) -> None:
    try:
        p = join_tokens.parse_join_token(text)
    except InvalidArgument:
        return
    assert join_tokens.format_join_token(p.ca_fingerprint, p.id, p.secret) == text.strip()


@given(st.from_regex(r"[0-9a-f]{64}", fullmatch=True), st.from_regex(r"[0-9a-f]{12}", fullmatch=True),
       st.from_regex(r"[0-9a-f]{32}", fullmatch=True))
def test_join_token_round_trip(fp: str, tid: str, secret: str) -> None:
    p = join_tokens.parse_join_token(join_tokens.format_join_token(fp, tid, secret))
    assert (p.ca_fingerprint, p.id, p.secret) == (fp, tid, secret)


# --- claim flow and re-enrollment ------------------------------------------------------

def test_pending_device_is_claimed_by_code_and_gets_no_actions_before(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = TestDevice(client)
    r = d.enroll()
    assert r.json()["status"] == "pending"
    code = r.json()["claim_code"]
    assert len(code) == 9 and code[4] == "-"
    assert d.authenticate().status_code == 200
    r = d.call("CheckIn", {})
    assert r.json() == {"status": "pending", "poll_interval": 60, "actions": [], "next_checkin": 60,
                        "mqtt_url": ""}
    assert d.call("PushTelemetry", {"points": [{"name": "x", "value": 1}]}).status_code == 403
    r = rpc(client, "EnrollmentService", "ClaimDevice", {"claim_code": code.lower().replace("-", ""),
                                                         "name": "kitchen"}, key=admin_key)
    assert r.status_code == 200 and r.json()["status"] == "active" and r.json()["name"] == "kitchen"
    assert d.call("CheckIn", {}).json()["status"] == "active"
    r = rpc(client, "EnrollmentService", "ClaimDevice", {"claim_code": code}, key=admin_key)
    assert r.status_code == 404


def test_reenroll_same_hardware_id(client, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    # Same key, no token: the device gets its state back (an agent that lost the answer may retry).
    assert d.enroll().json()["status"] == "active"
    # Another key without a token: refused, telling the user what to do (test_enroll_again.py has the rest).
    imposter = TestDevice(client, hardware_id=d.hardware_id)
    r = imposter.enroll()
    assert r.status_code == 409 and f"fleetd devices rekey {d.hardware_id}" in r.json()["message"]
    assert d.call("CheckIn", {}).status_code == 200


def test_reject_pending_device(client, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = TestDevice(client)
    d.enroll()
    assert rpc(client, "EnrollmentService", "RejectDevice", {"device_id": d.device_id},
               key=admin_key).status_code == 200
    assert rpc(client, "DeviceAdminService", "GetDevice", {"id": d.device_id}, key=admin_key).status_code == 404


# --- authentication ---------------------------------------------------------------

def test_challenge_is_single_use(client, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = TestDevice(client)
    d.enroll(make_token(client, admin_key))
    nonce = d.call("GetChallenge", {"device_id": d.device_id}).json()["nonce"]
    sig = base64.b64encode(d.key.sign(devauth.challenge_message(d.device_id, nonce))).decode()
    body = {"device_id": d.device_id, "nonce": nonce, "signature": sig}
    assert d.call("Authenticate", body).status_code == 200
    r = d.call("Authenticate", body)
    assert r.status_code == 401 and "already used" in r.json()["message"]


def test_expired_challenge_refused(client, fleet, admin_key, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    d = TestDevice(client)
    d.enroll(make_token(client, admin_key))
    nonce = d.call("GetChallenge", {"device_id": d.device_id}).json()["nonce"]
    real, real_time = time.monotonic, time.time
    sig = base64.b64encode(d.key.sign(devauth.challenge_message(d.device_id, nonce))).decode()
    # The clock of a single server's challenges (monotonic), and of the signed ones replicas share (wall time).
    monkeypatch.setattr(devauth.time, "monotonic", lambda: real() + devauth.CHALLENGE_TTL + 1)
    monkeypatch.setattr(devauth.time, "time", lambda: real_time() + devauth.CHALLENGE_TTL + 1)
    r = d.call("Authenticate", {"device_id": d.device_id, "nonce": nonce, "signature": sig})
    monkeypatch.undo()
    assert r.status_code == 401 and "expired" in r.json()["message"]


def test_bad_signature_and_wrong_device_refused(client, admin_key) -> None:  # type: ignore[no-untyped-def]
    a, b = TestDevice(client), TestDevice(client)
    token = make_token(client, admin_key)
    a.enroll(token)
    b.enroll(token)
    nonce = a.call("GetChallenge", {"device_id": a.device_id}).json()["nonce"]
    # b signs a's challenge with b's key.
    sig = base64.b64encode(b.key.sign(devauth.challenge_message(a.device_id, nonce))).decode()
    r = a.call("Authenticate", {"device_id": a.device_id, "nonce": nonce, "signature": sig})
    assert r.status_code == 401 and "signature" in r.json()["message"]
    # A challenge issued to a cannot be used by b.
    nonce = a.call("GetChallenge", {"device_id": a.device_id}).json()["nonce"]
    sig = base64.b64encode(b.key.sign(devauth.challenge_message(b.device_id, nonce))).decode()
    r = b.call("Authenticate", {"device_id": b.device_id, "nonce": nonce, "signature": sig})
    assert r.status_code == 401 and "another device" in r.json()["message"]


def test_forged_and_expired_bearer_tokens(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    _payload, mac = d.token[len("fdt."):].split(".")
    forged_payload = devauth.b64e(json.dumps({"d": d.device_id, "e": 0, "x": 4102444800}).encode())
    for bad in (f"fdt.{forged_payload}.{mac}", d.token[:-2] + "AA", "fdt.x.y", "nonsense"):
        d.token = bad
        assert d.call("CheckIn", {}).status_code == 401
    d.token = fleet.hub.tokens.issue(d.device_id, 0, ttl=-10)
    assert d.call("CheckIn", {}).status_code == 401


def test_revoked_device_is_stopped_at_once(client, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    assert d.call("CheckIn", {}).status_code == 200
    assert rpc(client, "DeviceAdminService", "RevokeDevice", {"id": d.device_id}, key=admin_key).status_code == 200
    assert d.call("CheckIn", {}).status_code == 401
    r = d.authenticate()
    assert r.status_code in (401, 403)
    r = d.enroll(make_token(client, admin_key))
    assert r.status_code == 403 and "revoked" in r.json()["message"]


def test_devices_cannot_call_admin_methods_and_admins_cannot_check_in(client, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    r = rpc(client, "DeviceAdminService", "ListDevices", {}, key=d.token)
    assert r.status_code == 403
    assert rpc(client, "DeviceService", "CheckIn", {}, key=admin_key).status_code == 403


def test_enrollment_is_rate_limited_per_address(client, fleet) -> None:  # type: ignore[no-untyped-def]
    fleet.enroll_limiter.limit = 3
    codes = [TestDevice(client).enroll().status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]


# --- check-in, actions, downloads ---------------------------------------------------

def test_checkin_records_inventory_and_components(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    r = d.call("CheckIn", {"inventory": {"hostname": "pi4", "arch": "aarch64", "addresses": ["10.0.0.5"]},
                           "components": [{"name": "web", "version": "1.0.0", "state": "running",
                                           "health": "healthy"}]})
    assert r.status_code == 200
    asyncio.run(fleet.hub.flush())
    dev = rpc(client, "DeviceAdminService", "GetDevice", {"id": d.device_id}, key=admin_key).json()
    assert dev["inventory"]["hostname"] == "pi4" and dev["online"] is True
    assert dev["components"][0]["version"] == "1.0.0"
    # A new version keeps the old healthy one as the known-good previous version.
    d.call("CheckIn", {"components": [{"name": "web", "version": "1.1.0", "state": "running"}]})
    asyncio.run(fleet.hub.flush())
    dev = rpc(client, "DeviceAdminService", "GetDevice", {"id": d.device_id}, key=admin_key).json()
    assert dev["components"][0]["previous_version"] == "1.0.0"


def test_a_version_seen_only_between_two_flushes_still_becomes_the_previous_version(  # type: ignore[no-untyped-def]
        client, fleet, admin_key) -> None:
    d = active_device(client, admin_key)
    for version in ("1.0.0", "1.1.0"):  # install, reboot and check in again within one flush interval
        d.call("CheckIn", {"components": [{"name": "fw", "version": version, "state": "running"}]})
    asyncio.run(fleet.hub.flush())
    dev = rpc(client, "DeviceAdminService", "GetDevice", {"id": d.device_id}, key=admin_key).json()
    assert (dev["components"][0]["version"], dev["components"][0]["previous_version"]) == ("1.1.0", "1.0.0")


@pytest.mark.sqlite_only("input refused before the store is asked: the backend changes nothing")
@pytest.mark.parametrize("body, fragment", [
    ({"inventory": {"hostname": 5}}, "hostname"),
    ({"components": [{"name": "x"}]}, "version"),
    ({"components": [{"name": f"c{i}", "version": "1"} for i in range(65)]}, "at most 64"),
    ({"inventory": "nope"}, "inventory"),
])
def test_malformed_inventory_is_refused(client, admin_key, body, fragment) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    r = d.call("CheckIn", body)
    assert r.status_code == 400 and fragment in r.json()["message"]


def test_oversized_checkin_refused(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    big = {"inventory": {"extra": {"k": "v" * (fleet.settings.max_request_bytes + 1)}}}
    assert d.call("CheckIn", big).status_code == 413


def test_deploy_report_and_download(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    other = active_device(client, admin_key)
    art = make_artifact(fleet, data=b"x" * 5000)
    r = rpc(client, "DeviceAdminService", "Deploy", {"device_ids": [d.device_id], "artifact": "app@1.0.0"},
            key=admin_key)
    assert r.status_code == 200
    action = d.call("CheckIn", {}).json()["actions"][0]
    assert action["artifact"]["sha256"] == art.sha256 and action["kind"] == "install"
    assert other.call("CheckIn", {}).json()["actions"] == []
    url = f"/v1/blobs/{art.sha256}"
    assert client.get(url, headers={"Authorization": f"Bearer {d.token}"}).content == b"x" * 5000
    # Another device may neither download the blob nor report on the action.
    assert client.get(url, headers={"Authorization": f"Bearer {other.token}"}).status_code == 403
    r = other.call("ReportStatus", {"action_id": action["id"], "state": "failed"})
    assert r.status_code == 404
    # Forward only; same state again is fine; terminal is final.
    assert d.call("ReportStatus", {"action_id": action["id"], "state": "installing"}).status_code == 200
    assert d.call("ReportStatus", {"action_id": action["id"], "state": "installing", "progress": 50}).status_code == 200
    r = d.call("ReportStatus", {"action_id": action["id"], "state": "downloading"})
    assert r.status_code == 400 and "back" in r.json()["message"]
    assert d.call("ReportStatus", {"action_id": action["id"], "state": "succeeded"}).status_code == 200
    assert d.call("ReportStatus", {"action_id": action["id"], "state": "succeeded"}).status_code == 200
    r = d.call("ReportStatus", {"action_id": action["id"], "state": "failed"})
    assert r.status_code == 400 and "already ended" in r.json()["message"]
    assert d.call("CheckIn", {}).json()["actions"] == []
    # Once the action ended, the device may no longer download the blob.
    assert client.get(url, headers={"Authorization": f"Bearer {d.token}"}).status_code == 403
    for bad_state in ("queued", "cancelled", "exploded"):
        r = d.call("ReportStatus", {"action_id": action["id"], "state": bad_state})
        assert r.status_code == 400


def test_deploy_refuses_wrong_type_and_second_open_action(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    make_artifact(fleet, version="1.0.0")
    make_artifact(fleet, version="2.0.0", data=b"two")
    make_artifact(fleet, name="pi-only", device_types=["linux-aarch64"])
    r = rpc(client, "DeviceAdminService", "Deploy", {"device_ids": [d.device_id], "artifact": "pi-only@1.0.0"},
            key=admin_key)
    assert r.status_code == 400 and "linux-aarch64" in r.json()["message"]
    assert rpc(client, "DeviceAdminService", "Deploy", {"device_ids": [d.device_id], "artifact": "app@1.0.0"},
               key=admin_key).status_code == 200
    r = rpc(client, "DeviceAdminService", "Deploy", {"device_ids": [d.device_id], "artifact": "app@2.0.0"},
            key=admin_key)
    assert r.status_code == 400 and "open action" in r.json()["message"]


def test_rollback_targets_previous_known_good_version(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    make_artifact(fleet, version="1.0.0")
    d.call("CheckIn", {"components": [{"name": "app", "version": "1.0.0", "state": "running", "health": "healthy"}]})
    asyncio.run(fleet.hub.flush())
    d.call("CheckIn", {"components": [{"name": "app", "version": "2.0.0", "state": "running"}]})
    asyncio.run(fleet.hub.flush())
    r = rpc(client, "DeviceAdminService", "CreateAction", {"device_ids": [d.device_id], "kind": "rollback",
                                                           "component": "app"}, key=admin_key)
    assert r.status_code == 200
    action = d.call("CheckIn", {}).json()["actions"][0]
    assert action["kind"] == "install" or action["rollback"] is True
    assert action["artifact"]["version"] == "1.0.0" and action["params"]["to_version"] == "1.0.0"


def test_telemetry_stored_and_validated(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    r = d.call("PushTelemetry", {"points": [{"name": "cpu", "value": 0.5, "ts": 0},
                                            {"name": "temp", "value": 51.2, "ts": time.time(), "tags": {"z": "1"}}]})
    assert r.status_code == 200 and r.json()["accepted"] == 2
    rows = fleet.store.read_sync(lambda c: c.execute("SELECT name, value FROM telemetry WHERE device_id = ?",
                                                     (d.device_id,)).fetchall())
    assert sorted(tuple(r) for r in rows) == [("cpu", 0.5), ("temp", 51.2)]
    for bad, fragment in (({"name": "1bad", "value": 1}, "metric name"), ({"name": "x", "value": 1, "ts": 5}, "ts"),
                          ({"name": "x", "value": "NaN"}, "value")):
        r = d.call("PushTelemetry", {"points": [{"name": "ok", "value": 1}, bad]})
        assert r.status_code == 400 and fragment in r.json()["message"], r.text
    r = d.call("PushTelemetry", {"points": [{"name": "x", "value": 1}] * 5001})
    assert r.status_code in (400, 413)
    count = fleet.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0])
    assert count == 2


def test_enroll_retry_with_a_single_use_token_is_idempotent(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    r = rpc(client, "EnrollmentService", "CreateToken", {"uses": 1}, key=admin_key).json()
    d = TestDevice(client)
    first = d.enroll(r["token"])
    again = d.enroll(r["token"])  # the answer to the first was lost; the device retries
    assert first.status_code == again.status_code == 200
    assert again.json()["device_id"] == first.json()["device_id"] and again.json()["status"] == "active"
    uses = fleet.store.read_sync(lambda c: c.execute("SELECT uses FROM join_tokens WHERE id = ?",
                                                     (r["id"],)).fetchone()[0])
    assert uses == 1
    assert d.authenticate().status_code == 200
    # A pending device that later gets a token is activated by it.
    p = TestDevice(client)
    assert p.enroll().json()["status"] == "pending"
    assert p.enroll(make_token(client, admin_key)).json()["status"] == "active"


def test_checkin_without_inventory_keeps_the_pending_one(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    d = active_device(client, admin_key)
    d.call("CheckIn", {"inventory": {"agent_version": "0.2.0"}, "components": []})
    d.call("CheckIn", {"components": [{"name": "a", "version": "1.0.0"}]})  # before the flush
    asyncio.run(fleet.hub.flush())
    dev = rpc(client, "DeviceAdminService", "GetDevice", {"id": d.device_id}, key=admin_key).json()
    assert dev["inventory"]["agent_version"] == "0.2.0"
    assert [c["version"] for c in dev["components"]] == ["1.0.0"]


def test_certificate_expiry_is_the_latest_live_one(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    from fleetd.devices import storage

    d, other = active_device(client, admin_key), active_device(client, admin_key)
    at = time.time()

    def write(conn: Any) -> None:
        for serial, not_after in (("01", at + 100), ("02", at + 300), ("03", at - 1), ("04", at + 900)):
            storage.insert_certificate(conn, serial=serial, device_id=d.device_id, key_sha256="k", not_before=at - 10,
                                       not_after=not_after)
        conn.execute("UPDATE device_certificates SET revoked_at = ? WHERE serial = '04'", (at,))

    fleet.store.write_sync(write)
    found = fleet.store.read_sync(lambda c: storage.certificate_expiry(c, [d.device_id, other.device_id], at))
    assert found == {d.device_id: at + 300}  # not the expired one, not the revoked one; none for the other


def test_the_devices_a_broker_must_keep_out(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    from fleetd.devices import storage

    revoked, deleted, rekeyed, expired = (active_device(client, admin_key) for _ in range(4))
    at = time.time()

    def write(conn: Any) -> None:
        for n, d in enumerate((revoked, deleted, rekeyed, expired)):
            storage.insert_certificate(conn, serial=f"0{n}", device_id=d.device_id, key_sha256="k", not_before=at - 10,
                                       not_after=at - 1 if d is expired else at + 100)
            storage.revoke_certificates_of(conn, d.device_id, at)  # rekeyed: its old key's, the device stays active

    fleet.store.write_sync(write)
    for d, method in ((revoked, "RevokeDevice"), (deleted, "DeleteDevice"), (expired, "RevokeDevice")):
        assert rpc(client, "DeviceAdminService", method, {"id": d.device_id}, key=admin_key).status_code == 200
    found = fleet.store.read_sync(lambda c: storage.shut_out_devices(c, at))
    assert found == sorted([revoked.device_id, deleted.device_id])  # not the active one, not an expired certificate
