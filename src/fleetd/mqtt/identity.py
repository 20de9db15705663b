"""The certificates the MQTT transport needs from the fleet CA: the broker's server certificate, fleetd's own
client certificate (its service identity at the broker) and an empty CRL for the broker's ``crlfile``.

Device client certificates are not made here (devices/certificates, the certs part of issue 19).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..core.fsutil import atomic_write
from ..core.pki import FleetKeys, KeyMaterial
from .topics import SERVICE_USER

CA = KeyMaterial | FleetKeys  # what holds the fleet CA's certificate and key

BROKER_CERT_DAYS = 825
SERVICE_CERT_DAYS = 825
CRL_DAYS = 365  # the broker refuses every client once its CRL is past its next update: refresh well before
RENEW_BEFORE_DAYS = 30

SERVICE_CERT_NAME, SERVICE_KEY_NAME = "mqtt-client.pem", "mqtt-client.key"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _issue(ca: CA, common_name: str, usage: x509.ObjectIdentifier, days: int,
           sans: list[x509.GeneralName] | None = None) -> tuple[bytes, bytes]:
    """A new P-256 key and its certificate from the fleet CA, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def broker_certificate(ca: CA, names: list[str]) -> tuple[bytes, bytes]:
    """The broker's TLS server certificate and key, for the host names and addresses devices and fleetd use."""
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    return _issue(ca, names[0], ExtendedKeyUsageOID.SERVER_AUTH, BROKER_CERT_DAYS, sans)


def service_certificate(ca: CA) -> tuple[bytes, bytes]:
    """fleetd's client certificate: common name SERVICE_USER, which the broker takes as its user name."""
    return _issue(ca, SERVICE_USER, ExtendedKeyUsageOID.CLIENT_AUTH, SERVICE_CERT_DAYS)


def empty_crl(ca: CA) -> bytes:
    """A CRL from the fleet CA that revokes nothing (the broker's ``crlfile`` until revocations replace it)."""
    now = _now()
    crl = (x509.CertificateRevocationListBuilder()
           .issuer_name(ca.ca_cert.subject)
           .last_update(now - dt.timedelta(hours=1))
           .next_update(now + dt.timedelta(days=CRL_DAYS))
           .sign(ca.ca_key, hashes.SHA256()))
    return crl.public_bytes(serialization.Encoding.PEM)


def ensure_service_certificate(data_dir: Path, ca: CA) -> tuple[Path, Path]:
    """fleetd's client certificate and key in ``data_dir`` (mqtt-client.pem / .key), issued again when missing,
    about to expire or from another CA. Each replica makes its own; all carry the one user name."""
    cert_path, key_path = data_dir / SERVICE_CERT_NAME, data_dir / SERVICE_KEY_NAME
    if not (key_path.exists() and _current(cert_path, ca)):
        cert, key = service_certificate(ca)
        atomic_write(key_path, key, 0o600)
        atomic_write(cert_path, cert, 0o644)
    return cert_path, key_path


def _current(path: Path, ca: CA) -> bool:
    if not path.exists():
        return False
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        cert.verify_directly_issued_by(ca.ca_cert)
    except (ValueError, TypeError, InvalidSignature):  # another CA's: issued again
        return False
    return cert.not_valid_after_utc - _now() > dt.timedelta(days=RENEW_BEFORE_DAYS)
