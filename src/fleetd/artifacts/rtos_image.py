"""RTOS images (docs/rtos.md, "Image format"): build, parse and verify them.

    header (64 bytes) | payload | TLV trailer (SHA-256 of header+payload, Ed25519 signatures)

The server wraps an uploaded firmware payload while it streams (:class:`ImageBuilder`:
header first, payload chunks hashed as they pass, trailer last); integrators and the
tests use :func:`build_image`, :func:`parse_image` and :func:`verify_image`. Every
refusal of an image is an :class:`ImageError` whose ``kind`` is one of the shim's
verdicts (format, hash, signature, device_type, downgrade); bad build parameters are
plain :class:`InvalidArgument`.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..core.errors import InvalidArgument
from ..core.names import device_type_matches
from ..core.semver import Version

MAGIC = 0x4D494446  # b"FDIM" read as a little-endian u32
FORMAT_VERSION = 1
HEADER_SIZE = 64
DEVICE_TYPE_MAX = 31
TLV_INFO_MAGIC = 0x6F74
TLV_MAX_SIZE = 1024
TLV_SHA256 = 0x0010
TLV_KEYHASH = 0x0011
TLV_ED25519 = 0x0020
KNOWN_TLVS = {TLV_SHA256: "SHA256", TLV_KEYHASH: "KEYHASH", TLV_ED25519: "ED25519"}
U32_MAX = 0xFFFFFFFF
# The device addresses the whole image with u32 offsets.
MAX_PAYLOAD = U32_MAX - HEADER_SIZE - TLV_MAX_SIZE

_HEADER = struct.Struct("<IHHIIIHHI32sI")
_TLV = struct.Struct("<HH")
# The header's device type: a name or a pattern with * (docs/protocol.md "Device types and patterns").
_DEVICE_TYPE = re.compile(r"[A-Za-z0-9._*-]{1,31}")

ErrorKind = Literal["format", "hash", "signature", "device_type", "downgrade"]
ERROR_KINDS: tuple[ErrorKind, ...] = ("format", "hash", "signature", "device_type", "downgrade")


class ImageError(InvalidArgument):
    """An image the shim would refuse; ``kind`` names the check (FLEET_E_FORMAT, _HASH, ...)."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(f"RTOS image refused ({kind}): {message}")
        self.kind = kind


@dataclass(frozen=True)
class Header:
    payload_size: int
    security_counter: int
    major: int
    minor: int
    patch: int
    device_type: str
    magic: int = MAGIC
    format_version: int = FORMAT_VERSION
    header_size: int = HEADER_SIZE
    flags: int = 0
    reserved: int = 0

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    def pack(self) -> bytes:
        """The 64 header bytes as given, unchecked (the tests build broken headers with it)."""
        return _HEADER.pack(self.magic, self.format_version, self.header_size, self.flags, self.payload_size,
                            self.security_counter, self.major, self.minor, self.patch,
                            self.device_type.encode("ascii"), self.reserved)


@dataclass(frozen=True)
class Tlv:
    type: int
    value: bytes

    @property
    def name(self) -> str:
        return KNOWN_TLVS.get(self.type, f"unknown 0x{self.type:04x}")


@dataclass(frozen=True)
class Signature:
    key_hash: bytes  # SHA-256 of the signer's raw Ed25519 public key
    signature: bytes


@dataclass(frozen=True)
class ImageInfo:
    header: Header
    tlvs: tuple[Tlv, ...]
    sha256: bytes  # what the SHA256 TLV says
    signatures: tuple[Signature, ...]
    size: int  # of the whole image

    @property
    def version(self) -> str:
        return self.header.version

    @property
    def trailer_offset(self) -> int:
        return HEADER_SIZE + self.header.payload_size


