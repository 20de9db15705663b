"""Device client certificates for the MQTT tests, signed with the fleet CA's key (subject CN = the device id).

A stand-in for the fleet's own device-certificate issuance (issue 19's certs part): switch these callers to it
once it is there. ``ca`` may be any CA (another fleet's, for the broker to refuse); ``days`` below 0 makes an
expired certificate.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetd.core import pki


def fleet_ca(data_dir: Path) -> pki.KeyMaterial:
    """The CA (and key) of the fleet whose data dir this is."""
    return pki.material_in(data_dir, write=False)


def device_certificate(ca: pki.KeyMaterial, device_id: str, out: Path, *, days: float = 90) -> tuple[Path, Path]:
    """Write ``out``/``device_id``.pem and .key: a P-256 client certificate with CN ``device_id``, valid for
    ``days`` from now (negative: expired that long ago)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    start, end = (now - dt.timedelta(days=1), now + dt.timedelta(days=days)) if days > 0 else \
        (now + dt.timedelta(days=days - 2), now + dt.timedelta(days=days))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(ca.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca.ca_key, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{device_id}.pem", out / f"{device_id}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path
