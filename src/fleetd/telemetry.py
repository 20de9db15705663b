"""Telemetry intake: validated points, batched across devices into one insert (group commit).

A PushTelemetry call returns once its points are committed, so a device may
drop them from its queue; many concurrent calls share one transaction.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from typing import Any

import msgspec

from .db import Store
from .errors import InvalidArgument

METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")
MAX_POINTS = 5000
MAX_TAGS = 16
EARLIEST = 946684800.0  # 2000-01-01


class Point(msgspec.Struct, kw_only=True):
    name: str
    value: float
    # Unix seconds; 0 (or missing) means "now" for devices without a clock.
    ts: float = 0.0
    tags: dict[str, str] = {}


def validate(points: list[Point], received: float) -> list[tuple[str, float, float, str | None]]:
    """→ rows of (name, ts, value, tags json), or InvalidArgument naming the first bad point."""
    if len(points) > MAX_POINTS:
        raise InvalidArgument(f"at most {MAX_POINTS} points per batch, got {len(points)}; send smaller batches")
    latest = received + 86400
    rows = []
    for i, p in enumerate(points):
        if not METRIC_NAME.match(p.name):
            raise InvalidArgument(f"point {i}: metric name {p.name!r} must be letters, digits and _.:- "
                                  "(at most 128, not starting with a digit)")
        if not math.isfinite(p.value):
            raise InvalidArgument(f"point {i}: value must be a finite number")
        ts = p.ts or received
        if not EARLIEST <= ts <= latest:
            raise InvalidArgument(f"point {i}: ts {p.ts} is not a plausible Unix time in seconds; send 0 when the "
                                  "device has no clock")
        tags = None
        if p.tags:
            if len(p.tags) > MAX_TAGS or any(len(k) > 64 or len(v) > 128 for k, v in p.tags.items()):
                raise InvalidArgument(f"point {i}: at most {MAX_TAGS} tags, keys ≤ 64 and values ≤ 128 characters")
            tags = msgspec.json.encode(p.tags).decode()
        rows.append((p.name, ts, p.value, tags))
    return rows


class TelemetryIntake:
    """Group commit: while one insert runs on the writer thread, new points wait and go in the next one."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._rows: list[tuple[Any, ...]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduled = False
        self._in_flight = False
        self.points_total = 0

    async def add(self, device_id: str, points: list[Point]) -> int:
        rows = validate(points, time.time())
        if not rows:
            return 0
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._rows.extend((device_id, *r) for r in rows)
        self._waiters.append(fut)
        if not self._in_flight and not self._scheduled:
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
        self._in_flight = True

        def insert(conn):  # type: ignore[no-untyped-def]
            conn.executemany("INSERT INTO telemetry (device_id, name, ts, value, tags) VALUES (?,?,?,?,?)", rows)

        done = asyncio.wrap_future(self.store.submit_write(insert))

        def settle(f: asyncio.Future[None]) -> None:
            self._in_flight = False
            exc = f.exception()
            if exc is None:
                self.points_total += len(rows)
            for w in waiters:
                if w.done():
                    continue
                if exc is None:
                    w.set_result(None)
                else:
                    w.set_exception(exc)
            if self._rows:
                self._flush()

        done.add_done_callback(settle)

    async def close(self) -> None:
        self._flush()
