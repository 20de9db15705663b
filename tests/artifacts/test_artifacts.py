"""Artifacts in-process: two-step upload, signed manifests as devices verify them, delete, offline signatures."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import anyio
import msgspec
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from fleetd.app import create_app
from fleetd.artifacts import catalog as artifacts
from fleetd.artifacts.catalog import KINDS, RESTART_POLICIES, HealthCheck, InstallSpec
from fleetd.cli.artifacts import build_install_spec, check_manifest, load_signing_key, public_key_b64
from fleetd.core.config import Settings
from fleetd.core.errors import FleetdError, InvalidArgument
from fleetd.core.names import ARTIFACT_NAME, BIDI_CONTROLS, DEVICE_TYPE, ENV_NAME, RESERVED_FILE_NAMES
from fleetd.fleet import Fleet
from tests.conftest import make_key, rpc
from tests.support.devices_helper import TestDevice

pytestmark = pytest.mark.both_backends

SVC = "ArtifactService"


# --- helpers ---------------------------------------------------------------------

def meta(name: str = "sensor-app", version: str = "1.0.0", **kw: Any) -> dict[str, Any]:
    return {"name": name, "version": version, "device_types": ["sim"], "file_name": "sensor.bin", **kw}


def open_upload(client: Any, key: str, **kw: Any) -> Any:
    return rpc(client, SVC, "CreateUpload", meta(**kw), key=key)


def put(client: Any, key: str, ticket: dict[str, Any], data: bytes, **headers: str) -> Any:
    return client.put(urlparse(ticket["upload_url"]).path, content=data,
                      headers={"Authorization": f"Bearer {key}", **headers})


def push(client: Any, key: str, data: bytes, **kw: Any) -> dict[str, Any]:
    r = open_upload(client, key, size=len(data), **kw)
    assert r.status_code == 200, r.text
    r = put(client, key, r.json(), data)
    assert r.status_code == 201, r.text
    return dict(r.json())


def error(r: Any) -> tuple[int, str, str]:
    body = r.json()
    return r.status_code, body["code"], body["message"]


def artifact_rows(fleet: Fleet) -> list[tuple[str, str]]:
    return fleet.store.read_sync(lambda c: [(r[0], r[1]) for r in c.execute("SELECT name, version FROM artifacts")])


def blob_rows(fleet: Fleet) -> set[str]:
    return fleet.store.read_sync(lambda c: {r[0] for r in c.execute("SELECT sha256 FROM blobs")})


def tmp_files(fleet: Fleet) -> list[Path]:
    return list((fleet.blobs.root / "tmp").iterdir())


# store/blobs.py (another change's file) finds the tables that refer to blobs in sqlite_master; its PostgreSQL form
# is Dialect.table_exists. Until it uses that, blob GC (and the delete that runs it) is SQLite-only.


@pytest.fixture
def small_fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(Settings(data_dir=str(tmp_path / "small"), tls=False, mdns=False, host="127.0.0.1",
                       max_upload_bytes=4096))
    yield f
    f.close()


@pytest.fixture
def small_client(small_fleet: Fleet) -> Iterator[TestClient[Any]]:
    with TestClient(app=create_app(small_fleet)) as c:
        yield c


def active_device(client: Any, admin_key: str, device_type: str = "sim") -> TestDevice:
    r = rpc(client, "EnrollmentService", "CreateToken", {"description": "test"}, key=admin_key)
    assert r.status_code == 200, r.text
    dev = TestDevice(client, device_type=device_type)
    enrolled = dev.enroll(r.json()["token"])
    assert enrolled.status_code == 200 and enrolled.json()["status"] == "active", enrolled.text
    dev.enroll_response = enrolled.json()  # type: ignore[attr-defined]
    assert dev.authenticate().status_code == 200
    return dev


def deploy(client: Any, key: str, ref: str, device: TestDevice) -> str:
    r = rpc(client, "DeviceAdminService", "Deploy", {"artifact": ref, "device_ids": [device.device_id]}, key=key)
    assert r.status_code == 200, r.text
    return str(r.json()["action_ids"][0])


def check_in(device: TestDevice, components: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body = {"components": components} if components is not None else {}
    r = device.call("CheckIn", body)
    assert r.status_code == 200, r.text
    return dict(r.json())


# --- CreateUpload refuses bad metadata before any byte is sent --------------------

@pytest.mark.sqlite_only("input refused before the store is asked: the backend changes nothing")
@pytest.mark.parametrize(("fields", "needle"), [
    ({"version": "1.0"}, "not a semantic version"),
    ({"version": "v1.0.0"}, "not a semantic version"),
    ({"name": "Sensor App"}, "artifact name 'Sensor App'"),
    ({"kind": "driver"}, "kind must be one of app, agent, firmware"),
    ({"device_types": []}, "at least one device type"),
    ({"device_types": ["Linux ARM"]}, "device type 'Linux ARM'"),
    ({"file_name": "../etc/passwd"}, "must not contain / or"),
    ({"file_name": ".fleet-manifest.json"}, "is reserved"),
    ({"file_name": "photo\u202egpj.exe"}, "bidirectional-formatting characters (found U+202E)"),
    ({"file_name": "app\x00"}, "control or bidirectional"),
    ({"name": "app\n"}, "artifact name 'app\\n'"),
    ({"size": -1}, "size must not be negative"),
    ({"install_spec": {"restart": "sometimes"}}, "restart must be one of always, on-failure, never"),
    ({"install_spec": {"command": ["./app", ""]}}, "command must be a list of non-empty strings"),
    ({"install_spec": {"env": {"1BAD": "x"}}}, "env name '1BAD'"),
    ({"install_spec": {"health": {"http_url": "ftp://x"}}}, "http_url must start with http"),
    ({"kind": "firmware", "install_spec": {"command": ["x"]}}, "install spec applies to app artifacts only"),
])
def test_create_upload_refuses_bad_metadata(client: Any, operator_key: str, fields: dict[str, Any],
                                            needle: str) -> None:
    r = open_upload(client, operator_key, **fields)
    status, code, message = error(r)
    assert (status, code) == (400, "invalid_argument")
    assert needle in message


def test_create_upload_refuses_a_file_over_the_cap_naming_the_setting(client: Any, operator_key: str,
                                                                      fleet: Fleet) -> None:
    r = open_upload(client, operator_key, size=fleet.settings.max_upload_bytes + 1)
    status, code, message = error(r)
    assert (status, code) == (413, "resource_exhausted")
    assert "max_upload_bytes" in message and str(fleet.settings.max_upload_bytes) in message
    # 64-bit integers may come as strings (protobuf JSON), and at the cap it is fine.
    assert open_upload(client, operator_key, size=str(fleet.settings.max_upload_bytes)).status_code == 200


def test_create_upload_refuses_an_existing_version(client: Any, operator_key: str) -> None:
    push(client, operator_key, b"v1")
    status, code, message = error(open_upload(client, operator_key))
    assert (status, code) == (409, "already_exists")
    assert "sensor-app@1.0.0 already exists" in message and "new version" in message
    assert open_upload(client, operator_key, version="1.0.1").status_code == 200


def test_uploading_needs_the_operator_role(client: Any, viewer_key: str) -> None:
    assert error(open_upload(client, viewer_key))[:2] == (403, "permission_denied")


# --- the upload ---------------------------------------------------------------------

def test_upload_stores_the_file_with_the_three_hashes_and_signs_the_manifest(
        client: Any, operator_key: str, fleet: Fleet) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    spec = {"command": ["./sensor.bin", "--port", "8080"], "env": {"MODE": "fast"}, "restart": "always",
            "health": {"grace_seconds": 20, "http_url": "http://127.0.0.1:8080/healthz"}}
    r = open_upload(client, operator_key, size=len(data), device_types=["sim", "linux-aarch64", "sim"],
                    install_spec=spec)
    assert r.status_code == 200, r.text
    ticket = r.json()
    assert ticket["upload_id"].startswith("up_") and ticket["upload_url"].endswith(f"/v1/uploads/{ticket['upload_id']}")
    assert ticket["max_bytes"] == fleet.settings.max_upload_bytes
    r = put(client, operator_key, ticket, data)
    assert r.status_code == 201, r.text
    a = r.json()
    assert (a["sha256"], a["sha1"], a["md5"], a["size"]) == (
        hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest(), hashlib.md5(data).hexdigest(), len(data))
    assert a["device_types"] == ["linux-aarch64", "sim"]
    assert fleet.blobs.path(a["sha256"]).read_bytes() == data
    manifest = json.loads(a["manifest"])
    assert manifest["sha256"] == a["sha256"] and manifest["size"] == len(data)
    assert manifest["install"] == spec and manifest["file_name"] == "sensor.bin"
    # The PUT answers the same object GetArtifact does, by id and by NAME@VERSION.
    for ref in (a["id"], "sensor-app@1.0.0"):
        got = rpc(client, SVC, "GetArtifact", {"id": ref}, key=operator_key).json()
        assert got == a
    assert a["deployment"] == {"actions": {}, "open_actions": 0, "installed_count": 0, "installed_on": []}
    assert tmp_files(fleet) == []


def test_an_upload_is_single_use_and_belongs_to_its_opener(client: Any, operator_key: str, fleet: Fleet) -> None:
    other = make_key(fleet, "operator", "someone-else")
    ticket = open_upload(client, operator_key, size=3).json()
    status, code, message = error(put(client, other, ticket, b"abc"))
    assert (status, code) == (403, "permission_denied") and "another user or API key" in message
    assert put(client, operator_key, ticket, b"abc").status_code == 201  # the refusal did not use it up
    status, code, message = error(put(client, operator_key, ticket, b"abc"))
    assert (status, code) == (404, "not_found") and "already used" in message and "CreateUpload" in message


def test_an_expired_upload_is_refused(client: Any, operator_key: str, fleet: Fleet) -> None:
    fleet.uploads.ttl = 0.0  # in memory (SQLite) or in the database (PostgreSQL): expired as soon as opened
    ticket = open_upload(client, operator_key).json()
    status, code, message = error(put(client, operator_key, ticket, b"abc"))
    assert (status, code) == (404, "not_found") and "expired" in message
    assert artifact_rows(fleet) == []


@pytest.mark.parametrize(("announced", "sent", "needle"), [
    (10, b"x" * 9, "Content-Length is 9 but CreateUpload announced 10"),
    (10, b"x" * 11, "Content-Length is 11 but CreateUpload announced 10"),
    (0, b"", "the upload is empty"),
])
def test_a_body_that_is_not_the_announced_size_stores_nothing(client: Any, operator_key: str, fleet: Fleet,
                                                              announced: int, sent: bytes, needle: str) -> None:
    ticket = open_upload(client, operator_key, size=announced).json()
    status, code, message = error(put(client, operator_key, ticket, sent))
    assert (status, code) == (400, "invalid_argument") and needle in message
    assert artifact_rows(fleet) == [] and blob_rows(fleet) == set() and tmp_files(fleet) == []


def test_a_chunked_body_is_counted_against_the_announced_size(client: Any, operator_key: str, fleet: Fleet) -> None:
    """Without Content-Length the check happens while streaming."""
    def body(n: int) -> Iterator[bytes]:
        for _ in range(n):
            yield b"x" * 1000

    for n, needle in ((3, "ended after 3000 of the 4000 bytes"), (5, "more than the 4000 bytes")):
        ticket = open_upload(client, operator_key, size=4000).json()
        r = client.put(urlparse(ticket["upload_url"]).path, content=body(n),
                       headers={"Authorization": f"Bearer {operator_key}"})
        status, code, message = error(r)
        assert (status, code) == (400, "invalid_argument") and needle in message, message
    assert artifact_rows(fleet) == [] and blob_rows(fleet) == set() and tmp_files(fleet) == []
    ticket = open_upload(client, operator_key, size=4000).json()
    r = client.put(urlparse(ticket["upload_url"]).path, content=body(4),
                   headers={"Authorization": f"Bearer {operator_key}"})
    assert r.status_code == 201 and r.json()["sha256"] == hashlib.sha256(b"x" * 4000).hexdigest()


def test_the_cap_holds_at_put_time_too(small_client: Any, small_fleet: Fleet) -> None:
    key = make_key(small_fleet, "operator")
    # Announced as too large: refused before a byte.
    assert error(open_upload(small_client, key, size=4097))[:2] == (413, "resource_exhausted")
    # Not announced, and the Content-Length gives it away.
    ticket = open_upload(small_client, key).json()
    status, code, message = error(put(small_client, key, ticket, b"y" * 5000))
    assert (status, code) == (413, "resource_exhausted") and "max_upload_bytes" in message
    # Not announced and no Content-Length: the stream is cut at the cap.
    ticket = open_upload(small_client, key).json()
    r = small_client.put(urlparse(ticket["upload_url"]).path, content=iter([b"y" * 3000, b"y" * 3000]),
                         headers={"Authorization": f"Bearer {key}"})
    status, code, message = error(r)
    assert (status, code) == (413, "resource_exhausted") and "max_upload_bytes" in message
    assert artifact_rows(small_fleet) == [] and blob_rows(small_fleet) == set() and tmp_files(small_fleet) == []
    # Exactly at the cap is fine.
    ticket = open_upload(small_client, key).json()
    assert put(small_client, key, ticket, b"y" * 4096).status_code == 201


def test_a_duplicate_found_at_put_time_is_refused_and_its_blob_left_for_gc(
        client: Any, operator_key: str, fleet: Fleet) -> None:
    first = open_upload(client, operator_key, size=5).json()
    second = open_upload(client, operator_key, size=6).json()  # both opened before either is stored
    winner = put(client, operator_key, first, b"first").json()
    status, code, message = error(put(client, operator_key, second, b"second"))
    assert (status, code) == (409, "already_exists") and "sensor-app@1.0.0 already exists" in message
    loser_sha = hashlib.sha256(b"second").hexdigest()
    assert blob_rows(fleet) == {winner["sha256"], loser_sha}
    assert artifact_rows(fleet) == [("sensor-app", "1.0.0")]
    report = anyio.run(fleet.blobs.gc, 0)
    assert report.deleted == [loser_sha]
    assert blob_rows(fleet) == {winner["sha256"]}


def test_the_upload_route_is_in_the_openapi_document(client: Any) -> None:
    doc = client.get("/schema/openapi.json").json()
    assert doc["paths"]["/v1/uploads/{upload_id}"]["put"]["x-fleetd-auth"] == "operator"
    assert "/fleetd.v1.ArtifactService/CreateUpload" in doc["paths"]


# --- what devices verify ---------------------------------------------------------------

def test_a_device_verifies_the_manifest_with_only_the_key_it_pinned(
        client: Any, admin_key: str, operator_key: str) -> None:
    data = os.urandom(200_000)
    push(client, operator_key, data, install_spec={"command": ["./sensor.bin"]})
    device = active_device(client, admin_key)
    pinned = base64.b64decode(device.enroll_response["signing_public_key"])  # type: ignore[attr-defined]
    published = rpc(client, SVC, "GetSigningKey", {}, key=operator_key).json()
    assert base64.b64decode(published["public_key"]) == pinned and published["algorithm"] == "ed25519"
    assert "BEGIN PUBLIC KEY" in published["public_key_pem"]

    deploy(client, operator_key, "sensor-app@1.0.0", device)
    (action,) = check_in(device)["actions"]
    ref = action["artifact"]
    download = client.get(urlparse(ref["url"]).path, headers={"Authorization": f"Bearer {device.token}"})
    assert download.status_code == 200
    manifest, signature = ref["manifest"].encode(), base64.b64decode(ref["signature"])

    key = Ed25519PublicKey.from_public_bytes(pinned)
    key.verify(signature, manifest)  # raises if it does not verify
    m = json.loads(manifest)
    assert m["sha256"] == hashlib.sha256(download.content).hexdigest() == ref["sha256"]
    assert m["size"] == len(download.content) == ref["size"] and download.content == data
    assert (m["name"], m["version"], m["kind"], m["install"]) == ("sensor-app", "1.0.0", "app",
                                                                  {"command": ["./sensor.bin"]})
    for i in (0, len(manifest) // 2, len(manifest) - 1):
        flipped = bytearray(manifest)
        flipped[i] ^= 0x01
        with pytest.raises(InvalidSignature):
            key.verify(signature, bytes(flipped))


# --- offline signatures ----------------------------------------------------------------

def test_add_signature_stores_a_verified_signature_and_refuses_a_bad_one(
        client: Any, admin_key: str, operator_key: str) -> None:
    a = push(client, operator_key, b"payload")
    offline = Ed25519PrivateKey.generate()
    other = Ed25519PrivateKey.generate()
    manifest = a["manifest"].encode()

    def add(public_key: str, signature: bytes | str) -> Any:
        sig = signature if isinstance(signature, str) else base64.b64encode(signature).decode()
        return rpc(client, SVC, "AddSignature", {"id": "sensor-app@1.0.0", "public_key": public_key,
                                                 "signature": sig}, key=operator_key)

    bad = [
        add(public_key_b64(other), offline.sign(manifest)),           # not that key's signature
        add(public_key_b64(offline), offline.sign(manifest + b" ")),  # not over these bytes
        add(public_key_b64(offline), "not base64!"),
        add(public_key_b64(offline)[:10], offline.sign(manifest)),    # not 32 bytes
    ]
    messages = [error(r) for r in bad]
    assert all(m[:2] == (400, "invalid_argument") for m in messages), messages
    assert "does not verify" in messages[0][2] and "does not verify" in messages[1][2]
    assert "base64" in messages[2][2] and "32 bytes" in messages[3][2]
    assert rpc(client, SVC, "GetArtifact", {"id": a["id"]}, key=operator_key).json()["offline_signatures"] == []

    r = add(public_key_b64(offline), offline.sign(manifest))
    assert r.status_code == 200, r.text
    assert r.json()["offline_signatures"] == [{"public_key": public_key_b64(offline),
                                               "signature": base64.b64encode(offline.sign(manifest)).decode()}]
    # The same key again replaces its signature; a second key adds one.
    assert len(add(public_key_b64(offline), offline.sign(manifest)).json()["offline_signatures"]) == 1
    sigs = add(public_key_b64(other), other.sign(manifest)).json()["offline_signatures"]
    assert [s["public_key"] for s in sigs] == [public_key_b64(offline), public_key_b64(other)]
    # Devices get them with the artifact, and can check them with the offline public key alone.
    device = active_device(client, admin_key)
    deploy(client, operator_key, a["id"], device)
    (action,) = check_in(device)["actions"]
    got = {s["public_key"]: s["signature"] for s in action["artifact"]["offline_signatures"]}
    Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64(offline))).verify(
        base64.b64decode(got[public_key_b64(offline)]), action["artifact"]["manifest"].encode())


def test_signing_helpers_refuse_a_manifest_for_another_file(tmp_path: Path) -> None:
    local = tmp_path / "sensor.bin"
    local.write_bytes(b"local bytes")
    art = {"name": "sensor-app", "version": "1.0.0"}
    good = json.dumps({"name": "sensor-app", "version": "1.0.0", "sha256": hashlib.sha256(b"local bytes").hexdigest(),
                       "size": 11}).encode()
    assert check_manifest(good, art, local)["size"] == 11
    with pytest.raises(FleetdError, match="is not the file the server holds"):
        check_manifest(good.replace(b'"size": 11', b'"size": 12'), art, local)
    with pytest.raises(FleetdError, match=r"manifest is for other@1\.0\.0"):
        check_manifest(good.replace(b"sensor-app", b"other"), art, None)
    (tmp_path / "rsa.pem").write_text("not a key")
    with pytest.raises(InvalidArgument, match="not a PEM private key"):
        load_signing_key(tmp_path / "rsa.pem")


# --- delete ------------------------------------------------------------------------------

def test_delete_is_refused_while_the_artifact_is_in_use(client: Any, admin_key: str, operator_key: str,
                                                         fleet: Fleet) -> None:
    a1 = push(client, operator_key, b"one", version="1.0.0")
    push(client, operator_key, b"two", version="2.0.0")
    device = active_device(client, admin_key)

    def delete(ref: str, key: str = admin_key) -> Any:
        return rpc(client, SVC, "DeleteArtifact", {"id": ref}, key=key)

    assert error(delete("sensor-app@1.0.0", operator_key))[:2] == (403, "permission_denied")
    action_id = deploy(client, operator_key, "sensor-app@1.0.0", device)
    status, code, message = error(delete("sensor-app@1.0.0"))
    assert (status, code) == (400, "failed_precondition")
    assert action_id in message and device.device_id in message and "cancel" in message
    shown = rpc(client, SVC, "GetArtifact", {"id": "sensor-app@1.0.0"}, key=operator_key).json()["deployment"]
    assert shown["actions"] == {"queued": 1} and shown["open_actions"] == 1

    r = device.call("ReportStatus", {"action_id": action_id, "state": "succeeded"})
    assert r.status_code == 200, r.text
    check_in(device, [{"name": "sensor-app", "version": "1.0.0", "health": "healthy"}])
    status, code, message = error(delete("sensor-app@1.0.0"))  # no wait: delete flushes what devices reported
    assert (status, code) == (400, "failed_precondition")
    assert f"installed on 1 device(s): {device.device_id}" in message
    shown = rpc(client, SVC, "GetArtifact", {"id": "sensor-app@1.0.0"}, key=operator_key).json()["deployment"]
    assert shown == {"actions": {"succeeded": 1}, "open_actions": 0, "installed_count": 1,
                     "installed_on": [device.device_id]}

    check_in(device, [{"name": "sensor-app", "version": "2.0.0", "health": "healthy"}])
    status, code, message = error(delete("sensor-app@1.0.0"))
    assert (status, code) == (400, "failed_precondition") and "roll back to" in message
    assert device.device_id in message

    check_in(device, [{"name": "sensor-app", "version": "3.0.0"}])
    r = delete("sensor-app@1.0.0")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == a1["id"]
    assert error(rpc(client, SVC, "GetArtifact", {"id": a1["id"]}, key=operator_key))[:2] == (404, "not_found")
    # The finished action still says what it installed; the audit log has the deletion.
    history = rpc(client, "DeviceAdminService", "ListActions", {"device_id": device.device_id}, key=admin_key)
    (act,) = history.json()["actions"]
    assert act["artifact"] is None and act["params"]["artifact"] == "sensor-app@1.0.0"
    audited = fleet.store.read_sync(lambda c: c.execute(
        "SELECT target FROM audit_log WHERE action = 'artifact.delete'").fetchall())
    assert [r[0] for r in audited] == [a1["id"]]
    assert [v for _, v in artifact_rows(fleet)] == ["2.0.0"]
    assert anyio.run(fleet.blobs.gc, 0).deleted == [a1["sha256"]]


def test_list_filters_by_name_and_orders_by_version(client: Any, operator_key: str, viewer_key: str) -> None:
    for v in ("1.10.0", "1.2.0", "1.2.0-rc.1"):
        push(client, operator_key, v.encode(), version=v)
    push(client, operator_key, b"other", name="other-app", kind="agent")
    r = rpc(client, SVC, "ListArtifacts", {"name": "sensor-app"}, key=viewer_key)
    assert [a["version"] for a in r.json()["artifacts"]] == ["1.2.0-rc.1", "1.2.0", "1.10.0"]
    r = rpc(client, SVC, "ListArtifacts", {"kind": "agent"}, key=viewer_key)
    assert [a["name"] for a in r.json()["artifacts"]] == ["other-app"]
    # Side-effect free: Connect GET works too.
    assert client.get(f"/fleetd.v1.{SVC}/ListArtifacts", params={"message": "{}"},
                      headers={"Authorization": f"Bearer {viewer_key}"}).status_code == 200


# --- the manifest format and the install spec ---------------------------------------------

_ident = st.from_regex(r"[0-9A-Za-z-]{1,8}", fullmatch=True).filter(
    lambda s: not (s.isdigit() and len(s) > 1 and s[0] == "0"))
versions = st.builds(
    lambda a, b, c, pre, build: f"{a}.{b}.{c}" + (f"-{'.'.join(pre)}" if pre else "")
    + (f"+{'.'.join(build)}" if build else ""),
    st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6),
    st.lists(_ident, max_size=3), st.lists(st.from_regex(r"[0-9A-Za-z-]{1,8}", fullmatch=True), max_size=2))
_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"), max_size=20)
_word = _text.filter(bool)
health = st.builds(HealthCheck, grace_seconds=st.integers(0, 3600),
                   http_url=st.none() | st.builds(lambda p: "http://127.0.0.1/" + p, _text),
                   command=st.lists(_word, max_size=3))
specs = st.builds(InstallSpec, command=st.lists(_word, max_size=4),
                  env=st.dictionaries(st.from_regex(ENV_NAME.pattern, fullmatch=True), _text, max_size=4),
                  working_dir=st.none() | _word, restart=st.sampled_from(RESTART_POLICIES),
                  health=st.none() | health)
file_names = st.text(st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="/\\" + BIDI_CONTROLS),
                     min_size=1, max_size=40).filter(lambda s: s not in RESERVED_FILE_NAMES)


@settings(max_examples=200, deadline=None)
@given(name=st.from_regex(ARTIFACT_NAME.pattern, fullmatch=True), version=versions, kind=st.sampled_from(KINDS),
       device_types=st.lists(st.from_regex(DEVICE_TYPE.pattern, fullmatch=True), min_size=1, max_size=4),
       file_name=file_names, spec=st.none() | specs, size=st.integers(0, 2**53),
       sha=st.binary(min_size=32, max_size=32), created=st.floats(0, 4e9))
def test_manifests_are_canonical_json(name: str, version: str, kind: str, device_types: list[str],
                                      file_name: str, spec: InstallSpec | None, size: int, sha: bytes,
                                      created: float) -> None:
    artifacts.check_metadata(name, version, kind, device_types, file_name)  # the strategies make valid input
    m = artifacts.build_manifest(name=name, version=version, kind=kind, sha256=sha.hex(), size=size,
                                 file_name=file_name, device_types=device_types, install_spec=spec, created=created)
    parsed = json.loads(m)
    assert artifacts.canonical_json(parsed) == m
    between_strings = re.sub(rb'"(?:[^"\\]|\\.)*"', b'""', m)  # JSON text outside string literals
    assert list(parsed) == sorted(parsed) and not re.search(rb"\s", between_strings)
    assert (parsed["name"], parsed["version"], parsed["file_name"], parsed["size"]) == (name, version, file_name, size)
    assert parsed["device_types"] == sorted(device_types)
    decoded = msgspec.convert(parsed["install"], InstallSpec | None)
    assert decoded == spec


@given(st.text(max_size=30).filter(lambda s: s not in RESTART_POLICIES))
def test_install_spec_decoding_refuses_unknown_restart_policies(policy: str) -> None:
    with pytest.raises(InvalidArgument, match="restart must be one of always, on-failure, never"):
        msgspec.json.decode(json.dumps({"restart": policy}).encode(), type=InstallSpec)


def test_install_spec_from_cli_options(tmp_path: Path) -> None:
    assert build_install_spec(None, None, [], None, None, None, None) is None
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"command": ["old"], "env": {"A": "1"}, "working_dir": "/srv",
                                     "health": {"grace_seconds": 5}}))
    spec = build_install_spec(spec_file, "python3 app.py --name 'my sensor'", ["B=2=3", "A=x"], "never", None,
                              "http://127.0.0.1:8080/ok", "curl -f localhost")
    assert spec == {"command": ["python3", "app.py", "--name", "my sensor"], "env": {"A": "x", "B": "2=3"},
                    "working_dir": "/srv", "restart": "never",
                    "health": {"grace_seconds": 5, "http_url": "http://127.0.0.1:8080/ok",
                               "command": ["curl", "-f", "localhost"]}}
    assert msgspec.convert(spec, InstallSpec).command == ["python3", "app.py", "--name", "my sensor"]
    for args, needle in (((None, "a 'b", [], None), "cannot parse --run"), ((None, None, ["NOEQUALS"], None),
                         "KEY=VALUE"), ((None, None, [], "sometimes"), "--restart must be one of")):
        with pytest.raises(InvalidArgument, match=needle):
            build_install_spec(*args, None, None, None)  # type: ignore[arg-type]
    spec_file.write_text("[1, 2]")
    with pytest.raises(InvalidArgument, match="must hold a JSON object"):
        build_install_spec(spec_file, None, [], None, None, None, None)


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fleetd.cli import app
    out = tmp_path / "offline.pem"
    r = CliRunner().invoke(app, ["artifacts", "keygen", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = load_signing_key(out)
    assert json.loads(r.stdout)["public_key"] == public_key_b64(key)
    r = CliRunner().invoke(app, ["artifacts", "keygen", "--out", str(out)])
    assert r.exit_code == 1 and "already exists" in r.output
    assert load_signing_key(out).private_bytes_raw() == key.private_bytes_raw()  # not replaced
