"""Device client certificates from the fleet CA, their CRL, and checking a certificate a device presents
(docs/pki.md).

The fleet CA is the one in core/pki.py: the data dir's on SQLite, the database's (sealed) on PostgreSQL; this module
never makes another. A certificate names its device twice: subject CN = the device id, and a URI SAN
``urn:fleetd:device:<id>``; its EKU is clientAuth only. The key it certifies comes from a CSR whose signature proves
the device holds it (Ed25519, or ECDSA P-256 for a secure element that only does that).

The functions here are pure (no store): :func:`issue` is what another part (the MQTT transport's tests, say) calls to
make a device's certificate; :mod:`.certificate_service` records what is issued and serves it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..core.errors import InvalidArgument, Unauthenticated

URN_PREFIX = "urn:fleetd:device:"
DEFAULT_DAYS = 90
# A CRL says when the next one comes; fleetd makes a new one at once on a revocation, and at half this anyway.
CRL_HOURS = 24
MAX_CSR_BYTES = 8192
# Certificates one device may hold at once, neither expired nor revoked (a renewal makes a second one for a while).
MAX_LIVE_PER_DEVICE = 5

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


def _utc(at: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(at, dt.UTC)


def device_uri(device_id: str) -> str:
    return URN_PREFIX + device_id


def spki(key: PublicKey) -> bytes:
    """The key's SubjectPublicKeyInfo (DER): how two keys are compared."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def ed25519_raw(key: PublicKey) -> bytes | None:
    """The 32 raw bytes of an Ed25519 key (what a device enrols with), None for another kind."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return None


def check_key(key: object) -> PublicKey:
    """The key, if it is one a device certificate may carry: Ed25519 or ECDSA on P-256."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise InvalidArgument("the key must be Ed25519 or ECDSA on P-256 (secp256r1); make the CSR with one of those")


def load_csr(pem: str) -> PublicKey:
    """The public key of a PEM CSR whose signature is valid (the proof that its sender holds the key)."""
    if len(pem) > MAX_CSR_BYTES:
        raise InvalidArgument(f"the CSR is over {MAX_CSR_BYTES} bytes; send one PEM CERTIFICATE REQUEST")
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
        key = csr.public_key()
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm, TypeError):
        raise InvalidArgument("csr is not a PEM certificate signing request (-----BEGIN CERTIFICATE REQUEST-----); "
                              "make one with 'openssl req -new -key KEY -subj /CN=device' or the agent") from None
    if not valid:
        raise InvalidArgument("the CSR's signature does not verify with the key it carries: a CSR proves its "
                              "sender holds the key, so it must be signed by that key")
    return check_key(key)


def issue(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, device_id: str, key: PublicKey, *,
          days: float = DEFAULT_DAYS, at: float) -> x509.Certificate:
    """A client certificate for ``device_id`` and ``key`` from the fleet CA, valid from ``at`` (less a minute, for
    clocks a little behind) for ``days``."""
    start = _utc(at)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetd device"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(check_key(key))
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - dt.timedelta(minutes=1))
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(device_uri(device_id))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def serial_hex(serial: int) -> str:
    """Lowercase hex, whole bytes (as openssl prints it, without the colons)."""
    text = f"{serial:x}"
    return "0" + text if len(text) % 2 else text


def build_crl(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, revoked: Iterable[tuple[str, float]],
              *, at: float, hours: float = CRL_HOURS) -> x509.CertificateRevocationList:
    """The CRL of ``revoked`` (serial in hex, when), signed by the fleet CA, next update ``hours`` after ``at``."""
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(_utc(at) - dt.timedelta(minutes=1)).next_update(_utc(at) + dt.timedelta(hours=hours))
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(int(serial, 16)).revocation_date(_utc(when)).build())
    return builder.sign(ca_key, hashes.SHA256())


def load_certificate(data: bytes) -> x509.Certificate:
    """A certificate in PEM or DER."""
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise Unauthenticated("the client certificate is neither PEM nor DER") from None


def device_id_of(cert: x509.Certificate) -> str | None:
    """The device id a fleet certificate names (its URI SAN), None if it names none."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):  # none, or extensions that cannot be read
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(URN_PREFIX):
            return uri[len(URN_PREFIX):]
    return None


def issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """Whether the CA's key signed ``cert``."""
    if cert.issuer != ca_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_current(cert: x509.Certificate, at: float, what: str) -> None:
    """Refuse a certificate that is not valid at ``at``."""
    if cert.not_valid_after_utc < _utc(at):
        raise Unauthenticated(f"the {what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if cert.not_valid_before_utc > _utc(at):
        raise Unauthenticated(f"the {what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")


def check_client_certificate(cert: x509.Certificate, ca_cert: x509.Certificate, at: float) -> str:
    """The device id of a fleet client certificate issued by ``ca_cert`` and valid at ``at`` (revocation is the
    caller's: it is in the store)."""
    if not issued_by(cert, ca_cert):
        raise Unauthenticated("the client certificate is not issued by this fleet's CA")
    check_current(cert, at, "client certificate")
    device_id = device_id_of(cert)
    if device_id is None:
        raise Unauthenticated(f"the client certificate names no device ({URN_PREFIX}<id> URI SAN)")
    return device_id
