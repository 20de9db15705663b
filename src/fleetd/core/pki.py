"""The fleet's keys: CA, server TLS certificate, artifact-signing key, token key.

A single server writes every private key 0600 into the data dir on first start. Replicas on one PostgreSQL
database share the CA, signing and token keys through the database, sealed (store/keys.py, core/sealing.py);
each makes its own server certificate, from that CA, in its data dir. The CA's
SHA-256 fingerprint (of its DER form) is what join tokens and mDNS carry so a
device can pin the server before trusting anything.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .fsutil import atomic_write

CA_YEARS = 20
SERVER_CERT_DAYS = 825
RENEW_BEFORE_DAYS = 30


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem_private(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def ca_fingerprint(ca_cert: x509.Certificate) -> str:
    """Hex SHA-256 of the CA certificate's DER encoding."""
    return hashlib.sha256(ca_cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def local_names_and_addresses() -> tuple[list[str], list[str]]:
    """Host names and IP addresses this machine answers to, for the server certificate."""
    names = {"localhost", socket.gethostname()}
    fqdn = socket.getfqdn()
    if fqdn and "." in fqdn:
        names.add(fqdn)
    addrs = {"127.0.0.1", "::1"}
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            addrs.add(str(info[4][0]).split("%")[0])
    except OSError:
        pass
    # The address of the default route, without sending anything.
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                addrs.add(str(s.getsockname()[0]).split("%")[0])
        except OSError:
            pass
    return sorted(n for n in names if n), sorted(addrs)


@dataclass
class FleetKeys:
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    signing_key: ed25519.Ed25519PrivateKey
    token_key: bytes
    server_cert_path: Path
    server_key_path: Path
    ca_path: Path

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def ca_fingerprint(self) -> str:
        return ca_fingerprint(self.ca_cert)

    @property
    def signing_public_key(self) -> bytes:
        return self.signing_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def server_pubkey_sha256(self) -> bytes:
        """SHA-256 of the server certificate's SubjectPublicKeyInfo (curl --pinnedpubkey)."""
        cert = x509.load_pem_x509_certificate(self.server_cert_path.read_bytes())
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(spki).digest()


def _make_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetd"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"fleetd CA {secrets.token_hex(4)}"),
    ])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_server_cert(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, names: list[str], addrs: list[str]
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addrs]
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "fleetd")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=SERVER_CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _server_cert_current(path: Path, ca_cert: x509.Certificate, names: list[str], addrs: list[str]) -> bool:
    if not path.exists():
        return False
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    if cert.issuer != ca_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if cert.not_valid_after_utc - _now() < dt.timedelta(days=RENEW_BEFORE_DAYS):
        return False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    have_names = set(san.get_values_for_type(x509.DNSName))
    have_addrs = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    return set(names) <= have_names and {str(ipaddress.ip_address(a)) for a in addrs} <= have_addrs


@dataclass
class KeyMaterial:
    """The fleet's secrets, the same on every replica (each replica's server certificate is its own)."""

    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    signing_key: ed25519.Ed25519PrivateKey
    token_key: bytes

    # The names of :meth:`blobs`: the CA's certificate and key travel together, never one without the other.
    NAMES = ("ca", "signing", "token")

    def blobs(self) -> dict[str, bytes]:
        """Each secret as bytes, by name: what the database keeps (sealed) for replicas (store/keys.py)."""
        return {"ca": self.ca_cert.public_bytes(serialization.Encoding.PEM) + _pem_private(self.ca_key),
                "signing": _pem_private(self.signing_key), "token": self.token_key}

    @classmethod
    def from_blobs(cls, blobs: dict[str, bytes]) -> KeyMaterial:
        ca_cert = x509.load_pem_x509_certificate(blobs["ca"])
        ca_key = serialization.load_pem_private_key(blobs["ca"], None)
        signing = serialization.load_pem_private_key(blobs["signing"], None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey) and isinstance(signing, ed25519.Ed25519PrivateKey)
        if len(blobs["token"]) != 32:
            raise ValueError("the token key must have 32 bytes")
        return cls(ca_cert=ca_cert, ca_key=ca_key, signing_key=signing, token_key=blobs["token"])


