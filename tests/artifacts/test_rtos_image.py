"""RTOS images (fleetd.artifacts.rtos_image): the shared vectors, build/parse round trips, corrupted input, and the
server wrapping and signing firmware pushed with --format rtos-image (in-process and with the real CLI)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetd.artifacts import rtos_image
from fleetd.artifacts.rtos_image import (
    HEADER_SIZE,
    ImageBuilder,
    ImageError,
    Tlv,
    build_image,
    parse_image,
    read_image_file,
    verify_image,
)
from fleetd.cli.artifacts import inspect_image, trusted_key
from fleetd.core.errors import InvalidArgument
from fleetd.core.names import device_type_matches
from fleetd.fleet import Fleet
from tests.artifacts.test_artifacts import (
    active_device,
    artifact_rows,
    blob_rows,
    check_in,
    deploy,
    error,
    open_upload,
    put,
)
from tests.e2e.server import ServerProcess, run_cli
from tests.vectors.generate_rtos import OUT, generate

DOC = json.loads((OUT / "vectors.json").read_bytes())
VECTORS = {v["name"]: v for v in DOC["vectors"]}
TRUSTED = bytes.fromhex(DOC["trusted_public_key"])


def _key(i: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"test_rtos_image key {i}".encode()).digest())


KEYS = [_key(i) for i in range(3)]


def verdict(data: bytes, keys: list[bytes] | None = None, device_type: str | None = DOC["device_type"],
            min_counter: int = DOC["min_security_counter"]) -> str:
    try:
        verify_image(data, [TRUSTED] if keys is None else keys, device_type, min_counter)
    except ImageError as e:
        return e.kind
    return "ok"


# --- the shared vectors --------------------------------------------------------

def test_the_committed_vectors_are_what_the_generator_makes() -> None:
    fresh = generate()
    committed = {p.name: p.read_bytes() for p in OUT.iterdir()}
    assert sorted(committed) == sorted(fresh), "run: python -m tests.vectors.generate_rtos"
    for name, data in fresh.items():
        assert committed[name] == data, f"{name} differs; run: python -m tests.vectors.generate_rtos"


def test_the_vectors_cover_every_verdict_and_the_listed_cases() -> None:
    assert {v["expect"] for v in VECTORS.values()} == {"ok", *rtos_image.ERROR_KINDS}
    assert {"good-basic", "good-two-signatures", "good-unknown-tlv", "good-rollback", "truncated-header-only",
            "truncated-payload", "truncated-trailer", "wrong-magic", "bad-format-version", "nonzero-flags",
            "bad-hash", "bad-signature", "wrong-key", "wrong-device-type", "downgrade", "tlv-length-past-trailer",
            "sha256-missing"} <= set(VECTORS)
    index = [line.split() for line in (OUT / "index.txt").read_text().splitlines()]
    assert index == [[v["file"], v["expect"]] for v in DOC["vectors"]]
    assert (OUT / "trusted_key.hex").read_text() == DOC["trusted_public_key"] + "\n"
    assert len(DOC["trusted_public_key"]) == 64


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_each_vector_gets_its_verdict(name: str) -> None:
    v = VECTORS[name]
    path = OUT / v["file"]
    data = path.read_bytes()
    assert len(data) == v["size"]
    assert verdict(data) == v["expect"]
    # The file-reading path (hashing a chunk at a time) and the CLI's inspect agree with verify_image.
    assert inspect_image(path, [TRUSTED], DOC["device_type"], DOC["min_security_counter"])["verdict"] == v["expect"]
    try:
        info, digest = read_image_file(path, chunk=97)
        rtos_image.check_image(info, digest, [TRUSTED], DOC["device_type"], DOC["min_security_counter"])
        streamed = "ok"
    except ImageError as e:
        streamed = e.kind
    assert streamed == v["expect"]
    if v["expect"] == "ok":
        info = parse_image(data)
        assert (info.version, info.header.security_counter, info.header.payload_size) == (
            v["version"], v["security_counter"], v["payload_size"])
        assert device_type_matches(info.header.device_type, DOC["device_type"])  # fw-sim, or a pattern like fw-*
        assert v["security_counter"] >= DOC["min_security_counter"]


def test_the_ok_vectors_are_refused_with_another_key_device_type_or_minimum() -> None:
    data = (OUT / "good-basic.fdim").read_bytes()
    assert verdict(data, keys=[rtos_image.raw_public_key(KEYS[0])]) == "signature"
    assert verdict(data, keys=[]) == "signature"
    assert verdict(data, device_type="fw-sim2") == "device_type"
    assert verdict(data, min_counter=5) == "downgrade"
    assert verdict(data, device_type=None, min_counter=4) == "ok"
    rollback = (OUT / "good-rollback.fdim").read_bytes()
    assert verdict(rollback, min_counter=DOC["min_security_counter"] + 1) == "downgrade"


def test_every_single_byte_change_of_a_good_image_is_refused() -> None:
    """Every byte of good-basic is covered by the hash, the signature or the trailer's structure."""
    data = (OUT / "good-basic.fdim").read_bytes()
    for i in range(len(data)):
        changed = bytearray(data)
        changed[i] ^= 0x80
        assert verdict(bytes(changed)) != "ok", f"byte {i} changed and the image still verifies"


