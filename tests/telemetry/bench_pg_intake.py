"""PostgreSQL telemetry intake, for groups of 100-point batches from many devices: the intake's statement (the
batches as arrays, their JSON unpacked by json_to_recordset), the multi-row INSERT SQLite runs (jsonb), a binary COPY
of the decoded rows (psycopg's write_row per point, the intake's before) and a text COPY built once per group (one
write). Interleaved rounds, medians: points/s, and the writer's own CPU per point (what it holds the GIL for).

    PYTHONPATH=src:. python -m tests.telemetry.bench_pg_intake [--rounds 5] [--groups 10]

Starts its own PostgreSQL (tests/support/services). The figures are in docs/performance.md, "Telemetry on
PostgreSQL"; the intake uses storage.unpack_point_batches.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import msgspec

from fleetd.store import database, postgres
from fleetd.store.database import transaction
from fleetd.telemetry import storage
from fleetd.telemetry.intake import Point
from tests.support.services import PostgresServer


def batches(group: int, points: int, seq: int) -> list[storage.Batch]:
    now = time.time()
    out = []
    for d in range(group):
        pts = [Point(name=f"m{i % 10}", value=float(i), ts=now - 60 + i * 0.1, tags={"core": str(i % 4)} if i % 3
                     else {}) for i in range(points)]
        out.append((f"dev-{seq}-{d}", now, msgspec.json.encode(pts).decode()))
    return out


_COPY_BINARY = "COPY telemetry (device_id, name, ts, value, tags) FROM STDIN (FORMAT BINARY)"
_COPY_TEXT = "COPY telemetry (device_id, name, ts, value, tags) FROM STDIN"


class _Stored(msgspec.Struct, gc=False):
    """A point of a batch's JSON as the intake encodes it (tags as their JSON text)."""

    name: str
    value: float
    ts: float = 0.0
    tags: msgspec.Raw = msgspec.Raw(b"{}")


_decode = msgspec.json.Decoder(list[_Stored]).decode


def _locked(conn: Any, write: Callable[[Any], int]) -> tuple[int, int | None]:
    with transaction(conn):
        conn.execute(f"SELECT pg_advisory_xact_lock({storage.RAW_INSERT_LOCK})")
        n = write(conn.raw)
        top = conn.execute("SELECT currval(pg_get_serial_sequence('telemetry', 'id'))").fetchone()[0]
    return n, top


def copy_binary(conn: Any, group: list[storage.Batch]) -> tuple[int, int | None]:
    """The intake's COPY before: the batches decoded, one write_row per point."""
    def write(raw: Any) -> int:
        n = 0
        with raw.cursor() as cur, cur.copy(_COPY_BINARY) as copy:
            copy.set_types(("text", "text", "float8", "float8", "text"))
            for device_id, received, points in group:
                for p in _decode(points):
                    tags = bytes(p.tags)
                    copy.write_row((device_id, p.name, p.ts or received, p.value,
                                    None if tags == b"{}" else tags.decode()))
                    n += 1
        return n
    return _locked(conn, write)


def copy_text(conn: Any, group: list[storage.Batch]) -> tuple[int, int | None]:
    """COPY's text format, the group's rows encoded into one string (names and device ids hold no tab, newline or
    backslash; the tags' backslashes doubled)."""
    lines = []
    for device_id, received, points in group:
        for p in _decode(points):
            tags = bytes(p.tags)
            t = "\\N" if tags == b"{}" else tags.decode().replace("\\", "\\\\")
            lines.append(f"{device_id}\t{p.name}\t{p.ts or received!r}\t{p.value!r}\t{t}\n")
    data = "".join(lines).encode()

    def write(raw: Any) -> int:
        with raw.cursor() as cur, cur.copy(_COPY_TEXT) as copy:
            copy.write(data)
        return len(lines)
    return _locked(conn, write)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--groups", type=int, default=10, help="statements per variant per round")
    ap.add_argument("--batches", type=int, default=storage.MAX_BATCHES_PER_INSERT, help="batches per statement")
    ap.add_argument("--points", type=int, default=100, help="points per batch")
    a = ap.parse_args()
    with PostgresServer() as server:
        conn = postgres.connect(server.dsn(server.create_database()))
        database.migrate(conn)
        variants: dict[str, Callable[[list[storage.Batch]], tuple[int, int | None]]] = {
            "unpack": lambda b: storage.unpack_point_batches(conn, b),
            "insert": lambda b: storage.insert_point_batches_locked(conn, b),
            "copy_binary": lambda b: copy_binary(conn, b),
            "copy_text": lambda b: copy_text(conn, b),
        }
        cpu: dict[str, list[float]] = {v: [] for v in variants}
        rates: dict[str, list[float]] = {v: [] for v in variants}
        seq = 0
        for _ in range(a.rounds):
            order = list(variants)
            random.shuffle(order)
            for v in order:
                work = []
                for _ in range(a.groups):
                    seq += 1
                    work.append(batches(a.batches, a.points, seq))
                t, c = time.perf_counter(), time.thread_time()
                n = sum(variants[v](b)[0] for b in work)
                rates[v].append(n / (time.perf_counter() - t))
                cpu[v].append((time.thread_time() - c) / n * 1e6)
        conn.close()
    for v, rs in rates.items():
        print(f"{v}: median {statistics.median(rs):,.0f} points/s, writer CPU {statistics.median(cpu[v]):.2f} µs a "
              f"point (rounds: {', '.join(f'{r:,.0f}' for r in rs)})")


if __name__ == "__main__":
    main()
