"""Backup and restore of a real data dir: round trip, snapshot consistency, damage and refusals."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import tarfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetd.accounts import users as auth
from fleetd.accounts.audit import SYSTEM
from fleetd.cli import app
from fleetd.core.config import Settings
from fleetd.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from fleetd.fleet import Fleet
from fleetd.store import backup as bk
from fleetd.store.database import available_migrations
from tests.conftest import make_key


def put_blob(fleet: Fleet, data: bytes) -> str:
    """A blob the way the store lays it out: file durable under blobs/<sha[:2]>/<sha>, then its row."""
    sha = hashlib.sha256(data).hexdigest()
    path = fleet.data_dir / "blobs" / sha[:2] / sha
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = fleet.data_dir / "blobs" / f".{sha}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)
    os.chmod(path, 0o400)
    fleet.store.write_sync(lambda c: c.execute(
        "INSERT INTO blobs (sha256, size, md5, sha1, created_at) VALUES (?, ?, ?, ?, ?)",
        (sha, len(data), hashlib.md5(data).hexdigest(), hashlib.sha1(data).hexdigest(), time.time())))
    return sha


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return [tuple(r) for r in conn.execute(sql)]
    finally:
        conn.close()


@pytest.fixture
def populated(fleet: Fleet) -> dict[str, object]:
    fleet.ensure_first_admin()
    fleet.store.write_sync(lambda c: auth.create_user(c, SYSTEM, "alice", "correct horse battery", "operator"))
    admin = make_key(fleet, "admin", "ops")
    viewer = make_key(fleet, "viewer", "grafana")
    blobs = [put_blob(fleet, os.urandom(n)) for n in (1, 4096, 300_000)]
    return {"admin_key": admin, "viewer_key": viewer, "blobs": blobs}


def flip_byte(archive: Path, member: str, at: int = 0) -> None:
    with tarfile.open(archive) as tar:
        offset = tar.getmember(member).offset_data + at
    with archive.open("r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.mark.parametrize("name", ["fleet.tar", "fleet.tar.gz"])
def test_round_trip_while_the_fleet_is_open(fleet: Fleet, populated: dict[str, object], tmp_path: Path,
                                            name: str) -> None:
    out = tmp_path / name
    summary = bk.create_backup(fleet.data_dir, out)
    assert summary.blobs == 3 and summary.blob_bytes == 1 + 4096 + 300_000
    assert summary.ca_fingerprint == fleet.keys.ca_fingerprint
    assert stat.S_IMODE(out.stat().st_mode) == 0o600, "the archive holds private keys"
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert names[0] == "fleetd.db" and names[-1] == "backup.json"
    assert "fleetd.lock" not in names and not any(n.endswith(("-wal", "-shm")) for n in names)

    target = tmp_path / "new" / "data"
    result = bk.restore_backup(out, target)
    assert result.blobs == 3 and result.migrations_applied == []
    assert leftovers(target.parent, {"data"}) == [], "no temp folder left beside the target"
    assert stat.S_IMODE(target.stat().st_mode) == 0o700

    src = fleet.data_dir
    for q in ("SELECT id, username, role, password_hash FROM users ORDER BY id",
              "SELECT id, name, role, secret_hash FROM api_keys ORDER BY id",
              "SELECT * FROM blobs ORDER BY sha256"):
        assert rows(target / "fleetd.db", q) == rows(src / "fleetd.db", q)
    for name_, mode in [("ca.key", 0o600), ("server.key", 0o600), ("signing.key", 0o600), ("token.key", 0o600),
                        ("ca.pem", 0o644), ("signing.pub", 0o644), ("fleetd.db", 0o600)]:
        assert stat.S_IMODE((target / name_).stat().st_mode) == mode, name_
        if name_ != "fleetd.db":
            assert (target / name_).read_bytes() == (src / name_).read_bytes(), name_
    for sha in populated["blobs"]:  # type: ignore[attr-defined]
        restored = target / "blobs" / sha[:2] / sha
        assert hashlib.sha256(restored.read_bytes()).hexdigest() == sha
        assert stat.S_IMODE(restored.stat().st_mode) == 0o400

    # The restored data dir is a working fleet with the same identity and credentials.
    copy = Fleet(Settings(data_dir=str(target), tls=False, mdns=False, host="127.0.0.1"))
    try:
        assert copy.keys.ca_fingerprint == fleet.keys.ca_fingerprint
        assert copy.keys.token_key == fleet.keys.token_key
        principal = copy.store.read_sync(lambda c: auth.lookup_api_key(c, str(populated["admin_key"])))
        assert principal is not None and principal.role == "admin"
        assert copy.store.read_sync(lambda c: auth.check_login(c, "alice", "correct horse battery")).role == "operator"
    finally:
        copy.close()


def test_backup_is_one_snapshot_and_never_blocks_writers(fleet: Fleet, populated: dict[str, object],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny steps, so that writes land between them; a write must commit while the copy is under way.
    monkeypatch.setattr(bk, "PAGES_PER_STEP", 2)
    during: list[str] = []
    after: list[str] = []

    def progress(phase: str, done: int, total: int) -> None:
        batch = during if phase == "database" and done < total else after if phase == "blobs" else None
        if batch is not None and len(batch) < 3:
            key = fleet.store.submit_write(
                lambda c: auth.create_api_key(c, SYSTEM, f"late-{phase}-{len(batch)}", "viewer")).result(timeout=5)
            batch.append(key.id)

    before = {r[0] for r in rows(fleet.data_dir / "fleetd.db", "SELECT id FROM api_keys")}
    bk.create_backup(fleet.data_dir, tmp_path / "b.tar", progress=progress)
    assert len(during) == 3 and len(after) == 3
    bk.restore_backup(tmp_path / "b.tar", tmp_path / "restored")
    restored = {r[0] for r in rows(tmp_path / "restored" / "fleetd.db", "SELECT id FROM api_keys")}
    assert restored == before, "exactly the state when the copy began: nothing written during or after it"


def test_damaged_blob_in_the_data_dir_refuses_the_backup_and_names_it(
        fleet: Fleet, populated: dict[str, object], tmp_path: Path) -> None:
    sha = populated["blobs"][1]  # type: ignore[index]
    path = fleet.data_dir / "blobs" / sha[:2] / sha
    os.chmod(path, 0o600)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    (tmp_path / "out").mkdir()
    with pytest.raises(FailedPrecondition, match=rf"{sha}.*damaged"):
        bk.create_backup(fleet.data_dir, tmp_path / "out" / "b.tar")
    assert list((tmp_path / "out").iterdir()) == [], "no archive and no temp files"

    path.write_bytes(b"short")
    with pytest.raises(FailedPrecondition, match=rf"{sha}.*5 bytes"):
        bk.create_backup(fleet.data_dir, tmp_path / "out" / "b.tar")
    path.unlink()
    with pytest.raises(FailedPrecondition, match=rf"{sha}.*missing"):
        bk.create_backup(fleet.data_dir, tmp_path / "out" / "b.tar")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("member", ["blob", "fleetd.db", "token.key"])
def test_tampered_archive_is_refused_and_nothing_is_left(fleet: Fleet, populated: dict[str, object],
                                                         tmp_path: Path, member: str) -> None:
    out = tmp_path / "b.tar"
    bk.create_backup(fleet.data_dir, out)
    sha = populated["blobs"][2]  # type: ignore[index]
    name = f"blobs/{sha[:2]}/{sha}" if member == "blob" else member
    flip_byte(out, name, at=7)
    with pytest.raises(InvalidArgument, match=rf"damaged.*{name}.*does not match"):
        bk.check_backup(out)
    target = tmp_path / "restored"
    with pytest.raises(InvalidArgument, match=rf"{name} does not match the manifest"):
        bk.restore_backup(out, target)
    assert not target.exists()
    assert leftovers(tmp_path, {"b.tar", "data"}) == []


def test_damaged_compressed_archive_is_refused(fleet: Fleet, populated: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "b.tar.gz"
    bk.create_backup(fleet.data_dir, out)
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x55
    out.write_bytes(bytes(data))
    with pytest.raises(InvalidArgument, match="damaged"):
        bk.restore_backup(out, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()
    assert leftovers(tmp_path, {"b.tar.gz", "data"}) == []


def test_truncated_archive_is_refused(fleet: Fleet, populated: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "b.tar"
    bk.create_backup(fleet.data_dir, out)
    with tarfile.open(out) as tar:
        cut = tar.getmember("backup.json").offset  # everything but the manifest
    with out.open("r+b") as f:
        f.truncate(cut)
    with pytest.raises(InvalidArgument, match=r"no backup\.json"):
        bk.restore_backup(out, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()


def test_foreign_entries_are_refused_before_anything_escapes(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    payload = tmp_path / "payload"
    payload.write_bytes(b"x")
    with tarfile.open(evil, "w") as tar:
        tar.add(payload, arcname="../escaped")
    with pytest.raises(InvalidArgument, match=r"unexpected entry '\.\./escaped'"):
        bk.restore_backup(evil, tmp_path / "restored")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "restored").exists()


def test_non_empty_target_is_refused_and_untouched(fleet: Fleet, populated: dict[str, object],
                                                   tmp_path: Path) -> None:
    out = tmp_path / "b.tar"
    bk.create_backup(fleet.data_dir, out)
    target = tmp_path / "existing"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FailedPrecondition, match="not empty"):
        bk.restore_backup(out, target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    # An empty folder is fine, and is replaced by the restored one.
    empty = tmp_path / "empty"
    empty.mkdir()
    bk.restore_backup(out, empty)
    assert (empty / "fleetd.db").is_file()


def test_newer_schema_is_refused(fleet: Fleet, populated: dict[str, object], tmp_path: Path) -> None:
    newest = available_migrations()[-1][0]
    fleet.store.write_sync(lambda c: c.execute(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'from_the_future', 0)",
        (newest + 1,)))
    out = tmp_path / "b.tar"
    assert bk.create_backup(fleet.data_dir, out).schema_version == newest + 1
    with pytest.raises(FailedPrecondition, match=rf"schema version {newest + 1}.*only up to {newest}"):
        bk.restore_backup(out, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()


def test_older_backup_is_migrated_on_restore(fleet: Fleet, populated: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "b.tar"
    bk.create_backup(fleet.data_dir, out)
    newer = tmp_path / "migrations"
    newer.mkdir()
    for _, _, path in available_migrations():
        shutil.copy(path, newer / path.name)
    n = len(list(newer.iterdir())) + 1
    (newer / f"{n:04d}_notes.sql").write_text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);\n")
    result = bk.restore_backup(out, tmp_path / "restored", migrations=newer)
    assert result.migrations_applied == [f"{n:04d}_notes"]
    assert result.schema_version == n and result.backup_schema_version == n - 1
    assert rows(tmp_path / "restored" / "fleetd.db", "SELECT count(*) FROM notes") == [(0,)]


def test_bad_arguments_get_clear_errors(fleet: Fleet, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"must end in \.tar or \.tar\.gz"):
        bk.create_backup(fleet.data_dir, tmp_path / "b.zip")
    with pytest.raises(FailedPrecondition, match="not a fleetd data dir"):
        bk.create_backup(tmp_path / "nowhere", tmp_path / "b.tar")
    bk.create_backup(fleet.data_dir, tmp_path / "b.tar")
    with pytest.raises(AlreadyExists, match="--force"):
        bk.create_backup(fleet.data_dir, tmp_path / "b.tar")
    bk.create_backup(fleet.data_dir, tmp_path / "b.tar", overwrite=True)
    with pytest.raises(InvalidArgument, match="does not exist"):
        bk.restore_backup(tmp_path / "missing.tar", tmp_path / "r")
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InvalidArgument, match="damaged"):
        bk.restore_backup(tmp_path / "junk.tar", tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_cli_backup_restore_and_check(fleet: Fleet, populated: dict[str, object], tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "b.tar.gz"
    r = runner.invoke(app, ["backup", "--data-dir", str(fleet.data_dir), str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["blobs"] == 3 and summary["path"] == str(out)

    r = runner.invoke(app, ["restore", str(out), "--check", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ca_fingerprint"] == fleet.keys.ca_fingerprint

    r = runner.invoke(app, ["restore", str(out)])
    assert r.exit_code == 1 and "pass --data-dir" in flat(r.output)

    r = runner.invoke(app, ["restore", str(out), "--data-dir", str(fleet.data_dir)])
    assert r.exit_code == 1 and "is not empty; a restore never overwrites a data dir" in flat(r.output)

    r = runner.invoke(app, ["restore", str(out), "--data-dir", str(tmp_path / "r"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["data_dir"] == str(tmp_path / "r")


def test_blobs_in_a_bucket_are_left_out_and_the_archive_still_restores(
        fleet: Fleet, populated: dict[str, object], tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "b.tar"
    env = {"FLEETD_BLOB_STORE": "s3://fleet-artifacts/prod"}
    r = runner.invoke(app, ["backup", "--data-dir", str(fleet.data_dir), str(out)], env=env)
    assert r.exit_code == 0, r.output
    assert "not in the archive" in flat(r.output) and "bucket versioning" in flat(r.output)
    with tarfile.open(out) as tar:
        assert not [n for n in tar.getnames() if n.startswith("blobs/")]
        manifest = json.loads(tar.extractfile(bk.MANIFEST_NAME).read())  # type: ignore[union-attr]
    assert manifest["blob_store"] == "s3://fleet-artifacts/prod"
    summary = bk.restore_backup(out, tmp_path / "r")
    assert summary.blobs == 0
    assert len(rows(tmp_path / "r" / "fleetd.db", "SELECT sha256 FROM blobs")) == 3  # the bucket still has them
