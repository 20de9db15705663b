"""Who this device is: its Ed25519 key (made once, 0600), hardware id and device type."""

from __future__ import annotations

import base64
import logging
import os
import platform
import re
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .config import ConfigError, atomic_write
from .names import DEVICE_TYPE, HARDWARE_ID, BadName

log = logging.getLogger(__name__)

# An unencrypted PKCS#8 Ed25519 key is these 16 DER bytes, then the 32-byte private key (RFC 8410 §7). The agent
# writes and reads that form itself, without cryptography's serialization package, whose import (its SSH key code and
# every key type's module) would cost ~1.7 MiB of idle RSS (docs/performance.md); any other PEM is left to it.
PKCS8_ED25519_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN PRIVATE KEY-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END PRIVATE KEY-----\s*")


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The device key at ``path``; made (and stored readable by the owner only) on first use."""
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        seed = os.urandom(32)  # an Ed25519 private key is 32 random bytes (RFC 8032 §5.1.5)
        atomic_write(path, pem_ed25519(seed), mode=0o600)
        log.info("made a new device key in %s", path)
        return Ed25519PrivateKey.from_private_bytes(seed)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o); making it 0600", path, mode)
        os.chmod(str(path), 0o600)
    found = _ed25519_pkcs8(pem)
    if found is not None:
        return found
    from cryptography.hazmat.primitives import serialization

    try:
        loaded = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path} is not an unencrypted PEM private key ({e}); move it away to make a new one "
                          "(the device then enrolls again with a re-key token: an admin runs 'fleetd devices rekey "
                          "DEVICE')") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(loaded).__name__}, not an Ed25519 key; move it away to make a "
                          "new one")
    return loaded


def pem_ed25519(seed: bytes) -> bytes:
    """The unencrypted PKCS#8 PEM of the Ed25519 private key ``seed``: what cryptography writes for it."""
    b64 = base64.b64encode(PKCS8_ED25519_PREFIX + seed)
    return b"-----BEGIN PRIVATE KEY-----\n" + b64 + b"\n-----END PRIVATE KEY-----\n"


def _ed25519_pkcs8(pem: bytes) -> Ed25519PrivateKey | None:
    """The key in ``pem`` when it is exactly one unencrypted PKCS#8 Ed25519 key; else None."""
    m = PEM_PRIVATE_KEY.fullmatch(pem)
    if m is None:
        return None
    try:
        der = base64.b64decode(b"".join(m.group(1).split()), validate=True)
    except ValueError:
        return None
    if len(der) != len(PKCS8_ED25519_PREFIX) + 32 or not der.startswith(PKCS8_ED25519_PREFIX):
        return None
    return Ed25519PrivateKey.from_private_bytes(der[len(PKCS8_ED25519_PREFIX):])


def public_key_raw(key: Ed25519PrivateKey) -> bytes:
    public = key.public_key()
    if hasattr(public, "public_bytes_raw"):  # cryptography 40+
        return bytes(public.public_bytes_raw())
    from cryptography.hazmat.primitives import serialization  # older: the Encoding and format enums live there

    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(public_key_raw(key)).decode()


def challenge_message(device_id: str, nonce: str) -> bytes:
    """The exact bytes a device signs to authenticate (docs/protocol.md §6)."""
    return f"fleetd-auth-v1:{device_id}:{nonce}".encode()


def _read(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\x00", b"").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def pi_serial(root: Path = Path("/")) -> str:
    """The board serial (Raspberry Pi and other device-tree boards), or ""."""
    serial = (_read(root / "proc/device-tree/serial-number")
              or _read(root / "sys/firmware/devicetree/base/serial-number"))
    if not serial:
        for line in _read(root / "proc/cpuinfo").splitlines():
            k, _, v = line.partition(":")
            if k.strip().lower() == "serial":
                serial = v.strip()
                break
    # Boards without one report all zeros.
    return serial if serial.strip("0") else ""


def detect_hardware_id(root: Path = Path("/")) -> str:
    """A stable id: the board serial where there is one (it survives re-imaging), else /etc/machine-id."""
    for candidate in (pi_serial(root), _read(root / "etc/machine-id"), _read(root / "var/lib/dbus/machine-id")):
        if candidate and HARDWARE_ID.ok(candidate):
            return candidate
    raise ConfigError("cannot find a hardware id (no board serial, no /etc/machine-id); pass --hardware-id ID")


def check_hardware_id(value: str) -> str:
    try:
        return HARDWARE_ID.check(value)
    except BadName as e:
        raise ConfigError(str(e)) from None


def default_device_type() -> str:
    machine = re.sub(r"[^a-z0-9_.-]", "-", platform.machine().lower()) or "unknown"
    return f"linux-{machine}"[:64]


def check_device_type(value: str) -> str:
    try:
        return DEVICE_TYPE.check(value)
    except BadName as e:
        raise ConfigError(str(e)) from None


__all__ = ["challenge_message", "check_device_type", "check_hardware_id", "default_device_type",
           "detect_hardware_id", "load_or_create_key", "pi_serial", "public_key_b64", "public_key_raw"]
