"""The intake's insert path: a batch goes to SQLite as one JSON array, and what is stored must be exactly the rows
``rows_for`` defines — the checked points, nothing else — and visible to others when its push returns."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetd.core.errors import FleetdError
from fleetd.devices.device_api import PushTelemetryRequest
from fleetd.store.database import Store
from fleetd.telemetry.intake import EARLIEST, MetricNames, Point, TelemetryIntake, rows_for
from tests.conftest import template_copy

NOW = time.time()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One store per backend for the module (each test starts with :func:`clear`)."""
    with template_copy(request, request.param) as dsn:
        s = Store(dsn or tmp_path_factory.mktemp("batch") / "fleetd.db")
        yield s
        s.close()


def committed(store: Store) -> list[tuple[str, str, float, float, str | None]]:
    """The rows another connection (a store reader) sees, in insert order. PostgreSQL stores the tags as jsonb
    writes them out (its key order, ", " and ": "), the same JSON: compared as msgspec writes it there."""
    rows = store.read_sync(lambda c: [tuple(r) for r in c.execute(
        "SELECT device_id, name, ts, value, tags FROM telemetry ORDER BY id")])
    if store.dsn is None:
        return rows
    return [(*r[:4], None if r[4] is None else _canonical(r[4])) for r in rows]


def _canonical(tags: str) -> str:
    return msgspec.json.encode(dict(sorted(json.loads(tags).items()))).decode()


def clear(store: Store) -> None:
    store.write_sync(lambda c: c.execute("DELETE FROM telemetry"))


def push(intake: TelemetryIntake, device_id: str, points: list[Point]) -> int:
    return asyncio.run(intake.add(device_id, points))


def same_rows(a: list[tuple[object, ...]], b: list[tuple[object, ...]]) -> bool:
    """Equal, floats bit for bit (except the sign of zero, which SQLite does not keep for any insert)."""
    def key(row: tuple[object, ...]) -> tuple[object, ...]:
        return tuple(float(x).hex() if isinstance(x, float | int) and not isinstance(x, bool) and x != 0 else x
                     for x in row)
    return len(a) == len(b) and all(key(x) == key(y) for x, y in zip(a, b, strict=True))


# Mostly valid points, with every kind of bad one mixed in.
names = st.one_of(st.sampled_from(["cpu", "mem.used", "a:b-c_d", "_x", "1bad", "bad name", "x" * 129, "é", ""]),
                  st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:-]{0,10}", fullmatch=True))
values = st.one_of(st.floats(), st.floats(allow_nan=False, allow_infinity=False, width=32),
                   st.integers(-(2**53), 2**53), st.sampled_from([0.1 + 0.2, 5e-324, 1.7976931348623157e308, -0.0]))
# Clear of the upper bound (the time received + 1 day), which moves between rows_for's call and the intake's.
stamps = st.one_of(st.just(0.0), st.floats(EARLIEST - 5, NOW + 86000),
                   st.sampled_from([EARLIEST, NOW, NOW + 2 * 86400, -0.0, 5.0, math.nan, math.inf]))
tag_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=3) | st.sampled_from(
    ['"', "\\", "\n", "\u2028", "é", "\x00", "k" * 65, "v" * 129, "</"])
tags = st.one_of(st.just({}), st.dictionaries(tag_text, tag_text, max_size=4),
                 st.dictionaries(st.from_regex(r"k[0-9]{1,2}", fullmatch=True), st.just("v"), min_size=15,
                                 max_size=18))
point = st.builds(Point, name=names, value=values, ts=stamps, tags=tags)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(point, max_size=12))
def test_what_is_stored_is_exactly_the_checked_rows_or_nothing(store: Store, batch: list[Point]) -> None:
    clear(store)
    intake = TelemetryIntake(store)
    try:
        expected = rows_for("dev-1", batch, NOW, MetricNames())
    except FleetdError as e:
        with pytest.raises(type(e)) as refused:
            push(intake, "dev-1", batch)
        assert refused.value.message == e.message
        assert committed(store) == []
        return
    assert push(intake, "dev-1", batch) == len(batch)
    stored = committed(store)
    # ts 0 is the time received: the intake's clock, a moment after NOW.
    assert all(r[2] >= NOW for r, p in zip(stored, batch, strict=True) if not p.ts)
    if store.dsn is not None:
        expected = [(*r[:4], None if r[4] is None else _canonical(r[4])) for r in expected]
    assert same_rows([r[:2] + r[3:] for r in stored], [r[:2] + r[3:] for r in expected])
    assert same_rows([r[2:3] for r, p in zip(stored, batch, strict=True) if p.ts],
                     [r[2:3] for r, p in zip(expected, batch, strict=True) if p.ts])
    assert all(isinstance(r[2], float) and isinstance(r[3], float) for r in stored)


