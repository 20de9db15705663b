"""PostgreSQL's raw points and minute rollups in day partitions (docs/telemetry.md, "On PostgreSQL").

Both tables are partitioned by ``ts`` (migrations/postgresql/0004), one partition per UTC day, named
``<table>_pYYYYMMDD``. The rollup job makes the partitions from the day that holds the table's retention cutoff to
:data:`AHEAD_DAYS` days past today, when it starts and at each retention pass; a row whose day has no partition
(older than the cutoff when it arrives, or ahead of the partitions made) goes to the table's DEFAULT partition, and
moves to its day's partition when that is made. Retention drops the partitions wholly older than the cutoff (the
one that straddles it stays until it is wholly past; raw ones only once all their points are rolled up) and deletes
the few rows of the DEFAULT partition older than that day. The hour rollups (400 days, small) keep deleting by
series (rollups.prune_rollups_step).

SQLite keeps one table each and deletes by id range and by series; nothing here runs there.
"""

from __future__ import annotations

import sqlite3
import time

from . import storage

DAY = 86400
AHEAD_DAYS = 3  # days made past today: points go to the DEFAULT partition only after an outage of the job that long
# Seconds a partition change waits for the table's lock (a long read holds it) before it gives up until the next
# retention pass, an hour later: the writer, and the reads queued behind the lock, wait no longer than that.
LOCK_WAIT = 5.0


def partition_name(table: str, day: int) -> str:
    """The partition of ``table`` for the day starting at ``day``."""
    return f"{table}_p{time.strftime('%Y%m%d', time.gmtime(day))}"


def day_start(ts: float) -> int:
    """The start of the UTC day that holds ``ts``."""
    return int(ts // DAY) * DAY


def wanted_days(now: float, keep_days: float) -> range:
    """The starts of the days that should have a partition, for a retention of ``keep_days``: from the day holding
    the cutoff to AHEAD_DAYS past today."""
    return range(day_start(now - keep_days * DAY), day_start(now) + (AHEAD_DAYS + 1) * DAY, DAY)


def ensure(conn: sqlite3.Connection, now: float, raw_days: float, minute_days: float) -> list[str]:
    """Make the missing partitions of :func:`wanted_days` of the raw and minute tables, in the caller's write
    transaction (which blocks inserts into a table while it makes its partitions; only when some are missing).
    → the names made."""
    made = []
    for table, keep in (("telemetry", raw_days), ("telemetry_minute", minute_days)):
        days = wanted_days(now, keep)
        have = {start for _, start, _ in storage.partitions_of(conn, table)}
        if all(day in have for day in days):
            continue
        storage.wait_for_locks_at_most(conn, LOCK_WAIT)
        storage.lock_partitions(conn, table)
        have = {start for _, start, _ in storage.partitions_of(conn, table)}  # another replica may have made some
        for day in days:
            if day not in have:
                storage.make_partition(conn, table, partition_name(table, day), day, day + DAY)
                made.append(partition_name(table, day))
    return made


def drop_before(conn: sqlite3.Connection, table: str, cutoff: float) -> tuple[int, int]:
    """Retention of ``table`` (raw points or minute rollups), in the caller's write transaction: drop the
    partitions that end at or before ``cutoff``'s day (raw ones only if all rolled up) and delete the rows of the
    DEFAULT partition older than that day (raw ones only if rolled up). → (partitions dropped, rows deleted)."""
    gone_before = day_start(cutoff)
    wm = storage.watermark(conn)
    old = [name for name, _, end in storage.partitions_of(conn, table) if end <= gone_before]
    storage.wait_for_locks_at_most(conn, LOCK_WAIT)
    dropped = sum(storage.drop_partition(conn, table, name, wm) for name in old)
    deleted = storage.delete_default_before(conn, table, gone_before, wm)
    if table == "telemetry":
        storage.delete_blocks_before(conn, gone_before, wm)
    return dropped, deleted
