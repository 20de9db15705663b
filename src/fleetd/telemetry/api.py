"""TelemetryService: downsampled series of one device, or aggregated over the devices with some tags."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time

import msgspec

from ..core.clock import to_dt
from ..core.errors import InvalidArgument
from ..core.fields import Int32, Offset, page_limit
from ..core.names import METRIC_NAME
from ..devices import registry
from ..http.rpc import Context, Service
from . import rollups
from .rollups import Bucket, Retention

service = Service("TelemetryService", "Telemetry queries: raw points for short ranges, rollups for long ones, "
                  "downsampled to at most max_points.")

DEFAULT_POINTS = 500
MAX_POINTS = 10_000
DEFAULT_RANGE = 3600.0


class QueryRequest(msgspec.Struct, kw_only=True):
    # One device (id, hardware id or name) ...
    device: str = ""
    # ... or every device with all of these tags (merged: min of mins, max of maxes, avg of all points).
    tags: dict[str, str] = {}
    # With tags: only devices of this type.
    device_type: str = ""
    metric: str
    # Unset: an hour before end.
    start: dt.datetime | None = None
    # Unset: now.
    end: dt.datetime | None = None
    # 1..10000; 500 when unset.
    max_points: Int32 = 0


class QueryResponse(msgspec.Struct, kw_only=True):
    metric: str
    # raw, minute or hour: where the answer came from.
    resolution: str
    # Width of each bucket, seconds.
    bucket_seconds: float
    start: dt.datetime
    end: dt.datetime
    # How many devices were selected (not all need have data).
    device_count: int
    points: list[Bucket]


def _selected(conn: sqlite3.Connection, req: QueryRequest) -> list[str]:
    if req.device:
        return [registry.find_device_row(conn, req.device)["id"]]
    return registry.select_ids(conn, tags=req.tags, device_types=[req.device_type] if req.device_type else None)


@service.method(auth="viewer", readonly=True)
async def Query(ctx: Context, req: QueryRequest) -> QueryResponse:
    """A metric over a time range, downsampled to at most max_points buckets (avg, min, max, count each)."""
    METRIC_NAME.check(req.metric, "metric")
    if bool(req.device) == bool(req.tags or req.device_type):
        raise InvalidArgument("give either device, or tags (and/or device_type) to aggregate over devices")
    max_points = req.max_points or DEFAULT_POINTS
    if not 1 <= max_points <= MAX_POINTS:
        raise InvalidArgument(f"max_points must be 1..{MAX_POINTS}, got {max_points}")
    now = time.time()
    end = req.end.timestamp() if req.end else now
    start = req.start.timestamp() if req.start else end - DEFAULT_RANGE
    if start >= end:
        raise InvalidArgument("start must be before end")
    s = ctx.fleet.settings
    retention = Retention(s.telemetry_raw_days, s.telemetry_minute_days, s.telemetry_hour_days)
    plan = rollups.plan(rollups.choose_level(start, end, max_points, now, retention), start, end, max_points)

    def run(conn: sqlite3.Connection) -> tuple[int, list[Bucket]]:
        ids = _selected(conn, req)
        return len(ids), rollups.query(conn, ids, req.metric, plan, start)

    count, points = await ctx.fleet.store.read(run)
    return QueryResponse(metric=req.metric, resolution=plan.level, bucket_seconds=plan.width,
                         start=to_dt(start), end=to_dt(end), device_count=count,  # type: ignore[arg-type]
                         points=points)


class ListMetricsRequest(msgspec.Struct, kw_only=True):
    # Device id, hardware id or name.
    device: str
    # 1..10000; 1000 when unset.
    limit: Int32 = 0
    offset: Offset = 0


class ListMetricsResponse(msgspec.Struct, kw_only=True):
    metrics: list[str]
    # How many names the device has in all.
    total: int = 0


@service.method(auth="viewer", readonly=True)
async def ListMetrics(ctx: Context, req: ListMetricsRequest) -> ListMetricsResponse:
    """One page of the metric names a device has sent (those already rolled up, i.e. up to a few seconds ago),
    sorted."""
    limit = page_limit(req.limit, 1000, 10_000)

    def run(conn: sqlite3.Connection) -> tuple[list[str], int]:
        return rollups.metrics_of(conn, [registry.find_device_row(conn, req.device)["id"]], limit, req.offset)

    names, total = await ctx.fleet.store.read(run)
    return ListMetricsResponse(metrics=names, total=total)
