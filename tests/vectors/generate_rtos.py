"""Write tests/vectors/rtos/: RTOS images, good and bad, for the shim's C tests and the server's Python tests.

    python -m tests.vectors.generate_rtos        (rewrites the folder)

Output (docs/rtos-images.md, "Test vectors"):
  *.fdim          the images
  vectors.json    trusted key, device type, minimum counter, and per image its expected verdict
  index.txt       "<file> <expect>" per line, for C programs that parse no JSON
  trusted_key.hex the trusted Ed25519 public key, 64 hex characters and a newline

Keys come from fixed seeds and Ed25519 signatures are deterministic, so the output
never changes unless the format or this list does; tests/artifacts/test_rtos_image.py checks
that the committed files equal a fresh generation. Every bad image has exactly one
fault: when a header field is broken, the hash and signature are made over the
broken header, so only the intended check can refuse it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetd.artifacts.rtos_image import (
    HEADER_SIZE,
    TLV_ED25519,
    TLV_KEYHASH,
    TLV_SHA256,
    Header,
    Tlv,
    build_image,
    check_version,
    pack_tlvs,
    raw_public_key,
    signature_tlvs,
)

OUT = Path(__file__).with_name("rtos")
DEVICE_TYPE = "fw-sim"
MIN_COUNTER = 3


def _key(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"fleetd rtos vectors: {label}".encode()).digest())


TRUSTED = _key("trusted signing key")
OTHER = _key("a key the device does not trust")


def _payload(label: str, size: int) -> bytes:
    """Recognizable text, then pseudo-random bytes (so any flipped byte changes the hash)."""
    head = f"fleet-sim firmware {label}\n".encode()
    out = bytearray(head)
    i = 0
    while len(out) < size:
        out += hashlib.sha256(f"{label}:{i}".encode()).digest()
        i += 1
    return bytes(out[:size])


@dataclass(frozen=True)
class Vector:
    name: str
    expect: str
    data: bytes
    description: str
    header: Header | None = None  # for ok vectors
    payload_size: int | None = None

    @property
    def file(self) -> str:
        return f"{self.name}.fdim"


def _header(payload: bytes, version: str, counter: int, device_type: str = DEVICE_TYPE) -> Header:
    major, minor, patch = check_version(version)
    return Header(payload_size=len(payload), security_counter=counter, major=major, minor=minor, patch=patch,
                  device_type=device_type)


def _assemble(header: Header, payload: bytes, tlvs: list[Tlv] | None = None,
              signers: tuple[Ed25519PrivateKey, ...] = (TRUSTED,)) -> bytes:
    """header + payload + a trailer made over exactly these header bytes (tlvs replace the default trailer)."""
    raw = header.pack()
    digest = hashlib.sha256(raw + payload).digest()
    if tlvs is None:
        tlvs = [Tlv(TLV_SHA256, digest), *signature_tlvs(digest, signers)]
    return raw + payload + pack_tlvs(tlvs)


def _digest(header: Header, payload: bytes) -> bytes:
    return hashlib.sha256(header.pack() + payload).digest()


def _flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x01
    return bytes(out)


def _ok(name: str, payload: bytes, version: str, counter: int, description: str, **kw: Any) -> Vector:
    data = build_image(payload, version=version, security_counter=counter, device_type=DEVICE_TYPE,
                       signers=kw.pop("signers", [TRUSTED]), **kw)
    return Vector(name, "ok", data, description, _header(payload, version, counter), len(payload))


def vectors() -> list[Vector]:
    small = _payload("1.2.3", 1000)
    basic = build_image(small, version="1.2.3", security_counter=4, device_type=DEVICE_TYPE, signers=[TRUSTED])
    hdr = _header(small, "1.2.3", 4)
    trailer_at = HEADER_SIZE + len(small)
    digest = _digest(hdr, small)
    sha = Tlv(TLV_SHA256, digest)
    sig = signature_tlvs(digest, [TRUSTED])
    unknown = [Tlv(0x7F01, b"build 20261124"), Tlv(0x0030, b"")]
    return [
        _ok("good-basic", small, "1.2.3", 4, "a small image signed by the trusted key"),
        _ok("good-two-signatures", _payload("1.2.4", 1000), "1.2.4", 4,
            "two signatures: by an unknown key first, by the trusted key second", signers=[OTHER, TRUSTED]),
        Vector("good-unknown-tlv", "ok",
               _assemble(hdr, small, [sha, unknown[0], *sig, unknown[1]]),
               "TLVs of unknown types (0x7f01 after SHA256, an empty 0x0030 at the end) are skipped",
               hdr, len(small)),
        _ok("good-rollback", _payload("1.1.0", 1000), "1.1.0", MIN_COUNTER,
            "an older version with the counter equal to the minimum: a valid rollback"),
        _ok("good-large", _payload("2.0.0", 9000), "2.0.0", 5, "a 9000-byte payload spanning several sectors"),
        _ok("good-max-fields", _payload("max", 300), "65535.65535.4294967295", 0xFFFFFFFF,
            "every version field and the counter at their largest (unsigned 16/32-bit)"),

        Vector("truncated-short-header", "format", basic[:40], "only the first 40 bytes of the header"),
        Vector("truncated-header-only", "format", basic[:HEADER_SIZE], "the header and nothing after it"),
        Vector("truncated-payload", "format", basic[:HEADER_SIZE + 500], "cut 500 bytes into the payload"),
        Vector("truncated-trailer", "format", basic[:len(basic) - 50], "cut inside the TLV trailer"),
        Vector("wrong-magic", "format", _assemble(replace(hdr, magic=0x4D494447), small),
               "magic \"GDIM\" instead of \"FDIM\""),
        Vector("bad-format-version", "format", _assemble(replace(hdr, format_version=2), small),
               "format version 2"),
        Vector("bad-header-size", "format", _assemble(replace(hdr, header_size=128), small),
               "header_size 128 instead of 64"),
        Vector("nonzero-flags", "format", _assemble(replace(hdr, flags=1), small), "flags 1 (none are defined)"),
        Vector("nonzero-reserved", "format", _assemble(replace(hdr, reserved=1), small),
               "the reserved header field is 1"),
        Vector("device-type-unterminated", "format", _assemble(replace(hdr, device_type="f" * 32), small),
               "32 device type characters, no NUL"),
        Vector("device-type-bad-char", "format", _assemble(replace(hdr, device_type="fw sim"), small),
               "a space in the device type (allowed: A-Z a-z 0-9 . _ - *)"),
        Vector("device-type-empty", "format", _assemble(replace(hdr, device_type=""), small),
               "an empty device type"),
        Vector("bad-hash", "hash", _flip(basic, HEADER_SIZE + 100), "one payload byte flipped after signing"),
        Vector("bad-hash-tlv", "hash", _flip(basic, trailer_at + 8), "one byte of the SHA256 TLV value flipped"),
        Vector("bad-signature", "signature", _flip(basic, len(basic) - 10), "one signature byte flipped"),
        Vector("wrong-key", "signature",
               build_image(small, version="1.2.3", security_counter=4, device_type=DEVICE_TYPE, signers=[OTHER]),
               "signed by a key the device does not trust"),
        Vector("keyhash-mismatch", "signature",
               _assemble(hdr, small, [sha, Tlv(TLV_KEYHASH, sig[0].value),
                                      Tlv(TLV_ED25519, OTHER.sign(digest))]),
               "the KEYHASH names the trusted key, but the signature is by another key"),
        Vector("unsigned", "signature", _assemble(hdr, small, [sha]), "a SHA256 TLV and no signature"),
        Vector("wrong-device-type", "device_type",
               build_image(small, version="1.2.3", security_counter=4, device_type="fw-other", signers=[TRUSTED]),
               "a valid image for device type fw-other"),
        Vector("good-device-type-pattern", "ok",
               build_image(small, version="1.2.3", security_counter=4, device_type="fw-*", signers=[TRUSTED]),
               "an image for the device-type pattern fw-*, which covers fw-sim", replace(hdr, device_type="fw-*"),
               len(small)),
        Vector("device-type-pattern-other", "device_type",
               build_image(small, version="1.2.3", security_counter=4, device_type="fw-sim-*", signers=[TRUSTED]),
               "an image for the pattern fw-sim-*, which does not cover fw-sim (the - is literal)"),
        Vector("downgrade", "downgrade",
               build_image(_payload("1.0.0", 1000), version="1.0.0", security_counter=MIN_COUNTER - 1,
                           device_type=DEVICE_TYPE, signers=[TRUSTED]),
               f"security counter {MIN_COUNTER - 1}, below the minimum {MIN_COUNTER}"),
        Vector("tlv-length-past-trailer", "format",
               basic[:len(basic) - 66] + (65).to_bytes(2, "little") + basic[len(basic) - 64:],
               "the ED25519 entry says 65 bytes, one more than is left in the trailer"),
        Vector("tlv-total-too-large", "format",
               basic[:trailer_at + 2] + (1028).to_bytes(2, "little") + basic[trailer_at + 4:],
               "tlv_total 1028, more than the 1024 allowed"),
        Vector("tlv-bad-info-magic", "format", _flip(basic, trailer_at), "the trailer's info magic is wrong"),
        Vector("sha256-missing", "format", _assemble(hdr, small, sig), "KEYHASH and ED25519, no SHA256 entry"),
        Vector("sha256-not-first", "format", _assemble(hdr, small, [*sig, sha]), "the SHA256 entry comes last"),
        Vector("sha256-twice", "format", _assemble(hdr, small, [sha, sha, *sig]), "two SHA256 entries"),
        Vector("sha256-wrong-length", "format", _assemble(hdr, small, [Tlv(TLV_SHA256, digest[:31]), *sig]),
               "a 31-byte SHA256 entry"),
        Vector("ed25519-without-keyhash", "format", _assemble(hdr, small, [sha, sig[1]]),
               "an ED25519 entry with no KEYHASH before it"),
        Vector("keyhash-without-ed25519", "format", _assemble(hdr, small, [sha, sig[0]]),
               "a KEYHASH entry with no ED25519 after it"),
    ]


def _entry(v: Vector) -> dict[str, Any]:
    out: dict[str, Any] = {"name": v.name, "file": v.file, "expect": v.expect}
    if v.header is not None:
        out.update(version=v.header.version, security_counter=v.header.security_counter,
                   payload_size=v.payload_size)
        if v.header.device_type != DEVICE_TYPE:  # an image for a pattern that covers the device's type
            out["image_device_type"] = v.header.device_type
    out.update(size=len(v.data), description=v.description)
    return out


def generate() -> dict[str, bytes]:
    """File name → content of everything in tests/vectors/rtos/."""
    vs = vectors()
    assert len({v.name for v in vs}) == len(vs)
    key_hex = raw_public_key(TRUSTED).hex()
    doc = {
        "about": "RTOS image vectors (docs/rtos.md, docs/rtos-images.md), written by "
                 "python -m tests.vectors.generate_rtos. expect: ok | format | hash | signature | device_type | "
                 "downgrade (FLEET_OK, FLEET_E_FORMAT, ...), verifying with trusted_public_key, device_type and "
                 "min_security_counter.",
        "trusted_public_key": key_hex,
        "device_type": DEVICE_TYPE,
        "min_security_counter": MIN_COUNTER,
        "vectors": [_entry(v) for v in vs],
    }
    files = {v.file: v.data for v in vs}
    files["vectors.json"] = (json.dumps(doc, indent=1) + "\n").encode()
    files["index.txt"] = "".join(f"{v.file} {v.expect}\n" for v in vs).encode()
    files["trusted_key.hex"] = (key_hex + "\n").encode()
    return files


def main() -> int:
    OUT.mkdir(exist_ok=True)
    files = generate()
    for stale in OUT.iterdir():
        if stale.name not in files:
            stale.unlink()
    for name, data in files.items():
        (OUT / name).write_bytes(data)
    print(f"wrote {len(files)} files to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
