"""Telemetry rollups, retention and range queries.

The raw ``telemetry`` table has no secondary index, so that ingest stays at what
SQLite can insert (an index on (device, metric, ts) costs ~7x in insert rate).
Everything else works from **id ranges** of that table:

* The writer, as it commits each group of points, adds them to per-minute sums
  in memory (:class:`MinuteSums`: count, sum, min, max per (device, metric,
  minute), with the raw id range they cover). A background pass every few
  seconds merges those sums into ``telemetry_minute`` and — merging those
  minutes again — ``telemetry_hour``, and moves the rollup watermark
  (``telemetry_rollup_state``) to the end of their range, in one write
  transaction; the raw rows are not read again. Raw ids past the watermark that
  no sums cover (after a restart or a crash, or when the sums were dropped) are
  aggregated from the rows by SQL instead, one transaction per 50,000 ids.
  Rollups keep count, sum, min and max, so merging is exact (avg = sum/count).
* Each pass also records the time span of the ids it covered
  (``telemetry_blocks``): a raw query scans only the id blocks that can hold its
  time range, plus the not yet rolled-up tail; retention deletes raw rows by id
  prefix once their whole block is old (PostgreSQL: whole days, partitions.py).
* Readers that need fresh data (queries at minute or hour level, alert windows)
  read the rollups and the raw tail past the watermark in one snapshot, so they
  see every committed point exactly once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec

from ..core.lifecycle import Scope
from ..core.metrics import Read
from ..core.tasks import cancel_and_wait
from ..store.database import Store, read_snapshot, transaction
from . import partitions, storage
from .sums import MINUTE, MinuteSums, SumsChunk

if TYPE_CHECKING:
    from ..core.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

HOUR = 3600
DAY = 86400
Level = Literal["raw", "minute", "hour"]
RESOLUTION: dict[str, int] = {"minute": MINUTE, "hour": HOUR}
ROLLUP_BATCH = 50_000  # raw ids per delta: bounds how long one merge holds the writer (~40 ms)
RAW_MAX_SPAN = 6 * HOUR  # longer ranges come from the minute rollups whatever max_points asks
MINUTES_PER_BUCKET = 15  # beyond that a query reads hours
DELETE_BATCH = 100_000  # raw rows deleted per write transaction by retention
PRUNE_SERIES = 1000  # series whose old rollup rows one retention transaction deletes


# --- the aggregate --------------------------------------------------------------

@dataclass(slots=True)
class Agg:
    count: int
    sum: float
    min: float
    max: float

    @property
    def avg(self) -> float:
        return self.sum / self.count

    def merge(self, other: Agg) -> Agg:
        return Agg(self.count + other.count, self.sum + other.sum, min(self.min, other.min),
                   max(self.max, other.max))

    @classmethod
    def of(cls, values: Iterable[float]) -> Agg:
        vs = list(values)
        return cls(len(vs), math.fsum(vs), min(vs), max(vs))


def _merge_into(out: dict[Any, Agg], key: Any, agg: Agg) -> None:
    old = out.get(key)
    out[key] = agg if old is None else old.merge(agg)


snapshot = read_snapshot  # one read transaction, so that several statements see the same committed state


# --- incremental rollup -----------------------------------------------------------

def merge_sums_step(conn: sqlite3.Connection, chunk: SumsChunk, batch: int = ROLLUP_BATCH) -> tuple[int, bool]:
    """One transaction on the writer: merge ``chunk`` if it starts at the watermark; if it starts past it, roll up
    the rows before it (up to ``batch`` ids); if before it, the rows have been rolled up instead. Moves the watermark.
    → (raw ids covered, whether the chunk is done with)."""
    lo = storage.watermark(conn)
    if chunk.lo < lo:
        return 0, True
    if chunk.lo == lo:
        hi = chunk.hi
        span = storage.merge_minute_sums(conn, chunk.rows())
    else:
        hi = min(chunk.lo, lo + batch)
        span = storage.roll_up_range(conn, lo, hi)
    if span is not None:
        storage.insert_block(conn, lo, hi, *span)
    storage.move_watermark(conn, lo, hi)
    return hi - lo, hi == chunk.hi


def roll_up_step(conn: sqlite3.Connection, batch: int = ROLLUP_BATCH, upto: int | None = None) -> tuple[int, int]:
    """Roll up raw ids past the watermark from the rows (up to ``batch`` of them, and not past ``upto``) and move
    it, in one transaction on the writer. → (raw ids covered, the raw ids left past the watermark now)."""
    lo = storage.watermark(conn)
    top = storage.newest_raw_id(conn) or 0
    if upto is not None:
        top = min(top, upto)
    if top <= lo:
        return 0, 0
    hi = min(top, lo + batch)
    span = storage.roll_up_range(conn, lo, hi)
    if span is not None:
        storage.insert_block(conn, lo, hi, *span)
    storage.move_watermark(conn, lo, hi)
    return hi - lo, top - hi


def roll_up_sync(conn: sqlite3.Connection, batch: int = ROLLUP_BATCH) -> int:
    """Roll up everything past the watermark on one connection, from the rows (tests, offline tools). → raw rows
    covered."""
    done = 0
    while True:
        with transaction(conn):
            n, left = roll_up_step(conn, batch)
        done += n
        if not left:
            return done


# --- retention --------------------------------------------------------------------

def raw_prune_bound(conn: sqlite3.Connection, cutoff: float) -> int:
    """The highest raw id that may go: rolled up, in blocks entirely older than ``cutoff``, not the newest row.

    The newest row always stays so that ids keep growing (an emptied table would
    hand out ids below the watermark again).
    """
    wm = storage.watermark(conn)
    young = storage.first_block_newer_than(conn, cutoff)
    bound = wm if young is None else min(wm, young)
    top = storage.newest_raw_id(conn)
    return min(bound, top - 1) if top is not None else 0


def prune_raw_step(conn: sqlite3.Connection, bound: int) -> int:
    """Delete up to DELETE_BATCH raw rows with id <= bound (one transaction's worth). → rows deleted."""
    first = storage.oldest_raw_id(conn)
    if first is None or first > bound:
        storage.delete_blocks_through(conn, bound)
        return 0
    upto = min(bound, first + DELETE_BATCH - 1)
    n = storage.delete_raw_through(conn, upto)
    storage.delete_blocks_through(conn, upto)
    return n


def prune_rollups_step(conn: sqlite3.Connection, level: storage.RollupLevel, cutoff: float, after_series: int,
                       series: int = PRUNE_SERIES) -> tuple[int, int | None]:
    """Delete ``level`` rows older than ``cutoff`` for the next ``series`` series after ``after_series``
    (by primary key, one transaction's worth). → (rows deleted, last series done or None at the end)."""
    ids = storage.series_ids_after(conn, after_series, series)
    if not ids:
        return 0, None
    return storage.delete_rollups_before(conn, level, ids, cutoff), ids[-1]


@dataclass(frozen=True)
class Retention:
    raw_days: float = 7
    minute_days: float = 30
    hour_days: float = 400

    def cutoffs(self, now: float) -> tuple[float, float, float]:
        return now - self.raw_days * DAY, now - self.minute_days * DAY, now - self.hour_days * DAY


# --- queries ----------------------------------------------------------------------

class Bucket(msgspec.Struct, kw_only=True):
    """One downsampled point: the points of [ts, ts + bucket_seconds) of every selected device."""

    # Start of the bucket, Unix seconds.
    ts: float
    avg: float
    min: float
    max: float
    count: int


@dataclass(frozen=True)
class Plan:
    level: Level
    origin: float  # start of bucket 0
    width: float  # seconds per bucket
    end: float
    max_points: int

    def buckets(self) -> int:
        """How many buckets [origin, end) spans (a point at a float rounding edge joins the last one)."""
        return max(1, min(self.max_points, math.ceil((self.end - self.origin) / self.width)))


def choose_level(start: float, end: float, max_points: int, now: float, retention: Retention) -> Level:
    """Raw for short, recent ranges that need sub-minute buckets; minutes while a bucket needs at most 15 of
    them; else hours (coarser than asked for, rather than reading a month of minutes)."""
    raw_cut, minute_cut, _ = retention.cutoffs(now)
    per = (end - start) / max_points
    if per < MINUTE and end - start <= RAW_MAX_SPAN and start >= raw_cut:
        return "raw"
    if per <= MINUTES_PER_BUCKET * MINUTE and start >= minute_cut:
        return "minute"
    return "hour"


def plan(level: Level, start: float, end: float, max_points: int) -> Plan:
    """Buckets for a range: at most ``max_points`` of them, covering [start, end).

    Raw buckets start at ``start``; rollup buckets are whole multiples of the
    resolution, so the first one may start a little before ``start``.
    """
    if level == "raw":
        return Plan(level, start, (end - start) / max_points, end, max_points)
    res = RESOLUTION[level]
    origin = math.floor(start / res) * res
    width = res * max(1, math.ceil((end - origin) / (max_points * res)))
    return Plan(level, float(origin), float(width), end, max_points)


def _json_list(items: list[str]) -> str:
    return msgspec.json.encode(items).decode()


def raw_ranges(conn: sqlite3.Connection, start: float, end: float) -> list[tuple[int, int | None]]:
    """Raw id ranges (lo, hi] that can hold points of [start, end); hi None = open-ended tail."""
    wm = storage.watermark(conn)
    out: list[tuple[int, int | None]] = []
    for lo, hi in storage.blocks_overlapping(conn, start, end):
        if out and out[-1][1] == lo:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    if out and out[-1][1] == wm:
        out[-1] = (out[-1][0], None)
    else:
        out.append((wm, None))
    return out


def query(conn: sqlite3.Connection, device_ids: list[str], metric: str, p: Plan, start: float
          ) -> list[Bucket]:
    """The downsampled series of ``metric`` over ``device_ids`` (merged across devices) for plan ``p``."""
    if not device_ids:
        return []
    out: dict[int, Agg] = {}
    ids = _json_list(device_ids)
    limit = p.buckets() - 1

    def add(rows: Iterable[tuple[Any, ...]]) -> None:
        for b, n, s, lo, hi in rows:
            if n:
                _merge_into(out, min(max(int(b), 0), limit), Agg(n, s, lo, hi))

    with snapshot(conn):
        if p.level == "raw":
            for lo, hi in raw_ranges(conn, start, p.end):
                add(storage.raw_buckets(conn, origin=p.origin, width=p.width, lo=lo,
                                        hi=hi if hi is not None else 2**62, metric=metric, device_ids=ids,
                                        start=start, end=p.end))
        else:
            res = RESOLUTION[p.level]
            add(storage.rollup_buckets(conn, p.level, origin=p.origin, width=p.width, metric=metric, device_ids=ids,
                                       since=p.origin, end=p.end))
            # bucket(ts) < end  ⟺  ts < the first bucket boundary at or after end
            add(storage.tail_buckets(conn, res=res, origin=p.origin, width=p.width,
                                     after=storage.watermark(conn), metric=metric, since=p.origin,
                                     before=math.ceil(p.end / res) * res, device_ids=ids))
    return [Bucket(ts=p.origin + b * p.width, avg=a.avg, min=a.min, max=a.max, count=a.count)
            for b, a in sorted(out.items())]


def window(conn: sqlite3.Connection, metric: str, since: float, device_ids: list[str] | None = None
           ) -> dict[str, Agg]:
    """Per device, the aggregate of ``metric`` over whole minutes from ``since``'s minute on (rollups + tail)."""
    since_m = math.floor(since / MINUTE) * MINUTE
    ids = _json_list(device_ids) if device_ids is not None else None
    out: dict[str, Agg] = {}
    with snapshot(conn):
        rows = storage.minutes_by_device(conn, metric, since_m, ids)
        rows += storage.tail_by_device(conn, after=storage.watermark(conn), metric=metric, since=since_m,
                                       device_ids=ids)
    for did, n, s, lo, hi in rows:
        if n:
            _merge_into(out, did, Agg(n, s, lo, hi))
    return out


def metrics_of(conn: sqlite3.Connection, device_ids: list[str], limit: int = -1, offset: int = 0
               ) -> tuple[list[str], int]:
    """One page of the metric names the devices have sent (rolled up so far), and how many there are."""
    return storage.metric_names_page(conn, _json_list(device_ids), limit, offset)


# --- the background task ----------------------------------------------------------

class Rollups:
    """Rolls up new points every ``every`` seconds and applies retention every ``retention_every``."""

    name = "rollups"
    scope: Scope = "fleet"  # docs/architecture.md, "Background parts"

    def __init__(self, store: Store, retention: Retention, *, every: float = 10.0, retention_every: float = HOUR,
                 clock: Callable[[], float] = time.time, metrics: Metrics | None = None,
                 sums: MinuteSums | None = None) -> None:
        self.store = store
        self.retention = retention
        self.every = every
        self.retention_every = retention_every
        self.clock = clock
        self.sums = sums  # the intake's (TelemetryIntake.sums): merged instead of reading the rows again
        self.partitioned = store.dsn is not None  # PostgreSQL: raw points and minutes in day partitions (partitions.py)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.pass_cpu_seconds = 0.0  # of the writer thread in the rollup passes
        if metrics is not None:
            metrics.gauge("fleetd_telemetry_rollup_lag_points", "Raw points not yet in the rollups.",
                          Read(storage.rollup_lag))
            metrics.counter("fleetd_telemetry_rollup_cpu_seconds_total", "CPU seconds of the rollup job: the passes "
                            "that merge the per-minute sums (or the rows no sums cover) into the rollups.",
                            lambda: self.pass_cpu_seconds)
            if sums is not None:
                metrics.counter("fleetd_telemetry_sums_cpu_seconds_total", "CPU seconds the intake spent keeping "
                                "per-minute sums of the points it stored, for the rollup job.",
                                lambda: sums.cpu_seconds)

    async def roll_up(self) -> int:
        """Bring the rollups up to (at least) the points committed when it started: the intake's sums first, then
        the rows no sums cover. → raw rows covered."""
        async with self._lock:
            done = 0
            for chunk in self.sums.take() if self.sums is not None else []:
                merge = self._timed(functools.partial(merge_sums_step, chunk=chunk))
                finished = False
                while not finished:
                    n, finished = await self.store.write(merge)
                    done += n
            n, left = await self.store.write(self._rows_step())  # left: the ids to cover, stored before it started
            done += n
            # Up to those ids, and not after the points stored meanwhile (each step would merge a few more).
            while n and left > 0:
                n, _ = await self.store.write(self._rows_step())
                done += n
                left -= n
            return done

    def _rows_step(self) -> Callable[[sqlite3.Connection], tuple[int, int]]:
        """A step from the rows, up to where the sums kept since the pass started begin: their rows are theirs."""
        chunks = self.sums.chunks if self.sums is not None else None
        return self._timed(functools.partial(roll_up_step, upto=chunks[0].lo if chunks else None))

    def _timed(self, fn: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
        """``fn``, adding the CPU time of the thread that runs it to :attr:`pass_cpu_seconds` (one pass runs at a
        time)."""
        def run(conn: sqlite3.Connection) -> T:
            t = time.thread_time()
            try:
                return fn(conn)
            finally:
                self.pass_cpu_seconds += time.thread_time() - t
        return run

    async def prune(self) -> dict[str, int]:
        """Apply retention: raw points in batches (each its own transaction), then the rollups series by series.
        PostgreSQL: whole day partitions of raw points and minutes (partitions.py), then the hours by series."""
        raw_cut, minute_cut, hour_cut = self.retention.cutoffs(self.clock())
        await self.roll_up()  # what is about to be deleted must be in the rollups first
        async with self._lock:
            out = {"raw": 0, "minute": 0, "hour": 0}
            levels: tuple[tuple[storage.RollupLevel, float], ...] = (("minute", minute_cut), ("hour", hour_cut))
            if self.partitioned:
                await self.ensure_partitions()
                for table, level, cut in (("telemetry", "raw", raw_cut), ("telemetry_minute", "minute", minute_cut)):
                    out[f"{level}_partitions"], out[level] = await self.store.write(
                        functools.partial(partitions.drop_before, table=table, cutoff=cut))
                levels = levels[1:]
            else:
                bound = await self.store.read(lambda c: raw_prune_bound(c, raw_cut))
                while n := await self.store.write(lambda c: prune_raw_step(c, bound)):
                    out["raw"] += n
            for level, cut in levels:
                after: int | None = 0
                while after is not None:
                    n, after = await self.store.write(functools.partial(
                        prune_rollups_step, level=level, cutoff=cut, after_series=after))
                    out[level] += n
            await self.store.write(storage.forget_empty_series)
        return out

    async def _loop(self) -> None:
        next_prune = time.monotonic() + 60
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.roll_up()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + self.retention_every
                    log.info("telemetry retention: deleted %s", await self.prune())
            except Exception:
                log.exception("telemetry rollup failed; retrying in %.0f s", self.every)

    async def ensure_partitions(self) -> list[str]:
        """PostgreSQL: make the missing day partitions (partitions.ensure; SQLite has none). → their names."""
        r = self.retention
        return [] if not self.partitioned else await self.store.write(
            lambda c: partitions.ensure(c, self.clock(), r.raw_days, r.minute_days))

    async def start(self) -> None:
        self._lock = asyncio.Lock()
        try:
            await self.ensure_partitions()
        except Exception:  # points go to the DEFAULT partition meanwhile; each retention pass tries again
            log.exception("telemetry: making the day partitions failed")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="fleetd-telemetry-rollups")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
