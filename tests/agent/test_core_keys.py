"""The device key and the client certificate's CSR, written and read without cryptography's serialization and x509
packages (the agent's idle RSS, docs/performance.md): byte for byte what cryptography itself writes, and a run
loop's imports hold neither package (nor httpx's command-line client)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from fleet_agent import identity
from fleet_agent.certificate import make_csr
from fleet_agent.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def pkcs8(key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_the_key_file_is_the_one_cryptography_writes_and_reads(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    key = identity.load_or_create_key(path)
    assert path.read_bytes() == pkcs8(key)
    loaded = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(loaded, Ed25519PrivateKey) and loaded.private_bytes_raw() == key.private_bytes_raw()
    other = Ed25519PrivateKey.generate()
    path.write_bytes(pkcs8(other).replace(b"\n", b"\r\n"))  # read as written elsewhere, line ends and all
    assert identity.load_or_create_key(path).private_bytes_raw() == other.private_bytes_raw()
    assert identity.public_key_raw(other) == other.public_key().public_bytes(serialization.Encoding.Raw,
                                                                            serialization.PublicFormat.Raw)


def test_a_key_of_another_kind_is_refused_by_its_kind(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    path.write_bytes(pkcs8(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        identity.load_or_create_key(path)
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\n")  # cut short
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        identity.load_or_create_key(path)


@pytest.mark.parametrize("cn", ["d", "dev_0123456789abcdef0123456789abcdef", "x" * 64, "ü" * 32])
def test_the_csr_is_the_one_cryptography_builds(cn: str) -> None:
    """Ed25519 signs deterministically, so the same key and name must give the same bytes (the longer names take a
    DER length of more than one byte)."""
    key = Ed25519PrivateKey.generate()
    built = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])).sign(key, None)
    assert make_csr(key, cn) == built.public_bytes(serialization.Encoding.PEM).decode()
    assert x509.load_pem_x509_csr(make_csr(key, cn).encode()).is_signature_valid


def test_the_run_loop_loads_neither_serialization_nor_x509(tmp_path: Path) -> None:
    code = f"""
import sys
from pathlib import Path
from fleet_agent import cli, certificate, identity
key = identity.load_or_create_key(Path({str(tmp_path / "device.key")!r}))
key = identity.load_or_create_key(Path({str(tmp_path / "device.key")!r}))
certificate.make_csr(key, "dev-1"), identity.public_key_b64(key)
heavy = ("cryptography.x509", "cryptography.hazmat.primitives.serialization")
print(sorted(m for m in sys.modules if m.startswith(heavy) or m.partition(".")[0] in ("rich", "click", "pygments")))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(ROOT / "agent"), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
