"""The telemetry's queries (docs/architecture.md, "Where SQL lives"): raw points, the rollups and their
bookkeeping (the watermark, the id blocks, the series), and the aggregates read from them.

Device lists go in as one JSON list (text), encoded once by the caller for all the statements of a read. The
orchestrator's scan of raw points runs its SQL from module-level constants.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol

import msgspec

from ..store.database import transaction
from ..store.dialect import Dialect, dialect_of

RollupLevel = Literal["minute", "hour"]
HOUR = 3600
MAX_ID = 2**63 - 1  # the largest raw id

# --- raw points ---------------------------------------------------------------------------------------------------

Batch = tuple[str, float, str]
"""(device_id, time received, the batch's points as a JSON array): one PushTelemetry call's points, checked, as
``[{"name": ..., "value": ..., "ts": ..., "tags": {...}}, ...]`` (ts 0 or missing: the time received; tags empty or
missing: none)."""


GROUP_SIZES = (1, 2, 4, 8, 16, 32, 64)  # batches per insert statement; a group is padded up to one of these
MAX_BATCHES_PER_INSERT = GROUP_SIZES[-1]


@functools.cache
def _insert_batches(d: Dialect, k: int) -> str:
    """One statement storing ``k`` batches (3 parameters each), in order."""
    member = functools.partial(d.json_member, "p.value")
    one = (f"SELECT ?, {member('name', 'text')}, COALESCE(NULLIF({member('ts', 'real')}, 0), ?), "
           f"{member('value', 'real')}, NULLIF({member('tags', 'json')}, '{{}}') "
           f"FROM {d.json_array_elements('p')}")
    return "INSERT INTO telemetry (device_id, name, ts, value, tags) " + " UNION ALL ".join([one] * k)


_EMPTY_BATCH: Batch = ("", 0.0, "[]")


def insert_point_batches(conn: sqlite3.Connection, batches: list[Batch]) -> tuple[int, int | None]:
    """Store the raw points of up to MAX_BATCHES_PER_INSERT batches with one statement: the database unpacks each
    batch's JSON itself, so the writer holds the GIL for a few binds per batch, not per point; outside a transaction
    the statement is one (docs/performance.md, "Telemetry"). The rows get consecutive ids in the batches' order.
    → (points stored, the last one's id; None if none)."""
    if len(batches) > MAX_BATCHES_PER_INSERT:
        raise ValueError(f"at most {MAX_BATCHES_PER_INSERT} batches per insert, got {len(batches)}")
    k = next(size for size in GROUP_SIZES if size >= len(batches))
    padded = batches + [_EMPTY_BATCH] * (k - len(batches))
    cur = conn.execute(_insert_batches(dialect_of(conn), k), [x for b in padded for x in b])
    return (cur.rowcount, cur.lastrowid) if cur.rowcount > 0 else (0, None)


# PostgreSQL: the raw inserts of all connections (every replica's writer) take turns under this transaction-level
# advisory lock, so that each statement's rows get consecutive ids and ids commit in increasing order, as on SQLite's
# single writer: the rollups' watermark and the intake's per-minute sums rely on both (rollups.py).
RAW_INSERT_LOCK = 0x666C_6565_7464_7231  # "fleetdr1"
_LOCK_RAW_INSERTS = f"SELECT pg_advisory_xact_lock({RAW_INSERT_LOCK})"
# The transaction and the lock in one round trip: without parameters the two statements go as one simple query.
_BEGIN_LOCKED = f"BEGIN; {_LOCK_RAW_INSERTS}"
_COPY = "COPY telemetry (device_id, name, ts, value, tags) FROM STDIN (FORMAT BINARY)"
_COPY_TYPES = ("text", "text", "float8", "float8", "text")
_TOP_RAW_ID = "SELECT currval(pg_get_serial_sequence('telemetry', 'id'))"


class StoredPoint(Protocol):
    """What the COPY reads of a checked point (intake.Point)."""

    name: str
    value: float
    ts: float
    tags: dict[str, str]


PointBatch = tuple[str, float, Sequence[StoredPoint]]
"""PostgreSQL's form of a :data:`Batch`: (device_id, time received, the checked points themselves)."""

_encode_tags = msgspec.json.Encoder().encode


def copy_point_batches(conn: Any, batches: list[PointBatch], top: bool = True) -> tuple[int, int | None]:
    """PostgreSQL (the adapter's connection, store/postgres.py): store the points of ``batches`` with one binary
    COPY, in a transaction of its own under RAW_INSERT_LOCK; the rows get consecutive ids in the batches' order. The
    points come as the intake checked them, not as JSON: neither the event loop encodes them nor the writer decodes
    them (docs/performance.md, "Telemetry on PostgreSQL"). Tags are stored as the JSON text :func:`intake.rows_for`
    gives. Four round trips: BEGIN with the lock, the COPY's start and its end, COMMIT; with ``top``, a fifth reads
    the last id (only per-minute sums need it, and a server on PostgreSQL keeps none). → (points stored, the last
    one's id; None if none or not ``top``)."""
    stored = 0
    last: int | None = None
    try:
        conn.execute(_BEGIN_LOCKED)  # a lock not had within lock_timeout fails it, inside the transaction
        with conn.raw.cursor() as cur, cur.copy(_COPY) as copy:
            copy.set_types(_COPY_TYPES)
            write = copy.write_row
            for device_id, received, points in batches:
                for p in points:
                    tags = p.tags
                    write((device_id, p.name, p.ts or received, p.value, _encode_tags(tags).decode() if tags else None))
                stored += len(points)
        if top and stored:
            last = int(conn.execute(_TOP_RAW_ID).fetchone()[0])
        conn.execute("COMMIT")
    except BaseException:  # as store.database.transaction: roll back what is still open, raise what happened
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return stored, last


def insert_point_batches_locked(conn: Any, batches: list[Batch]) -> tuple[int, int | None]:
    """PostgreSQL: :func:`insert_point_batches` in a transaction of its own under RAW_INSERT_LOCK (what
    tests/telemetry/bench_pg_intake.py holds COPY against)."""
    with transaction(conn):
        conn.execute(_LOCK_RAW_INSERTS)
        return insert_point_batches(conn, batches)


def device_metric_names(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """Every (device, metric name) stored: rolled-up series, and raw points not rolled up yet."""
    return conn.execute(
        "SELECT device_id, name FROM telemetry_series UNION SELECT DISTINCT device_id, name FROM telemetry "
        "WHERE id > (SELECT COALESCE(MAX(rolled_up_to), 0) FROM telemetry_rollup_state)").fetchall()


def newest_raw_id(conn: sqlite3.Connection) -> int | None:
    top = conn.execute("SELECT MAX(id) FROM telemetry").fetchone()[0]
    return None if top is None else int(top)


def oldest_raw_id(conn: sqlite3.Connection) -> int | None:
    first = conn.execute("SELECT MIN(id) FROM telemetry").fetchone()[0]
    return None if first is None else int(first)


def delete_raw_through(conn: sqlite3.Connection, upto: int) -> int:
    """Delete the raw points with id <= ``upto``. → how many."""
    return int(conn.execute("DELETE FROM telemetry WHERE id <= ?", (upto,)).rowcount)


def _points_breaking(op: str, bounded: bool) -> str:
    upper = "AND id <= ? " if bounded else ""
    return (f"SELECT device_id, ts FROM telemetry WHERE id > ? {upper}AND name = ? AND ts >= ? "
            f"AND NOT (value {op} ?)")


# Comparison operator (a health condition's, from its fixed list) → the scan, with and without an upper id.
_POINTS_BREAKING = {op: (_points_breaking(sql_op, False), _points_breaking(sql_op, True))
                    for op, sql_op in (("<", "<"), ("<=", "<="), (">", ">"), (">=", ">="), ("==", "="),
                                       ("!=", "!="))}


def points_breaking(conn: sqlite3.Connection, lo: int, hi: int | None, metric: str, since: float, op: str,
                    threshold: float) -> list[tuple[str, float]]:
    """(device, ts) of the raw points with lo < id <= hi (hi None: no upper bound) of ``metric`` from ``since``
    on whose value fails ``value OP threshold`` (OP: < <= > >= == !=)."""
    unbounded, bounded = _POINTS_BREAKING[op]
    cur = conn.cursor()
    cur.row_factory = None  # plain tuples: the orchestrator reads these on every pass
    if hi is None:
        return cur.execute(unbounded, (lo, metric, since, threshold)).fetchall()
    return cur.execute(bounded, (lo, hi, metric, since, threshold)).fetchall()


# --- the rollup watermark and the id blocks ------------------------------------------------------------------------

def watermark(conn: sqlite3.Connection) -> int:
    """The highest raw id the rollups cover."""
    return int(conn.execute("SELECT rolled_up_to FROM telemetry_rollup_state").fetchone()[0])


def move_watermark(conn: sqlite3.Connection, lo: int, hi: int) -> bool:
    """Move the watermark from ``lo`` to ``hi``; False (nothing changed) if it is not at ``lo`` any more."""
    return conn.execute("UPDATE telemetry_rollup_state SET rolled_up_to = ? WHERE rolled_up_to = ?",
                        (hi, lo)).rowcount == 1


def rollup_lag(conn: sqlite3.Connection) -> int:
    """Raw points not yet in the rollups. (PostgreSQL's retention may drop the newest raw id, which SQLite's keeps:
    its sequence never hands one out again, but the difference with the watermark is then below zero.)"""
    return max(0, int(conn.execute("SELECT COALESCE((SELECT MAX(id) FROM telemetry), 0) - rolled_up_to "
                                   "FROM telemetry_rollup_state").fetchone()[0]))


def insert_block(conn: sqlite3.Connection, lo: int, hi: int, min_ts: float, max_ts: float) -> None:
    """Record the time span [min_ts, max_ts) of the raw ids (lo, hi]."""
    conn.execute("INSERT INTO telemetry_blocks (hi, lo, min_ts, max_ts) VALUES (?,?,?,?)", (hi, lo, min_ts, max_ts))


def blocks_overlapping(conn: sqlite3.Connection, start: float, end: float) -> list[tuple[int, int]]:
    """(lo, hi) of the id blocks whose time span meets [start, end), by hi."""
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT lo, hi FROM telemetry_blocks WHERE max_ts > ? AND min_ts < ? ORDER BY hi", (start, end))]


def first_block_newer_than(conn: sqlite3.Connection, cutoff: float) -> int | None:
    """The lowest id of the blocks holding a point newer than ``cutoff``."""
    young = conn.execute("SELECT MIN(lo) FROM telemetry_blocks WHERE max_ts > ?", (cutoff,)).fetchone()[0]
    return None if young is None else int(young)


def delete_blocks_through(conn: sqlite3.Connection, hi: int) -> None:
    conn.execute("DELETE FROM telemetry_blocks WHERE hi <= ?", (hi,))


# --- rolling up ---------------------------------------------------------------------------------------------------

@functools.cache
def _merge(d: Dialect) -> tuple[str, str]:
    # The old row's columns qualified: PostgreSQL finds a bare name ambiguous (the table's, or excluded's).
    def upsert(t: str) -> str:
        return (f"ON CONFLICT (series_id, ts) DO UPDATE SET count = {t}.count + excluded.count, "
                f"sum = {t}.sum + excluded.sum, min = {d.least(f'{t}.min', 'excluded.min')}, "
                f"max = {d.greatest(f'{t}.max', 'excluded.max')}")
    joined = (f"FROM {d.temp_table('rollup_delta')} d JOIN telemetry_series s ON s.device_id = d.device_id "
              "AND s.name = d.name")
    minute = (f"INSERT INTO telemetry_minute (series_id, ts, count, sum, min, max) "
              f"SELECT s.id, d.ts, d.count, d.sum, d.min, d.max {joined} WHERE true {upsert('telemetry_minute')}")
    # The hour rows are a rollup of the minute rows: the same merge one level up.
    hour = (f"INSERT INTO telemetry_hour (series_id, ts, count, sum, min, max) "
            f"SELECT s.id, d.ts / {HOUR} * {HOUR} AS h, {d.sum_int('d.count')}, SUM(d.sum), MIN(d.min), MAX(d.max) "
            f"{joined} WHERE true GROUP BY s.id, h {upsert('telemetry_hour')}")
    return minute, hour


@functools.cache
def _delta(d: Dialect) -> dict[str, str]:
    """The statements on the connection's temporary table rollup_delta: (device, metric, minute) aggregates on
    their way into the rollups."""
    delta = d.temp_table("rollup_delta")
    return {
        "create": (f"CREATE TEMP TABLE IF NOT EXISTS rollup_delta (device_id TEXT, name TEXT, ts {d.integer}, "
                   f"count {d.integer}, sum {d.real}, min {d.real}, max {d.real})"),
        "empty": f"DELETE FROM {delta}",
        "span": f"SELECT MIN(ts), MAX(ts) FROM {delta}",
        "series": ("INSERT INTO telemetry_series (device_id, name) SELECT DISTINCT device_id, name "
                   f"FROM {delta} WHERE true ON CONFLICT (device_id, name) DO NOTHING"),
        "from_raw": (f"INSERT INTO {delta} SELECT device_id, name, {d.truncate('ts / 60')} * 60 AS m, COUNT(*), "
                     "SUM(value), MIN(value), MAX(value) FROM telemetry WHERE id > ? AND id <= ? "
                     "GROUP BY device_id, name, m"),
        "insert": f"INSERT INTO {delta} VALUES (?,?,?,?,?,?,?)",
    }


def _new_delta(conn: sqlite3.Connection) -> dict[str, str]:
    """An empty rollup_delta (:func:`_delta`), and its statements."""
    sql = _delta(dialect_of(conn))
    conn.execute(sql["create"])
    conn.execute(sql["empty"])
    return sql


def _merge_delta(conn: sqlite3.Connection, sql: dict[str, str]) -> tuple[float, float] | None:
    """Merge the delta into the minute and hour rollups, making the series they need, and empty it. → the time span
    [first minute, end of the last minute) it covered, None if it was empty."""
    first, last = conn.execute(sql["span"]).fetchone()
    if first is None:
        return None
    conn.execute(sql["series"])
    for merge in _merge(dialect_of(conn)):
        conn.execute(merge)
    conn.execute(sql["empty"])
    return float(first), float(last + 60)


def roll_up_range(conn: sqlite3.Connection, lo: int, hi: int) -> tuple[float, float] | None:
    """Merge the raw ids (lo, hi], aggregated per (device, metric, minute), into the minute and hour rollups, making
    the series they need. → the time span [first minute, end of the last minute) they covered, None if none.

    All of it runs inside the database (the fallback for ids the writer's per-minute sums do not cover)."""
    sql = _new_delta(conn)
    conn.execute(sql["from_raw"], (lo, hi))
    return _merge_delta(conn, sql)


def merge_minute_sums(conn: sqlite3.Connection, rows: Iterable[tuple[str, str, int, int, float, float, float]]
                      ) -> tuple[float, float] | None:
    """Merge per-minute aggregates (device_id, metric, minute start, count, sum, min, max), each key once, into the
    minute and hour rollups, as :func:`roll_up_range` does those it computes. → the time span they covered."""
    sql = _new_delta(conn)
    conn.executemany(sql["insert"], rows)
    return _merge_delta(conn, sql)


# --- retention of the rollups -------------------------------------------------------------------------------------

def series_ids_after(conn: sqlite3.Connection, after: int, limit: int) -> list[int]:
    """The next ``limit`` series ids after ``after``, in order."""
    return [r[0] for r in conn.execute("SELECT id FROM telemetry_series WHERE id > ? ORDER BY id LIMIT ?",
                                       (after, limit))]


_DELETE_ROLLUPS = {level: f"DELETE FROM telemetry_{level} WHERE series_id = ? AND ts < ?"
                   for level in ("minute", "hour")}


def delete_rollups_before(conn: sqlite3.Connection, level: RollupLevel, series_ids: list[int], cutoff: float) -> int:
    """Delete the ``level`` rows of these series older than ``cutoff``. → how many."""
    return int(conn.executemany(_DELETE_ROLLUPS[level], ((i, cutoff) for i in series_ids)).rowcount)


def forget_empty_series(conn: sqlite3.Connection) -> int:
    """Series with no rollup rows left (deleted devices, retired metrics); a new point makes a new one."""
    return int(conn.execute(
        "DELETE FROM telemetry_series WHERE NOT EXISTS (SELECT 1 FROM telemetry_hour h WHERE h.series_id = "
        "telemetry_series.id) AND NOT EXISTS (SELECT 1 FROM telemetry_minute m WHERE m.series_id = "
        "telemetry_series.id)").rowcount)


# --- aggregates for queries and alert windows ----------------------------------------------------------------------

Aggregates = list[tuple[Any, int, float, float, float]]
"""(key, count, sum, min, max) rows."""


def raw_buckets(conn: sqlite3.Connection, *, origin: float, width: float, lo: int, hi: int, metric: str,
                device_ids: str, start: float, end: float) -> Aggregates:
    """The raw points lo < id <= hi of ``metric`` from the devices in [start, end), per bucket
    ``(ts - origin) / width``."""
    d = dialect_of(conn)
    return conn.execute(
        f"SELECT {d.truncate('(ts - ?) / ?')} AS b, COUNT(*), SUM(value), MIN(value), MAX(value) "
        f"FROM telemetry WHERE id > ? AND id <= ? AND name = ? AND {d.in_json_list('device_id')} "
        "AND ts >= ? AND ts < ? GROUP BY b", (origin, width, lo, hi, metric, device_ids, start, end)).fetchall()


def rollup_buckets(conn: sqlite3.Connection, level: RollupLevel, *, origin: float, width: float, metric: str,
                   device_ids: str, since: float, end: float) -> Aggregates:
    """The ``level`` rollup rows of ``metric`` from the devices in [since, end), per bucket
    ``(ts - origin) / width``."""
    d = dialect_of(conn)
    return conn.execute(
        f"SELECT {d.truncate('(r.ts - ?) / ?')} AS b, {d.sum_int('r.count')}, SUM(r.sum), MIN(r.min), MAX(r.max) "
        f"FROM telemetry_{level} r JOIN telemetry_series s ON s.id = r.series_id "
        f"WHERE s.name = ? AND {d.in_json_list('s.device_id')} AND r.ts >= ? AND r.ts < ? "
        "GROUP BY b", (origin, width, metric, device_ids, since, end)).fetchall()


def minutes_by_device(conn: sqlite3.Connection, metric: str, since: float, device_ids: str | None) -> Aggregates:
    """The minute rollup rows of ``metric`` from ``since`` on, per device (of ``device_ids`` when given)."""
    d = dialect_of(conn)
    sql = (f"SELECT s.device_id, {d.sum_int('m.count')}, SUM(m.sum), MIN(m.min), MAX(m.max) FROM telemetry_series s "
           "JOIN telemetry_minute m ON m.series_id = s.id AND m.ts >= ? WHERE s.name = ?")
    args: list[Any] = [since, metric]
    if device_ids is not None:
        sql += f" AND {d.in_json_list('s.device_id')}"
        args.append(device_ids)
    return conn.execute(sql + " GROUP BY s.device_id", args).fetchall()


def _tail(conn: sqlite3.Connection, key: str, key_args: tuple[Any, ...], after: int, metric: str, since: float,
          before: float | None, device_ids: str | None) -> Aggregates:
    sql = (f"SELECT {key} AS k, COUNT(*), SUM(value), MIN(value), MAX(value) FROM telemetry "
           f"WHERE id > ? AND name = ? AND ts >= ?")
    args: list[Any] = [*key_args, after, metric, since]
    if before is not None:
        sql += " AND ts < ?"
        args.append(before)
    if device_ids is not None:
        sql += f" AND {dialect_of(conn).in_json_list('device_id')}"
        args.append(device_ids)
    return conn.execute(sql + " GROUP BY k", args).fetchall()


def tail_buckets(conn: sqlite3.Connection, *, res: int, origin: float, width: float, after: int, metric: str,
                 since: float, before: float, device_ids: str) -> Aggregates:
    """The raw points past id ``after`` of ``metric`` from the devices with since <= ts < before, per bucket
    ``(their res-second bucket - origin) / width``."""
    d = dialect_of(conn)
    return _tail(conn, d.truncate(f"({d.truncate(f'ts / {int(res)}')} * {int(res)} - ?) / ?"), (origin, width),
                 after, metric, since, before, device_ids)


def tail_by_device(conn: sqlite3.Connection, *, after: int, metric: str, since: float, device_ids: str | None
                   ) -> Aggregates:
    """The raw points past id ``after`` of ``metric`` from ``since`` on, per device (of ``device_ids`` when
    given)."""
    return _tail(conn, "device_id", (), after, metric, since, None, device_ids)


def metric_names_page(conn: sqlite3.Connection, device_ids: str, limit: int = -1, offset: int = 0
                      ) -> tuple[list[str], int]:
    """One page of the metric names the devices have sent (rolled up so far), sorted, and how many there are."""
    d = dialect_of(conn)
    where = d.in_json_list("device_id")
    total = conn.execute(f"SELECT COUNT(DISTINCT name) FROM telemetry_series WHERE {where}",
                         (device_ids,)).fetchone()[0]
    names = [r[0] for r in conn.execute(
        f"SELECT DISTINCT name FROM telemetry_series WHERE {where} ORDER BY name LIMIT ? OFFSET ?",
        (device_ids, limit if limit >= 0 else d.no_limit, offset))]
    return names, int(total)


# --- PostgreSQL: the day partitions of the raw points and the minute rollups (telemetry/partitions.py) -----------
# Partition names and bounds come from partitions.py (a fixed prefix, whole seconds) and the tables from
# PARTITIONED: spliced in, as DDL takes no parameters.

PARTITIONED = ("telemetry", "telemetry_minute")  # migrations/postgresql/0004; each has a DEFAULT partition
_BOUNDS = re.compile(r"FROM \('?([-+.\deE]+)'?\) TO \('?([-+.\deE]+)'?\)")


def _partitioned(table: str) -> str:
    if table not in PARTITIONED:
        raise ValueError(f"{table} is not one of the partitioned tables {PARTITIONED}")
    return table


def partitions_of(conn: sqlite3.Connection, table: str) -> list[tuple[str, float, float]]:
    """The time partitions of ``table`` (name, start, end): [start, end) of ts, oldest first; not the DEFAULT one."""
    out = []
    for name, bound in conn.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c "
            "ON c.oid = i.inhrelid WHERE i.inhparent = (?)::regclass", (_partitioned(table),)).fetchall():
        m = _BOUNDS.search(bound)
        if m is not None:
            out.append((str(name), float(m.group(1)), float(m.group(2))))
    return sorted(out, key=lambda p: p[1])


def wait_for_locks_at_most(conn: sqlite3.Connection, seconds: float) -> None:
    """Until the transaction ends, a lock not had within ``seconds`` fails the statement (rather than holding the
    writer, and every reader queued behind the lock asked for, for the connection's 30 s)."""
    conn.execute(f"SET LOCAL lock_timeout = {int(seconds * 1000)}")


def lock_partitions(conn: sqlite3.Connection, table: str) -> None:
    """Until the transaction ends: no insert into ``table``, no other connection changing its partitions."""
    conn.execute(f"LOCK TABLE {_partitioned(table)} IN SHARE ROW EXCLUSIVE MODE")


def make_partition(conn: sqlite3.Connection, table: str, name: str, start: int, end: int) -> int:
    """Make ``name`` the partition of [start, end) of ``table`` (inside :func:`lock_partitions`), moving into it the
    rows of that range that the DEFAULT partition holds (raw points keep their ids). → rows moved."""
    table, where = _partitioned(table), f"ts >= {int(start)} AND ts < {int(end)}"
    moved = conn.execute(f"CREATE TEMP TABLE partition_moving ON COMMIT DROP AS SELECT * FROM {table}_default "
                         f"WHERE {where}").rowcount
    if moved:
        conn.execute(f"DELETE FROM {table}_default WHERE {where}")
    conn.execute(f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES FROM ({int(start)}) TO ({int(end)})")
    if moved:
        conn.execute(f"INSERT INTO {table} SELECT * FROM pg_temp.partition_moving")
    conn.execute("DROP TABLE pg_temp.partition_moving")
    return max(moved, 0)


def drop_partition(conn: sqlite3.Connection, table: str, name: str, rolled_up_to: int) -> bool:
    """Drop the partition ``name`` of ``table``; of the raw table only if every point in it is rolled up (id <=
    ``rolled_up_to``), else keep it (False). Takes the table's ACCESS EXCLUSIVE lock until the transaction ends."""
    conn.execute(f"LOCK TABLE {_partitioned(table)} IN ACCESS EXCLUSIVE MODE")
    if table == "telemetry":
        top = conn.execute(f"SELECT MAX(id) FROM {name}").fetchone()[0]
        if top is not None and top > rolled_up_to:
            return False
    conn.execute(f"DROP TABLE {name}")
    return True


def delete_default_before(conn: sqlite3.Connection, table: str, cutoff: float, rolled_up_to: int) -> int:
    """Delete the rows older than ``cutoff`` that the DEFAULT partition of ``table`` holds (raw points: those rolled
    up). → how many."""
    if _partitioned(table) == "telemetry":
        return int(conn.execute("DELETE FROM telemetry_default WHERE ts < ? AND id <= ?",
                                (cutoff, rolled_up_to)).rowcount)
    return int(conn.execute(f"DELETE FROM {table}_default WHERE ts < ?", (cutoff,)).rowcount)


def delete_blocks_before(conn: sqlite3.Connection, cutoff: float, rolled_up_to: int) -> None:
    """Forget the id blocks whose points are all older than ``cutoff``."""
    conn.execute("DELETE FROM telemetry_blocks WHERE max_ts <= ? AND hi <= ?", (cutoff, rolled_up_to))
