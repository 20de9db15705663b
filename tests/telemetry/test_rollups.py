"""Telemetry rollups, retention and queries on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import math
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetd.core.resources import data_dir
from fleetd.store.database import connect, migrate, open_migrated, transaction
from fleetd.store.dialect import dialect_of
from fleetd.telemetry import rollups, storage
from fleetd.telemetry.intake import Point
from fleetd.telemetry.rollups import Agg, Retention
from tests.conftest import rpc, template_copy
from tests.devices.test_devices import active_device

T0 = 1_749_999_600.0  # a whole hour
Row = tuple[str, str, float, float]  # device, metric, ts, value


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Iterator[sqlite3.Connection]:
    """One migrated store connection per backend for the module (each test starts with :func:`reset`)."""
    with tempfile.TemporaryDirectory() as d, template_copy(request, request.param) as dsn:
        conn = open_migrated(dsn or Path(d) / "t.db")
        yield conn
        conn.close()


def reset(conn: sqlite3.Connection) -> None:
    tables = ("telemetry", "telemetry_series", "telemetry_minute", "telemetry_hour", "telemetry_blocks")
    if dialect_of(conn).name == "postgresql":  # the ids start again at 1, as SQLite's rowids do in an empty table
        conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")
    for t in tables:
        conn.execute(f"DELETE FROM {t}")
    conn.execute("UPDATE telemetry_rollup_state SET rolled_up_to = 0")


def insert(conn: sqlite3.Connection, rows: list[Row]) -> None:
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO telemetry (device_id, name, ts, value) VALUES (?,?,?,?)", rows)
    conn.execute("COMMIT")


def expected(rows: list[Row], res: int) -> dict[tuple[str, str, int], Agg]:
    groups: dict[tuple[str, str, int], list[float]] = {}
    for d, m, ts, v in rows:
        groups.setdefault((d, m, int(ts // res) * res), []).append(v)
    return {k: Agg.of(vs) for k, vs in groups.items()}


def stored(conn: sqlite3.Connection, table: str) -> dict[tuple[str, str, int], Agg]:
    return {(r[0], r[1], r[2]): Agg(r[3], r[4], r[5], r[6]) for r in conn.execute(
        f"SELECT s.device_id, s.name, r.ts, r.count, r.sum, r.min, r.max FROM {table} r "
        f"JOIN telemetry_series s ON s.id = r.series_id")}


def assert_same(got: Agg, want: Agg) -> None:
    assert (got.count, got.min, got.max) == (want.count, want.min, want.max)
    assert math.isclose(got.sum, want.sum, rel_tol=1e-9, abs_tol=1e-6)
    assert math.isclose(got.avg, want.avg, rel_tol=1e-9, abs_tol=1e-6)


values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
points = st.lists(st.tuples(st.sampled_from(["d1", "d2", "d3"]), st.sampled_from(["cpu", "temp"]),
                            st.floats(min_value=T0, max_value=T0 + 3 * 3600 - 0.001), values),
                  min_size=1, max_size=300)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=points, cuts=st.lists(st.integers(0, 300), max_size=4), batch=st.integers(1, 120))
def test_rollup_of_rollups_equals_rollup_of_raw(db: sqlite3.Connection, rows: list[Row], cuts: list[int],
                                                batch: int) -> None:
    """Points arrive in several commits and are rolled up in small batches, late points included:
    every minute and every hour (a merge of minutes) equals the aggregate of its raw points."""
    reset(db)
    bounds = sorted({0, len(rows), *(c % (len(rows) + 1) for c in cuts)})
    for a, b in itertools.pairwise(bounds):
        insert(db, rows[a:b])
        rollups.roll_up_sync(db, batch=batch)
    for res, table in ((60, "telemetry_minute"), (3600, "telemetry_hour")):
        want, got = expected(rows, res), stored(db, table)
        assert got.keys() == want.keys()
        for k in want:
            assert_same(got[k], want[k])
    # And the hours are exactly what merging the stored minutes gives.
    merged: dict[tuple[str, str, int], Agg] = {}
    for (d, m, ts), a in stored(db, "telemetry_minute").items():
        k = (d, m, ts // 3600 * 3600)
        merged[k] = a if k not in merged else merged[k].merge(a)
    for k, a in stored(db, "telemetry_hour").items():
        assert_same(a, merged[k])
    assert storage.watermark(db) == db.execute("SELECT MAX(id) FROM telemetry").fetchone()[0]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=points, level=st.sampled_from(["raw", "minute", "hour"]), rolled=st.integers(0, 300),
       a=st.floats(0, 1), b=st.floats(0, 1), max_points=st.integers(1, 400),
       devices=st.sampled_from([["d1"], ["d1", "d2"], ["d1", "d2", "d3"]]))
def test_query_downsamples_within_max_points_and_covers_the_range(
        db: sqlite3.Connection, rows: list[Row], level: rollups.Level, rolled: int, a: float, b: float,
        max_points: int, devices: list[str]) -> None:
    """Whatever part is rolled up yet, a query sees every point of the range exactly once, in at most
    max_points buckets."""
    reset(db)
    split = rolled % (len(rows) + 1)
    insert(db, rows[:split])
    rollups.roll_up_sync(db)
    insert(db, rows[split:])  # the tail, not yet rolled up
    start = T0 - 100 + min(a, b) * (3 * 3600 + 200)
    end = start + 1 + abs(a - b) * (3 * 3600)
    plan = rollups.plan(level, start, end, max_points)
    got = rollups.query(db, devices, "cpu", plan, start)

    assert len(got) <= max_points
    assert plan.buckets() <= max_points
    assert [g.ts for g in got] == sorted({g.ts for g in got})
    if level == "raw":
        inside = [r for r in rows if r[0] in devices and r[1] == "cpu" and start <= r[2] < end]
        assert plan.origin == start
    else:
        res = rollups.RESOLUTION[level]
        assert plan.origin <= start < plan.origin + res and plan.origin % res == 0
        inside = [r for r in rows if r[0] in devices and r[1] == "cpu" and plan.origin <= r[2] // res * res < end]
    assert sum(g.count for g in got) == len(inside)
    for g in got:
        assert plan.origin <= g.ts < end and g.count > 0 and g.min <= g.avg + 1e-6 and g.avg <= g.max + 1e-6
        assert g.ts + plan.width > start
    if inside:
        assert min(g.min for g in got) == min(r[3] for r in inside)
        assert max(g.max for g in got) == max(r[3] for r in inside)
        total = math.fsum(g.avg * g.count for g in got)
        assert math.isclose(total, math.fsum(r[3] for r in inside), rel_tol=1e-9, abs_tol=1e-3)


def test_query_buckets_are_the_averages_of_their_points(db: sqlite3.Connection) -> None:
    reset(db)
    insert(db, [("d1", "cpu", T0 + i * 10, float(i)) for i in range(60)])  # 10 minutes, one point per 10 s
    rollups.roll_up_sync(db)
    plan = rollups.plan("minute", T0, T0 + 600, 5)
    got = rollups.query(db, ["d1"], "cpu", plan, T0)
    assert plan.width == 120
    assert [(g.ts, g.count, g.min, g.max, g.avg) for g in got] == [
        (T0 + 120 * k, 12, 12 * k, 12 * k + 11, 12 * k + 5.5) for k in range(5)]
    raw = rollups.query(db, ["d1"], "cpu", rollups.plan("raw", T0, T0 + 600, 600), T0)
    assert [g.avg for g in raw] == [float(i) for i in range(60)] and all(g.count == 1 for g in raw)


def test_level_follows_range_resolution_and_retention() -> None:
    keep = Retention(raw_days=7, minute_days=30, hour_days=400)
    now = T0
    assert rollups.choose_level(now - 3600, now, 500, now, keep) == "raw"
    assert rollups.choose_level(now - 3600, now, 30, now, keep) == "minute"  # 2-minute buckets suffice
    assert rollups.choose_level(now - 86400, now, 10_000, now, keep) == "minute"  # raw only up to 6 h
    assert rollups.choose_level(now - 8 * 86400, now - 8 * 86400 + 600, 500, now, keep) == "minute"  # raw gone
    assert rollups.choose_level(now - 86400, now, 96, now, keep) == "minute"  # 15-minute buckets
    assert rollups.choose_level(now - 86400, now, 95, now, keep) == "hour"
    assert rollups.choose_level(now - 7 * 86400, now, 500, now, keep) == "hour"
    assert rollups.choose_level(now - 40 * 86400, now - 39 * 86400, 10_000, now, keep) == "hour"


def test_raw_queries_scan_only_the_blocks_of_their_range(db: sqlite3.Connection) -> None:
    reset(db)
    for hour in range(3):
        insert(db, [("d1", "cpu", T0 + hour * 3600 + i, 1.0) for i in range(100)])
        rollups.roll_up_sync(db)
    insert(db, [("d1", "cpu", T0 + 4 * 3600, 1.0)])
    ranges = rollups.raw_ranges(db, T0 + 3600, T0 + 3700)
    assert ranges[0] == (100, 200) and ranges[-1] == (300, None)
    # A late point (old ts) in a later block widens that block, so it is still found.
    insert(db, [("d1", "cpu", T0 + 3650.5, 7.0)])
    rollups.roll_up_sync(db)
    got = rollups.query(db, ["d1"], "cpu", rollups.plan("raw", T0 + 3600, T0 + 3700, 200), T0 + 3600)
    assert sum(g.count for g in got) == 101 and max(g.max for g in got) == 7.0


def test_retention_deletes_old_points_keeps_rollups_and_ids_keep_growing(db: sqlite3.Connection) -> None:
    reset(db)
    day = 86400
    insert(db, [("d1", "cpu", T0 + i * 60, 1.0) for i in range(100)])  # "old"
    rollups.roll_up_sync(db)
    insert(db, [("d1", "cpu", T0 + 8 * day + i, 2.0) for i in range(50)])  # "new"
    rollups.roll_up_sync(db)
    raw_cut = T0 + 8 * day - 1
    bound = rollups.raw_prune_bound(db, raw_cut)
    assert bound == 100
    deleted = 0
    while n := _in_txn(db, lambda: rollups.prune_raw_step(db, bound)):
        deleted += n
    assert deleted == 100
    assert tuple(db.execute("SELECT MIN(value), COUNT(*) FROM telemetry").fetchone()) == (2.0, 50)
    # Rollups outlive raw points: the old range is still answered, from the minutes.
    old = rollups.query(db, ["d1"], "cpu", rollups.plan("minute", T0, T0 + 6000, 100), T0)
    assert sum(g.count for g in old) == 100
    # Everything rolled up and old: all rows but the newest go, so new ids stay above the watermark.
    bound = rollups.raw_prune_bound(db, T0 + 100 * day)
    while _in_txn(db, lambda: rollups.prune_raw_step(db, bound)):
        pass
    assert db.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0] == 1
    insert(db, [("d2", "cpu", T0 + 9 * day, 5.0)])
    assert rollups.roll_up_sync(db) == 1
    assert stored(db, "telemetry_minute")[("d2", "cpu", int(T0 + 9 * day))].count == 1
    # Rollup retention goes series by series (here one per transaction); then empty series are forgotten.
    deleted = {"minute": 0, "hour": 0}
    for level, cut in (("minute", T0 + 8 * day + 30), ("hour", T0 + 100 * day)):
        after: int | None = 0
        while after is not None:
            n, after = _in_txn(db, lambda lv=level, c=cut, a=after: rollups.prune_rollups_step(db, lv, c, a, 1))
            deleted[level] += n
    assert deleted == {"minute": 101, "hour": 4}  # d2's minute (day 9) is younger than the minute cutoff
    assert _in_txn(db, lambda: storage.forget_empty_series(db)) == 1  # d1: nothing left
    assert [r[0] for r in db.execute("SELECT device_id FROM telemetry_series")] == ["d2"]


def _in_txn(conn: sqlite3.Connection, fn: Any) -> Any:
    with transaction(conn):
        return fn()


def test_migration_keeps_existing_points_and_their_order(tmp_path: Path) -> None:
    """A database with raw points from before the rollups gets them rolled up after the upgrade."""
    older = tmp_path / "migrations"
    older.mkdir()
    for p in sorted(data_dir("migrations").glob("*.sql")):
        if int(p.name[:4]) < 4:
            (older / p.name).write_text(p.read_text())
    conn = connect(tmp_path / "old.db")
    migrate(conn, older)
    conn.executemany("INSERT INTO telemetry (device_id, name, ts, value) VALUES (?,?,?,?)",
                     [("d1", "cpu", T0 + i, float(i)) for i in range(10)])
    migrate(conn)
    assert [tuple(r) for r in conn.execute("SELECT id, value FROM telemetry ORDER BY id")] == [
        (i + 1, float(i)) for i in range(10)]
    assert rollups.roll_up_sync(conn) == 10
    assert stored(conn, "telemetry_minute")[("d1", "cpu", int(T0))].count == 10
    conn.close()


# --- through the fleet: intake → background rollups → TelemetryService.Query --------------------------

def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.both_backends
def test_rollups_task_and_query_service(client, fleet, admin_key, viewer_key) -> None:  # type: ignore[no-untyped-def]
    a = active_device(client, admin_key)
    b = active_device(client, admin_key)
    for d, site in ((a, "north"), (b, "north")):
        assert rpc(client, "DeviceAdminService", "UpdateDevice", {"id": d.device_id, "set_tags": {"site": site}},
                   key=admin_key).status_code == 200
    hour = math.floor(time.time() / 3600) * 3600 - 3600  # the previous hour: every level has it

    async def push() -> None:
        await fleet.telemetry.add(a.device_id, [Point(name="temp", ts=hour + 600 + i * 60, value=10.0 + i)
                                                for i in range(10)])
        await fleet.telemetry.add(b.device_id, [Point(name="temp", ts=hour + 600 + i * 60, value=100.0)
                                                for i in range(10)])

    asyncio.run(push())
    body = {"device": a.device_id, "metric": "temp", "start": _iso(hour), "end": _iso(hour + 3600), "max_points": 3600}
    r = rpc(client, "TelemetryService", "Query", body, key=viewer_key)
    assert r.status_code == 200, r.text
    out = r.json()  # raw, nothing rolled up yet
    assert out["resolution"] == "raw" and out["device_count"] == 1 and out["bucket_seconds"] == 1
    assert [(p["ts"], p["avg"]) for p in out["points"]] == [(hour + 600 + i * 60, 10.0 + i) for i in range(10)]
    assert asyncio.run(fleet.rollups.roll_up()) == 20
    out = rpc(client, "TelemetryService", "Query", {**body, "max_points": 1}, key=viewer_key).json()
    assert out["resolution"] == "hour"
    assert out["points"] == [{"ts": hour, "avg": 14.5, "min": 10.0, "max": 19.0, "count": 10}]
    r = rpc(client, "TelemetryService", "Query", {**body, "device": "", "tags": {"site": "north"}, "max_points": 60},
            key=viewer_key)
    out = r.json()
    assert out["resolution"] == "minute" and out["device_count"] == 2
    assert len(out["points"]) == 10 and all(p["count"] == 2 for p in out["points"])
    assert out["points"][0] == {"ts": hour + 600, "min": 10.0, "max": 100.0, "avg": 55.0, "count": 2}
    r = rpc(client, "TelemetryService", "ListMetrics", {"device": a.device_id}, key=viewer_key)
    assert r.json() == {"metrics": ["temp"], "total": 1}


@pytest.mark.parametrize(("body", "fragment"), [
    ({"metric": "temp"}, "give either device, or tags"),
    ({"device": "x", "tags": {"a": "b"}, "metric": "temp"}, "give either device, or tags"),
    ({"device": "nope", "metric": "temp"}, "no device 'nope'"),
    ({"tags": {"a": "b"}, "metric": "9bad name"}, "metric '9bad name' must be 1-128 letters"),
    ({"tags": {"a": "b"}, "metric": "t", "max_points": 20000}, "max_points must be 1..10000"),
    ({"tags": {"a": "b"}, "metric": "t", "start": "2025-01-02T00:00:00Z", "end": "2025-01-01T00:00:00Z"},
     "start must be before end"),
])
def test_bad_queries_say_what_is_wrong(client, viewer_key, body: dict[str, Any], fragment: str) -> None:  # type: ignore[no-untyped-def]
    r = rpc(client, "TelemetryService", "Query", body, key=viewer_key)
    assert r.status_code in (400, 404) and fragment in r.json()["message"], r.text
