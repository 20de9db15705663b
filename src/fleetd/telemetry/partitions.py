"""PostgreSQL's raw telemetry in day partitions (docs/telemetry.md, "On PostgreSQL").

The raw table is partitioned by ``ts`` (migrations/postgresql/0004), one partition per UTC day, named
``telemetry_pYYYYMMDD``. The rollup job makes the partitions from the day that holds the raw-retention cutoff to
:data:`AHEAD_DAYS` days past today, when it starts and at each retention pass; a point whose day has no partition
(older than the cutoff when it arrives, or ahead of the partitions made) goes to the DEFAULT partition, and moves
to its day's partition when that is made. Retention drops the partitions wholly older than the cutoff (the one
that straddles it stays until it is wholly past) once all their points are rolled up, and deletes the few rolled-up
points of the DEFAULT partition older than that.

SQLite keeps one table and deletes by id range (rollups.prune_raw_step); nothing here runs there.
"""

from __future__ import annotations

import sqlite3
import time

from . import storage

DAY = 86400
AHEAD_DAYS = 3  # days made past today: a day without its partition is one outage of the job longer than that


def partition_name(day_start: int) -> str:
    return "telemetry_p" + time.strftime("%Y%m%d", time.gmtime(day_start))


def day_start(ts: float) -> int:
    """The start of the UTC day that holds ``ts``."""
    return int(ts // DAY) * DAY


def wanted_days(now: float, raw_days: float) -> range:
    """The starts of the days that should have a partition: from the one holding the raw-retention cutoff to
    AHEAD_DAYS past today's."""
    return range(day_start(now - raw_days * DAY), day_start(now) + (AHEAD_DAYS + 1) * DAY, DAY)


def ensure(conn: sqlite3.Connection, now: float, raw_days: float) -> list[str]:
    """Make the partitions of :func:`wanted_days` that are missing (in the caller's write transaction, which
    blocks inserts into the raw table while it lasts; only when some are missing). → the names made."""
    days = wanted_days(now, raw_days)
    have = {start for _, start, _ in storage.raw_partitions(conn)}
    if all(day in have for day in days):
        return []
    storage.lock_raw_partitions(conn)
    have = {start for _, start, _ in storage.raw_partitions(conn)}  # another replica's job may have made some
    made = []
    for day in days:
        if day not in have:
            storage.make_raw_partition(conn, partition_name(day), day, day + DAY)
            made.append(partition_name(day))
    return made


def drop_before(conn: sqlite3.Connection, cutoff: float) -> tuple[int, int]:
    """Retention of raw points (in the caller's write transaction): drop the partitions that end at or before
    ``cutoff``'s day and are all rolled up, and delete the rolled-up points of the DEFAULT partition older than that
    day. → (partitions dropped, points deleted from the DEFAULT partition)."""
    gone_before = day_start(cutoff)
    old = [name for name, _, end in storage.raw_partitions(conn) if end <= gone_before]
    wm = storage.watermark(conn)
    dropped = sum(storage.drop_raw_partition(conn, name, wm) for name in old)
    deleted = storage.delete_default_raw_before(conn, gone_before, wm)
    storage.delete_blocks_before(conn, gone_before, wm)
    return dropped, deleted
