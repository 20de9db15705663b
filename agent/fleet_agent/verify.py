"""Is an artifact what the fleet signed? The manifest signature, the manifest against the action, then the bytes.

Follows docs/protocol.md §11: the signed bytes are the ``manifest`` string
exactly as received (never re-serialized); the signature is checked with the
signing key pinned at enrollment, and optionally one of the device's trusted
offline keys must have signed it too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .names import DEVICE_TYPE_PATTERN, device_type_matches

MANIFEST_FORMAT = "fleetd-manifest-v1"
# Fields of the action's artifact reference that must equal the signed manifest's.
MATCHED_FIELDS = ("name", "version", "kind", "sha256", "size", "file_name")
HASH_CHUNK = 1 << 20


class VerificationError(Exception):
    """The artifact is not what the fleet signed; the message says which check refused it."""

    def __init__(self, message: str, check: str) -> None:
        super().__init__(message)
        self.message = message
        # signature | offline_signature | manifest | device_type | file
        self.check = check


def b64decode(value: str) -> bytes:
    """Standard or URL-safe base64, padded or not."""
    value = value.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)


def _verifies(public_key: bytes, signature_b64: str, data: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(b64decode(signature_b64), data)
    except (InvalidSignature, ValueError, binascii.Error, TypeError):
        return False
    return True


def verify_manifest(artifact: dict[str, Any], signing_public_key: bytes, device_type: str,
                    offline_keys: Sequence[bytes] = ()) -> dict[str, Any]:
    """Check the signature(s) and the manifest against the action's ``artifact``; return the parsed manifest.

    ``offline_keys``: when not empty, at least one ``offline_signatures`` entry
    must be by one of these keys and verify over the same bytes.
    """
    manifest_text = artifact.get("manifest")
    if not isinstance(manifest_text, str) or not manifest_text:
        raise VerificationError("the action's artifact carries no signed manifest", "signature")
    data = manifest_text.encode("utf-8")
    if not _verifies(signing_public_key, str(artifact.get("signature") or ""), data):
        raise VerificationError("the manifest signature does not verify with the fleet signing key pinned at "
                                "enrollment; the artifact was not signed by this fleet or was altered", "signature")
    if offline_keys:
        trusted = {bytes(k) for k in offline_keys}
        ok = False
        for entry in artifact.get("offline_signatures") or []:
            try:
                key = b64decode(str(entry.get("public_key", "")))
            except (ValueError, binascii.Error, AttributeError):
                continue
            if key in trusted and _verifies(key, str(entry.get("signature", "")), data):
                ok = True
                break
        if not ok:
            raise VerificationError("this device requires an offline signature by one of its trusted keys, and the "
                                    "artifact has none that verifies; sign it with 'fleetd artifacts sign'",
                                    "offline_signature")
    try:
        manifest = json.loads(manifest_text)
    except ValueError:
        raise VerificationError("the signed manifest is not JSON", "manifest") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise VerificationError(f"the manifest is not a {MANIFEST_FORMAT} manifest", "manifest")
    for field in MATCHED_FIELDS:
        if manifest.get(field) != artifact.get(field):
            raise VerificationError(f"the manifest's {field} is {manifest.get(field)!r} but the action references "
                                    f"{artifact.get(field)!r}", "manifest")
    if not isinstance(manifest["size"], int) or manifest["size"] < 0:
        raise VerificationError("the manifest's size is not a byte count", "manifest")
    types = manifest.get("device_types")
    if not isinstance(types, list) or not any(
            DEVICE_TYPE_PATTERN.ok(t) and device_type_matches(t, device_type) for t in types):
        raise VerificationError(f"the artifact is built for device types {types}, not for this device's "
                                f"{device_type!r}", "device_type")
    return manifest


def file_digest(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(HASH_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            h.update(chunk)
    return size, h.hexdigest()


def check_digest(size: int, sha256: str, manifest: dict[str, Any]) -> None:
    if size != manifest["size"]:
        raise VerificationError(f"the file is {size} bytes, the manifest says {manifest['size']}", "file")
    if sha256 != manifest["sha256"]:
        raise VerificationError(f"the file's SHA-256 is {sha256}, the manifest says {manifest['sha256']}", "file")


def verify_file(path: Path, manifest: dict[str, Any]) -> None:
    """The downloaded file's size and SHA-256 against the (verified) manifest."""
    check_digest(*file_digest(path), manifest)
