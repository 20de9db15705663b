"""The writer's per-minute sums (sums.MinuteSums): the rollups they make equal a recomputation over every point
stored, whatever happened in between — restarts, refused batches, failed inserts, passes racing inserts, retention,
dropped sums; and they are what the pass merges (the rows are not read again) until a restart empties them."""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fleetd.core.config import Settings
from fleetd.core.errors import InvalidArgument
from fleetd.fleet import Fleet
from fleetd.store.database import DB_NAME, open_connection, transaction
from fleetd.telemetry import rollups, storage
from fleetd.telemetry.intake import Point
from fleetd.telemetry.rollups import HOUR, MINUTE, Agg
from tests.conftest import template_copy

DEVICES = ("dev-a", "dev-b", "dev-c")
METRICS = ("cpu", "temp", "boom")  # points named "boom" make their group's insert fail (a trigger)
Key = tuple[str, str, int]


class Where:
    """A server's data dir and its database: the SQLite file in it, or a PostgreSQL DSN."""

    def __init__(self, data: Path, dsn: str | None = None) -> None:
        self.data, self.dsn = data, dsn

    def fleet(self) -> Fleet:
        """A server's Fleet (a new one on the same store: a restart), with the failing-insert trigger."""
        f = Fleet(Settings(data_dir=str(self.data), tls=False, mdns=False, host="127.0.0.1", port=8420,
                           database=self.dsn or ""))
        for sql in BOOM_PG if self.dsn else BOOM_SQLITE:
            f.store.write_sync(lambda c, sql=sql: c.execute(sql))
        return f

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """Run ``sql`` on a connection of its own, behind the server's back, committed. → its rows."""
        conn = open_connection(self.dsn or self.data / DB_NAME)
        try:
            with transaction(conn):
                cur = conn.execute(sql, args)
                return [tuple(r) for r in cur.fetchall()] if cur.description else []
        finally:
            conn.close()


BOOM_SQLITE = ("CREATE TRIGGER IF NOT EXISTS boom BEFORE INSERT ON telemetry WHEN NEW.name = 'boom' "
               "BEGIN SELECT RAISE(ABORT, 'boom'); END",)
BOOM_PG = ("CREATE OR REPLACE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.name = 'boom' "
           "THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$",
           "CREATE OR REPLACE TRIGGER boom BEFORE INSERT ON telemetry FOR EACH ROW EXECUTE FUNCTION boom()")


def expected(points: list[tuple[str, str, float, float]], res: int) -> dict[Key, Agg]:
    groups: dict[Key, list[float]] = {}
    for d, m, ts, v in points:
        groups.setdefault((d, m, int(ts / res) * res), []).append(v)
    return {k: Agg.of(vs) for k, vs in groups.items()}


def stored(where: Where, level: str) -> dict[Key, Agg]:
    return {(d, m, ts): Agg(n, s, lo, hi) for d, m, ts, n, s, lo, hi in where.execute(
        f"SELECT s.device_id, s.name, r.ts, r.count, r.sum, r.min, r.max FROM telemetry_{level} r "
        "JOIN telemetry_series s ON s.id = r.series_id")}


def assert_rollups_are(data: Where, points: list[tuple[str, str, float, float]]) -> None:
    for level, res in (("minute", MINUTE), ("hour", HOUR)):
        want, got = expected(points, res), stored(data, level)
        assert got.keys() == want.keys(), level
        for k, w in want.items():
            g = got[k]
            assert (g.count, g.min, g.max) == (w.count, w.min, w.max), (level, k)
            assert math.isclose(g.sum, w.sum, rel_tol=1e-9, abs_tol=1e-6), (level, k)


NOW = time.time()
OLD = NOW - 9 * 86400  # past the raw retention (7 days), within the minute rollups' (30)
point = st.builds(Point, name=st.sampled_from(METRICS[:2]), value=st.integers(-1000, 1000).map(float),
                  ts=st.one_of(st.just(0.0), st.integers(-600, 0).map(lambda s: NOW + s * 7.3),
                               st.integers(0, 300).map(lambda s: OLD + s * 11.0)))
push = st.tuples(st.sampled_from(DEVICES), st.lists(point, min_size=1, max_size=12),
                 st.sampled_from(["ok", "ok", "ok", "refused", "fails"]))
step = st.one_of(st.tuples(st.just("group"), st.lists(push, min_size=1, max_size=4), st.booleans()),
                 st.tuples(st.sampled_from(["roll", "restart", "prune", "forget_sums", "foreign_insert"])),
                 st.tuples(st.just("offline_roll"), st.integers(1, 7)))


_P = [Point(name="cpu", value=float(v), ts=NOW - 10 * v) for v in range(5)]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                               HealthCheck.function_scoped_fixture])
# Rows inserted past the sums' back: between two groups, and after the last one; a pass from the rows ending inside
# a chunk of sums.
@example(steps=[("group", [("dev-a", _P, "ok")], False), ("foreign_insert",), ("group", [("dev-b", _P, "ok")], False)],
         chunk_keys=50_000, max_keys=200_000)
@example(steps=[("group", [("dev-a", _P, "ok")], False), ("foreign_insert",)], chunk_keys=50_000, max_keys=200_000)
@example(steps=[("group", [("dev-a", _P, "ok")], False), ("offline_roll", 2), ("group", [("dev-b", _P, "ok")], True)],
         chunk_keys=50_000, max_keys=200_000)
@given(steps=st.lists(step, max_size=14), chunk_keys=st.sampled_from([2, 5, 50_000]),
       max_keys=st.sampled_from([6, 200_000]))
