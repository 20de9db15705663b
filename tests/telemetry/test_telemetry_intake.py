"""Telemetry group commit on a real store (SQLite and PostgreSQL): acknowledged only once committed, nothing
acknowledged lost."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest

from fleetd.core.errors import FleetdError, InvalidArgument, ResourceExhausted
from fleetd.store.database import Store
from fleetd.telemetry.intake import MetricNames, Point, TelemetryIntake, rows_for


@pytest.fixture
def store(store_backend: Store) -> Store:
    return store_backend


# A SQLite function called by a SQLite trigger holds the writer inside an insert.
HELD_BY_SQLITE = "holds the insert with a SQLite function in a SQLite trigger"


def stored(store: Store) -> list[tuple[str, str, float]]:
    """What another connection sees committed."""
    conn = store.connect(readonly=True)
    try:
        return sorted(tuple(r) for r in conn.execute("SELECT device_id, name, value FROM telemetry"))
    finally:
        conn.close()


def hold_writer(store: Store) -> threading.Event:
    """Occupy the writer thread until the returned event is set."""
    release = threading.Event()
    store.submit_write(lambda conn: release.wait(10))
    return release


def hold_inserts_of_slow(store: Store) -> tuple[threading.Event, threading.Event]:
    """Make an insert of a point named "slow" wait inside SQL (on the writer) until the second event is set; the
    first is set once one does."""
    inside, release = threading.Event(), threading.Event()

    def install(conn: sqlite3.Connection) -> None:  # the writer's connection
        def hold() -> int:
            inside.set()
            release.wait(10)
            return 0

        conn.create_function("hold", 0, hold)
        conn.execute("CREATE TEMP TRIGGER hold_slow AFTER INSERT ON main.telemetry WHEN NEW.name = 'slow' "
                     "BEGIN SELECT hold(); END")

    store.write_sync(install)
    return inside, release


def points(name: str, *values: float) -> list[Point]:
    return [Point(name=name, value=v) for v in values]


def test_batches_waiting_for_the_writer_go_in_one_insert_and_are_acked_only_when_stored(store: Store) -> None:
    intake = TelemetryIntake(store)

    async def main() -> None:
        release = hold_writer(store)
        a = asyncio.create_task(intake.add("dev-a", points("cpu", 1, 2)))
        await asyncio.sleep(0.05)  # a's insert is queued behind the held writer
        b = asyncio.create_task(intake.add("dev-b", points("cpu", 3)))
        c = asyncio.create_task(intake.add("dev-c", points("mem", 4)))
        await asyncio.sleep(0.05)
        assert not (a.done() or b.done() or c.done())
        assert stored(store) == []
        release.set()
        # The insert takes every batch pending when it starts: one commit for the three.
        assert await asyncio.wait_for(asyncio.gather(a, b, c), 5) == [2, 1, 1]
        assert stored(store) == [("dev-a", "cpu", 1.0), ("dev-a", "cpu", 2.0), ("dev-b", "cpu", 3.0),
                                 ("dev-c", "mem", 4.0)]
        assert intake.commits == 1 and intake.points_total == 4

    asyncio.run(main())


@pytest.mark.sqlite_only(HELD_BY_SQLITE)
def test_a_batch_arriving_during_an_insert_goes_in_the_next_one(store: Store) -> None:
    intake = TelemetryIntake(store)
    inside, release = hold_inserts_of_slow(store)

    async def main() -> None:
        a = asyncio.create_task(intake.add("dev-a", points("slow", 1)))
        assert await asyncio.to_thread(inside.wait, 5)  # a's insert is running
        b = asyncio.create_task(intake.add("dev-b", points("cpu", 2)))
        await asyncio.sleep(0.05)
        assert not (a.done() or b.done()) and stored(store) == []
        release.set()
        assert await asyncio.wait_for(asyncio.gather(a, b), 5) == [1, 1]
        assert stored(store) == [("dev-a", "slow", 1.0), ("dev-b", "cpu", 2.0)]
        assert intake.commits == 2 and intake.points_total == 2

    asyncio.run(main())


def test_concurrent_pushes_share_commits_and_every_acked_point_is_stored(store: Store) -> None:
    intake = TelemetryIntake(store)

    async def main() -> int:
        counts = await asyncio.gather(*(intake.add(f"dev-{i}", points("t", *range(i % 7 + 1))) for i in range(200)))
        return sum(counts)

    acked = asyncio.run(main())
    assert acked == len(stored(store)) == intake.points_total == sum(i % 7 + 1 for i in range(200))
    assert intake.commits < 200  # grouped, not one transaction per call


@pytest.mark.sqlite_only(HELD_BY_SQLITE)
def test_a_failed_insert_fails_every_caller_in_its_group_and_the_next_group_commits(store: Store) -> None:
    store.write_sync(lambda c: c.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON telemetry WHEN NEW.name = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END"))
    intake = TelemetryIntake(store)

    inside, release = hold_inserts_of_slow(store)

    async def main() -> None:
        first = asyncio.create_task(intake.add("dev-a", points("slow", 1)))
        assert await asyncio.to_thread(inside.wait, 5)
        # Both join the next group; its insert fails as a whole.
        good = asyncio.create_task(intake.add("dev-b", points("ok", 2)))
        bad = asyncio.create_task(intake.add("dev-c", points("boom", 3)))
        await asyncio.sleep(0.05)
        release.set()
        assert await asyncio.wait_for(first, 5) == 1
        for t in (good, bad):
            with pytest.raises(sqlite3.IntegrityError, match="boom"):
                await asyncio.wait_for(t, 5)
        assert await intake.add("dev-d", points("ok", 4)) == 1

    asyncio.run(main())
    # Nothing of the failed group is half-stored: callers told of the failure may resend safely.
    assert stored(store) == [("dev-a", "slow", 1.0), ("dev-d", "ok", 4.0)]
    assert intake.points_total == 2


def test_close_waits_for_the_commit_in_flight(store: Store) -> None:
    intake = TelemetryIntake(store)

    async def main() -> None:
        release = hold_writer(store)
        task = asyncio.create_task(intake.add("dev-a", points("cpu", 1)))
        await asyncio.sleep(0.05)
        threading.Timer(0.1, release.set).start()
        await asyncio.wait_for(intake.stop(), 5)
        assert stored(store) == [("dev-a", "cpu", 1.0)]
        await task

    asyncio.run(main())


def test_a_push_after_the_store_closed_fails_instead_of_hanging(store: Store) -> None:
    intake = TelemetryIntake(store)
    store.close()
    with pytest.raises(FleetdError, match="closed"):
        asyncio.run(asyncio.wait_for(intake.add("dev-a", points("cpu", 1)), 5))


@pytest.mark.parametrize(("point", "fragment"), [
    ({"name": "1bad", "value": 1}, "point 1: metric name '1bad'"),
    ({"name": "a" * 129, "value": 1}, "metric name"),
    ({"name": "x", "value": float("inf")}, "point 1: value must be a finite number"),
    ({"name": "x", "value": float("nan"), "ts": 5}, "value must be a finite number"),  # the first problem
    ({"name": "x", "value": 1, "ts": 5}, "point 1: ts 5"),
    ({"name": "x", "value": 1, "ts": time.time() + 2 * 86400}, "plausible Unix time"),
    ({"name": "x", "value": 1, "tags": {f"k{i}": "v" for i in range(17)}}, "at most 16 tags"),
    ({"name": "x", "value": 1, "tags": {"k": "v" * 129}}, "values ≤ 128"),
    ({"name": "x", "value": 1, "tags": {"k": "a\x00b"}}, "without NUL characters"),
    ({"name": "x", "value": 1, "tags": {"\x00": "v"}}, "without NUL characters"),
])
def test_bad_points_are_refused_naming_the_point_and_the_problem(point: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        rows_for("dev", [Point(name="ok", value=1), Point(**point)], time.time())  # type: ignore[arg-type]
    assert fragment in str(e.value)


def test_rows_fill_in_the_receive_time_and_encode_tags() -> None:
    now = time.time()
    rows = rows_for("dev", [Point(name="a", value=1.5), Point(name="b", value=2, ts=now - 5, tags={"k": "v"})], now)
    assert rows == [("dev", "a", now, 1.5, None), ("dev", "b", now - 5, 2.0, '{"k":"v"}')]


def test_metric_names_per_device_are_limited_and_a_bad_name_is_never_counted() -> None:
    names = MetricNames(per_device=3, fleet=100)
    now = time.time()
    rows_for("dev", points("a", 1) + points("b", 2), now, names)
    rows_for("dev", points("a", 3) + points("c", 4), now, names)  # one new name: the third
    with pytest.raises(ResourceExhausted) as e:
        rows_for("dev", points("a", 5) + points("d", 6), now, names)
    assert "at most 3 per device (setting max_metric_names_per_device)" in e.value.message
    assert len(rows_for("dev", points("c", 7) + points("b", 8), now, names)) == 2  # known names still pass
    assert len(rows_for("other", points("d", 1), now, names)) == 1  # the limit is per device
    with pytest.raises(InvalidArgument):
        rows_for("new", [Point(name="bad name", value=1)], now, names)
    assert names.of("new") == set()


def test_metric_names_fleet_wide_are_limited() -> None:
    names = MetricNames(per_device=10, fleet=4)
    now = time.time()
    rows_for("d1", points("a", 1) + points("b", 1) + points("c", 1), now, names)
    rows_for("d2", points("a", 1) + points("b", 1) + points("d", 1), now, names)  # one name new to the fleet
    with pytest.raises(ResourceExhausted) as e:
        rows_for("d3", points("e", 1), now, names)
    assert "at most 4 (setting max_metric_names)" in e.value.message
    rows_for("d3", points("a", 1), now, names)  # a name the fleet has: only the device's own limit applies


def test_devices_that_send_the_same_names_share_one_set() -> None:
    """100,000 devices must not cost 100,000 sets: alike devices hold the same frozenset, also after a restart."""
    names = MetricNames()
    now = time.time()
    for d in ("d1", "d2"):
        rows_for(d, points("cpu.percent", 1) + points("mem.used", 1), now, names)
    assert names.of("d1") is names.of("d2")
    reloaded = MetricNames()
    reloaded.load([("d1", "cpu.percent"), ("d2", "mem.used"), ("d1", "mem.used"), ("d2", "cpu.percent")])
    assert reloaded.of("d1") is reloaded.of("d2") and reloaded.of("d1") == {"cpu.percent", "mem.used"}


def test_metric_names_are_counted_again_after_a_restart(store: Store) -> None:
    async def send(intake: TelemetryIntake, name: str) -> int:
        return await intake.add("dev", points(name, 1))

    first = TelemetryIntake(store, MetricNames(per_device=2, fleet=10))
    asyncio.run(send(first, "a"))
    asyncio.run(send(first, "b"))
    again = TelemetryIntake(store, MetricNames(per_device=2, fleet=10))  # read while the server starts
    with pytest.raises(ResourceExhausted):  # the first batch waits for that read
        asyncio.run(send(again, "c"))
    assert again.names.of("dev") == {"a", "b"}
    assert asyncio.run(send(again, "a")) == 1
