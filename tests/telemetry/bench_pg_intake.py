"""PostgreSQL telemetry intake: one multi-row INSERT per group (the JSON-unpacking statement SQLite runs too) against
COPY (binary rows), for groups of 100-point batches from many devices; interleaved rounds, medians, points/s.

    PYTHONPATH=src:. python -m tests.telemetry.bench_pg_intake [--rounds 5] [--groups 10]

Starts its own PostgreSQL (tests/support/services). The figures are in docs/performance.md, "Telemetry on
PostgreSQL"; the intake uses the faster (storage.copy_point_batches).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import msgspec

from fleetd.store import database, postgres
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
            "insert": lambda b: storage.insert_point_batches_locked(conn, b),
            "copy": lambda b: storage.copy_point_batches(conn, b),
        }
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
                t = time.perf_counter()
                n = sum(variants[v](b)[0] for b in work)
                rates[v].append(n / (time.perf_counter() - t))
        conn.close()
    for v, rs in rates.items():
        print(f"{v}: median {statistics.median(rs):,.0f} points/s  (rounds: {', '.join(f'{r:,.0f}' for r in rs)})")
    print(f"copy / insert: {statistics.median(rates['copy']) / statistics.median(rates['insert']):.2f}")


if __name__ == "__main__":
    main()
