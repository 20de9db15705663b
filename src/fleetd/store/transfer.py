"""Moving a SQLite fleet into the scaled-out stores: its database into PostgreSQL, its blobs into an S3 bucket
(``fleetd store migrate``; docs/scaling.md, "Moving an existing fleet").

A run makes the target equal to the source as it was at one moment, and may be repeated: the first while the old
server still runs (it copies everything), the last with the old server stopped (``final``: it copies what changed
since and checks every count and every blob's bytes).

- The database: the source is read in one read transaction (one consistent moment). The target is changed in one
  PostgreSQL transaction: for each table, the source's rows go into a temporary copy (COPY), rows the source no
  longer has are deleted (children first), the others are upserted by primary key (parents first), so foreign
  keys hold at every statement. Tables that only grow at one end (:data:`APPEND_ONLY`) are copied past the
  target's last id and trimmed below the source's first, not compared row by row. The target's triggers are off
  meanwhile (the source's rows they would have made are copied), the identity sequences are set past the copied
  ids, and the row counts of the two sides must agree before it commits. The new servers must not run before
  the last copy: it takes the tables' exclusive locks, and it makes the database what the source holds.
- The blobs: every blob the source lists is uploaded to ``<prefix>blobs/<sha256>`` unless the bucket holds an
  object of that size already; an uploaded blob's SHA-256, computed on the way, must be its name. ``final`` reads
  every object back and hashes it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import FailedPrecondition
from .database import read_snapshot, schema_version

if TYPE_CHECKING:
    from .postgres import Connection as PgConnection
    from .s3 import S3Client

# Tables whose rows are never changed once written and are only ever deleted from the oldest (retention), keyed
# by their integer id: copied by id range instead of compared row by row (they are the big ones).
APPEND_ONLY = {"telemetry": "id", "audit_log": "id", "action_events": "id"}
# Not copied: each database's own record of the migrations applied (the versions must be equal, checked first);
# the keys (copy_keys seals them); and what only replicas on PostgreSQL keep in the database, which a SQLite fleet
# has empty tables for (rate limits, upload sessions, used device challenges).
SKIP = {"schema_migrations", "fleet_keys", "rate_limits", "upload_sessions", "used_challenges"}
COPY_BATCH = 10_000

Progress = Callable[[str, int, int], None]
"""progress(phase, done, total): phases ``database`` (tables) and ``blobs`` (bytes)."""


@dataclass
class TableCopy:
    rows: int  # rows in the source (and so in the target) after the run
    written: int  # rows inserted or changed in the target
    deleted: int  # rows removed from the target


@dataclass
class Summary:
    tables: dict[str, TableCopy] = field(default_factory=dict)
    blobs: int = 0
    blobs_uploaded: int = 0
    blob_bytes_uploaded: int = 0
    blobs_verified: int = 0
    schema_version: int = 0
    ca_fingerprint: str = ""
    seconds: float = 0.0


# --- the source's shape --------------------------------------------------------------------------------------------

def _tables(src: sqlite3.Connection) -> list[str]:
    """The source's tables, parents before children (by their foreign keys)."""
    names = [r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                       "AND name NOT LIKE 'sqlite_%' ORDER BY name") if r[0] not in SKIP]
    parents = {t: {r[2] for r in src.execute(f'PRAGMA foreign_key_list("{t}")') if r[2] != t} for t in names}
    ordered: list[str] = []
    while parents:
        ready = sorted(t for t, p in parents.items() if not p - set(ordered))
        if not ready:
            raise FailedPrecondition(f"the tables' foreign keys form a cycle: {sorted(parents)}")
        ordered += ready
        for t in ready:
            del parents[t]
    return ordered


def _columns(src: sqlite3.Connection, table: str) -> tuple[list[str], list[str]]:
    """(columns, primary-key columns) of a source table."""
    info = src.execute(f'PRAGMA table_info("{table}")').fetchall()
    return [r[1] for r in info], [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]]


