"""`fleetd backup` of a live server under write load, then `fleetd restore` and a second server on the copy."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from fleetd.store.blobs import put_sync
from fleetd.store.database import connect

from .server import ServerProcess, run_cli

pytestmark = pytest.mark.e2e


@dataclass
class Ack:
    id: str
    started: float  # time.monotonic() when the request was sent
    returned: float  # ... and when its success came back


@dataclass
class KeyLoad:
    """``UserService.CreateKey`` in a loop; records every key whose call answered 200."""
    server: ServerProcess
    api_key: str
    acked: list[Ack] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with self.server.client(self.api_key, timeout=10) as c:
            i = 0
            while not self.stop.is_set():
                i += 1
                started = time.monotonic()
                try:
                    r = c.post("/fleetd.v1.UserService/CreateKey", json={"name": f"load-{i}", "role": "viewer"})
                except httpx.HTTPError as e:
                    self.failures.append(repr(e))
                    continue
                if r.status_code == 200:
                    self.acked.append(Ack(r.json()["id"], started, time.monotonic()))
                else:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")

    def __enter__(self) -> KeyLoad:
        self._thread = threading.Thread(target=self.run, name="key-load", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(15)


@dataclass
class BlobLoad:
    """Blobs stored beside the running server through the offline store path, as the CLI would."""
    data_dir: Path
    acked: list[Ack] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conn = connect(self.data_dir / "fleetd.db")
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                info = put_sync(self.data_dir / "blobs", conn, [os.urandom(20_000 + len(self.acked) * 997)])
                self.acked.append(Ack(info.sha256, started, time.monotonic()))
                time.sleep(0.02)
        finally:
            conn.close()

    def __enter__(self) -> BlobLoad:
        self._thread = threading.Thread(target=self.run, name="blob-load", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(15)


def _ids(db: Path, sql: str) -> set[str]:
    conn = connect(db, readonly=True)
    try:
        return {r[0] for r in conn.execute(sql)}
    finally:
        conn.close()


def test_backup_under_load_restores_every_acknowledged_write(own_server: ServerProcess, tmp_path: Path) -> None:
    server = own_server.start()
    admin = server.create_key("admin", "e2e-admin")
    archive = tmp_path / "fleet.tar.gz"
    with KeyLoad(server, admin) as keys, BlobLoad(server.data_dir) as blobs:
        time.sleep(0.8)
        backup_started = time.monotonic()
        p = run_cli("backup", "--data-dir", str(server.data_dir), str(archive), "--json")
        backup_ended = time.monotonic()
        time.sleep(0.5)
    assert keys.failures == [], "the server kept answering while the backup ran"
    summary = json.loads(p.stdout)
    assert summary["path"] == str(archive) and stat.S_IMODE(archive.stat().st_mode) == 0o600

    before = [a for a in keys.acked if a.returned < backup_started]
    after = [a for a in keys.acked if a.started > backup_ended]
    blobs_before = [a for a in blobs.acked if a.returned < backup_started]
    assert len(before) >= 10 and after and len(blobs_before) >= 3, "the load ran before and after the backup"

    restored = tmp_path / "restored"
    r = json.loads(run_cli("restore", str(archive), "--data-dir", str(restored), "--json").stdout)
    assert r["data_dir"] == str(restored) and r["ca_fingerprint"] == summary["ca_fingerprint"]

    key_ids = _ids(restored / "fleetd.db", "SELECT id FROM api_keys")
    missing = [a.id for a in before if a.id not in key_ids]
    assert missing == [], f"{len(missing)} keys acknowledged before the backup started are missing"
    assert not [a.id for a in after if a.id in key_ids], "keys made after the backup ended are not in it"
    blob_ids = _ids(restored / "fleetd.db", "SELECT sha256 FROM blobs")
    for a in blobs_before:
        assert a.id in blob_ids
        assert hashlib.sha256((restored / "blobs" / a.id[:2] / a.id).read_bytes()).hexdigest() == a.id

    # The copy is a working server with the same identity: the original CA verifies its TLS.
    copy = ServerProcess(restored).start()
    try:
        with httpx.Client(base_url=copy.url, verify=ssl.create_default_context(cafile=server.ca)) as c:
            assert c.get("/healthz").status_code == 200
            assert c.get("/v1/ca.pem").headers["X-Fleetd-CA-Fingerprint"] == summary["ca_fingerprint"]
            who = c.post("/fleetd.v1.UserService/WhoAmI", json={}, headers={"Authorization": f"Bearer {admin}"})
            assert who.status_code == 200 and who.json()["role"] == "admin"
    finally:
        copy.stop()
