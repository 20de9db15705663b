"""The fleet's keys on PostgreSQL (store/keys.py, core/sealing.py): in the database, sealed with the key encryption
key, the same on every replica; each replica's server certificate its own. On SQLite: the data dir's files."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from fleetd.core import pki, sealing
from fleetd.core.sealing import KEK_ENV, KeyEncryptionKeyError
from fleetd.fleet import Fleet
from fleetd.store.database import Store
from fleetd.store.keys import shared_material
from tests.support.replica_fleets import replica_settings, replicas

SECRET_FILES = ("ca.key", "signing.key", "token.key")
OTHER_KEK = "b3RoZXIga2V5IGZvciB0aGUgd3Jvbmcta2V5IHRlc3Q="


@pytest.fixture
def dsn(postgres_server: Any, pg_schema: str) -> Iterator[str]:
    name = postgres_server.create_database(template=pg_schema)
    yield postgres_server.dsn(name)
    postgres_server.drop_database(name)


def _rows(f: Fleet) -> dict[str, tuple[str, bytes]]:
    return f.store.read_sync(lambda c: {r[0]: (r[1], bytes(r[2]))
                                        for r in c.execute("SELECT name, kek_id, sealed FROM fleet_keys")})


def _issuer_ok(keys: pki.FleetKeys) -> x509.Certificate:
    cert = x509.load_pem_x509_certificate(keys.server_cert_path.read_bytes())
    cert.verify_directly_issued_by(keys.ca_cert)
    return cert


def test_replicas_share_the_keys_and_make_their_own_server_certificates(tmp_path: Path, dsn: str) -> None:
    with replicas(tmp_path, dsn, n=2) as (one, other):
        a, b = one.keys, other.keys
        assert a.ca_fingerprint == b.ca_fingerprint
        assert a.signing_public_key == b.signing_public_key and a.token_key == b.token_key
        # Each replica's TLS certificate is its own, in its own data dir, from the shared CA.
        assert a.server_cert_path.parent == tmp_path / "r1" and b.server_cert_path.parent == tmp_path / "r2"
        assert _issuer_ok(a).serial_number != _issuer_ok(b).serial_number
        for f in (one, other):
            # No fleet secret on a replica's disk; the public halves are there for operators.
            assert [n for n in SECRET_FILES if (f.data_dir / n).exists()] == []
            assert pki.dir_ca_fingerprint(f.data_dir) == a.ca_fingerprint and (f.data_dir / "signing.pub").exists()
        assert sorted(_rows(one)) == ["ca", "signing", "token"]


def test_the_table_holds_ciphertext_under_the_keys_id(tmp_path: Path, dsn: str) -> None:
    with replicas(tmp_path, dsn, n=1) as (one,):
        kek = sealing.load("")
        plain = pki.KeyMaterial(ca_cert=one.keys.ca_cert, ca_key=one.keys.ca_key, signing_key=one.keys.signing_key,
                                token_key=one.keys.token_key).blobs()
        rows = _rows(one)
    for name, (kek_id, sealed) in rows.items():
        assert kek_id == kek.id
        assert plain[name] not in sealed and plain[name][-32:] not in sealed
        assert b"PRIVATE KEY" not in sealed and len(sealed) == 12 + len(plain[name]) + 16
        assert kek.unseal(name, sealed) == plain[name]
    # Bound to its name: a sealed value moved to another row does not open.
    with pytest.raises(KeyEncryptionKeyError, match="damaged"):
        kek.unseal("token", rows["signing"][1])


def test_a_replica_with_another_key_encryption_key_is_refused(tmp_path: Path, dsn: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with replicas(tmp_path, dsn, n=1):
        pass
    monkeypatch.setenv(KEK_ENV, OTHER_KEK)
    with pytest.raises(KeyEncryptionKeyError, match="sealed with the key encryption key") as e:
        Fleet(replica_settings(tmp_path, "r2", database=dsn), lock=False)
    assert "give this replica the same key" in e.value.message and sealing.load("").id in e.value.message


def test_without_a_key_encryption_key_the_start_says_how_to_make_one(tmp_path: Path, dsn: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEK_ENV)
    with pytest.raises(KeyEncryptionKeyError) as e:
        Fleet(replica_settings(tmp_path, "r1", database=dsn), lock=False)
    for needle in ("openssl rand -base64 32", "key_encryption_key_file", KEK_ENV, "docs/security.md"):
        assert needle in e.value.message
    assert not (tmp_path / "r1" / "ca.key").exists()


def test_the_key_may_come_from_a_file(tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEK_ENV)
    kek_file = tmp_path / "kek"
    kek_file.write_text(OTHER_KEK + "\n")
    with replicas(tmp_path, dsn, n=1, key_encryption_key_file=str(kek_file)) as (one,):
        assert {kek_id for kek_id, _ in _rows(one).values()} == {sealing.parse(OTHER_KEK, "x").id}
    monkeypatch.setenv(KEK_ENV, OTHER_KEK)
    with pytest.raises(KeyEncryptionKeyError, match="keep one"):
        sealing.load(str(kek_file))


@pytest.mark.parametrize(("text", "needle"), [
    ("not base64!", "is not base64"), ("c2hvcnQ=", "has 5 bytes, not 32"),
])
def test_a_malformed_key_is_refused(text: str, needle: str) -> None:
    with pytest.raises(KeyEncryptionKeyError, match=needle):
        sealing.load("", {KEK_ENV: text})


def test_a_data_dirs_keys_are_imported_into_an_empty_table(tmp_path: Path, dsn: str) -> None:
    (tmp_path / "r1").mkdir()
    old = pki.load_or_create(tmp_path / "r1")  # a single server's data dir, as on SQLite
    with replicas(tmp_path, dsn, n=2) as (one, other):
        for f in (one, other):
            assert f.keys.ca_fingerprint == old.ca_fingerprint and f.keys.token_key == old.token_key
            assert f.keys.signing_public_key == old.signing_public_key
    assert all((tmp_path / "r1" / n).exists() for n in SECRET_FILES)  # the import leaves the files as they were


def test_replicas_starting_together_agree_on_one_set_of_keys(tmp_path: Path, dsn: str) -> None:
    stores = [Store(dsn) for _ in range(4)]
    try:
        kek = sealing.load("")
        with concurrent.futures.ThreadPoolExecutor(len(stores)) as pool:
            got = list(pool.map(lambda i: shared_material(stores[i], kek, tmp_path / f"r{i}"), range(len(stores))))
        assert len({pki.ca_fingerprint(m.ca_cert) for m in got}) == 1 and len({m.token_key for m in got}) == 1
    finally:
        for s in stores:
            s.close()


def test_on_sqlite_the_keys_stay_in_the_data_dir(fleet: Fleet) -> None:
    assert all((fleet.data_dir / n).exists() for n in SECRET_FILES)
    assert fleet.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM fleet_keys").fetchone()[0]) == 0


def test_rotation_reseals_the_keys_with_the_new_key(tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with replicas(tmp_path, dsn, n=1) as (one,):
        before = one.keys.ca_fingerprint, one.keys.token_key
    old_text = os.environ[KEK_ENV]
    old = sealing.load("")
    monkeypatch.setenv("FLEETD_KEY_ENCRYPTION_KEY_PREVIOUS", old_text)
    monkeypatch.setenv(KEK_ENV, OTHER_KEK)
    new_id = sealing.load("").id
    with replicas(tmp_path, dsn, n=2) as (one, other):
        assert (one.keys.ca_fingerprint, one.keys.token_key) == before == (other.keys.ca_fingerprint,
                                                                            other.keys.token_key)
        rows = _rows(one)
    assert {kek_id for kek_id, _ in rows.values()} == {new_id} != {old.id}
    with pytest.raises(KeyEncryptionKeyError):
        old.unseal("ca", rows["ca"][1])
    # Once rotated, the previous key may go; a replica still given only the old one is refused.
    monkeypatch.delenv("FLEETD_KEY_ENCRYPTION_KEY_PREVIOUS")
    with replicas(tmp_path, dsn, n=1) as (again,):
        assert again.keys.ca_fingerprint == before[0]
    monkeypatch.setenv(KEK_ENV, old_text)
    with pytest.raises(KeyEncryptionKeyError, match="sealed with the key encryption key"):
        Fleet(replica_settings(tmp_path, "r3", database=dsn), lock=False)
