"""Telemetry intake: validated points, batched across devices into one transaction (group commit).

A PushTelemetry call returns once its points are committed, so a device may
drop them from its queue; many concurrent calls share one transaction.

The event loop checks a batch's points (one pass, no row built) and groups their values by minute and metric for
the rollups (sums.MinuteSums.bucket). On SQLite it encodes them back to one JSON array with msgspec, in C: what is
stored is exactly what was checked, whatever the request's JSON looked like (a key given twice, a number as a
string). The writer takes every batch waiting when its job starts and stores up to 64 of them with one statement
(storage.insert_point_batches), which unpacks the arrays without the GIL; once that has committed, the loop adds the
batches' values to the per-minute sums the rollup job merges, so that the rows are not read again (on SQLite only:
replicas keep no sums, docs/telemetry.md). On PostgreSQL the writer stores the checked points themselves, not
encoded, with one binary COPY per group (storage.copy_point_batches).
docs/performance.md, "Telemetry", has the measurements behind this.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import msgspec

from ..core.errors import InvalidArgument, ResourceExhausted
from ..core.lifecycle import Scope
from ..core.names import METRIC_NAME
from ..store.database import Store
from . import storage
from .sums import Buckets, MinuteSums

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
    # No NUL: PostgreSQL text cannot hold one, and a group's insert would fail for every batch in it.
    return (len(tags) <= MAX_TAGS and max(map(len, tags)) <= 64 and max(map(len, tags.values())) <= 128
            and not any("\x00" in k or "\x00" in v for k, v in tags.items()))


def _reject(i: int, p: Point, received: float) -> NoReturn:
    """Raise the error for the first thing wrong with point ``i`` (known to be bad)."""
    if not math.isfinite(p.value):
        raise InvalidArgument(f"point {i}: value must be a finite number")
    if not EARLIEST <= (p.ts or received) <= received + 86400:
        raise InvalidArgument(f"point {i}: ts {p.ts} is not a plausible Unix time in seconds; send 0 when the "
                              "device has no clock")
    raise InvalidArgument(f"point {i}: at most {MAX_TAGS} tags, keys ≤ 64 and values ≤ 128 characters, "
                          "without NUL characters")


Pending = tuple["storage.Batch | storage.PointBatch", "Buckets | None", "asyncio.Future[None]"]
"""One call's batch as stored (SQLite: its points as JSON; PostgreSQL: the points), its values for the sums and the
caller's future."""


