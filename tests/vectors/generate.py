"""Write tests/vectors/manifests.json: signed manifests, good and bad, made by the server's own code.

    python tests/vectors/generate.py          (rewrites the file)

Both test suites read the file: tests/test_vectors.py checks that the server's
code still makes exactly these bytes and agrees with every verdict;
tests/agent/test_apps_verify.py checks that the agent (which never imports
fleetd) reaches the same verdicts. Keys come from fixed seeds and the created
time is fixed, and Ed25519 signatures are deterministic, so the output never
changes unless the manifest format does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetd.artifacts.catalog import HealthCheck, InstallSpec, build_manifest, sign

OUT = Path(__file__).with_name("manifests.json")
DEVICE_TYPE = "linux-aarch64"
CREATED = 1795482648  # 2026-11-24T01:10:48Z
URL = "https://fleet.example.net:8420/v1/blobs/"


def _key(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"fleetd test vectors: {label}".encode()).digest())


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _public(key: Ed25519PrivateKey) -> str:
    return _b64(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


SIGNING = _key("fleet signing key")
OTHER = _key("some other fleet")
OFFLINE = _key("offline release key")
UNTRUSTED_OFFLINE = _key("an offline key the device does not trust")


def _artifact(data: bytes, *, name: str = "webcam", version: str = "1.0.0", file_name: str = "webcam-1.0.0.sh",
              device_types: tuple[str, ...] = (DEVICE_TYPE, "linux-armv7l"), spec: InstallSpec | None = None,
              key: Ed25519PrivateKey = SIGNING) -> dict[str, Any]:
    sha = hashlib.sha256(data).hexdigest()
    manifest = build_manifest(name=name, version=version, kind="app", sha256=sha, size=len(data),
                              file_name=file_name, device_types=list(device_types), install_spec=spec,
                              created=CREATED)
    return {"name": name, "version": version, "kind": "app", "url": URL + sha, "sha256": sha, "size": len(data),
            "file_name": file_name, "manifest": manifest.decode(), "signature": sign(key, manifest),
            "offline_signatures": []}


def _case(name: str, verdict: str, check: str | None, artifact: dict[str, Any], data: bytes, why: str,
          offline_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"name": name, "verdict": verdict, "check": check, "why": why, "device_type": DEVICE_TYPE,
            "required_offline_keys": list(offline_keys), "artifact": artifact, "file": _b64(data)}


def _offline(artifact: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    sig = {"public_key": _public(key), "signature": sign(key, artifact["manifest"].encode())}
    return dict(artifact, offline_signatures=[sig])


def cases() -> list[dict[str, Any]]:
    script = b"#!/bin/sh\nexec sleep 3600\n"
    good = _artifact(script)
    spec = InstallSpec(command=["python3", "-m", "webcam", "--port", "8080"],
                       env={"WEBCAM_DEVICE": "/dev/video0", "WEBCAM_TITLE": "Küche \"Nord\" \\ 東"},
                       health=HealthCheck(grace_seconds=20, http_url="http://127.0.0.1:8080/healthz"))
    tarball = bytes(range(256)) * 3
    with_spec = _artifact(tarball, version="1.1.0", file_name="webcam-1.1.0.bin", spec=spec)
    tampered = dict(good, manifest=good["manifest"].replace('"created":"2026-11-24T01:10:48Z"',
                                                            '"created":"2026-11-24T01:10:49Z"'))
    assert tampered["manifest"] != good["manifest"]
    other_type = _artifact(script, device_types=("linux-armv7l",))
    # Device-type patterns (docs/protocol.md "Device types and patterns"): part of the signed bytes.
    pattern = _artifact(script, version="1.2.0", device_types=("linux-*",))
    other_pattern = _artifact(script, version="1.2.0", device_types=("rtos-*", "linux-arm*"))
    narrow = _artifact(script, version="1.2.0", device_types=("linux-armv7l",))
    widened = dict(narrow, manifest=narrow["manifest"].replace('"linux-armv7l"', '"linux-*"'))
    assert widened["manifest"] == pattern["manifest"] and widened["signature"] != pattern["signature"]
    flipped = bytearray(script)
    flipped[-2] ^= 0x01
    trusted = (_public(OFFLINE),)
    return [
        _case("good", "accept", None, good, script, "a correctly signed manifest and its file"),
        _case("good_install_spec", "accept", None, with_spec, tarball,
              "an install spec with nested objects, escapes and non-ASCII text in the signed bytes"),
        _case("tampered_manifest", "reject", "signature", tampered, script,
              "one character of the manifest changed after signing"),
        _case("wrong_key", "reject", "signature", dict(good, signature=_artifact(script, key=OTHER)["signature"]),
              script, "signed by another fleet's key"),
        _case("wrong_device_type", "reject", "device_type", other_type, script,
              "validly signed, but built for another device type"),
        _case("device_type_pattern", "accept", None, pattern, script,
              "built for the pattern linux-*, which covers linux-aarch64"),
        _case("device_type_pattern_other", "reject", "device_type", other_pattern, script,
              "built for the patterns rtos-* and linux-arm*, neither of which covers linux-aarch64"),
        _case("device_type_widened_to_pattern", "reject", "signature", widened, script,
              "signed for linux-armv7l, then the manifest's device type changed to linux-* (the signature covers it)"),
        _case("wrong_sha256", "reject", "manifest", dict(good, sha256=hashlib.sha256(b"other").hexdigest()),
              script, "the action's sha256 differs from the signed manifest's"),
        _case("size_mismatch", "reject", "manifest", dict(good, size=good["size"] + 1), script,
              "the action's size differs from the signed manifest's"),
        _case("tampered_file", "reject", "file", good, bytes(flipped),
              "the file's bytes differ from what the manifest's sha256 says (same size)"),
        _case("truncated_file", "reject", "file", good, script[:-5], "the file is shorter than the manifest says"),
        _case("offline_signature_required_and_present", "accept", None, _offline(good, OFFLINE), script,
              "the device requires an offline signature by its trusted key, and there is one", trusted),
        _case("offline_signature_required_but_missing", "reject", "offline_signature", good, script,
              "the device requires an offline signature, and there is none", trusted),
        _case("offline_signature_by_untrusted_key", "reject", "offline_signature",
              _offline(good, UNTRUSTED_OFFLINE), script,
              "the only offline signature is by a key the device does not trust", trusted),
    ]


def generate() -> bytes:
    doc = {
        "about": "Artifact verification vectors (docs/protocol.md §11), written by tests/vectors/generate.py from "
                 "fleetd's own manifest code. verdict: accept | reject; check: which step must refuse it "
                 "(signature, offline_signature, manifest, device_type, file). file: the downloaded bytes, base64.",
        "signing_public_key": _public(SIGNING),
        "cases": cases(),
    }
    return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode()


def main() -> int:
    OUT.write_bytes(generate())
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