def _q(name: str) -> str:
    return f'"{name}"'


# --- the database ----------------------------------------------------------------------------------------------------

def copy_database(src: sqlite3.Connection, dst: PgConnection, progress: Progress | None = None) -> Summary:
    """Make ``dst`` (migrated to the same version) hold exactly what ``src`` holds now (see the module's docstring)."""
    summary = Summary()
    version, target_version = schema_version(src), schema_version(dst)  # type: ignore[arg-type]
    if version != target_version:
        raise FailedPrecondition(
            f"the source database is at schema version {version} and the target at {target_version}: both must "
            "be at this fleetd's version. Upgrade the old server to this fleetd first (it migrates at start), "
            "then run this again.")
    summary.schema_version = version
    raw: Any = dst.raw
    with read_snapshot(src):
        tables = _tables(src)
        shapes = {t: _columns(src, t) for t in tables}
        with raw.transaction():
            # The target's triggers (e.g. the device change log's) must not add rows: the source's are copied.
            triggered = [r[0] for r in raw.execute(
                "SELECT DISTINCT c.relname FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT g.tgisinternal "
                "AND n.nspname = current_schema() AND c.relname = ANY(%s)", (tables,))]
            for table in triggered:
                raw.execute(f"ALTER TABLE {_q(table)} DISABLE TRIGGER USER")
            for i, table in enumerate(tables):
                if progress:
                    progress("database", i, len(tables))
                if table not in APPEND_ONLY:
                    _load_temp(src, raw, table, shapes[table][0])
            # Deletes children first, then inserts and updates parents first: every foreign key holds throughout.
            deleted = {t: _delete_missing(raw, t, shapes[t][1]) for t in reversed(tables) if t not in APPEND_ONLY}
            for table in tables:
                columns, key = shapes[table]
                if table in APPEND_ONLY:
                    written, gone = _append(src, raw, table, columns, APPEND_ONLY[table])
                else:
                    written, gone = _upsert(raw, table, columns, key), deleted[table]
                count = src.execute(f"SELECT count(*) FROM {_q(table)}").fetchone()[0]
                summary.tables[table] = TableCopy(count, written, gone)
            _advance_identities(raw, tables)
            for table in triggered:
                raw.execute(f"ALTER TABLE {_q(table)} ENABLE TRIGGER USER")
            for table, copied in summary.tables.items():
                have = raw.execute(f"SELECT count(*) FROM {_q(table)}").fetchone()[0]
                if have != copied.rows:
                    raise FailedPrecondition(f"after the copy, {table} has {have} rows in PostgreSQL and "
                                             f"{copied.rows} in SQLite; nothing was changed")
    if progress:
        progress("database", len(tables), len(tables))
    return summary


def _select(src: sqlite3.Connection, table: str, columns: list[str], where: str = "",
            params: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    cur = src.execute(f"SELECT {', '.join(map(_q, columns))} FROM {_q(table)} {where}", params)
    cur.row_factory = None
    while rows := cur.fetchmany(COPY_BATCH):
        yield from rows


def _copy_into(raw: Any, table: str, columns: list[str], rows: Iterator[tuple[Any, ...]]) -> int:
    n = 0
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(map(_q, columns))}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            n += 1
    return n


def _load_temp(src: sqlite3.Connection, raw: Any, table: str, columns: list[str]) -> None:
    raw.execute(f"CREATE TEMP TABLE {_q('src_' + table)} (LIKE {_q(table)} INCLUDING DEFAULTS) ON COMMIT DROP")
    _copy_into(raw, _q("src_" + table), columns, _select(src, table, columns))


def _delete_missing(raw: Any, table: str, key: list[str]) -> int:
    match = " AND ".join(f"s.{_q(k)} = t.{_q(k)}" for k in key)
    cur = raw.execute(f"DELETE FROM {_q(table)} t WHERE NOT EXISTS (SELECT 1 FROM {_q('src_' + table)} s "
                      f"WHERE {match})")
    return int(cur.rowcount)