class TelemetryIntake:
    """Group commit: each call's batch joins the pending list, and one insert job waits on the writer's queue. The job
    takes every batch pending when it starts, so all that arrived while the insert before it ran go together, and
    the writer goes from one commit straight to the next insert. Each caller returns only once its own rows are
    committed."""

    name = "telemetry intake"
    scope: Scope = "process"  # docs/architecture.md, "Background parts"

    def __init__(self, store: Store, names: MetricNames | None = None, sums: MinuteSums | None = None) -> None:
        self.store = store
        self.names = names if names is not None else MetricNames()
        # Read while the server starts, not before it answers: the raw points not rolled up yet are scanned for their
        # names (~0.3 s for a million rows left by a busy server that stopped). The first batches wait for it.
        self._names_read: concurrent.futures.Future[list[tuple[str, str]]] | None = store.submit_read(
            storage.device_metric_names)
        # The per-minute sums of what has been stored, for the rollups (Rollups.sums); None: none kept.
        self.sums = sums
        # Shared by the event loop (adds) and the writer (takes); the lock makes "append, and queue a job unless
        # one is waiting" and "take all, no job waiting now" each one step.
        self._lock = threading.Lock()
        self._pending: list[Pending] = []
        self._job_waiting = False
        self._last_job: concurrent.futures.Future[None] | None = None
        self.points_total = 0
        self.commits = 0
        # CPU seconds of the writer thread in the inserts (the rollups' cost is measured against it).
        self.insert_cpu_seconds = 0.0
        # How a group is stored, chosen once: SQLite's one JSON-unpacking INSERT (the points encoded on the loop, in
        # C); PostgreSQL's COPY of the points as they are, under the lock that keeps its ids in commit order across
        # replicas (storage.copy_point_batches), reading back the last id only for sums.
        self._json = store.dsn is None
        self._store_group: Callable[[Any, list[Any]], tuple[int, int | None]] = (
            storage.insert_point_batches if self._json
            else functools.partial(storage.copy_point_batches, top=sums is not None))

    async def add(self, device_id: str, points: list[Point]) -> int:
        """Check and store ``points``; returns (how many) once they are committed, or raises what :func:`check`
        or the insert raised (then none of them is stored)."""
        if self._names_read is not None:
            await self._load_names(self._names_read)
        received = time.time()
        check(device_id, points, received, self.names)
        if not points:
            return 0
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        buckets = self.sums.bucket(points, received) if self.sums is not None else None
        batch: storage.Batch | storage.PointBatch = (
            (device_id, received, _encode(points).decode()) if self._json else (device_id, received, points))
        entry: Pending = (batch, buckets, fut)
        with self._lock:
            self._pending.append(entry)
            queue_job = not self._job_waiting
            self._job_waiting = True
        if queue_job:
            self._queue_job(loop)
        await fut
        return len(points)

    async def _load_names(self, read: concurrent.futures.Future[list[tuple[str, str]]]) -> None:
        """The names stored before this start, counted once (by the first caller back); a failed read is tried
        again by the next batch."""
        try:
            pairs = await asyncio.wrap_future(read)
        except Exception:
            if self._names_read is read:
                self._names_read = self.store.submit_read(storage.device_metric_names)
            raise
        if self._names_read is read:
            self.names.load(pairs)
            self._names_read = None

    def _queue_job(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            job = self.store.submit_write(functools.partial(self._insert, loop=loop), transactional=False)
        except Exception as e:  # the store is closed: nothing was stored, and every caller hears so
            with self._lock:
                taken, self._pending = self._pending, []
                self._job_waiting = False
            self._settle(taken, 0, None, e)
            return
        self._last_job = job

    def _insert(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        """On the writer: store every batch pending now, up to 64 batches per statement, each statement its own
        transaction (one hand-back of the GIL per statement, not three); the loop hears how each went
        (:meth:`_settle`)."""
        with self._lock:
            taken, self._pending = self._pending, []
            self._job_waiting = False
        failed: BaseException | None = None
        for i in range(0, len(taken), storage.MAX_BATCHES_PER_INSERT):
            group = taken[i:i + storage.MAX_BATCHES_PER_INSERT]
            t = time.thread_time()
            try:
                n, top = self._store_group(conn, [batch for batch, _, _ in group])
            except BaseException as e:
                _on_loop(loop, self._settle, group, 0, None, e)
                failed = failed or e
                continue
            finally:
                self.insert_cpu_seconds += time.thread_time() - t
            _on_loop(loop, self._settle, group, n, top, None)
        if failed is not None:  # the store learns of it too (a full disk)
            raise failed

    def _settle(self, taken: list[Pending], stored: int, top: int | None, exc: BaseException | None) -> None:
        """On the loop, in commit order: add one insert's points to the sums (committed as the ids up to ``top``) and
        tell its callers how it went."""
        if exc is None:
            self.points_total += stored
            self.commits += 1
            # The rows got the ids after the newest one before, in order: SQLite gives a new row the highest id plus
            # one as long as that is below the largest integer (then it would pick ids at random).
            if self.sums is not None and top is not None and top < storage.MAX_ID:
                try:
                    self.sums.add(top - stored, top, ((b[0], buckets) for b, buckets, _ in taken if buckets))
                except Exception:  # the points are stored: the rollups take them from the rows instead
                    log.exception("telemetry: keeping the per-minute sums failed; rolling up from the stored points")
                    self.sums.clear()
        for _, _, w in taken:
            if w.done():  # the caller went away (cancelled); its rows are stored or not with the rest
                continue
            if exc is None:
                w.set_result(None)
            else:
                w.set_exception(exc)

    async def start(self) -> None:
        """Nothing runs in the background until points arrive: each batch starts its own commit."""

    async def stop(self) -> None:
        """Wait for the inserts queued (at shutdown, before the store closes): the writer runs jobs in order."""
        job = self._last_job
        if job is not None and not job.done():
            await asyncio.wait([asyncio.wrap_future(job)])


def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop has closed: no caller is left to tell
        log.warning("telemetry: an insert finished after its event loop closed")

