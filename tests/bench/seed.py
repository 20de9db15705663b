"""The benchmark's data dir: enrolled devices, their bearer tokens, request bodies, a big blob, an API key.

Everything goes through fleetd's own code on the data dir, offline: devices
through ``registry.enroll`` (with a join token, so they are active) in big
transactions, keys through ``pki.load_or_create``, the blob through
``blobs.put_sync``, the API key through the ``fleetd keys create`` command.
Device tokens are minted with ``DeviceTokens(token_key).issue`` — byte for byte
what Authenticate would hand the device.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import msgspec

from fleetd.accounts.audit import SYSTEM
from fleetd.core import pki
from fleetd.devices import join_tokens, registry
from fleetd.devices.devauth import DeviceTokens
from fleetd.fleet import DB_NAME, open_offline
from fleetd.store.blobs import put_sync
from fleetd.store.database import connect, transaction

from ..e2e.server import run_cli

FIXTURE_FORMAT = 1
DEVICE_TYPE = "linux-aarch64"
METRICS = ("cpu.usage", "cpu.temp", "mem.used", "mem.free", "disk.used", "net.rx_bytes", "net.tx_bytes",
           "load1", "uptime", "app.requests")
POINTS_PER_BATCH = 100


@dataclass
class Fixture:
    """What the benchmarks need to know about a seeded data dir (kept in fixture.json beside it)."""

    data_dir: str
    devices: int
    blob_sha256: str
    blob_size: int
    api_key: str
    format: int = FIXTURE_FORMAT

    @property
    def path(self) -> Path:
        return Path(self.data_dir)

    @property
    def blob_path(self) -> Path:
        return self.path / "blobs" / self.blob_sha256[:2] / self.blob_sha256


def hardware_id(i: int) -> str:
    return f"bench-{i:07d}"


def enroll_devices(conn: sqlite3.Connection, count: int, batch: int = 10_000) -> None:
    """``count`` active devices, enrolled with one join token, ``batch`` to a transaction."""
    with transaction(conn):
        token, _ = join_tokens.create_token(conn, SYSTEM, description="benchmark fleet")
    have = conn.execute("SELECT COUNT(*) FROM devices").fetchone()[0]
    for start in range(have, count, batch):
        with transaction(conn):
            for i in range(start, min(count, start + batch)):
                hid = hardware_id(i)
                # The key is never used: tokens are minted directly, so random bytes do.
                registry.enroll(conn, hardware_id=hid, device_type=DEVICE_TYPE, public_key=os.urandom(32),
                                name="", token=lambda: token, inventory={"hostname": hid}, addr="127.0.0.1")


def _blob_chunks(size: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    left = size
    while left:
        n = min(chunk, left)
        yield os.urandom(n)
        left -= n


def create(data_dir: Path, devices: int, blob_mib: int) -> Fixture:
    """Seed a fresh data dir. About 10 s per 100,000 devices."""
    data_dir.mkdir(parents=True, exist_ok=True)
    pki.load_or_create(data_dir, ["127.0.0.1"])  # what `serve --host 127.0.0.1` would make
    conn = open_offline(data_dir)
    try:
        enroll_devices(conn, devices)
        info = put_sync(data_dir / "blobs", conn, _blob_chunks(blob_mib << 20))
    finally:
        conn.close()
    key = json.loads(run_cli("keys", "create", "--data-dir", str(data_dir), "--name", "bench", "--role", "viewer",
                             "--json").stdout)["key"]
    fx = Fixture(str(data_dir), devices, info.sha256, info.size, key)
    (data_dir.parent / "fixture.json").write_text(json.dumps(asdict(fx), indent=2))
    return fx


def load(workdir: Path, devices: int, blob_mib: int) -> Fixture | None:
    """A fixture seeded earlier in ``workdir`` with the same sizes, or None."""
    try:
        raw = json.loads((workdir / "fixture.json").read_text())
        fx = Fixture(**raw)
    except (OSError, ValueError, TypeError):
        return None
    if fx.format != FIXTURE_FORMAT or fx.devices != devices or fx.blob_size != blob_mib << 20 \
            or not fx.blob_path.is_file() or not (fx.path / DB_NAME).is_file():
        return None
    # No artifact refers to the blob, so the server's blob gc removes it an hour after it was stored: a reused data
    # dir gets a fresh hour (a full run takes ~25 minutes).
    conn = connect(fx.path / DB_NAME)
    try:
        with transaction(conn):
            conn.execute("UPDATE blobs SET created_at = ? WHERE sha256 = ?", (time.time(), fx.blob_sha256))
    finally:
        conn.close()
    return fx


# --- devices and their requests ----------------------------------------------------

def sample_devices(fx: Fixture, count: int, seed: int = 1) -> list[tuple[str, str, int]]:
    """(device id, hardware id, auth epoch) of ``count`` active devices, the same ones on every run."""
    conn = connect(fx.path / DB_NAME, readonly=True)
    try:
        rows = conn.execute("SELECT id, hardware_id, auth_epoch FROM devices WHERE status = 'active' "
                            "ORDER BY hardware_id").fetchall()
    finally:
        conn.close()
    if len(rows) < count:
        raise RuntimeError(f"the data dir has {len(rows)} active devices, the benchmark needs {count}")
    return [(r[0], r[1], r[2]) for r in random.Random(seed).sample(rows, count)]


def mint_tokens(fx: Fixture, devices: list[tuple[str, str, int]]) -> list[str]:
    tokens = DeviceTokens((fx.path / "token.key").read_bytes())
    return [tokens.issue(did, epoch) for did, _, epoch in devices]


def checkin_body(hw_id: str, n: int) -> bytes:
    """A CheckIn a Raspberry Pi agent would send: inventory and two components (~450 bytes)."""
    return msgspec.json.encode({
        "inventory": {
            "hostname": hw_id, "os": "Debian GNU/Linux", "os_version": "12 (bookworm)",
            "kernel": "6.6.31+rpt-rpi-v8", "arch": "aarch64", "model": "Raspberry Pi 4 Model B Rev 1.5",
            "addresses": [f"192.168.{n // 250 % 250}.{n % 250 + 2}", "fe80::dea6:32ff:fe01:2345"],
            "agent_version": "0.1.0",
        },
        "components": [
            {"name": "fleet-agent", "version": "0.1.0", "state": "running", "health": "healthy", "restarts": 0},
            {"name": "sensor-app", "version": "1.4.2", "state": "running", "health": "healthy", "restarts": 1},
        ],
    })


def telemetry_points(n: int, now: float) -> list[dict[str, object]]:
    """One batch: 10 metrics sampled 10 times, 6 s apart; app.requests carries a tag."""
    rnd = random.Random(n)
    points: list[dict[str, object]] = []
    for step in range(POINTS_PER_BATCH // len(METRICS)):
        ts = round(now - 60 + step * 6 + rnd.random(), 3)
        for name in METRICS:
            p: dict[str, object] = {"name": name, "ts": ts, "value": round(rnd.uniform(0, 1000), 3)}
            if name == "app.requests":
                p["tags"] = {"component": "sensor-app"}
            points.append(p)
    return points


def telemetry_rows(device_id: str, points: list[dict[str, object]]) -> list[tuple[object, ...]]:
    """The rows fleetd stores for ``points`` (as telemetry.rows_for makes them)."""
    return [(device_id, p["name"], p["ts"], p["value"],
             msgspec.json.encode(p["tags"]).decode() if p.get("tags") else None) for p in points]


def write_requests(path: Path, tokens: list[str], bodies: list[bytes]) -> Path:
    """The file wrk_bench.lua reads: ``token<TAB>body`` per line."""
    with path.open("wb") as f:
        for token, body in zip(tokens, bodies, strict=True):
            assert b"\n" not in body and b"\t" not in body
            f.write(token.encode() + b"\t" + body + b"\n")
    return path