def _upsert(raw: Any, table: str, columns: list[str], key: list[str]) -> int:
    cols = ", ".join(map(_q, columns))
    rest = [c for c in columns if c not in key]
    if rest:
        changed = " OR ".join(f"t.{_q(c)} IS DISTINCT FROM excluded.{_q(c)}" for c in rest)
        on_conflict = (f"DO UPDATE SET {', '.join(f'{_q(c)} = excluded.{_q(c)}' for c in rest)} WHERE {changed}")
    else:
        on_conflict = "DO NOTHING"
    cur = raw.execute(f"INSERT INTO {_q(table)} AS t ({cols}) SELECT {cols} FROM {_q('src_' + table)} "
                      f"ON CONFLICT ({', '.join(map(_q, key))}) {on_conflict}")
    return int(cur.rowcount)


def _append(src: sqlite3.Connection, raw: Any, table: str, columns: list[str], id_col: str) -> tuple[int, int]:
    """An append-only table: trim what the source no longer has at the old end, copy what is past our last id."""
    first = src.execute(f"SELECT min({_q(id_col)}) FROM {_q(table)}").fetchone()[0]
    if first is None:
        gone = raw.execute(f"DELETE FROM {_q(table)}").rowcount
    else:
        gone = raw.execute(f"DELETE FROM {_q(table)} WHERE {_q(id_col)} < %s", (first,)).rowcount
    last = raw.execute(f"SELECT coalesce(max({_q(id_col)}), 0) FROM {_q(table)}").fetchone()[0]
    written = _copy_into(raw, _q(table), columns, _select(src, table, columns, f"WHERE {_q(id_col)} > ?",
                                                               (last,)))
    return written, int(gone)


def _advance_identities(raw: Any, tables: list[str]) -> None:
    """Set each identity column's sequence past the largest id copied, so the next insert does not collide."""
    for table, column in raw.execute(
            "SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE a.attidentity <> '' AND NOT a.attisdropped "
            "AND n.nspname = current_schema() AND c.relname = ANY(%s) AND NOT c.relispartition",
            (tables,)).fetchall():
        raw.execute(f"SELECT setval(pg_get_serial_sequence(%s, %s), "
                    f"greatest(coalesce((SELECT max({_q(column)}) FROM {_q(table)}), 0), 1), "
                    f"(SELECT max({_q(column)}) FROM {_q(table)}) IS NOT NULL)", (table, column))


# --- the blobs -------------------------------------------------------------------------------------------------------

def copy_blobs(src: sqlite3.Connection, blobs_dir: Path, client: S3Client, prefix: str, *, verify: bool,
               progress: Progress | None = None, summary: Summary | None = None) -> Summary:
    """Upload every blob the source lists that the bucket lacks (or holds with another size); with ``verify``, read
    every object back and check its SHA-256."""
    summary = summary or Summary()
    rows = src.execute("SELECT sha256, size FROM blobs WHERE corrupt_at IS NULL ORDER BY sha256").fetchall()
    total = sum(r[1] for r in rows)
    done = 0
    summary.blobs = len(rows)
    for sha, size in rows:
        key = f"{prefix}blobs/{sha}"
        have = client.head_object(key)
        if have is None or have.size != size:
            path = blobs_dir / sha[:2] / sha
            try:
                with path.open("rb") as f:
                    result = client.upload(key, iter(lambda f=f: f.read(1 << 20), b""))  # type: ignore[misc]
            except FileNotFoundError:
                raise FailedPrecondition(f"blob {sha} is listed in the database but its file {path} is missing: "
                                         "run `fleetd restore` from a backup that has it, or delete the artifact "
                                         "that uses it, then run this again") from None
            if result.sha256 != sha or result.size != size:
                client.delete_object(key)
                raise FailedPrecondition(f"the file of blob {sha} ({path}) has changed (SHA-256 {result.sha256}, "
                                         f"{result.size} bytes): it was not copied")
            summary.blobs_uploaded += 1
            summary.blob_bytes_uploaded += size
        elif verify:
            _verify(client, key, sha, size)
        if verify:
            summary.blobs_verified += 1
        done += size
        if progress:
            progress("blobs", done, total)
    return summary


