"""Raw telemetry through the intake, the rollup job and retention, on both backends; on PostgreSQL the raw table's
day partitions (telemetry/partitions.py): made ahead at start, a point without its day's partition stored all the
same, retention by dropping whole rolled-up partitions."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fleetd.store.database import Store, transaction
from fleetd.telemetry import partitions, rollups, storage
from fleetd.telemetry.intake import Point, TelemetryIntake
from fleetd.telemetry.rollups import DAY, Retention, Rollups
from fleetd.telemetry.sums import MinuteSums

pytestmark = pytest.mark.both_backends

RETENTION = Retention(raw_days=7, minute_days=30, hour_days=400)
FAR_PAST = 978_307_200.0  # 2001-01-01: older than any partition


@pytest.fixture
def pg_store(postgres_server: Any, pg_schema: str) -> Iterator[Store]:
    """A migrated store on PostgreSQL only: for what SQLite has no counterpart of (partitions, several writers)."""
    name = postgres_server.create_database(template=pg_schema)
    store = Store(postgres_server.dsn(name))
    yield store
    store.close()
    postgres_server.drop_database(name)


def is_pg(store: Store) -> bool:
    return store.dsn is not None


def rows(store: Store, where: str = "true", args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """(id, device, value, ts) of the raw points, by id (another connection: what is committed)."""
    return [tuple(r) for r in store.read_sync(lambda c: c.execute(
        f"SELECT id, device_id, value, ts FROM telemetry WHERE {where} ORDER BY id", args).fetchall())]


def counts(store: Store, level: str = "minute") -> dict[str, int]:
    """Points per device in the minute (hour) rollups."""
    return {r[0]: int(r[1]) for r in store.read_sync(lambda c: c.execute(
        f"SELECT s.device_id, SUM(m.count) FROM telemetry_{level} m JOIN telemetry_series s ON s.id = m.series_id "
        "GROUP BY s.device_id").fetchall())}


def partition_of(store: Store, point_id: int) -> str:
    """The partition holding the raw point ``point_id`` (PostgreSQL)."""
    return str(store.read_sync(lambda c: c.execute(
        "SELECT tableoid::regclass::text FROM telemetry WHERE id = ?", (point_id,)).fetchone()[0]))


def day_partitions(store: Store, table: str = "telemetry") -> list[str]:
    return [name for name, _, _ in store.read_sync(lambda c: storage.partitions_of(c, table))]


def wanted(table: str, now: float, keep_days: float) -> list[str]:
    return [partitions.partition_name(table, d) for d in partitions.wanted_days(now, keep_days)]


def series(device: str, start: float, n: int, value: float = 1.0, step: float = 1.0) -> tuple[str, list[Point]]:
    return device, [Point(name="cpu", value=value, ts=start + i * step) for i in range(n)]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def job(store: Store, clock: Callable[[], float], intake: TelemetryIntake) -> Rollups:
    return Rollups(store, RETENTION, every=3600, clock=clock, sums=intake.sums)


def test_retention_drops_what_is_past_it_and_keeps_the_newer_points_and_the_rollups(store_backend: Store) -> None:
    store, now = store_backend, time.time()
    retention = Retention(raw_days=2, minute_days=5, hour_days=400)
    clock = Clock(now - 10 * DAY)  # the job starts 10 days ago: it makes the partitions of then
    intake = TelemetryIntake(store, sums=MinuteSums())
    old_day = partitions.day_start(now - 10 * DAY)

    async def main() -> dict[str, int]:
        job_ = Rollups(store, retention, every=3600, clock=clock, sums=intake.sums)
        await job_.start()
        try:
            await intake.add(*series("d-old", old_day + 3600, 120, 1.0))  # two minutes, ten days ago
            await job_.roll_up()
            clock.now = now
            await job_.ensure_partitions()
            await intake.add(*series("d-mid", now - 3 * DAY, 100, 2.0))  # past raw retention, within the minutes'
            await job_.roll_up()
            await intake.add(*series("d-new", now - 3600, 100, 3.0))
            await intake.add(*series("d-ahead", now + 20 * 3600, 5, 4.0))  # a clock running ahead: allowed
            return await job_.prune()
        finally:
            await job_.stop()

    result = asyncio.run(main())
    # Raw points past their retention are gone, the newer ones intact; so with the minutes; the hours keep all.
    assert [(r[1], r[2]) for r in rows(store)] == [("d-new", 3.0)] * 100 + [("d-ahead", 4.0)] * 5
    assert counts(store, "minute") == {"d-mid": 100, "d-new": 100, "d-ahead": 5}
    assert counts(store, "hour") == {"d-old": 120, "d-mid": 100, "d-new": 100, "d-ahead": 5}
    if is_pg(store):
        # Whole partitions went (raw: the old day and the empty ones about it; minutes: the old day's and others).
        # d-mid's raw points had no partition (older than the raw cutoff's day): the DEFAULT one's were deleted.
        assert result["raw"] == 100 and result["raw_partitions"] >= 1 and result["minute_partitions"] >= 1
        assert result["minute"] == 0  # no minute row deleted one by one
        assert day_partitions(store) == wanted("telemetry", now, retention.raw_days)
        assert day_partitions(store, "telemetry_minute") == wanted("telemetry_minute", now, retention.minute_days)
        ahead = rows(store, "device_id = ?", ("d-ahead",))[0][0]
        assert partition_of(store, ahead) == partitions.partition_name("telemetry",
                                                                       partitions.day_start(now + 20 * 3600))
    else:
        assert (result["raw"], result["minute"]) == (220, 2)


def test_a_point_with_no_partition_of_its_day_is_stored_and_moves_to_it_when_that_is_made(
        store_backend: Store) -> None:
    """No partition made yet (the job has not started): far in the past, now and ahead, every point is stored
    (PostgreSQL: in the DEFAULT partition); making the partitions moves each to its day's, keeping its id, so that
    it is rolled up exactly once."""
    store, now = store_backend, time.time()
    intake = TelemetryIntake(store, sums=MinuteSums())
    clock = Clock(now)

    async def main() -> tuple[list[tuple[Any, ...]], list[str]]:
        await intake.add(*series("d-past", FAR_PAST, 3, 1.0))
        await intake.add(*series("d-now", now - 60, 4, 2.0))
        await intake.add(*series("d-ahead", now + 23 * 3600, 2, 3.0))
        job_ = job(store, clock, intake)
        await job_.roll_up()
        before = rows(store)
        made = await job_.ensure_partitions()
        await intake.add(*series("d-now", now, 1, 2.0))
        await job_.roll_up()
        return before, made

    before, made = asyncio.run(main())
    after = rows(store)
    assert len(before) == 9 and after[:9] == before and len(after) == 10  # same ids, same points
    assert counts(store) == {"d-past": 3, "d-now": 5, "d-ahead": 2}
    if is_pg(store):
        assert made == (wanted("telemetry", now, RETENTION.raw_days)
                        + wanted("telemetry_minute", now, RETENTION.minute_days))
        where = {r[1]: partition_of(store, r[0]) for r in after}
        assert where == {"d-past": "telemetry_default",
                         "d-now": partitions.partition_name("telemetry", partitions.day_start(now)),
                         "d-ahead": partitions.partition_name("telemetry", partitions.day_start(now + 23 * 3600))}


def test_after_a_restart_the_partitions_are_there_and_points_are_rolled_up_once(store_location: Any) -> None:
    now = time.time()
    pushed = 0
    for run in range(2):
        store = Store(store_location)
        try:
            intake = TelemetryIntake(store, sums=MinuteSums())
            job_ = job(store, Clock(now), intake)

            async def main(job_: Rollups = job_, intake: TelemetryIntake = intake, run: int = run) -> None:
                await job_.start()
                try:
                    await intake.add(*series("d1", now - 600 + run * 60, 10))
                    await job_.roll_up()
                finally:
                    await job_.stop()

            made_before = day_partitions(store) if store.dsn else []
            asyncio.run(main())
            pushed += 10
            assert counts(store) == {"d1": pushed}
            if store.dsn is not None:
                want = wanted("telemetry", now, RETENTION.raw_days)
                assert day_partitions(store) == want
                assert made_before == (want if run else [])  # made at the first start, there at the next
        finally:
            store.close()


def test_a_partition_with_points_not_rolled_up_is_kept_until_they_are(pg_store: Store) -> None:
    """(SQLite's retention deletes only ids below the watermark: test_rollups.py's retention test.)"""
    store = pg_store
    now = time.time()
    old_day = partitions.day_start(now - 10 * DAY)
    intake = TelemetryIntake(store)
    store.write_sync(lambda c: partitions.ensure(c, now - 10 * DAY, RETENTION.raw_days, RETENTION.minute_days))
    asyncio.run(intake.add(*series("d-old", old_day + 60, 5)))
    cutoff = now - RETENTION.raw_days * DAY
    # The empty days about it go; its own, with points not rolled up yet, stays.
    assert store.write_sync(lambda c: partitions.drop_before(c, "telemetry", cutoff))[0] == 9
    assert partitions.partition_name("telemetry", old_day) in day_partitions(store) and len(rows(store)) == 5
    store.write_sync(lambda c: rollups.roll_up_step(c))
    assert store.write_sync(lambda c: partitions.drop_before(c, "telemetry", cutoff)) == (1, 0)
    assert partitions.partition_name("telemetry", old_day) not in day_partitions(store) and rows(store) == []


def test_a_failed_copy_fails_exactly_its_callers_and_the_ids_after_it_are_rolled_up(pg_store: Store) -> None:
    """The PostgreSQL twin of test_telemetry_intake.py's failed-insert test (held there by a SQLite function):
    a trigger fails the group's COPY; its callers hear so, nothing of it is stored, the next group commits, and
    the rollups count exactly what was stored across the gap in the ids."""
    store = pg_store
    store.write_sync(lambda c: c.execute(
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.name = 'boom' THEN "
        "RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$"))
    store.write_sync(lambda c: c.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON telemetry FOR EACH ROW EXECUTE FUNCTION boom()"))
    intake = TelemetryIntake(store, sums=MinuteSums())
    now = time.time()

    async def main() -> None:
        assert await intake.add("dev-a", [Point(name="ok", value=1, ts=now)]) == 1
        release = threading.Event()
        held = store.submit_write(lambda c: release.wait(10))
        good = asyncio.create_task(intake.add("dev-b", [Point(name="ok", value=2, ts=now)] * 3))
        bad = asyncio.create_task(intake.add("dev-c", [Point(name="boom", value=3, ts=now)]))
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.wrap_future(held)
        for t in (good, bad):
            with pytest.raises(Exception, match="boom"):
                await asyncio.wait_for(t, 5)
        assert await intake.add("dev-d", [Point(name="ok", value=4, ts=now)] * 2) == 2
        job_ = job(store, Clock(now), intake)
        await job_.roll_up()

    asyncio.run(main())
    assert [(r[1], r[2]) for r in rows(store)] == [("dev-a", 1.0), ("dev-d", 4.0), ("dev-d", 4.0)]
    assert counts(store) == {"dev-a": 1, "dev-d": 2}
    assert intake.points_total == 3
    ids = [r[0] for r in rows(store)]
    assert ids[1] - ids[0] > 1 and ids[2] - ids[1] == 1  # the failed COPY used ids; one COPY's rows follow


def test_each_group_gets_consecutive_ids_in_the_order_pushed(store_backend: Store) -> None:
    """Each group's rows get consecutive ids in the batches' order (the per-minute sums rely on it), on both."""
    store = store_backend
    intake = TelemetryIntake(store)

    async def main() -> None:
        await asyncio.gather(*(intake.add(f"dev-{i}", [Point(name="m", value=float(i * 1000 + j)) for j in range(50)])
                               for i in range(40)))

    asyncio.run(main())
    got = rows(store)
    assert len(got) == 2000 and [r[0] for r in got] == list(range(got[0][0], got[0][0] + 2000))
    assert [r[2] for r in got] == sorted(r[2] for r in got)  # batch by batch, point by point, as pushed


def test_the_insert_lock_orders_inserts_of_several_connections(pg_store: Store) -> None:
    """Two writers (as two replicas' would be; SQLite has one): with the lock, a connection's insert waits for the
    other's commit, so that ids commit in increasing order."""
    store = pg_store
    other = store.connect(readonly=False)
    try:
        with transaction(other):
            other.execute(f"SELECT pg_advisory_xact_lock({storage.RAW_INSERT_LOCK})")
            job_ = store.submit_write(lambda c: storage.copy_point_batches(c, [("d", time.time(),
                                                                                  [Point(name="x", value=1)])]),
                                      transactional=False)
            time.sleep(0.2)
            assert not job_.done()  # waiting for the lock
            other.execute("INSERT INTO telemetry (device_id, name, ts, value) VALUES ('o', 'x', ?, 2)", (time.time(),))
        n, top = job_.result(10)
    finally:
        other.close()
    assert n == 1 and [(r[0], r[1]) for r in rows(store)] == [(top - 1, "o"), (top, "d")]



def test_a_copy_that_cannot_get_the_insert_lock_fails_and_leaves_the_writer_usable(pg_store: Store) -> None:
    """BEGIN and the lock go as one query: when the lock times out, the transaction it opened is rolled back, so
    the writer's next group is stored (not refused as part of an aborted transaction)."""
    import psycopg

    store = pg_store
    store.write_sync(lambda c: c.execute("SET lock_timeout = '200ms'"))  # the writer's session, past the commit
    batch = [("d", time.time(), [Point(name="x", value=1)])]
    other = store.connect(readonly=False)
    try:
        with transaction(other):
            other.execute(f"SELECT pg_advisory_xact_lock({storage.RAW_INSERT_LOCK})")
            job_ = store.submit_write(lambda c: storage.copy_point_batches(c, batch), transactional=False)
            with pytest.raises(psycopg.errors.LockNotAvailable):
                job_.result(10)
    finally:
        other.close()
    again = store.submit_write(lambda c: storage.copy_point_batches(c, batch, top=False), transactional=False)
    assert again.result(10) == (1, None)
    assert [r[1] for r in rows(store)] == ["d"]

def test_a_server_makes_the_day_partitions_when_it_starts(client: Any, fleet: Any) -> None:
    """The app's lifecycle starts the rollup job, which makes them (PostgreSQL; SQLite has none to make). On
    PostgreSQL the job is a fleet-scope part: it starts once this server holds the fleet lease (a few seconds)."""
    now = time.time()
    assert fleet.rollups.partitioned == (fleet.store.dsn is not None)
    if fleet.store.dsn is not None:
        r = fleet.rollups.retention
        deadline = time.monotonic() + 20
        while not day_partitions(fleet.store) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert day_partitions(fleet.store) == wanted("telemetry", now, r.raw_days)
        assert day_partitions(fleet.store, "telemetry_minute") == wanted("telemetry_minute", now, r.minute_days)


def test_a_partition_change_waits_for_a_long_read_only_briefly(pg_store: Store,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A read holding the table (its snapshot's lock) makes the drop give up after LOCK_WAIT instead of holding
    the writer for the connection's 30 s; the next pass drops the partition."""
    store, now = pg_store, time.time()
    monkeypatch.setattr(partitions, "LOCK_WAIT", 0.3)
    store.write_sync(lambda c: partitions.ensure(c, now - 10 * DAY, RETENTION.raw_days, RETENTION.minute_days))
    old = partitions.partition_name("telemetry", partitions.day_start(now - 10 * DAY))
    reader = store.connect()
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM telemetry").fetchone()
        t = time.monotonic()
        with pytest.raises(Exception, match="lock timeout"):
            store.write_sync(lambda c: partitions.drop_before(c, "telemetry", now - RETENTION.raw_days * DAY))
        assert time.monotonic() - t < 5
        assert old in day_partitions(store)  # nothing dropped: the transaction rolled back
        reader.execute("COMMIT")
    finally:
        reader.close()
    assert store.write_sync(lambda c: partitions.drop_before(c, "telemetry", now - RETENTION.raw_days * DAY))[0] == 10
    assert old not in day_partitions(store)
