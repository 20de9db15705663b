"""Telemetry intake: validated points, batched across devices into one insert (group commit).

A PushTelemetry call returns once its points are committed, so a device may
drop them from its queue; many concurrent calls share one transaction.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import NoReturn

import msgspec

from .db import Store
from .errors import InvalidArgument
from .names import METRIC_NAME

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

# Metric names already matched by METRIC_NAME: devices repeat the same few, so most points skip the
# regex. Bounded: emptied when full, so a device inventing names cannot grow it without limit.
_known_names: set[str] = set()
_KNOWN_NAMES_MAX = 4096


def rows_for(device_id: str, points: list[Point], received: float) -> list[Row]:
    """The rows to store for ``points``, or InvalidArgument naming the first bad point."""
    if len(points) > MAX_POINTS:
        raise InvalidArgument(f"at most {MAX_POINTS} points per batch, got {len(points)}; send smaller batches")
    latest = received + 86400
    known, isfinite = _known_names, math.isfinite
    rows: list[Row] = []
    append = rows.append
    # A device tags its points alike: the last tags seen and their JSON are reused when equal.
    last_tags: dict[str, str] = {}
    last_json = None
    for p in points:
        name, value, ts, tags = p.name, p.value, p.ts or received, p.tags
        if name not in known:
            _check_name(points.index(p), name)
        if not (EARLIEST <= ts <= latest and isfinite(value)):
            _reject(points.index(p), p, received)
        if not tags:
            append((device_id, name, ts, value, None))
            continue
        if tags != last_tags:
            if not _tags_ok(tags):
                _reject(points.index(p), p, received)
            last_tags, last_json = tags, msgspec.json.encode(tags).decode()
        append((device_id, name, ts, value, last_json))
    return rows


def _check_name(i: int, name: str) -> None:
    METRIC_NAME.check(name, f"point {i}: metric name")
    if len(_known_names) >= _KNOWN_NAMES_MAX:
        _known_names.clear()
    _known_names.add(name)


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

    def __init__(self, store: Store) -> None:
        self.store = store
        self._rows: list[Row] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduled = False
        self._in_flight: asyncio.Future[None] | None = None
        self.points_total = 0
        self.commits = 0

    async def add(self, device_id: str, points: list[Point]) -> int:
        rows = rows_for(device_id, points, time.time())
        if not rows:
            return 0
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._rows += rows
        self._waiters.append(fut)
        if self._in_flight is None and not self._scheduled:
            # Let the other requests of this loop iteration join the batch.
            self._scheduled = True
            loop.call_soon(self._flush)
        await fut
        return len(rows)

    def _flush(self) -> None:
        self._scheduled = False
        rows, waiters = self._rows, self._waiters
        self._rows, self._waiters = [], []
        if not rows:
            return

        def insert(conn):  # type: ignore[no-untyped-def]
            conn.executemany("INSERT INTO telemetry (device_id, name, ts, value, tags) VALUES (?,?,?,?,?)", rows)

        try:
            done = asyncio.wrap_future(self.store.submit_write(insert))
        except Exception as e:  # the store is closed: nothing was stored, and every caller hears so
            _settle(waiters, e)
            return
        self._in_flight = done

        def committed(f: asyncio.Future[None]) -> None:
            self._in_flight = None
            exc = f.exception() if not f.cancelled() else asyncio.CancelledError()
            if exc is None:
                self.points_total += len(rows)
                self.commits += 1
            _settle(waiters, exc)
            if self._rows:  # arrived while this insert ran: they go in the next one, now
                self._flush()

        done.add_done_callback(committed)

    async def close(self) -> None:
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