def test_rollups_equal_a_recomputation_over_every_point_stored(request: pytest.FixtureRequest, backend: str,
                                                               steps: list[tuple[Any, ...]], chunk_keys: int,
                                                               max_keys: int) -> None:
    """On PostgreSQL too: its COPY, its raw-insert lock, its day partitions (made at start, dropped by "prune")."""
    with tempfile.TemporaryDirectory() as d, template_copy(request, backend) as dsn:
        data = Where(Path(d) / "data", dsn)
        kept: list[tuple[str, str, float, float]] = []  # every point acknowledged as stored

        def start() -> Fleet:
            f = data.fleet()
            if dsn:  # replicas keep no sums: the rollup job reads the rows (docs/telemetry.md, "On PostgreSQL")
                assert f.telemetry.sums is None and f.rollups.sums is None
                return f
            assert f.telemetry.sums is not None and f.rollups.sums is f.telemetry.sums
            f.telemetry.sums.chunk_keys, f.telemetry.sums.max_keys = chunk_keys, max_keys
            return f

        async def main() -> None:
            fleet = start()
            try:
                for s in steps:
                    if s[0] == "group":  # pushes arriving together (one group commit), maybe during a pass
                        calls = []
                        for device, pts, how in s[1]:
                            if how == "refused":
                                pts = [*pts, Point(name="cpu", value=math.nan)]
                            elif how == "fails":
                                pts = [*pts, Point(name="boom", value=1.0)]
                            calls.append(fleet.telemetry.add(device, pts))
                        if s[2]:
                            calls.append(fleet.rollups.roll_up())
                        results = await asyncio.gather(*calls, return_exceptions=True)
                        for (device, pts, how), r in zip(s[1], results, strict=False):
                            if how == "refused":
                                assert isinstance(r, InvalidArgument)
                            elif not isinstance(r, BaseException):
                                kept.extend((device, p.name, p.ts, p.value) for p in pts)
                            else:
                                assert "boom" in str(r), r
                    elif s[0] == "roll":
                        await fleet.rollups.roll_up()
                    elif s[0] == "prune":
                        await fleet.rollups.prune()
                    elif s[0] == "foreign_insert":  # a row the sums never see, between two groups
                        row = ("dev-x", "cpu", NOW - 5, 7.0)
                        data.execute("INSERT INTO telemetry (device_id, name, ts, value) VALUES (?,?,?,?)", row)
                        kept.append(row)
                    elif s[0] == "offline_roll":  # another connection rolls up from the rows, past where sums start
                        conn = open_connection(data.dsn or data.data / DB_NAME)
                        try:
                            with transaction(conn):
                                rollups.roll_up_step(conn, s[1])
                        finally:
                            conn.close()
                    elif s[0] == "forget_sums":
                        if fleet.telemetry.sums is not None:
                            fleet.telemetry.sums.clear()
                    else:  # a restart: the sums are gone, the rows past the watermark stay
                        fleet.close()
                        fleet = start()
                await fleet.rollups.roll_up()
                assert fleet.store.read_sync(storage.rollup_lag) == 0
            finally:
                fleet.close()

        asyncio.run(main())
        assert_rollups_are(data, _with_stored_times(data, kept))


def _with_stored_times(data: Where, kept: list[tuple[str, str, float, float]]) -> list[tuple[str, str, float, float]]:
    """``kept``, the points sent without ts (0) at the time the server gave them: the recent raw rows (retention
    keeps them) less those sent with a ts."""
    recent = Counter(data.execute("SELECT device_id, name, ts, value FROM telemetry WHERE ts > ?", (NOW - 86400,)))
    timed = [k for k in kept if k[2]]
    received = recent - Counter(k for k in timed if k[2] > NOW - 86400)
    assert Counter((d, m, v) for d, m, _, v in received.elements()) == Counter(
        (d, m, v) for d, m, ts, v in kept if not ts)
    return timed + list(received.elements())


@pytest.mark.parametrize("backend", ["sqlite"])  # on PostgreSQL there are no sums (replicas): the rows are read
def test_the_pass_merges_the_sums_and_reads_the_rows_only_for_ids_they_do_not_cover(
        request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> None:
    """Proof by tampering: a raw row changed behind the server's back shows in the rollups only when the pass had
    to read the rows (after a restart emptied the sums), never when it merged the sums."""
    with template_copy(request, backend) as dsn:
        data = Where(tmp_path / "data", dsn)
        _tampered_pushes(data)
        (got,) = stored(data, "minute").values()
    assert (got.count, got.sum, got.min, got.max) == (3, 2006.0, 1.0, 2002.0)


def _tampered_pushes(data: Where) -> None:
    """Push 1 and 2 (then a restart), then 3, each changed on the side by 1000 once stored."""
    def tamper() -> None:
        data.execute("UPDATE telemetry SET value = value + 1000 WHERE id > (SELECT rolled_up_to "
                     "FROM telemetry_rollup_state)")

    async def pushed(fleet: Fleet, value: float, roll: bool) -> None:
        await fleet.telemetry.add("dev-a", [Point(name="cpu", value=value, ts=NOW - 30)])
        tamper()
        if roll:
            await fleet.rollups.roll_up()

    fleet = data.fleet()
    try:
        asyncio.run(pushed(fleet, 1.0, roll=True))  # from the sums: 1, not 1001
        asyncio.run(pushed(fleet, 2.0, roll=False))  # stored, not rolled up: then the server stops
    finally:
        fleet.close()
    fleet = data.fleet()
    try:
        # 2 from the rows (tampered twice: 2002), then 3 from the sums (3, not 1003)
        asyncio.run(pushed(fleet, 3.0, roll=True))
    finally:
        fleet.close()