def test_what_is_stored_is_what_was_checked_whatever_the_json_looked_like(store: Store) -> None:
    """SQLite reads the first of a repeated key, msgspec the last; numbers may come as strings. The intake stores
    the points as msgspec decoded and the checks saw them, never the request's own text."""
    clear(store)
    decode = msgspec.json.Decoder(PushTelemetryRequest, strict=False).decode
    body = (b'{"points": [{"name": "bad name!", "value": "NaN", "name": "ok", "value": 2.5, "ts": "%d"},'
            b' {"tags": {"k": "%s"}, "name": "ok", "value": 1e2, "tags": {"k": "v"}}]}' % (int(NOW), b"v" * 200))
    points = decode(body).points
    assert push(TelemetryIntake(store), "dev-1", points) == 2
    stored = committed(store)
    assert [(r[1], r[3], r[4]) for r in stored] == [("ok", 2.5, None), ("ok", 100.0, '{"k":"v"}')]
    assert stored[0][2] == float(int(NOW))


def test_a_bad_batch_is_refused_alone_and_the_rest_of_its_group_is_stored(store: Store) -> None:
    clear(store)
    intake = TelemetryIntake(store)

    async def main() -> list[int | BaseException]:
        batches = [[Point(name="cpu", value=i, ts=NOW)] for i in range(20)]
        batches[7] = [Point(name="cpu", value=1, ts=NOW), Point(name="cpu", value=math.inf, ts=NOW)]
        return await asyncio.gather(*(intake.add(f"dev-{i}", b) for i, b in enumerate(batches)),
                                    return_exceptions=True)

    results = asyncio.run(main())
    refused = results[7]
    assert isinstance(refused, FleetdError) and refused.message == "point 1: value must be a finite number"
    assert [r for i, r in enumerate(results) if i != 7] == [1] * 19
    stored = committed(store)
    assert sorted(r[0] for r in stored) == sorted(f"dev-{i}" for i in range(20) if i != 7)
    assert all(math.isfinite(r[3]) for r in stored)


def test_every_push_is_visible_to_another_connection_when_it_returns(store: Store) -> None:
    """Acknowledged only once committed: at the moment a push returns, a separate connection sees all its points,
    however the pushes were grouped."""
    clear(store)
    intake = TelemetryIntake(store)
    unseen: list[str] = []

    async def one(i: int) -> None:
        await asyncio.sleep(i % 5 * 0.002)
        await intake.add(f"dev-{i}", [Point(name="t", value=v, ts=NOW) for v in range(i % 4 + 1)])
        n = await store.read(lambda c: c.execute("SELECT COUNT(*) FROM telemetry WHERE device_id = ?",
                                                 (f"dev-{i}",)).fetchone()[0])
        if n != i % 4 + 1:
            unseen.append(f"dev-{i}: {n} of {i % 4 + 1} committed when its push returned")

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(120)))

    asyncio.run(main())
    assert unseen == []
    assert 1 < intake.commits < 120


def test_empty_batches_store_nothing_and_need_no_commit(store: Store) -> None:
    clear(store)
    intake = TelemetryIntake(store)
    assert push(intake, "dev-1", []) == 0
    assert intake.commits == 0 and committed(store) == []


def test_the_rollups_the_sums_and_the_inserts_count_their_cpu_time(tmp_path: Path) -> None:
    """The figures the benchmark compares (the rollup job's and the sums' cost as shares of the intake's) grow with
    the work done."""
    from fleetd.telemetry.rollups import Retention, Rollups
    from fleetd.telemetry.sums import MinuteSums

    s = Store(tmp_path / "fleetd.db")
    try:
        intake = TelemetryIntake(s, sums=MinuteSums())
        rollups = Rollups(s, Retention(), sums=intake.sums)

        async def main() -> int:
            for i in range(30):
                await intake.add(f"dev-{i}", [Point(name="cpu", value=v, ts=NOW - v) for v in range(200)])
            return await rollups.roll_up()

        assert asyncio.run(main()) == 6000
        assert intake.insert_cpu_seconds > 0 and rollups.pass_cpu_seconds > 0
        assert intake.sums is not None and intake.sums.cpu_seconds > 0
    finally:
        s.close()
