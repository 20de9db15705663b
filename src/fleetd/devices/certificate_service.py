"""Device certificates with the store: issuing and recording them, the CRL, and authenticating a device by the client
certificate a TLS-terminating proxy verified and forwarded (docs/pki.md).

Imported only when certificates are used (a CSR, ``/v1/crl.pem``, a forwarded client certificate, ``fleetd devices
cert``): the HTTPS default never loads it.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import urllib.parse
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..accounts.users import Principal
from ..core import clock
from ..core.errors import ResourceExhausted, Unauthenticated
from . import certificates, storage
from .certificates import PublicKey

if TYPE_CHECKING:
    from ..core.pki import FleetKeys, KeyMaterial
    from ..fleet import Fleet

MAX_VERIFIED = 100_000


def key_sha256(key: PublicKey) -> str:
    return hashlib.sha256(certificates.spki(key)).hexdigest()


def issue_and_record(conn: sqlite3.Connection, keys: FleetKeys | KeyMaterial, device_id: str, key: PublicKey, *,
                     days: float) -> x509.Certificate:
    """Issue the device a certificate for ``key`` and record it, in the caller's transaction; refused while the device
    holds :data:`~.certificates.MAX_LIVE_PER_DEVICE` that are neither expired nor revoked."""
    live = storage.live_certificate_count(conn, device_id, clock.now())
    if live >= certificates.MAX_LIVE_PER_DEVICE:
        raise ResourceExhausted(f"this device has {live} certificates that are neither expired nor revoked; it may "
                                "ask for a new one when one of them expires", retry_after=86400)
    cert = certificates.issue(keys.ca_cert, keys.ca_key, device_id, key, days=days, at=clock.now())
    storage.insert_certificate(conn, serial=certificates.serial_hex(cert.serial_number), device_id=device_id,
                               key_sha256=key_sha256(key), not_before=cert.not_valid_before_utc.timestamp(),
                               not_after=cert.not_valid_after_utc.timestamp())
    return cert


class Crl:
    """The fleet's CRL, made again when a certificate was revoked since (by any replica: the store says) and
    before its nextUpdate."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._pem = b""
        self._mark: tuple[int, float] | None = None
        self._fresh_until = 0.0

    async def pem(self) -> bytes:
        at = clock.now()
        mark = await self.fleet.store.read(storage.revocation_mark)
        if mark != self._mark or at >= self._fresh_until:
            revoked = await self.fleet.store.read(lambda c: storage.revoked_certificates(c, at))
            keys = self.fleet.keys
            crl = certificates.build_crl(keys.ca_cert, keys.ca_key, revoked, at=at)
            self._pem = crl.public_bytes(serialization.Encoding.PEM)
            self._mark = mark
            # Made again at half its life, so that a reader never holds one past its nextUpdate.
            self._fresh_until = at + certificates.CRL_HOURS * 3600 / 2
        return self._pem


def parse_forwarded(value: bytes) -> x509.Certificate:
    """The certificate a proxy forwarded: URL-escaped PEM (nginx ``$ssl_client_escaped_cert``), PEM with its line
    breaks as spaces or tabs, or base64 DER (haproxy ``%[ssl_c_der,base64]``)."""
    text = value.decode("latin-1").strip()
    if "%" in text:  # never in PEM or base64: URL-escaped
        text = urllib.parse.unquote(text)
    if text.startswith("-----BEGIN CERTIFICATE-----"):
        body = text.removeprefix("-----BEGIN CERTIFICATE-----").split("-----END CERTIFICATE-----")[0]
        raw = "".join(body.split())
    else:
        raw = "".join(text.split())
    try:
        der = base64.b64decode(raw, validate=True)
    except ValueError:
        raise Unauthenticated("the forwarded client certificate is not PEM or base64 DER") from None
    return certificates.load_certificate(der)


class ClientCertificates:
    """Authenticates a device by a forwarded client certificate: issued by the fleet CA, current, recorded and
    not revoked, for a device that may call (the hub's directory). A checked serial is remembered with the
    device's auth epoch, so that revoking or re-keying the device (which bumps or clears it) stops it at once."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._checked: dict[str, tuple[str, int]] = {}

    async def authenticate(self, value: bytes) -> Principal:
        cert = parse_forwarded(value)
        at = clock.now()
        device_id = certificates.check_client_certificate(cert, self.fleet.keys.ca_cert, at)
        serial = certificates.serial_hex(cert.serial_number)
        rt = self.fleet.hub.runtime.get(device_id)
        if rt is None or rt.epoch is None:
            raise Unauthenticated("the client certificate's device is revoked or unknown")
        hit = self._checked.get(serial)
        if hit is None or hit[0] != device_id or hit[1] != rt.epoch:
            row = await self.fleet.store.read(lambda c: storage.certificate(c, serial))
            if row is None or row["device_id"] != device_id:
                raise Unauthenticated("the client certificate is not one this fleet issued to that device")
            if row["revoked_at"] is not None:
                raise Unauthenticated(f"the client certificate {serial} is revoked")
            if len(self._checked) >= MAX_VERIFIED:
                self._checked.clear()
            self._checked[serial] = (device_id, rt.epoch)
        return Principal("device", device_id, device_id)
