"""The per-minute sums the intake keeps of what it has stored (SQLite), so that the rollup job need not read the raw
rows again: count, sum, min and max per (device, metric, minute), in chunks of consecutive raw ids. The rollup job
(rollups.py) merges them into the minute and hour rollups; docs/telemetry.md, "How it works".
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

MINUTE = 60

SUMS_CHUNK_KEYS = 50_000  # (device, metric, minute) keys per chunk of sums: one merge transaction (~100 ms)
SUMS_MAX_KEYS = 200_000  # past that the oldest chunks are dropped (the SQL pass covers their ids): ~50 MB at most
SUMS_MAX_VALUES = 1_000_000  # values held before they are folded into their sums (~40 MB)
# bucket() times one call in this many (and counts it this many times): time.thread_time is a system call, 0.7 µs
# here, against ~10 µs of bucketing a 100-point batch.
TIMED_EVERY = 16

SumKey = tuple[str, str, int]
"""(device_id, metric, minute start in Unix seconds)."""


class Sample(Protocol):
    """What the sums read of a point (:class:`fleetd.telemetry.intake.Point`)."""

    name: str
    value: float
    ts: float


Buckets = dict[int, dict[str, list[float]]]
"""Values by minute start, then metric name."""


def bucket_points(points: Iterable[Sample], received: float) -> Buckets:
    """One batch's values by minute of ts (0: ``received``), the minute as the SQL pass computes it
    (``CAST(ts / 60 AS INTEGER) * 60``), then by metric."""
    out: Buckets = {}
    by_name: dict[str, list[float]] = {}
    last_ts: float | None = None
    for p in points:
        ts = p.ts
        if ts != last_ts:  # a device samples its metrics together: consecutive points share their ts
            last_ts = ts
            minute = int((ts or received) / MINUTE) * MINUTE
            by_name = out.get(minute) or out.setdefault(minute, {})
        values = by_name.get(p.name)
        if values is None:
            by_name[p.name] = [p.value]
        else:
            values.append(p.value)
    return out


@dataclass(slots=True, eq=False)
class SumsChunk:
    """Count, sum, min and max per (device, metric, minute) of exactly the raw ids (lo, hi]: folded into ``sums``,
    or still values."""

    lo: int
    hi: int
    sums: dict[SumKey, list[Any]] = field(default_factory=dict)  # [count, sum, min, max]
    # Not folded yet, by device. Counting, summing and comparing happen when folded, in C over many values at once.
    values: dict[str, Buckets] = field(default_factory=dict)
    keys: int = 0  # distinct keys in sums and values
    held: int = 0  # values not folded yet

    def add(self, device_id: str, buckets: Buckets) -> None:
        """One batch's values (:func:`bucket_points`; its lists become the chunk's)."""
        have = self.values.get(device_id)
        if have is None:
            have = self.values[device_id] = {}
        for minute, by_name in buckets.items():
            held = have.get(minute)
            if held is None:
                held = have[minute] = {}
            for name, vs in by_name.items():
                values = held.get(name)
                if values is None:
                    held[name] = vs
                    if (device_id, name, minute) not in self.sums:
                        self.keys += 1
                else:
                    values.extend(vs)
                self.held += len(vs)

    def fold(self) -> None:
        """Fold the values into their sums."""
        sums = self.sums
        for device_id, by_minute in self.values.items():
            for minute, by_name in by_minute.items():
                for name, vs in by_name.items():
                    lo, hi, total = min(vs), max(vs), sum(vs)
                    key = (device_id, name, minute)
                    a = sums.get(key)
                    if a is None:
                        sums[key] = [len(vs), total, lo, hi]
                    else:
                        a[0] += len(vs)
                        a[1] += total
                        if lo < a[2]:
                            a[2] = lo
                        if hi > a[3]:
                            a[3] = hi
        self.values = {}
        self.held = 0

    def rows(self) -> Iterator[tuple[str, str, int, int, float, float, float]]:
        self.fold()
        return ((d, n, m, a[0], a[1], a[2], a[3]) for (d, n, m), a in self.sums.items())


class MinuteSums:
    """Per-minute sums of the raw ids committed since the rollups last took them, in chunks of consecutive ids.

    Only the event loop touches them: the intake buckets each batch's values as it checks them (:meth:`bucket`) and
    adds them once their insert has committed, in commit order (:meth:`add`); the rollup pass takes the chunks
    (:meth:`take`) and merges each on the writer if it starts at the watermark (:func:`merge_sums_step`). A chunk
    always holds exactly the rows of its ids; anything that breaks the run (ids inserted without it, a dropped
    chunk, a restart) only leaves ids that no chunk covers, which the rollup pass aggregates from the rows instead.
    So losing them is always safe.
    """

    def __init__(self, chunk_keys: int = SUMS_CHUNK_KEYS, max_keys: int = SUMS_MAX_KEYS,
                 max_values: int = SUMS_MAX_VALUES) -> None:
        self.chunk_keys, self.max_keys, self.max_values = chunk_keys, max_keys, max_values
        self.chunks: collections.deque[SumsChunk] = collections.deque()  # each starts where the one before ends
        self.cpu_seconds = 0.0  # of the event loop in bucket() (estimated: one call in TIMED_EVERY) and add()
        self._untimed = 0  # bucket() calls until the next timed one

    def bucket(self, points: Iterable[Sample], received: float) -> Buckets:
        """:func:`bucket_points`, its CPU time counted as the rollups': the intake runs it when it has just checked the
        points, while they are in the processor's caches."""
        if self._untimed:
            self._untimed -= 1
            return bucket_points(points, received)
        self._untimed = TIMED_EVERY - 1
        t = time.thread_time()
        try:
            return bucket_points(points, received)
        finally:
            self.cpu_seconds += (time.thread_time() - t) * TIMED_EVERY

    def add(self, lo: int, hi: int, batches: Iterable[tuple[str, Buckets]]) -> None:
        """The values of ``batches`` (device, :meth:`bucket`), stored (committed) as the raw ids (lo, hi] in this
        order."""
        t = time.thread_time()
        last = self.chunks[-1] if self.chunks else None
        if last is not None and last.hi != lo:  # ids the sums did not see came in between: start a new run
            self.clear()
            last = None
        if last is None or last.keys >= self.chunk_keys:
            last = SumsChunk(lo, lo)
            self.chunks.append(last)
        for device_id, buckets in batches:
            last.add(device_id, buckets)
        last.hi = hi
        if sum(chunk.held for chunk in self.chunks) > self.max_values:
            for chunk in self.chunks:
                chunk.fold()
        while len(self.chunks) > 1 and sum(chunk.keys for chunk in self.chunks) > self.max_keys:
            self.chunks.popleft()
        self.cpu_seconds += time.thread_time() - t

    def take(self) -> list[SumsChunk]:
        """Every chunk, in id order, for the rollup pass; the next points start a new one."""
        chunks = list(self.chunks)
        self.chunks.clear()
        return chunks

    def clear(self) -> None:
        self.chunks.clear()
