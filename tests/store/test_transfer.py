"""fleetd store migrate (store/transfer.py, cli/store.py): a real SQLite fleet copied into a real PostgreSQL
database and a real S3 bucket (SeaweedFS), while it runs, again after changes, and finally with it stopped."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from fleetd.accounts import users as auth
from fleetd.accounts.audit import SYSTEM
from fleetd.artifacts import catalog
from fleetd.cli import app
from fleetd.core.errors import FailedPrecondition
from fleetd.fleet import Fleet
from fleetd.store import transfer
from fleetd.store.database import DB_NAME
from tests.bench.seed import enroll_devices
from tests.conftest import make_key
from tests.store.test_backup import put_blob
from tests.support.replica_fleets import replicas
from tests.support.services import Bucket

DEVICES = 50


@pytest.fixture
def old(fleet: Fleet) -> Fleet:
    """A SQLite fleet with users, keys, devices, blobs, an artifact, telemetry and audit entries."""
    fleet.ensure_first_admin()
    fleet.store.write_sync(lambda c: auth.create_user(c, SYSTEM, "alice", "correct horse battery", "operator"))
    make_key(fleet, "viewer", "grafana")
    fleet.store.submit_write(lambda c: enroll_devices(c, DEVICES), transactional=False).result()
    blobs = [put_blob(fleet, os.urandom(n)) for n in (10, 300_000, 9 << 20)]  # the last one goes multipart
    fleet.store.write_sync(lambda c: catalog.create(
        c, SYSTEM, fleet.keys.signing_key, name="app", version="1.0.0", kind="app", device_types=["linux-aarch64"],
        sha256=blobs[1], size=300_000, file_name="app.tar.gz", install_spec=None))
    ids = fleet.store.read_sync(lambda c: [r[0] for r in c.execute("SELECT id FROM devices ORDER BY id")])
    fleet.store.write_sync(lambda c: c.executemany(
        "INSERT INTO telemetry (device_id, name, ts, value) VALUES (?, 'cpu.temp', ?, ?)",
        [(ids[i % len(ids)], time.time() - i, float(i)) for i in range(500)]))
    return fleet


def bucket_of(b: Bucket, prefix: str = "fleet") -> transfer.Bucket:
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = b.access_key, b.secret_key
    return transfer.Bucket(f"s3://{b.name}/{prefix}", endpoint=b.endpoint, region=b.region)


def sqlite_rows(fleet: Fleet, sql: str) -> list[tuple[Any, ...]]:
    return fleet.store.read_sync(lambda c: [tuple(r) for r in c.execute(sql)])


def pg_rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return [tuple(r) for r in conn.execute(sql)]


TABLES_COMPARED = {
    "devices": "SELECT id, hardware_id, status, auth_epoch, name FROM devices ORDER BY id",
    "users": "SELECT id, username, role, disabled FROM users ORDER BY id",
    "api_keys": "SELECT id, name, role FROM api_keys ORDER BY id",
    "blobs": "SELECT sha256, size, md5, sha1 FROM blobs ORDER BY sha256",
    "artifacts": "SELECT id, name, version, sha256 FROM artifacts ORDER BY id",
    "telemetry": "SELECT id, device_id, name, ts, value FROM telemetry ORDER BY id",
    "audit_log": "SELECT id, action FROM audit_log ORDER BY id",
}


def assert_same(fleet: Fleet, dsn: str) -> None:
    for table, sql in TABLES_COMPARED.items():
        assert pg_rows(dsn, sql) == sqlite_rows(fleet, sql), table


@pytest.mark.timeout(180)
def test_a_running_fleet_is_copied_then_synced_then_finished_with_every_blob_checked(
        old: Fleet, postgres_dsn: str, s3_bucket: Bucket, tmp_path: Path) -> None:
    bucket = bucket_of(s3_bucket)
    first = transfer.migrate_fleet(old.data_dir, postgres_dsn, bucket, final=False)
    assert first.tables["devices"].rows == DEVICES and first.tables["devices"].written == DEVICES
    assert first.tables["telemetry"].written == 500
    assert (first.blobs, first.blobs_uploaded, first.blobs_verified) == (3, 3, 0)
    assert_same(old, postgres_dsn)
    for sha, size in sqlite_rows(old, "SELECT sha256, size FROM blobs"):
        got = s3_bucket.request("GET", f"fleet/blobs/{sha}")
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == sha and len(got.content) == size

    # The old server goes on: a device leaves (its rows go with it), one is renamed, points and audit entries come.
    gone, renamed = sqlite_rows(old, "SELECT id FROM devices ORDER BY id LIMIT 2")
    old.store.write_sync(lambda c: c.execute("DELETE FROM devices WHERE id = ?", gone))
    old.store.write_sync(lambda c: c.execute("UPDATE devices SET name = 'kitchen' WHERE id = ?", renamed))
    old.store.write_sync(lambda c: c.executemany(
        "INSERT INTO telemetry (device_id, name, ts, value) VALUES (?, 'cpu.temp', ?, 1.5)",
        [(renamed[0], time.time() + i) for i in range(20)]))
    old.store.write_sync(lambda c: auth.create_user(c, SYSTEM, "bob", "another long password", "viewer"))
    second = transfer.migrate_fleet(old.data_dir, postgres_dsn, bucket, final=False)
    assert second.tables["devices"].written == 1 and second.tables["devices"].deleted == 1
    assert second.tables["telemetry"].written == 20
    assert second.blobs_uploaded == 0  # the bucket has them all
    assert_same(old, postgres_dsn)

    # The new database goes on from the copied ids.
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("INSERT INTO telemetry (device_id, name, ts, value) VALUES (%s, 'x', 1e9, 0)", (renamed[0],))
        conn.rollback()

    device_ids = [r[0] for r in sqlite_rows(old, "SELECT id FROM devices ORDER BY id")]
    old.close()
    final = transfer.migrate_fleet(old.data_dir, postgres_dsn, bucket, final=True)
    assert final.blobs_verified == 3 and final.blobs_uploaded == 0
    assert {n: t for n, t in final.tables.items() if t.written or t.deleted} == {}

    # A replica with a data dir of its own finds the old fleet's keys in the database: same CA, same token key.
    with replicas(tmp_path / "new", postgres_dsn, n=1, blob_store=f"s3://{s3_bucket.name}/fleet",
                  s3_endpoint=s3_bucket.endpoint, s3_region=s3_bucket.region) as (new,):
        assert new.keys.ca_fingerprint == old.keys.ca_fingerprint == final.ca_fingerprint
        assert new.keys.token_key == old.keys.token_key and new.keys.signing_public_key == old.keys.signing_public_key
        assert sorted(new.store.read_sync(lambda c: [r[0] for r in c.execute("SELECT id FROM devices")])) == \
            device_ids


def test_a_database_with_another_fleets_keys_is_refused(old: Fleet, postgres_dsn: str, tmp_path: Path) -> None:
    with replicas(tmp_path / "early", postgres_dsn, n=1):  # started on the new database before the move
        pass
    with pytest.raises(FailedPrecondition, match="holds the keys of another CA"):
        transfer.migrate_fleet(old.data_dir, postgres_dsn, None, final=False)
    assert pg_rows(postgres_dsn, "SELECT count(*) FROM devices") == [(0,)]


def test_a_changed_object_in_the_bucket_fails_the_final_check(old: Fleet, postgres_dsn: str,
                                                              s3_bucket: Bucket) -> None:
    bucket = bucket_of(s3_bucket)
    transfer.migrate_fleet(old.data_dir, postgres_dsn, bucket, final=False)
    sha = sqlite_rows(old, "SELECT sha256 FROM blobs WHERE size = 10")[0][0]
    assert s3_bucket.request("PUT", f"fleet/blobs/{sha}", b"0123456789").status_code == 200  # same size, other bytes
    with pytest.raises(FailedPrecondition, match=f"does not hold blob {sha}"):
        transfer.migrate_fleet(old.data_dir, postgres_dsn, bucket, final=True)


def test_a_missing_blob_file_is_named(old: Fleet, postgres_dsn: str, s3_bucket: Bucket) -> None:
    sha = sqlite_rows(old, "SELECT sha256 FROM blobs WHERE size = 10")[0][0]
    (old.data_dir / "blobs" / sha[:2] / sha).unlink()
    with pytest.raises(FailedPrecondition, match=f"blob {sha} is listed in the database but its file"):
        transfer.migrate_fleet(old.data_dir, postgres_dsn, bucket_of(s3_bucket), final=False)


def test_another_schema_version_is_refused_before_anything_is_copied(old: Fleet, postgres_dsn: str) -> None:
    conn = sqlite3.connect(old.data_dir / DB_NAME)
    conn.execute("DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM schema_migrations)")
    conn.commit()
    conn.close()
    with pytest.raises(FailedPrecondition, match="Upgrade the old server to this fleetd first"):
        transfer.migrate_fleet(old.data_dir, postgres_dsn, None, final=False)
    assert pg_rows(postgres_dsn, "SELECT count(*) FROM devices") == [(0,)]


def test_the_cli_copies_while_running_and_refuses_final_until_the_server_stopped(
        old: Fleet, postgres_dsn: str, s3_bucket: Bucket) -> None:
    runner = CliRunner()
    env = {"AWS_ACCESS_KEY_ID": s3_bucket.access_key, "AWS_SECRET_ACCESS_KEY": s3_bucket.secret_key}
    args = ["store", "migrate", "--from", str(old.data_dir), "--to", postgres_dsn, "--blob-store",
            f"s3://{s3_bucket.name}/p", "--s3-endpoint", s3_bucket.endpoint, "--s3-region", s3_bucket.region]
    r = runner.invoke(app, [*args, "--json"], env=env)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["tables"]["devices"]["rows"] == DEVICES
    r = runner.invoke(app, [*args, "--final"], env=env)  # the fixture's Fleet holds the data dir, as a server does
    assert r.exit_code == 1 and "a fleetd server is running" in r.output and "Stop it first" in r.output
    old.close()
    r = runner.invoke(app, [*args, "--final"], env=env)
    assert r.exit_code == 0, r.output
    assert "3 verified by SHA-256" in r.output
    r = runner.invoke(app, ["store", "migrate", "--from", str(old.data_dir), "--to", "/tmp/not-a-dsn"])
    assert r.exit_code != 0 and "must be a PostgreSQL DSN" in r.output
