"""PostgreSQL telemetry intake: ways to store a group of 100-point batches from many devices, interleaved.

- ``copy_points`` (the intake's, storage.copy_point_batches): one binary COPY of the checked points as they are;
- ``copy_json``: the same COPY from the batches' JSON, decoded on the writer (the intake before: the loop encoded
  every batch for it);
- ``unpack``: one INSERT unpacking the batches' JSON in the database (arrays as binary parameters,
  json_to_recordset);
- ``insert``: the multi-row INSERT SQLite runs (jsonb_array_elements);
- ``copy_text``: a text COPY of the rows encoded into one string per group (one write).

    PYTHONPATH=src:. python -m tests.telemetry.bench_pg_intake [--rounds 5] [--groups 10]

Starts its own PostgreSQL (tests/support/services). Medians of the rounds: points/s, and the writer's own CPU per
point (what it holds the GIL for; the JSON variants' encoding on the event loop not counted). The figures are in
docs/performance.md, "Telemetry on PostgreSQL".
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

Group = tuple[list[storage.Batch], list[storage.PointBatch]]  # one group, as JSON and as points


def group(batches: int, points: int, seq: int) -> Group:
    now = time.time()
    as_json: list[storage.Batch] = []
    as_points: list[storage.PointBatch] = []
    for d in range(batches):
        pts = [Point(name=f"m{i % 10}", value=float(i), ts=now - 60 + i * 0.1, tags={"core": str(i % 4)} if i % 3
                     else {}) for i in range(points)]
        as_json.append((f"dev-{seq}-{d}", now, msgspec.json.encode(pts).decode()))
        as_points.append((f"dev-{seq}-{d}", now, pts))
    return as_json, as_points


class _Stored(msgspec.Struct, gc=False):
    """A point of a batch's JSON as the intake encodes it (tags as their JSON text)."""

    name: str
    value: float
    ts: float = 0.0
    tags: msgspec.Raw = msgspec.Raw(b"{}")


_decode = msgspec.json.Decoder(list[_Stored]).decode
_UNPACK = ("INSERT INTO telemetry (device_id, name, ts, value, tags) "
           "SELECT b.device_id, p.name, COALESCE(NULLIF(p.ts, 0), b.received), p.value, NULLIF(p.tags::text, '{}') "
           "FROM unnest(%b::text[], %b::float8[], %b::text[]) AS b(device_id, received, points) "
           "CROSS JOIN LATERAL json_to_recordset(b.points::json) AS p(name text, value float8, ts float8, tags json)")


def _locked(conn: Any, write: Callable[[Any], int]) -> int:
    """``write(the psycopg connection)`` in a transaction under the raw-insert lock, as the intake's. → its rows."""
    with transaction(conn):
        conn.execute(f"SELECT pg_advisory_xact_lock({storage.RAW_INSERT_LOCK})")
        n = write(conn.raw)
        conn.execute("SELECT currval(pg_get_serial_sequence('telemetry', 'id'))").fetchone()
    return n


def copy_json(conn: Any, batches: list[storage.Batch]) -> int:
    def write(raw: Any) -> int:
        n = 0
        with raw.cursor() as cur, cur.copy("COPY telemetry (device_id, name, ts, value, tags) FROM STDIN "
                                           "(FORMAT BINARY)") as copy:
            copy.set_types(("text", "text", "float8", "float8", "text"))
            for device_id, received, points in batches:
                for p in _decode(points):
                    tags = bytes(p.tags)
                    copy.write_row((device_id, p.name, p.ts or received, p.value,
                                    None if tags == b"{}" else tags.decode()))
                    n += 1
        return n
    return _locked(conn, write)


def unpack(conn: Any, batches: list[storage.Batch]) -> int:
    return _locked(conn, lambda raw: int(raw.execute(_UNPACK, ([b[0] for b in batches], [b[1] for b in batches],
                                                               [b[2] for b in batches])).rowcount))


def copy_text(conn: Any, batches: list[storage.Batch]) -> int:
    """Names and device ids hold no tab, newline or backslash; the tags' backslashes are doubled."""
    lines = []
    for device_id, received, points in batches:
        for p in _decode(points):
            tags = bytes(p.tags)
            t = "\\N" if tags == b"{}" else tags.decode().replace("\\", "\\\\")
            lines.append(f"{device_id}\t{p.name}\t{p.ts or received!r}\t{p.value!r}\t{t}\n")
    data = "".join(lines).encode()

    def write(raw: Any) -> int:
        with raw.cursor() as cur, cur.copy("COPY telemetry (device_id, name, ts, value, tags) FROM STDIN") as copy:
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
        variants: dict[str, Callable[[Group], int]] = {
            "copy_points": lambda g: storage.copy_point_batches(conn, g[1])[0],
            "copy_json": lambda g: copy_json(conn, g[0]),
            "unpack": lambda g: unpack(conn, g[0]),
            "insert": lambda g: storage.insert_point_batches_locked(conn, g[0])[0],
            "copy_text": lambda g: copy_text(conn, g[0]),
        }
        rates: dict[str, list[float]] = {v: [] for v in variants}
        cpu: dict[str, list[float]] = {v: [] for v in variants}
        seq = 0
        for _ in range(a.rounds):
            order = list(variants)
            random.shuffle(order)
            for v in order:
                work = []
                for _ in range(a.groups):
                    seq += 1
                    work.append(group(a.batches, a.points, seq))
                t, c = time.perf_counter(), time.thread_time()
                n = sum(variants[v](g) for g in work)
                rates[v].append(n / (time.perf_counter() - t))
                cpu[v].append((time.thread_time() - c) / n * 1e6)
        conn.close()
    for v, rs in rates.items():
        print(f"{v}: median {statistics.median(rs):,.0f} points/s, writer CPU {statistics.median(cpu[v]):.2f} µs a "
              f"point (rounds: {', '.join(f'{r:,.0f}' for r in rs)})")


if __name__ == "__main__":
    main()
