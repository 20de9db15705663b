"""Factory provisioning (docs/pki.md, "Manufacturer CAs"): the manufacturer CAs an operator trusts, and checking the
factory certificate a device enrols with.

A device that left the factory with a certificate from a trusted manufacturer CA enrols without a join token: it
asks for a challenge for its hardware id (GetChallenge with hardware_id), and sends Enroll with the certificate (and
any intermediates, leaf first) and a signature, by the certificate's key, of :func:`factory_message` (which binds
the nonce, the hardware id and the Ed25519 key it enrols). The certificate's subject must name the hardware id
(CN or serialNumber), so a leaked factory certificate enrols at most the one device it names, and only once
(registry.enroll_by_factory_certificate).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from ..accounts import audit
from ..accounts.audit import Actor
from ..core.clock import new_id, now, to_dt
from ..core.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from . import certificates, storage
from .tags import check_tags

MAX_CHAIN = 4
MAX_BUNDLE_BYTES = 32768
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def _from_row(r: sqlite3.Row) -> dict[str, Any]:
    """A trusted CA as certificates_api.ManufacturerCa has it."""
    cert = x509.load_pem_x509_certificate(r["pem"].encode())
    created = to_dt(r["created_at"])
    return {"id": r["id"], "fingerprint": r["fingerprint"], "subject": r["subject"], "tags": json.loads(r["tags"]),
            "auto_activate": bool(r["auto_activate"]), "not_after": cert.not_valid_after_utc.isoformat(),
            "created_at": created.isoformat() if created else ""}


def parse_bundle(pem: str, what: str) -> list[x509.Certificate]:
    """The PEM certificates in ``pem`` (at least one)."""
    data = pem.encode()
    if len(data) > MAX_BUNDLE_BYTES:
        raise InvalidArgument(f"the {what} is over {MAX_BUNDLE_BYTES} bytes")
    found = _PEM_CERT.findall(data)
    if not found:
        raise InvalidArgument(f"the {what} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        return [x509.load_pem_x509_certificate(block) for block in found]
    except ValueError:
        raise InvalidArgument(f"the {what} holds a certificate that cannot be read") from None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):  # none, or extensions that cannot be read
        return False


def trust(conn: sqlite3.Connection, actor: Actor, pem: str, *, tags: dict[str, str], auto_activate: bool
          ) -> dict[str, Any]:
    """Trust a manufacturer CA (its certificate, PEM) for factory provisioning."""
    [ca, *rest] = parse_bundle(pem, "manufacturer CA file")
    if rest:
        raise InvalidArgument("give one CA certificate per file: the manufacturer's root or the intermediate that "
                              "issues its devices' certificates")
    if not _is_ca(ca):
        raise InvalidArgument("that certificate is not a CA (no basicConstraints CA:TRUE); give the manufacturer's "
                              "CA certificate, not a device's")
    certificates.check_current(ca, now(), "manufacturer CA certificate")
    fingerprint = hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).hexdigest()
    if storage.manufacturer_ca(conn, fingerprint) is not None:
        raise AlreadyExists(f"that manufacturer CA ({fingerprint[:16]}…) is trusted already; remove it first to "
                            "change its tags or mode")
    ca_id = new_id("mca")
    storage.insert_manufacturer_ca(conn, ca_id=ca_id, fingerprint=fingerprint, subject=ca.subject.rfc4514_string(),
                                   pem=ca.public_bytes(serialization.Encoding.PEM).decode(),
                                   tags=json.dumps(check_tags(dict(tags))), auto_activate=auto_activate,
                                   created_at=now())
    audit.record(conn, actor, "manufacturer_ca.trust", ca_id, fingerprint=fingerprint, tags=tags,
                 auto_activate=auto_activate)
    row = storage.manufacturer_ca(conn, ca_id)
    assert row is not None  # written in this transaction
    return _from_row(row)


def list_cas(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [_from_row(r) for r in storage.manufacturer_cas(conn)]


def remove(conn: sqlite3.Connection, actor: Actor, ref: str) -> dict[str, Any]:
    """Stop trusting a manufacturer CA (by id or fingerprint); devices it enrolled stay enrolled."""
    row = storage.manufacturer_ca(conn, ref)
    if row is None:
        raise NotFound(f"no manufacturer CA {ref!r}; 'fleetd ca manufacturers' lists them")
    storage.delete_manufacturer_ca(conn, row["id"])
    audit.record(conn, actor, "manufacturer_ca.remove", row["id"], fingerprint=row["fingerprint"])
    return _from_row(row)


def factory_message(hardware_id: str, nonce: str, public_key: bytes) -> bytes:
    """What the factory certificate's key signs to enrol: the challenge, the hardware id, the device's key (hex)."""
    return f"fleetd-factory-v1:{hardware_id}:{nonce}:{public_key.hex()}".encode()


def challenge_subject(hardware_id: str) -> str:
    """What a factory enrolment's challenge is bound to (a device id is not known yet)."""
    return "factory:" + hardware_id


def _names(cert: x509.Certificate) -> set[str]:
    attrs = [*cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME),
             *cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)]
    return {str(a.value) for a in attrs}


def _check_signature(cert: x509.Certificate, signature: bytes, message: bytes) -> bool:
    try:
        key = cert.public_key()
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        return False
    return True


def verify(conn: sqlite3.Connection, bundle: str, hardware_id: str, signature: bytes, message: bytes, at: float
           ) -> sqlite3.Row:
    """The manufacturer CA row that ``bundle``'s leaf (first) certificate chains to, through the bundle's other
    certificates; the leaf must be current, name ``hardware_id`` in its subject, and have signed ``message``."""
    [leaf, *intermediates] = parse_bundle(bundle, "factory_certificate")
    certificates.check_current(leaf, at, "factory certificate")
    if hardware_id not in _names(leaf):
        raise PermissionDenied(f"the factory certificate names {sorted(_names(leaf)) or 'no hardware id'}, not "
                               f"{hardware_id}: its subject CN (or serialNumber) must be the hardware id")
    if not _check_signature(leaf, signature, message):
        raise Unauthenticated("factory_signature is not the factory certificate key's signature of "
                              "fleetd-factory-v1:<hardware_id>:<nonce>:<public key, hex>")
    trusted = storage.manufacturer_cas(conn)
    cert = leaf
    for _ in range(MAX_CHAIN + 1):
        for row in trusted:
            ca = x509.load_pem_x509_certificate(row["pem"].encode())
            if certificates.issued_by(cert, ca):
                certificates.check_current(ca, at, "manufacturer CA certificate")
                return row
        # Only a CA issues: a device's certificate that signed another is no way in.
        parent = next((c for c in intermediates
                       if c is not cert and _is_ca(c) and certificates.issued_by(cert, c)), None)
        if parent is None:
            break
        certificates.check_current(parent, at, "intermediate certificate")
        cert = parent
    raise Unauthenticated("the factory certificate does not chain to a manufacturer CA this fleet trusts "
                          "('fleetd ca manufacturers' lists them; 'fleetd ca trust-manufacturer' adds one)")
