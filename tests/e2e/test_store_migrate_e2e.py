"""`fleetd store migrate` moves a fleet of 1,000 devices with artifacts, and the devices keep checking in unchanged
(docs/scaling.md, "Moving an existing fleet").

A server on its SQLite data dir; 1,000 simulated devices enrolled and checking in, an artifact pushed and installed
on a few; a first copy into PostgreSQL and an S3 bucket while it runs; the old server stopped, the final copy; a
server on the database and the bucket (a fresh data dir) started on the address the devices use. The same
simulator run goes on: no device enrolls again, every one checks in with the token it had, installs the artifact
from the bucket (signed with the key it pinned), the artifact downloads byte for byte with Range, and the CA the
devices pinned is the same.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.services import Bucket

from .server import ServerProcess, run_cli
from .test_simulate import call, join_token, push_artifact, start_sim, stop_sim, wait_for

pytestmark = pytest.mark.e2e

DEVICES = 1000
INTERVAL = 10  # seconds between a device's check-ins: 100 check-ins/s for the fleet
INSTALLED = 20  # devices the artifact is deployed to before the move
INSTALLED_AFTER = 5  # and after it
PAYLOAD = bytes(range(256)) * 1200  # 300 KiB


def ca_fingerprint(server: ServerProcess) -> str:
    with server.client() as c:
        return str(c.get("/v1/ca.pem").raise_for_status().headers["X-Fleetd-CA-Fingerprint"])


def pg_value(dsn: str, sql: str, *params: object) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def device_calls(server: ServerProcess, key: str) -> dict[tuple[str, str], int]:
    """The device protocol's requests the server answered, by method and status (its /metrics)."""
    with server.client(key) as c:
        text = c.get("/metrics").raise_for_status().text
    found = re.findall(r'^fleetd_http_requests_total\{(.*DeviceService/(\w+).*)\} (\d+)$', text, re.M)
    return {(method, re.search(r'code="(\d+)"', labels).group(1)): int(n)  # type: ignore[union-attr]
            for labels, method, n in found}


def sqlite_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def migrate(old: ServerProcess, dsn: str, bucket: Bucket, *extra: str) -> dict[str, Any]:
    env = {"AWS_ACCESS_KEY_ID": bucket.access_key, "AWS_SECRET_ACCESS_KEY": bucket.secret_key}
    p = run_cli("store", "migrate", "--from", str(old.data_dir), "--to", dsn, "--blob-store",
                f"s3://{bucket.name}/fleet", "--s3-endpoint", bucket.endpoint, "--s3-region", bucket.region,
                "--json", *extra, env=env, timeout=120)
    return dict(json.loads(p.stdout))


