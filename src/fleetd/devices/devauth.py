"""Device authentication: single-use challenges and short-lived HMAC bearer tokens.

A device proves it holds its Ed25519 key by signing a server nonce; it needs no
clock. The bearer token it gets is ``fdt.<payload>.<mac>`` (base64url), with
payload ``{"d": device_id, "e": auth_epoch, "x": expiry}``. Checking it is an
HMAC and a dict lookup: no database read on the hot path. The hub's directory
holds the current epoch of every device allowed to call; revoking or deleting a
device clears or bumps it, so its tokens stop working at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..accounts.users import Principal
from ..core.errors import InvalidArgument, Unauthenticated
from .directory import Directory

TOKEN_PREFIX = "fdt."
TOKEN_TTL = 3600
CHALLENGE_TTL = 60
MAX_OUTSTANDING_CHALLENGES = 200_000
MAX_VERIFIED_TOKENS = 200_000


def b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def decode_b64_field(value: str, what: str, length: int | None = None) -> bytes:
    """Standard or URL-safe base64, padded or not."""
    try:
        raw = base64.b64decode(value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4),
                               validate=True)
    except (ValueError, TypeError):
        raise InvalidArgument(f"{what} is not valid base64") from None
    if length is not None and len(raw) != length:
        raise InvalidArgument(f"{what} must be {length} bytes, got {len(raw)}")
    return raw


def challenge_message(device_id: str, nonce: str) -> bytes:
    """What a device signs to authenticate."""
    return f"fleetd-auth-v1:{device_id}:{nonce}".encode()


class _TokenPayload(msgspec.Struct):
    d: str
    e: int
    x: int


_payload_decoder = msgspec.json.Decoder(_TokenPayload)


class DeviceTokens:
    prefix = TOKEN_PREFIX

    def __init__(self, key: bytes, devices: Directory | None = None) -> None:
        self.key = key
        self._mac_key = hashlib.sha256(b"fleetd device tokens\0" + key).digest()
        # The hub's directory (shared, not copied): a device may call while its record has an epoch.
        self.devices = Directory() if devices is None else devices
        self._challenges: dict[str, tuple[str, float]] = {}
        # Tokens whose MAC was already checked → (device, epoch, expiry); epoch and expiry are still
        # checked on every use, so revocation stays immediate.
        self._verified: dict[str, tuple[str, int, int]] = {}

    # tokens
    def issue(self, device_id: str, epoch: int, ttl: int = TOKEN_TTL) -> str:
        payload = b64e(msgspec.json.encode(_TokenPayload(device_id, epoch, int(time.time()) + ttl)))
        mac = b64e(hmac.new(self._mac_key, payload.encode(), hashlib.sha256).digest()[:24])
        return f"{TOKEN_PREFIX}{payload}.{mac}"

    def verify(self, token: str) -> Principal | None:
        hit = self._verified.get(token)
        if hit is not None:
            device_id, epoch, expiry = hit
            rt = self.devices.get(device_id)
            if expiry < time.time() or rt is None or rt.epoch != epoch:
                return None
            return Principal("device", device_id, device_id)
        if not token.startswith(TOKEN_PREFIX):
            return None
        payload, _, mac = token[len(TOKEN_PREFIX):].partition(".")
        want = b64e(hmac.new(self._mac_key, payload.encode(), hashlib.sha256).digest()[:24])
        if not hmac.compare_digest(mac, want):
            return None
        try:
            p = _payload_decoder.decode(b64d(payload))
        except (msgspec.DecodeError, ValueError):
            return None
        rt = self.devices.get(p.d)
        if p.x < time.time() or rt is None or rt.epoch != p.e:
            return None
        if len(self._verified) >= MAX_VERIFIED_TOKENS:
            self._verified.clear()
        self._verified[token] = (p.d, p.e, p.x)
        return Principal("device", p.d, p.d)

    # challenges
    def new_challenge(self, device_id: str) -> str:
        now = time.monotonic()
        if len(self._challenges) >= MAX_OUTSTANDING_CHALLENGES:
            self._challenges = {n: v for n, v in self._challenges.items() if v[1] > now}
        nonce = b64e(secrets.token_bytes(24))
        self._challenges[nonce] = (device_id, now + CHALLENGE_TTL)
        return nonce

    def take_challenge(self, device_id: str, nonce: str) -> None:
        """Consume a challenge: single use, bound to the device, not expired."""
        entry = self._challenges.pop(nonce, None)
        if entry is None:
            raise Unauthenticated("unknown or already used challenge; ask for a new one")
        owner, expires = entry
        if owner != device_id:
            raise Unauthenticated("this challenge was issued to another device")
        if expires < time.monotonic():
            raise Unauthenticated("the challenge expired; ask for a new one")


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False