def raw_public_key(key: Ed25519PublicKey | Ed25519PrivateKey | bytes) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if isinstance(key, Ed25519PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if len(key) != 32:
        raise InvalidArgument(f"an Ed25519 public key has 32 bytes, not {len(key)}")
    return bytes(key)


def key_hash(key: Ed25519PublicKey | Ed25519PrivateKey | bytes) -> bytes:
    return hashlib.sha256(raw_public_key(key)).digest()


# --- building -------------------------------------------------------------------------------------------------

def check_version(version: str) -> tuple[int, int, int]:
    v = Version(version)
    if v.pre or v.build:
        raise InvalidArgument(f"version {version!r} has a pre-release or build part; an RTOS image carries only "
                              "MAJOR.MINOR.PATCH (e.g. 1.4.0)")
    if v.major > 0xFFFF or v.minor > 0xFFFF or v.patch > U32_MAX:
        raise InvalidArgument(f"version {version!r} is out of range for an RTOS image: major and minor at most "
                              f"65535, patch at most {U32_MAX}")
    return v.major, v.minor, v.patch


def check_device_type(device_type: str) -> str:
    if not _DEVICE_TYPE.fullmatch(device_type):
        raise InvalidArgument(f"device type {device_type[:40]!r} cannot go in an RTOS image: it must be 1 to "
                              f"{DEVICE_TYPE_MAX} characters of A-Z a-z 0-9 . _ - *")
    return device_type


def check_security_counter(counter: int) -> int:
    if not 0 <= counter <= U32_MAX:
        raise InvalidArgument(f"security counter {counter} is out of range: it must be 0 to {U32_MAX}")
    return counter


def check_payload_size(size: int) -> int:
    if not 0 <= size <= MAX_PAYLOAD:
        raise InvalidArgument(f"a payload of {size} bytes does not fit an RTOS image: at most {MAX_PAYLOAD} "
                              "bytes (the device addresses images with 32-bit offsets)")
    return size


def pack_tlvs(entries: Iterable[Tlv], total: int | None = None) -> bytes:
    """The trailer: info header + entries. ``total`` overrides tlv_total (the tests make broken ones)."""
    body = b"".join(_TLV.pack(t.type, len(t.value)) + t.value for t in entries)
    return _TLV.pack(TLV_INFO_MAGIC, _TLV.size + len(body) if total is None else total) + body


def signature_tlvs(digest: bytes, signers: Iterable[Ed25519PrivateKey]) -> list[Tlv]:
    out: list[Tlv] = []
    for key in signers:
        out += [Tlv(TLV_KEYHASH, key_hash(key)), Tlv(TLV_ED25519, key.sign(digest))]
    return out


class ImageBuilder:
    """Wraps a payload of a size known in advance, one chunk at a time.

    Send ``builder.header``, then each payload chunk after ``builder.update(chunk)``, then ``builder.trailer()``.
    Extra TLVs (types other than the three defined ones) go right after the SHA256 entry.
    """

    def __init__(self, *, payload_size: int, version: str, security_counter: int, device_type: str,
                 signers: Sequence[Ed25519PrivateKey], extra_tlvs: Sequence[Tlv] = ()) -> None:
        major, minor, patch = check_version(version)
        if not signers:
            raise InvalidArgument("an RTOS image needs at least one signing key")
        for t in extra_tlvs:
            if t.type in KNOWN_TLVS or not 0 <= t.type <= 0xFFFF or len(t.value) > 0xFFFF:
                raise InvalidArgument(f"extra TLV type 0x{t.type:04x} with {len(t.value)} bytes is not allowed: "
                                      "types 0x0010, 0x0011 and 0x0020 are the builder's own")
        tlv_size = (_TLV.size + _TLV.size + 32 + len(signers) * (2 * _TLV.size + 32 + 64)
                    + sum(_TLV.size + len(t.value) for t in extra_tlvs))
        if tlv_size > TLV_MAX_SIZE:
            raise InvalidArgument(f"the TLV trailer would have {tlv_size} bytes, more than {TLV_MAX_SIZE}; use "
                                  "fewer signers or smaller extra TLVs")
        self.header = Header(payload_size=check_payload_size(payload_size),
                             security_counter=check_security_counter(security_counter), major=major, minor=minor,
                             patch=patch, device_type=check_device_type(device_type)).pack()
        self.image_size = HEADER_SIZE + payload_size + tlv_size
        self._payload_size = payload_size
        self._signers = list(signers)
        self._extra = list(extra_tlvs)
        self._sha = hashlib.sha256(self.header)
        self._seen = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._seen += len(chunk)
        if self._seen > self._payload_size:
            raise InvalidArgument(f"the payload is longer than the {self._payload_size} bytes announced")
        self._sha.update(chunk)

    def trailer(self) -> bytes:
        if self._seen != self._payload_size:
            raise InvalidArgument(f"the payload ended after {self._seen} of the {self._payload_size} bytes "
                                  "announced")
        digest = self._sha.digest()
        return pack_tlvs([Tlv(TLV_SHA256, digest), *self._extra, *signature_tlvs(digest, self._signers)])


def build_image(payload: bytes, *, version: str, security_counter: int, device_type: str,
                signers: Sequence[Ed25519PrivateKey], extra_tlvs: Sequence[Tlv] = ()) -> bytes:
    b = ImageBuilder(payload_size=len(payload), version=version, security_counter=security_counter,
                     device_type=device_type, signers=signers, extra_tlvs=extra_tlvs)
    b.update(payload)
    return b.header + payload + b.trailer()


# --- parsing and verifying ------------------------------------------------------------------------------------

def _fail(message: str) -> ImageError:
    return ImageError("format", message)


def parse_header(raw: bytes) -> Header:
    if len(raw) < HEADER_SIZE:
        raise _fail(f"the image has {len(raw)} bytes, less than the {HEADER_SIZE}-byte header")
    (magic, fmt, hsize, flags, psize, counter, major, minor, patch, dtype,
     reserved) = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise _fail(f"wrong magic {raw[:4].hex()}: an RTOS image starts with 4644494d (\"FDIM\")")
    if fmt != FORMAT_VERSION:
        raise _fail(f"format version {fmt} is not supported (this fleetd knows version {FORMAT_VERSION})")
    if hsize != HEADER_SIZE:
        raise _fail(f"header size {hsize}, expected {HEADER_SIZE}")
    if flags:
        raise _fail(f"flags 0x{flags:08x} set; no flags are defined")
    if reserved:
        raise _fail(f"reserved field 0x{reserved:08x} is not 0")
    name, _, rest = dtype.partition(b"\0")
    if rest.strip(b"\0") or not _DEVICE_TYPE.fullmatch(name.decode("latin-1")):
        raise _fail("the device type field is not 1-31 characters of A-Z a-z 0-9 . _ - * padded with NUL bytes")
    return Header(payload_size=psize, security_counter=counter, major=major, minor=minor, patch=patch,
                  device_type=name.decode("ascii"), flags=flags, reserved=reserved)


def parse_trailer(raw: bytes) -> tuple[tuple[Tlv, ...], bytes, tuple[Signature, ...]]:
    """The TLV trailer, which must be exactly ``raw``: entries, the SHA256 value, the signatures."""
    if len(raw) < _TLV.size:
        raise _fail("the image ends before its TLV trailer")
    magic, total = _TLV.unpack_from(raw)
    if magic != TLV_INFO_MAGIC:
        raise _fail(f"the TLV trailer starts with {raw[:2].hex()}, not the info magic 746f")
    if not _TLV.size <= total <= TLV_MAX_SIZE:
        raise _fail(f"TLV trailer size {total} is not between {_TLV.size} and {TLV_MAX_SIZE}")
    if len(raw) < total:
        raise _fail(f"the image ends {total - len(raw)} bytes before the end of its TLV trailer")
    if len(raw) > total:
        raise _fail(f"{len(raw) - total} bytes follow the TLV trailer")
    tlvs: list[Tlv] = []
    pos = _TLV.size
    while pos < total:
        if pos + _TLV.size > total:
            raise _fail(f"a TLV entry header at trailer offset {pos} runs past the trailer")
        typ, length = _TLV.unpack_from(raw, pos)
        pos += _TLV.size
        if pos + length > total:
            raise _fail(f"TLV entry type 0x{typ:04x} of {length} bytes runs past the trailer ({total} bytes)")
        tlvs.append(Tlv(typ, bytes(raw[pos:pos + length])))
        pos += length
    if not tlvs or tlvs[0].type != TLV_SHA256:
        raise _fail("the first TLV entry is not SHA256")
    sigs: list[Signature] = []
    for i, t in enumerate(tlvs):
        want = {TLV_SHA256: 32, TLV_KEYHASH: 32, TLV_ED25519: 64}.get(t.type)
        if want is not None and len(t.value) != want:
            raise _fail(f"TLV {t.name} has {len(t.value)} bytes, expected {want}")
        if t.type == TLV_SHA256 and i:
            raise _fail("more than one SHA256 TLV entry")
        nxt = tlvs[i + 1] if i + 1 < len(tlvs) else None
        if t.type == TLV_KEYHASH and (nxt is None or nxt.type != TLV_ED25519):
            raise _fail("a KEYHASH TLV entry is not followed by an ED25519 entry")
        if t.type == TLV_ED25519:
            if tlvs[i - 1].type != TLV_KEYHASH:
                raise _fail("an ED25519 TLV entry does not follow a KEYHASH entry")
            sigs.append(Signature(tlvs[i - 1].value, t.value))
    return tuple(tlvs), tlvs[0].value, tuple(sigs)


def parse_image(data: bytes | bytearray | memoryview) -> ImageInfo:
    """The image's structure; raises ImageError("format") for anything malformed. Checks no hash or signature."""
    raw = bytes(data)
    header = parse_header(raw)
    end = HEADER_SIZE + header.payload_size
    if len(raw) < end:
        raise _fail(f"the image ends inside its payload ({len(raw) - HEADER_SIZE} of {header.payload_size} bytes)")
    tlvs, sha, sigs = parse_trailer(raw[end:])
    return ImageInfo(header=header, tlvs=tlvs, sha256=sha, signatures=sigs, size=len(raw))


def signature_valid(public_key: bytes, signature: bytes, digest: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, digest)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_image(data: bytes | bytearray | memoryview, trusted_keys: Iterable[Ed25519PublicKey | bytes],
                 device_type: str | None, min_counter: int = 0) -> ImageInfo:
    """Everything the shim checks, in its order: format, hash, signature, device type, security counter.

    ``device_type`` None skips that check (the server, which knows no single device).
    """
    raw = bytes(data)
    info = parse_image(raw)
    return check_image(info, hashlib.sha256(memoryview(raw)[:info.trailer_offset]).digest(), trusted_keys,
                       device_type, min_counter)


def check_image(info: ImageInfo, digest: bytes, trusted_keys: Iterable[Ed25519PublicKey | bytes],
                device_type: str | None, min_counter: int = 0) -> ImageInfo:
    """verify_image's checks after parsing, given the SHA-256 of the image's header and payload."""
    if digest != info.sha256:
        raise ImageError("hash", f"the SHA-256 of header and payload is {digest.hex()}, the image says "
                                 f"{info.sha256.hex()}")
    keys = {key_hash(k): raw_public_key(k) for k in trusted_keys}
    if not any(s.key_hash in keys and signature_valid(keys[s.key_hash], s.signature, digest)
               for s in info.signatures):
        raise ImageError("signature", f"none of its {len(info.signatures)} signatures verifies with a trusted "
                                      f"key ({len(keys)} trusted)")
    if device_type is not None and not device_type_matches(info.header.device_type, device_type):
        raise ImageError("device_type", f"the image is for device type {info.header.device_type!r}, not "
                                        f"{device_type!r}")
    if info.header.security_counter < min_counter:
        raise ImageError("downgrade", f"security counter {info.header.security_counter} is below the minimum "
                                      f"{min_counter} (that image's epoch is revoked)")
    return info


def read_image_file(path: Path, chunk: int = 1 << 20) -> tuple[ImageInfo, bytes]:
    """Parse an image file and hash its header and payload a chunk at a time (for images of any size).

    Returns the parsed image and the SHA-256 of header + payload; check_image does the rest.
    """
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        header = parse_header(f.read(HEADER_SIZE))
        end = HEADER_SIZE + header.payload_size
        if size < end:
            raise _fail(f"the image ends inside its payload ({size - HEADER_SIZE} of {header.payload_size} bytes)")
        if size - end > TLV_MAX_SIZE:
            raise _fail(f"{size - end} bytes follow the payload, more than a TLV trailer may have ({TLV_MAX_SIZE})")
        f.seek(0)
        sha = hashlib.sha256()
        left = end
        while left:
            block = f.read(min(chunk, left))
            if not block:
                raise _fail("the file shrank while it was read")
            sha.update(block)
            left -= len(block)
        tlvs, value, sigs = parse_trailer(f.read())
    return ImageInfo(header=header, tlvs=tlvs, sha256=value, signatures=sigs, size=size), sha.digest()


__all__ = [
    "ERROR_KINDS",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_PAYLOAD",
    "TLV_ED25519",
    "TLV_KEYHASH",
    "TLV_MAX_SIZE",
    "TLV_SHA256",
    "ErrorKind",
    "Header",
    "ImageBuilder",
    "ImageError",
    "ImageInfo",
    "Signature",
    "Tlv",
    "build_image",
    "check_device_type",
    "check_image",
    "check_payload_size",
    "check_security_counter",
    "check_version",
    "key_hash",
    "pack_tlvs",
    "parse_header",
    "parse_image",
    "parse_trailer",
    "raw_public_key",
    "read_image_file",
    "signature_tlvs",
    "signature_valid",
    "verify_image",
]