def new_material() -> KeyMaterial:
    """A new CA, signing key and token key, in memory."""
    ca_cert, ca_key = _make_ca()
    return KeyMaterial(ca_cert=ca_cert, ca_key=ca_key, signing_key=ed25519.Ed25519PrivateKey.generate(),
                       token_key=secrets.token_bytes(32))


def has_keys(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds a fleet's keys (its CA at least)."""
    return (data_dir / "ca.pem").exists() or (data_dir / "ca.key").exists()


def dir_ca_fingerprint(data_dir: Path) -> str | None:
    """The fingerprint of the CA certificate in ``data_dir`` (ca.pem), None without one."""
    path = data_dir / "ca.pem"
    return ca_fingerprint(x509.load_pem_x509_certificate(path.read_bytes())) if path.exists() else None


def material_in(data_dir: Path, *, write: bool = True) -> KeyMaterial:
    """The keys in ``data_dir``'s files; a missing one is made, and written 0600 into the data dir unless
    ``write`` is off (importing a data dir's keys into the database leaves it as it is)."""
    ca_path, ca_key_path = data_dir / "ca.pem", data_dir / "ca.key"
    if ca_path.exists() != ca_key_path.exists():
        raise RuntimeError(f"{data_dir}: one of ca.pem / ca.key is missing; restore both from a backup")
    if not ca_path.exists():
        if not write:
            raise RuntimeError(f"{data_dir} holds no CA to import")
        cert, key = _make_ca()
        atomic_write(ca_key_path, _pem_private(key), 0o600)
        atomic_write(ca_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
    loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    ca_key = loaded

    signing_path = data_dir / "signing.key"
    if signing_path.exists():
        signing = serialization.load_pem_private_key(signing_path.read_bytes(), None)
        assert isinstance(signing, ed25519.Ed25519PrivateKey)
    else:
        signing = ed25519.Ed25519PrivateKey.generate()
        if write:
            atomic_write(signing_path, _pem_private(signing), 0o600)
            _write_signing_pub(data_dir, signing)

    token_path = data_dir / "token.key"
    if token_path.exists():
        token_key = token_path.read_bytes()
    else:
        token_key = secrets.token_bytes(32)
        if write:
            atomic_write(token_path, token_key, 0o600)
    if len(token_key) != 32:
        raise RuntimeError(f"{token_path} must hold 32 bytes; restore it from a backup")
    return KeyMaterial(ca_cert=ca_cert, ca_key=ca_key, signing_key=signing, token_key=token_key)


def _write_signing_pub(data_dir: Path, signing: ed25519.Ed25519PrivateKey) -> None:
    pub = signing.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(data_dir / "signing.pub", pub, 0o644)


def with_server_cert(data_dir: Path, material: KeyMaterial, extra_names: list[str] | None = None) -> FleetKeys:
    """The fleet's keys with this server's TLS certificate (server.pem / server.key in ``data_dir``), issued by
    the fleet's CA for this machine's names and ``extra_names``; made again when missing, about to expire, not
    issued by this CA or not naming all of them."""
    names, addrs = local_names_and_addresses()
    for extra in extra_names or []:
        try:
            addrs.append(str(ipaddress.ip_address(extra)))
        except ValueError:
            names.append(extra)
    server_path, server_key_path = data_dir / "server.pem", data_dir / "server.key"
    if not _server_cert_current(server_path, material.ca_cert, names, addrs) or not server_key_path.exists():
        cert, key = _make_server_cert(material.ca_cert, material.ca_key, names, addrs)
        atomic_write(server_key_path, _pem_private(key), 0o600)
        atomic_write(server_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return FleetKeys(
        ca_cert=material.ca_cert, ca_key=material.ca_key, signing_key=material.signing_key,
        token_key=material.token_key, server_cert_path=server_path, server_key_path=server_key_path,
        ca_path=data_dir / "ca.pem",
    )


def write_public(data_dir: Path, material: KeyMaterial) -> None:
    """ca.pem and signing.pub into a data dir that holds no keys of its own (a replica's: its keys are in the
    database), for operators and tools that read them there."""
    atomic_write(data_dir / "ca.pem", material.ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_signing_pub(data_dir, material.signing_key)


def load_or_create(data_dir: Path, extra_names: list[str] | None = None) -> FleetKeys:
    """Load the fleet's keys from ``data_dir``, creating whatever is missing (a single server's keys)."""
    return with_server_cert(data_dir, material_in(data_dir), extra_names)