def _verify(client: S3Client, key: str, sha: str, size: int) -> None:
    h, n = hashlib.sha256(), 0
    with client.get_object(key) as stream:
        for chunk in stream:
            h.update(chunk)
            n += len(chunk)
    if h.hexdigest() != sha or n != size:
        raise FailedPrecondition(f"the bucket's object {key} does not hold blob {sha} ({n} bytes, SHA-256 "
                                 f"{h.hexdigest()}): delete it and run this again to upload it anew")


# --- the keys --------------------------------------------------------------------------------------------------------

def copy_keys(data_dir: Path, dsn: str, key_encryption_key_file: str = "") -> str:
    """Put the data dir's keys (CA, signing, token) into the database, sealed as the servers read them
    (store/keys.py; the database is migrated first); the CA's fingerprint. A database that holds another fleet's
    keys already (a server was started on it before the move, and made new ones) is refused."""
    from ..core import pki, sealing
    from .database import Store
    from .keys import shared_material

    if not pki.has_keys(data_dir):
        raise FailedPrecondition(f"{data_dir} holds no fleet keys (ca.pem, ca.key): pass the old server's data dir")
    kek = sealing.load(key_encryption_key_file)
    store = Store(dsn, reader_threads=1)
    try:
        material = shared_material(store, kek, data_dir)
    finally:
        store.close()
    ours, theirs = pki.dir_ca_fingerprint(data_dir) or "", pki.ca_fingerprint(material.ca_cert)
    if ours != theirs:
        raise FailedPrecondition(
            f"the database holds the keys of another CA ({theirs[:16]}...) than {data_dir} ({ours[:16]}...): a "
            "server was started on it before the move and made new keys. Devices trust the old CA: move into an "
            "empty database (or delete the fleet_keys rows, if no device has enrolled with the new CA)")
    return ours


# --- the whole move --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bucket:
    """Where the blobs go: ``s3://BUCKET/prefix``, and how to reach it (None: the AWS_* environment)."""

    url: str
    endpoint: str | None = None
    region: str | None = None
    ca_bundle: str | None = None


def migrate_fleet(data_dir: Path, dsn: str, bucket: Bucket | None, *, final: bool,
                  progress: Progress | None = None, key_encryption_key_file: str = "") -> Summary:
    """Copy the fleet in ``data_dir`` into the PostgreSQL database at ``dsn`` (migrated first): its keys (sealed
    with the key encryption key from the file or the environment, as the servers will read them), its database and,
    with a ``bucket``, its blobs."""
    from ..core.config import split_s3_url
    from . import postgres
    from .database import DB_NAME, connect

    started = time.monotonic()
    fingerprint = copy_keys(data_dir, dsn, key_encryption_key_file)
    src = connect(data_dir / DB_NAME, readonly=True)
    dst = postgres.connect(dsn)
    try:
        summary = copy_database(src, dst, progress)
        summary.ca_fingerprint = fingerprint
        if bucket is not None:
            from .s3 import S3Client, S3Config
            name, prefix = split_s3_url(bucket.url)
            config = S3Config.from_env(name, endpoint=bucket.endpoint, region=bucket.region,
                                       ca_bundle=bucket.ca_bundle)
            with S3Client(config) as client:
                copy_blobs(src, data_dir / "blobs", client, prefix, verify=final, progress=progress,
                           summary=summary)
    finally:
        src.close()
        dst.close()
    summary.seconds = round(time.monotonic() - started, 2)
    return summary