def test_a_fleet_of_1000_devices_moves_and_keeps_checking_in(tmp_path: Path, postgres_dsn: str,
                                                             s3_bucket: Bucket) -> None:
    # Enrollment and challenges are limited per address; all 1,000 devices come from 127.0.0.1.
    rates = {"FLEETD_ENROLL_RATE_PER_MINUTE": "1000000"}
    old = ServerProcess(tmp_path / "old", env=rates).start()
    sim = None
    new = None
    try:
        key = old.create_key("admin")
        fingerprint = ca_fingerprint(old)
        sha = push_artifact(old, key, tmp_path, "moved", "1.0.0", PAYLOAD)["sha256"]
        assert sha == hashlib.sha256(PAYLOAD).hexdigest()
        sim = start_sim(old, "--token", join_token(old, key), "--ca", old.ca, "--devices", str(DEVICES),
                        "--interval", str(INTERVAL), "--prefix", "mv", "--workers", "1")
        db = old.data_dir / "fleetd.db"
        wait_for(lambda: sqlite_rows(db, "SELECT COUNT(*) FROM devices WHERE hardware_id LIKE 'mv-%' "
                                      "AND last_seen IS NOT NULL") == [(DEVICES,)], 60, "1,000 devices to check in")
        some = call(old, key, "DeviceAdminService", "ListDevices", {"search": "mv-", "limit": INSTALLED})["devices"]
        call(old, key, "DeviceAdminService", "Deploy",
             {"device_ids": [d["id"] for d in some], "artifact": "moved@1.0.0"})
        wait_for(lambda: sqlite_rows(db, "SELECT COUNT(*) FROM actions WHERE state = 'succeeded'") == [(INSTALLED,)],
                 2 * INTERVAL + 20, f"{INSTALLED} installs")

        # 1. The first copy, while the old server runs and the devices check in.
        first = migrate(old, postgres_dsn, s3_bucket)
        assert first["blobs_uploaded"] == 1 and first["ca_fingerprint"] == fingerprint, first

        # 2. The old server stopped, the final copy.
        old.stop()
        enrolled = dict(sqlite_rows(db, "SELECT hardware_id, id FROM devices WHERE hardware_id LIKE 'mv-%'"))
        assert len(enrolled) == DEVICES
        final = migrate(old, postgres_dsn, s3_bucket, "--final")
        assert final["blobs_verified"] == 1 and final["tables"]["devices"]["rows"] == DEVICES, final

        # 3. The new server on the database and the bucket, where the devices look for theirs.
        new = ServerProcess(tmp_path / "new", database=postgres_dsn, env={
            **rates, "AWS_ACCESS_KEY_ID": s3_bucket.access_key, "AWS_SECRET_ACCESS_KEY": s3_bucket.secret_key,
            "FLEETD_S3_ENDPOINT": s3_bucket.endpoint, "FLEETD_S3_REGION": s3_bucket.region},
            extra_args=["--blob-store", f"s3://{s3_bucket.name}/fleet"])
        new.port = old.port
        moved_at = time.time()
        new.start(timeout=60)
        assert ca_fingerprint(new) == fingerprint

        # Every device checks in again (last_seen past the move, and telemetry sent after it), with the id and the
        # token it had: none enrolled again, none asked for a new token by enrolling.
        seen = "SELECT COUNT(*) FROM devices WHERE hardware_id LIKE 'mv-%%' AND last_seen > %s"
        wait_for(lambda: pg_value(postgres_dsn, seen, moved_at) == DEVICES, 3 * INTERVAL + 45,
                 "every device to check in on the new server")
        reported = ("SELECT COUNT(DISTINCT device_id) FROM telemetry t JOIN devices d ON d.id = t.device_id "
                    "WHERE d.hardware_id LIKE 'mv-%%' AND t.ts > %s")
        wait_for(lambda: pg_value(postgres_dsn, reported, moved_at) == DEVICES, 30,
                 "telemetry from every device after the move")
        # A device installs from the new server: the blob from the bucket, signed with the key it pinned before.
        listed = call(new, key, "DeviceAdminService", "ListDevices", {"search": "mv-", "limit": 100})["devices"]
        later = [d["id"] for d in listed if d["id"] not in {s["id"] for s in some}][:INSTALLED_AFTER]
        call(new, key, "DeviceAdminService", "Deploy", {"device_ids": later, "artifact": "moved@1.0.0"})
        installed = "SELECT COUNT(*) FROM actions WHERE state = 'succeeded'"
        wait_for(lambda: pg_value(postgres_dsn, installed) == INSTALLED + INSTALLED_AFTER, 2 * INTERVAL + 20,
                 f"{INSTALLED_AFTER} installs from the new server")
        summary = stop_sim(sim)
        sim = None
        calls = device_calls(new, key)  # everything the devices asked the new server: check-ins with old tokens

        # The artifact comes from the bucket through the new server, whole and in ranges, byte for byte.
        with new.client(key) as c:
            assert c.get(f"/v1/blobs/{sha}").content == PAYLOAD
            part = c.get(f"/v1/blobs/{sha}", headers={"Range": "bytes=1000-250999"})
        assert (part.status_code, part.content) == (206, PAYLOAD[1000:251000])
    finally:
        if sim is not None:
            stop_sim(sim)
        if new is not None and new.proc is not None:
            new.stop()
        if old.proc is not None:
            old.stop()
    with psycopg.connect(postgres_dsn) as conn:
        now: dict[str, str] = dict(
            conn.execute("SELECT hardware_id, id FROM devices WHERE hardware_id LIKE 'mv-%'").fetchall())
        enrolls = conn.execute("SELECT COUNT(*) FROM audit_log WHERE action = 'device.enroll' AND ts > %s",
                               (moved_at,)).fetchone()
    assert now == enrolled
    assert enrolls == (0,)
    assert calls.get(("CheckIn", "200"), 0) >= DEVICES, calls
    assert calls.get(("PushTelemetry", "200"), 0) >= DEVICES, calls
    assert calls.get(("ReportStatus", "200"), 0) >= 4 * INSTALLED_AFTER, calls  # downloading ... succeeded
    assert {m for m, code in calls if m in ("Enroll", "GetChallenge", "Authenticate") or code == "401"} == set(), \
        calls
    assert summary["enrolled"] == summary["active"] == DEVICES, summary
    assert not [r for r in summary["errors_by_reason"] if "unavailable" not in r and "connect" not in r], summary
    assert summary["actions_succeeded"] == INSTALLED + INSTALLED_AFTER and summary["actions_failed"] == 0, summary
