"""Telemetry intake: validated points, batched across devices into one transaction (group commit).

A PushTelemetry call returns once its points are committed, so a device may
drop them from its queue; many concurrent calls share one transaction.

The event loop checks a batch's points (one pass, no row built) and encodes them back to one JSON array with
msgspec, in C: what is stored is exactly what was checked, whatever the request's JSON looked like (a key given
twice, a number as a string). The writer hands each array to the database in one statement
(storage.insert_point_batches), which unpacks it without the GIL, and once it has committed adds the points to the
per-minute sums the rollups merge (rollups.MinuteSums), so that the rows are not read again; docs/performance.md,
"Telemetry", has the measurements behind this.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import sqlite3
import time
from collections.abc import Iterable
from typing import NoReturn

import msgspec

from ..core.errors import InvalidArgument, ResourceExhausted
from ..core.lifecycle import Scope
from ..core.names import METRIC_NAME
from ..store.database import Store, transaction
from . import storage
from .rollups import MinuteSums

log = logging.getLogger(__name__)

MAX_POINTS = 5000
MAX_TAGS = 16
EARLIEST = 946684800.0  # 2000-01-01


# gc=False: a point holds only strings, a float and a dict of strings, so it can never be part of a
# reference cycle; untracked, the 100 points of a batch do not drive the cyclic collector.
class Point(msgspec.Struct, kw_only=True, gc=False):
    name: str
    value: float
    # Unix seconds; 0 (or missing) means "now" for devices without a clock.
    ts: float = 0.0
    tags: dict[str, str] = {}


Row = tuple[str, str, float, float, str | None]
"""(device_id, name, ts, value, tags json): one row of the telemetry table."""

class MetricNames:
    """The distinct metric names each device has sent, and all of them: the cardinality limits.

    Devices repeat the same few names, so a point costs one set lookup; only a name new to its device is
    validated and counted. Devices of one kind send the same names, so their sets are one shared frozenset:
    100,000 devices cost a dict entry each, not a set each. Loaded from the store at start; a name stays
    counted until restart even when retention has removed its data (docs/telemetry.md).
    """

    def __init__(self, per_device: int = 500, fleet: int = 50_000) -> None:
        self.per_device, self.fleet = per_device, fleet
        self._by_device: dict[str, frozenset[str]] = {}
        self._all: dict[str, str] = {}  # name → the one str object every device's set shares
        self._sets: dict[frozenset[str], frozenset[str]] = {frozenset(): frozenset()}  # each distinct set once

    def _set(self, names: Iterable[str]) -> frozenset[str]:
        s = frozenset(self._all.setdefault(n, n) for n in names)
        return self._sets.setdefault(s, s)

    def load(self, pairs: Iterable[tuple[str, str]]) -> None:
        by_device: dict[str, list[str]] = {}
        for device_id, name in pairs:
            by_device.setdefault(device_id, []).append(name)
        for device_id, names in by_device.items():
            self._by_device[device_id] = self._set(names)

    def of(self, device_id: str) -> frozenset[str]:
        """The names ``device_id`` has sent."""
        return self._by_device.get(device_id, self._sets[frozenset()])

    def admit(self, device_id: str, new: set[str]) -> None:
        """Count ``new`` (valid names this device has not sent before), or ResourceExhausted naming the limit."""
        known = self.of(device_id)
        if len(known) + len(new) > self.per_device:
            raise ResourceExhausted(
                f"this device would send {len(known) + len(new)} distinct metric names; at most "
                f"{self.per_device} per device (setting max_metric_names_per_device); send fewer names, "
                "e.g. put what varies into tags")
        unseen = [n for n in new if n not in self._all]
        if len(self._all) + len(unseen) > self.fleet:
            raise ResourceExhausted(
                f"the fleet would have {len(self._all) + len(unseen)} distinct metric names; at most "
                f"{self.fleet} (setting max_metric_names); send fewer names, e.g. put what varies into tags")
        self._by_device[device_id] = self._set(known | new)


def check(device_id: str, points: list[Point], received: float, names: MetricNames | None = None) -> None:
    """Accept ``points`` as they are, or InvalidArgument naming the first bad point (ResourceExhausted when they
    bring more new metric names than ``names`` allows). New names are counted in ``names``."""
    if len(points) > MAX_POINTS:
        raise InvalidArgument(f"at most {MAX_POINTS} points per batch, got {len(points)}; send smaller batches")
    names = names if names is not None else MetricNames()
    latest = received + 86400
    known, isfinite = names.of(device_id), math.isfinite
    new: set[str] = set()
    # A device tags its points alike: tags equal to the last ones checked are not checked again.
    last_tags: dict[str, str] = {}
    for p in points:
        name, tags = p.name, p.tags
        if name not in known and name not in new:
            METRIC_NAME.check(name, f"point {points.index(p)}: metric name")
            new.add(name)
        if not (EARLIEST <= (p.ts or received) <= latest and isfinite(p.value)):
            _reject(points.index(p), p, received)
        if tags and tags != last_tags:
            if not _tags_ok(tags):
                _reject(points.index(p), p, received)
            last_tags = tags
    if new:
        names.admit(device_id, new)


def rows_for(device_id: str, points: list[Point], received: float, names: MetricNames | None = None) -> list[Row]:
    """:func:`check`, then the rows the intake stores for ``points`` (the benchmark's baseline inserts these; the
    tests hold the stored rows to them)."""
    check(device_id, points, received, names)
    return [(device_id, p.name, p.ts or received, p.value, msgspec.json.encode(p.tags).decode() if p.tags else None)
            for p in points]


_encode = msgspec.json.Encoder().encode


def _tags_ok(tags: dict[str, str]) -> bool:
    return len(tags) <= MAX_TAGS and max(map(len, tags)) <= 64 and max(map(len, tags.values())) <= 128


def _reject(i: int, p: Point, received: float) -> NoReturn:
    """Raise the error for the first thing wrong with point ``i`` (known to be bad)."""
    if not math.isfinite(p.value):
        raise InvalidArgument(f"point {i}: value must be a finite number")
    if not EARLIEST <= (p.ts or received) <= received + 86400:
        raise InvalidArgument(f"point {i}: ts {p.ts} is not a plausible Unix time in seconds; send 0 when the "
                              "device has no clock")
    raise InvalidArgument(f"point {i}: at most {MAX_TAGS} tags, keys ≤ 64 and values ≤ 128 characters")


class TelemetryIntake:
    """Group commit: an insert starts as soon as the writer is free; while one runs, new points wait and go
    together in the next one. Each caller returns only once its own rows are committed."""

    name = "telemetry intake"
    scope: Scope = "process"  # docs/architecture.md, "Background parts"

    def __init__(self, store: Store, names: MetricNames | None = None, sums: MinuteSums | None = None) -> None:
        self.store = store
        self.names = names if names is not None else MetricNames()
        self.names.load(store.read_sync(storage.device_metric_names))
        # The per-minute sums of what has been stored, for the rollups (Rollups.sums); None: none kept.
        self.sums = sums
        # Each call's batch as stored (its points as JSON) and its points (for the sums).
        self._pending: list[tuple[storage.Batch, list[Point]]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduled = False
        self._in_flight: asyncio.Future[int] | None = None
        self.points_total = 0
        self.commits = 0
        # CPU seconds of the writer thread in the inserts (the rollups' cost is measured against it).
        self.insert_cpu_seconds = 0.0

    async def add(self, device_id: str, points: list[Point]) -> int:
        """Check and store ``points``; returns (how many) once they are committed, or raises what :func:`check`
        or the insert raised (then none of them is stored)."""
        received = time.time()
        check(device_id, points, received, self.names)
        if not points:
            return 0
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append(((device_id, received, _encode(points).decode()), points))
        self._waiters.append(fut)
        if self._in_flight is None and not self._scheduled:
            # Let the other requests of this loop iteration join the batch.
            self._scheduled = True
            loop.call_soon(self._flush)
        await fut
        return len(points)

    def _flush(self) -> None:
        self._scheduled = False
        pending, waiters = self._pending, self._waiters
        self._pending, self._waiters = [], []
        if not pending:
            return

        try:
            done = asyncio.wrap_future(self.store.submit_write(
                functools.partial(self._insert, pending=pending), transactional=False))
        except Exception as e:  # the store is closed: nothing was stored, and every caller hears so
            _settle(waiters, e)
            return
        self._in_flight = done

        def committed(f: asyncio.Future[int]) -> None:
            self._in_flight = None
            exc = f.exception() if not f.cancelled() else asyncio.CancelledError()
            if exc is None:
                self.points_total += f.result()
                self.commits += 1
            _settle(waiters, exc)
            if self._pending:  # arrived while this insert ran: they go in the next one, now
                self._flush()

        done.add_done_callback(committed)

    def _insert(self, conn: sqlite3.Connection, pending: list[tuple[storage.Batch, list[Point]]]) -> int:
        """One group's insert and commit, on the writer thread; then, committed, its points go into the sums."""
        with transaction(conn):
            t = time.thread_time()
            try:
                n = storage.insert_point_batches(conn, [batch for batch, _ in pending])
            finally:
                self.insert_cpu_seconds += time.thread_time() - t
            top = storage.newest_raw_id(conn) if self.sums is not None else None
        # The rows got the ids after the newest one before, in order: SQLite gives a new row the highest id plus one
        # as long as that is below the largest integer (then it would pick ids at random).
        if self.sums is not None and top is not None and top < storage.MAX_ID:
            try:
                self.sums.add(top - n, top, ((b[0], b[1], points) for b, points in pending))
            except Exception:  # the points are stored: the rollups take them from the rows instead
                log.exception("telemetry: keeping the per-minute sums failed; rolling up from the stored points")
                self.sums.clear()
        return n

    async def start(self) -> None:
        """Nothing runs in the background until points arrive: each batch starts its own commit."""

    async def stop(self) -> None:
        """Commit what is waiting and wait for it (at shutdown, before the store closes)."""
        self._flush()
        while self._in_flight is not None:
            await asyncio.wait([self._in_flight])


def _settle(waiters: list[asyncio.Future[None]], exc: BaseException | None) -> None:
    for w in waiters:
        if w.done():  # the caller went away (cancelled); its rows are stored or not with the rest
            continue
        if exc is None:
            w.set_result(None)
        else:
            w.set_exception(exc)