# --- building and parsing ------------------------------------------------------

versions = st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)).map(
    lambda v: ".".join(map(str, v)))
device_types = st.text("abcXYZ019._-", min_size=1, max_size=31)


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=3000), version=versions, counter=st.integers(0, 0xFFFFFFFF),
       device_type=device_types, signers=st.lists(st.sampled_from(range(3)), min_size=1, max_size=3),
       extra=st.lists(st.tuples(st.integers(0x0100, 0xFFFF), st.binary(max_size=40)), max_size=3),
       cuts=st.lists(st.integers(0, 3000), max_size=4))
def test_build_then_parse_and_verify_round_trip(payload: bytes, version: str, counter: int, device_type: str,
                                                 signers: list[int], extra: list[tuple[int, bytes]],
                                                 cuts: list[int]) -> None:
    keys = [KEYS[i] for i in signers]
    tlvs = [Tlv(t, v) for t, v in extra]
    image = build_image(payload, version=version, security_counter=counter, device_type=device_type, signers=keys,
                        extra_tlvs=tlvs)
    # The streaming builder makes the same bytes however the payload is cut into chunks.
    b = ImageBuilder(payload_size=len(payload), version=version, security_counter=counter,
                     device_type=device_type, signers=keys, extra_tlvs=tlvs)
    parts = [b.header]
    bounds = [0, *sorted(c for c in cuts if c <= len(payload)), len(payload)]
    for lo, hi in itertools.pairwise(bounds):
        b.update(payload[lo:hi])
        parts.append(payload[lo:hi])
    assert b"".join([*parts, b.trailer()]) == image and b.image_size == len(image)

    info = verify_image(image, [rtos_image.raw_public_key(KEYS[signers[-1]])], device_type, counter)
    assert (info.version, info.header.security_counter, info.header.device_type) == (version, counter, device_type)
    assert image[HEADER_SIZE:info.trailer_offset] == payload
    assert [s.key_hash for s in info.signatures] == [rtos_image.key_hash(k) for k in keys]
    assert [t for t in info.tlvs if t.type not in rtos_image.KNOWN_TLVS] == tlvs
    assert info.sha256 == hashlib.sha256(image[:info.trailer_offset]).digest()
    if counter:
        with pytest.raises(ImageError) as e:
            verify_image(image, [rtos_image.raw_public_key(KEYS[signers[0]])], device_type, counter + 1)
        assert e.value.kind == "downgrade"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupted_images_raise_only_image_errors(data: st.DataObject) -> None:
    base = (OUT / data.draw(st.sampled_from(["good-basic.fdim", "good-unknown-tlv.fdim",
                                             "good-two-signatures.fdim"]))).read_bytes()
    image = bytearray(base)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "cut", "insert", "delete"]))
        at = data.draw(st.integers(0, max(len(image) - 1, 0)))
        if op == "set" and image:
            image[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del image[at:]
        elif op == "insert":
            image[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del image[at:at + data.draw(st.integers(1, 8))]
    try:
        info = verify_image(bytes(image), [TRUSTED], DOC["device_type"], DOC["min_security_counter"])
    except ImageError as e:
        assert e.kind in rtos_image.ERROR_KINDS and e.message.startswith(f"RTOS image refused ({e.kind})")
    else:
        # The trailer is not signed (as MCUboot's unprotected TLVs): a changed value of a TLV the verifier skips
        # may still verify. What was signed — header and payload — and the digest must be the original's.
        signed = verify_image(base, [TRUSTED], DOC["device_type"], DOC["min_security_counter"])
        assert (bytes(image[:info.trailer_offset]), info.sha256) == (base[:signed.trailer_offset], signed.sha256), \
            "a changed header or payload verified"


def test_the_trailer_is_not_signed_but_what_it_signs_is() -> None:
    """A skipped TLV's value may change and still verify (nothing trusts it); a payload byte may not."""
    base = (OUT / "good-unknown-tlv.fdim").read_bytes()
    at = base.index(b"build 20261124")
    changed = base[:at] + b"X" + base[at + 1:]
    info = verify_image(changed, [TRUSTED], DOC["device_type"], DOC["min_security_counter"])
    assert [t.value for t in info.tlvs if t.type == 0x7F01] == [b"Xuild 20261124"]
    payload_byte = HEADER_SIZE + 3
    broken = base[:payload_byte] + bytes([base[payload_byte] ^ 1]) + base[payload_byte + 1:]
    with pytest.raises(ImageError) as e:
        verify_image(broken, [TRUSTED], DOC["device_type"], DOC["min_security_counter"])
    assert e.value.kind == "hash"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_format_errors(raw: bytes) -> None:
    with pytest.raises(ImageError) as e:
        parse_image(b"FDIM" + raw)
    assert e.value.kind == "format"


@pytest.mark.parametrize(("kw", "message"), [
    ({"version": "1.2.0-rc.1"}, "pre-release or build part"),
    ({"version": "1.2.0+build.5"}, "pre-release or build part"),
    ({"version": "65536.0.0"}, "major and minor at most 65535"),
    ({"version": "1.0.4294967296"}, "patch at most 4294967295"),
    ({"version": "v1.0"}, "not a semantic version"),
    ({"device_type": ""}, "1 to 31 characters"),
    ({"device_type": "a" * 32}, "1 to 31 characters"),
    ({"device_type": "fw sim"}, "1 to 31 characters"),
    ({"device_type": "fw-sim\n"}, "1 to 31 characters"),
    ({"security_counter": -1}, "security counter -1 is out of range"),
    ({"security_counter": 1 << 32}, "out of range: it must be 0 to 4294967295"),
    ({"signers": []}, "at least one signing key"),
    ({"signers": KEYS * 4}, "more than 1024"),
    ({"extra_tlvs": [Tlv(rtos_image.TLV_SHA256, b"x")]}, "the builder's own"),
])
def test_bad_build_parameters_are_refused_clearly(kw: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"version": "1.0.0", "security_counter": 0, "device_type": "fw-sim", "signers": KEYS[:1],
                            **kw}
    with pytest.raises(InvalidArgument) as e:
        build_image(b"firmware", **args)
    assert message in e.value.message and not isinstance(e.value, ImageError)


def test_the_streaming_builder_refuses_a_payload_of_another_size() -> None:
    b = ImageBuilder(payload_size=10, version="1.0.0", security_counter=0, device_type="x", signers=KEYS[:1])
    b.update(b"12345")
    with pytest.raises(InvalidArgument, match="ended after 5 of the 10 bytes"):
        b.trailer()
    with pytest.raises(InvalidArgument, match="longer than the 10 bytes"):
        b.update(b"123456")
    with pytest.raises(InvalidArgument, match="does not fit an RTOS image"):
        rtos_image.check_payload_size(rtos_image.MAX_PAYLOAD + 1)
    assert rtos_image.check_payload_size(rtos_image.MAX_PAYLOAD) == rtos_image.MAX_PAYLOAD


def test_trusted_keys_are_read_from_hex_base64_and_pem(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    raw = rtos_image.raw_public_key(KEYS[0])
    pem = KEYS[0].public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "pub.pem").write_bytes(pem)
    (tmp_path / "key.hex").write_text(raw.hex() + "\n")
    for text in (raw.hex(), base64.b64encode(raw).decode(), str(tmp_path / "pub.pem"), str(tmp_path / "key.hex")):
        assert trusted_key(text) == raw
    with pytest.raises(InvalidArgument, match="not an Ed25519 public key: give 64 hex characters"):
        trusted_key("abcd")


# --- the server wraps and signs ---------------------------------------------------

def push_rtos(client: Any, key: str, payload: bytes, **kw: Any) -> Any:
    body = {"kind": "firmware", "format": "rtos-image", "device_types": ["fw-sim"], "file_name": "fw-sim.bin",
            "size": len(payload), **kw}
    r = open_upload(client, key, **body)
    assert r.status_code == 200, r.text
    return put(client, key, r.json(), payload)


def test_a_pushed_rtos_image_is_wrapped_signed_and_sent_to_devices(client: Any, fleet: Fleet, admin_key: str,
                                                                   operator_key: str) -> None:
    payload = hashlib.sha256(b"fw").digest() * 80_000  # 2.5 MiB: several batches through the hashing thread
    r = push_rtos(client, operator_key, payload, name="sim-fw", version="1.2.0", security_counter=7)
    assert r.status_code == 201, r.text
    art = r.json()
    assert (art["format"], art["security_counter"], art["kind"], art["file_name"]) == (
        "rtos-image", 7, "firmware", "fw-sim.bin")
    assert art["size"] > len(payload) + HEADER_SIZE

    stored = fleet.blobs.path(art["sha256"]).read_bytes()
    signing_key = fleet.keys.signing_public_key
    info = verify_image(stored, [signing_key], "fw-sim", 7)
    assert (info.version, info.header.security_counter, info.header.payload_size) == ("1.2.0", 7, len(payload))
    assert stored[HEADER_SIZE:info.trailer_offset] == payload
    assert art["sha256"] == hashlib.sha256(stored).hexdigest() and art["size"] == len(stored)
    assert art["md5"] == hashlib.md5(stored).hexdigest() and art["sha1"] == hashlib.sha1(stored).hexdigest()
    manifest = json.loads(art["manifest"])
    assert (manifest["image_format"], manifest["security_counter"], manifest["sha256"], manifest["size"]) == (
        "rtos-image", 7, art["sha256"], len(stored))
    shown = client.post("/fleetd.v1.ArtifactService/GetArtifact", json={"id": "sim-fw@1.2.0"},
                        headers={"Authorization": f"Bearer {operator_key}"}).json()
    assert (shown["format"], shown["security_counter"]) == ("rtos-image", 7)

    device = active_device(client, admin_key, device_type="fw-sim")
    deploy(client, operator_key, "sim-fw@1.2.0", device)
    (action,) = check_in(device)["actions"]
    ref = action["artifact"]
    assert (ref["sha256"], ref["size"], ref["file_name"]) == (art["sha256"], len(stored), "fw-sim.bin")
    download = client.get(urlparse(ref["url"]).path, headers={"Authorization": f"Bearer {device.token}"})
    assert download.status_code == 200 and download.content == stored
    pinned = base64.b64decode(device.enroll_response["signing_public_key"])  # type: ignore[attr-defined]
    assert verify_image(download.content, [pinned], "fw-sim", 7).version == "1.2.0"


def test_a_raw_push_is_stored_as_sent(client: Any, fleet: Fleet, operator_key: str) -> None:
    r = open_upload(client, operator_key, kind="firmware", size=5)
    art = put(client, operator_key, r.json(), b"hello").json()
    assert (art["format"], art["security_counter"], art["size"]) == ("raw", None, 5)
    assert "image_format" not in json.loads(art["manifest"])
    assert fleet.blobs.path(art["sha256"]).read_bytes() == b"hello"


@pytest.mark.parametrize(("kw", "message"), [
    ({"kind": "app"}, "--format rtos-image is for firmware; this artifact's kind is 'app'"),
    ({"device_types": ["fw-a", "fw-b"]}, "exactly one device type"),
    ({"version": "1.0.0-rc.1"}, "has a pre-release or build part"),
    ({"security_counter": -1}, "security counter -1 is out of range"),
    ({"security_counter": 1 << 32}, "security counter 4294967296 is out of range"),
    ({"format": "zip"}, "format must be one of raw, rtos-image, got 'zip'"),
    ({"format": "raw", "security_counter": 3}, "a security counter applies to --format rtos-image only"),
    ({"device_types": ["f" * 40]}, "1 to 31 characters"),
])
def test_bad_rtos_uploads_are_refused_with_a_clear_400(client: Any, operator_key: str, kw: dict[str, Any],
                                                       message: str) -> None:
    body = {"kind": "firmware", "format": "rtos-image", "device_types": ["fw-sim"], "size": 10, **kw}
    status, code, text = error(open_upload(client, operator_key, **body))
    assert (status, code) == (400, "invalid_argument") and message in text


def test_an_rtos_upload_of_unknown_size_is_refused_and_nothing_is_stored(client: Any, fleet: Fleet,
                                                                          operator_key: str) -> None:
    r = open_upload(client, operator_key, kind="firmware", format="rtos-image", device_types=["fw-sim"])
    assert r.status_code == 200, r.text
    before = blob_rows(fleet)
    sent = client.put(urlparse(r.json()["upload_url"]).path, content=iter([b"firmware"]),
                      headers={"Authorization": f"Bearer {operator_key}"})
    status, code, text = error(sent)
    assert (status, code) == (400, "invalid_argument") and "must announce its size" in text
    assert blob_rows(fleet) == before and artifact_rows(fleet) == []


# --- the CLI against a real server ------------------------------------------------

@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("rtos") / "data").start()
    yield s
    s.stop()


def test_cli_push_and_inspect_an_rtos_image(real_server: ServerProcess, tmp_path: Path) -> None:
    key = real_server.create_key("operator")
    conn = ["--server", real_server.url, "--api-key", key, "--ca", real_server.ca]
    fw = tmp_path / "zephyr.bin"
    fw.write_bytes(bytes(range(256)) * 40)
    p = run_cli("artifacts", "push", str(fw), "--name", "cli-fw", "--version", "2.1.0", "--kind", "firmware",
                "--format", "rtos-image", "--security-counter", "4", "--device-type", "fw-sim", *conn, "--json")
    art = json.loads(p.stdout)
    assert (art["format"], art["security_counter"], art["file_name"]) == ("rtos-image", 4, "zephyr.bin")

    signing = real_server.rpc("ArtifactService", "GetSigningKey", {}, key).json()["public_key"]
    with real_server.client(key) as c:
        image = c.get(f"/v1/blobs/{art['sha256']}").content
    (tmp_path / "fw.fdim").write_bytes(image)
    p = run_cli("artifacts", "inspect", str(tmp_path / "fw.fdim"), "--key", signing, "--device-type", "fw-sim",
                "--min-counter", "4", "--json")
    report = json.loads(p.stdout)
    assert (report["verdict"], report["version"], report["payload_size"]) == ("ok", "2.1.0", 10240)
    assert report["signatures"][0]["valid"] is True
    p = run_cli("artifacts", "inspect", str(tmp_path / "fw.fdim"), "--key", signing, "--min-counter", "5",
                check=False)
    assert p.returncode == 1 and "downgrade" in p.stdout

    p = run_cli("artifacts", "push", str(fw), "--name", "cli-fw", "--version", "2.2.0", "--format", "rtos-image",
                "--device-type", "fw-sim", *conn, check=False)
    assert p.returncode == 1 and "--format rtos-image is for firmware" in p.stderr
