"""kill -9 under write load: every acknowledged write survives, the database stays intact, no partial blob shows."""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .server import ServerProcess
from .test_backup_e2e import KeyLoad

pytestmark = pytest.mark.e2e
ROUNDS = 3
SHA256 = re.compile(r"^[0-9a-f]{64}$")

# A second writer process storing blobs beside the server through the blob store's offline path;
# it prints each sha256 only once put_sync has returned (file durable, row committed).
BLOB_WRITER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from fleetd.store.blobs import put_sync
    from fleetd.store.database import connect
    data = Path(sys.argv[1])
    conn = connect(data / "fleetd.db")
    while True:
        size = int.from_bytes(os.urandom(3), "big") % 400_000 + 1
        info = put_sync(data / "blobs", conn, [os.urandom(size)])
        print(info.sha256, flush=True)
""")


def _check_data_dir(data: Path, key_ids: list[str], blob_ids: list[str], why: str) -> None:
    conn = sqlite3.connect(data / "fleetd.db")
    try:
        assert [r[0] for r in conn.execute("PRAGMA integrity_check")] == ["ok"], why
        keys = {r[0] for r in conn.execute("SELECT id FROM api_keys")}
        blob_rows = {r[0]: r[1] for r in conn.execute("SELECT sha256, size FROM blobs")}
    finally:
        conn.close()
    lost = [k for k in key_ids if k not in keys]
    assert lost == [], f"{why}: {len(lost)} acknowledged keys lost"
    lost = [b for b in blob_ids if b not in blob_rows]
    assert lost == [], f"{why}: {len(lost)} acknowledged blobs lost"
    # Outside blobs/tmp/ only complete files: each named by the sha256 of its bytes.
    for path in (data / "blobs").rglob("*"):
        rel = path.relative_to(data / "blobs")
        if rel.parts[0] == "tmp" or path.is_dir():
            continue
        assert len(rel.parts) == 2 and SHA256.match(path.name) and rel.parts[0] == path.name[:2], \
            f"{why}: stray file blobs/{rel}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, f"{why}: partial file blobs/{rel}"
    for sha, size in blob_rows.items():
        assert (data / "blobs" / sha[:2] / sha).stat().st_size == size, f"{why}: blob {sha} has a row but no file"


def test_kill_9_under_write_load_loses_nothing_acknowledged(own_server: ServerProcess) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rnd = random.Random(seed)
    server = own_server.start()
    admin = server.create_key("admin", "crash-admin")
    key_ids: list[str] = []
    blob_ids: list[str] = []
    for round_ in range(1, ROUNDS + 1):
        why = f"round {round_} (seed {seed})"
        if round_ > 1:
            server.start()
        writer = subprocess.Popen([sys.executable, "-c", BLOB_WRITER, str(server.data_dir)],
                                  stdout=subprocess.PIPE, text=True)
        with KeyLoad(server, admin) as load:
            time.sleep(rnd.uniform(0.4, 1.2))
            writer.send_signal(signal.SIGKILL)
            server.kill9()
        out, _ = writer.communicate(timeout=10)
        acked_blobs = [line for line in out.split("\n")[:-1] if SHA256.match(line)]
        assert len(load.acked) >= 5 and acked_blobs, f"{why}: the load ran"
        key_ids += [a.id for a in load.acked]
        blob_ids += acked_blobs
        _check_data_dir(server.data_dir, key_ids, blob_ids, why)

    # And the server comes back over them, serving every acknowledged key.
    server.start()
    r = server.rpc("UserService", "ListKeys", {}, api_key=admin)
    assert r.status_code == 200
    listed = {k["id"] for k in r.json()["keys"]}
    assert set(key_ids) <= listed
