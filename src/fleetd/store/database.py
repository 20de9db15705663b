"""The store: one writer thread, pooled readers, migrations; on SQLite or PostgreSQL.

The event loop never touches SQLite. Reads run on a small thread pool, one
connection per thread. Every write runs on the single writer thread inside
``BEGIN IMMEDIATE`` ... ``COMMIT`` and hands its result back as a future, so
writers never fight for the lock and a failed write rolls back whole. A write
records its effects (events, cache updates: :mod:`fleetd.core.effects`) with
:func:`effect`; the store runs them after the commit, only if it committed.
Offline CLI commands use :func:`connect` + :func:`transaction` on the same file;
WAL lets them run beside a live server.

:func:`transaction` and :func:`migrate` also take a PostgreSQL connection (store/postgres.py), whose
migrations are migrations/postgresql/ (:func:`migrations_folder`), and :class:`Store` runs on a PostgreSQL DSN
with the same threads (its writer's ``BEGIN`` is READ COMMITTED: it is the only writer; multi-statement reads
take a REPEATABLE READ snapshot, :func:`read_snapshot`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

from ..core import disk, semver
from ..core.dsn import is_dsn
from ..core.effects import Effect
from ..core.errors import FailedPrecondition, FleetdError
from ..core.resources import data_dir
from .dialect import Dialect, dialect_of

log = logging.getLogger(__name__)

T = TypeVar("T")
# The database file in a data dir.
DB_NAME = "fleetd.db"
MIGRATION_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
# Seconds a write waits for another connection's lock (offline CLI commands share the file).
BUSY_TIMEOUT = 30.0
# At start, a lock held longer than this is another process's, not a short offline command's.
STARTUP_BUSY_TIMEOUT = 3.0


class Connection(sqlite3.Connection):
    """A connection that collects the effects its current write records (see :func:`effect`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.effects: list[Effect] = []


def effect(conn: sqlite3.Connection, e: Effect) -> None:
    """Record ``e`` for after the commit of the write running on ``conn``. The store's writer runs it; an offline
    command's transaction (:func:`transaction` on its own connection) has no one to tell and drops it."""
    cast(Connection, conn).effects.append(e)


def connect(path: str | Path, *, readonly: bool = False, busy_timeout: float = BUSY_TIMEOUT) -> Connection:
    conn = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout, factory=Connection
    )
    conn.row_factory = sqlite3.Row
    conn.create_collation("semver", semver.collate)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    # Page cache in KiB (negative). Each connection has its own, and the pooled readers keep theirs for
    # the process's life, so readers get SQLite's default 2 MiB (the OS page cache has the file anyway);
    # the writer, which updates indexes, gets more.
    conn.execute(f"PRAGMA cache_size=-{2048 if readonly else 16384}")
    if readonly:
        conn.execute("PRAGMA query_only=ON")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE (PostgreSQL: BEGIN; the dialect's ``begin_write``) ... COMMIT, rolled back on any exception.
    Effects recorded before it are not this transaction's: they are dropped (the store's writer has taken its own
    by then)."""
    effects = getattr(conn, "effects", None)
    if effects:
        effects.clear()
    conn.execute(dialect_of(conn).begin_write)
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        # After some errors (SQLITE_FULL, a failed COMMIT) SQLite has rolled back already, or not: roll back
        # only what is still open, so the caller sees the error that happened, not "no transaction is active".
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def read_snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One read transaction, so that several statements see the same committed state (the dialect's
    ``begin_read``: PostgreSQL's READ COMMITTED would give each statement its own). Inside a transaction
    already (a write, or an outer snapshot): that one."""
    if conn.in_transaction:
        yield conn
        return
    conn.execute(dialect_of(conn).begin_read)
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


@contextlib.contextmanager
def may_fail(conn: sqlite3.Connection) -> Iterator[None]:
    """Around a statement whose failure (an IntegrityError) the caller handles and then goes on in the same
    transaction. SQLite undoes only the failed statement; PostgreSQL aborts the whole transaction, so there the
    statement runs under a savepoint, rolled back to on failure. Outside a transaction: nothing to keep."""
    if dialect_of(conn).name == "sqlite" or not conn.in_transaction:
        yield
        return
    conn.execute("SAVEPOINT may_fail")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK TO SAVEPOINT may_fail")
        raise
    finally:
        if conn.in_transaction:
            conn.execute("RELEASE SAVEPOINT may_fail")


# --- migrations -------------------------------------------------------------

# The runner's own table, in each database's types (PostgreSQL's REAL is single precision).
_SCHEMA_MIGRATIONS = {
    "sqlite": "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)",
    "postgresql": "(version bigint PRIMARY KEY, name text NOT NULL, applied_at double precision NOT NULL)",
}
# Held (a session-level advisory lock) while a PostgreSQL database migrates, so that servers starting together
# apply each migration once: the others wait, then find it applied.
_PG_MIGRATE_LOCK = 0x666C65657464  # "fleetd"


def migrations_folder(dialect: Dialect) -> Path:
    """The bundled migrations of a database: migrations/ for SQLite, migrations/postgresql/ for PostgreSQL (the
    same numbers and names; the runner takes only the *.sql files of the folder it is given)."""
    folder = data_dir("migrations")
    return folder if dialect.name == "sqlite" else folder / dialect.name


def available_migrations(folder: Path | None = None) -> list[tuple[int, str, Path]]:
    folder = folder or data_dir("migrations")
    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix != ".sql":
            continue
        m = MIGRATION_NAME.fullmatch(p.name)
        if not m:
            raise FleetdError(f"migration file {p.name} is not named NNNN_name.sql")
        out.append((int(m.group(1)), m.group(2), p))
    versions = [v for v, _, _ in out]
    if versions != list(range(1, len(versions) + 1)):
        raise FleetdError(f"migrations must be numbered 1..N without gaps, found {versions}")
    return out


def schema_version(conn: sqlite3.Connection) -> int:
    conn.execute(f"CREATE TABLE IF NOT EXISTS schema_migrations {_SCHEMA_MIGRATIONS[dialect_of(conn).name]}")
    row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection, folder: Path | None = None) -> list[str]:
    """Apply pending migrations in order, each once and in its own transaction (the database's own folder of
    them unless ``folder`` is given: :func:`migrations_folder`).

    Refuses a database written by a newer fleetd (a higher schema version).
    Returns the names of the migrations applied.
    """
    dialect = dialect_of(conn)
    migrations = available_migrations(folder or migrations_folder(dialect))
    newest_known = migrations[-1][0] if migrations else 0
    with _migrating(conn, dialect):
        current = schema_version(conn)
        if current > newest_known:
            raise FailedPrecondition(
                f"the database is at schema version {current} but this fleetd knows only up to "
                f"{newest_known}; it was written by a newer fleetd. Run that version, or restore a backup."
            )
        applied = []
        for version, name, path in migrations:
            if version <= current:
                continue
            sql = path.read_text()
            with transaction(conn):
                if dialect.name == "sqlite":
                    _apply_sqlite(conn, f"{version:04d}_{name}", sql)
                else:  # PostgreSQL's DDL is transactional: the whole file, as it is, in this transaction
                    cast(Any, conn).executescript(sql)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, time.time()),
                )
            applied.append(f"{version:04d}_{name}")
            log.info("applied migration %04d_%s", version, name)
    return applied


@contextlib.contextmanager
def _migrating(conn: sqlite3.Connection, dialect: Dialect) -> Iterator[None]:
    """SQLite: foreign keys off while migrating, so that a migration may rebuild a table (SQLite's only way to
    change a CHECK): dropping the old table would otherwise delete, by cascade, the rows that refer to it. They
    are checked before each commit instead (:func:`_apply_sqlite`). PostgreSQL: one migrating process at a time."""
    if dialect.name == "sqlite":
        enforced = conn.execute("PRAGMA foreign_keys").fetchone()[0]
        conn.execute("PRAGMA foreign_keys=OFF")
        try:
            yield
        finally:
            conn.execute(f"PRAGMA foreign_keys={'ON' if enforced else 'OFF'}")
    else:
        conn.execute("SELECT pg_advisory_lock(?)", (_PG_MIGRATE_LOCK,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(?)", (_PG_MIGRATE_LOCK,))


def _apply_sqlite(conn: sqlite3.Connection, name: str, sql: str) -> None:
    # executescript would COMMIT on its own; run statement by statement instead.
    for stmt in _split_sql(sql):
        conn.execute(stmt)
    broken = conn.execute("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise FleetdError(f"migration {name} would leave {len(broken)} row(s) pointing at rows that do not "
                          f"exist (first: {tuple(broken[0])}); nothing was changed")


def _split_sql(sql: str) -> list[str]:
    """Split a script into statements; sqlite3.complete_statement knows about strings and triggers."""
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    stmts, buf = [], ""
    for piece in "\n".join(lines).split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n\t;"):
                stmts.append(buf.strip())
            buf = ""
    if buf.strip(" \n\t;"):
        raise FleetdError(f"incomplete SQL statement at end of migration: {buf.strip()[:80]!r}")
    return stmts


def database_size(conn: sqlite3.Connection) -> int:
    """Bytes the database takes (PostgreSQL's pg_database_size; a SQLite store counts its files instead: the
    metrics registry's fleetd_db_size_bytes)."""
    return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])


# --- opening at start -------------------------------------------------------------

class StoreUnusable(FailedPrecondition):
    """The database cannot be used at all: damaged, locked by another process, unreadable."""


_RESTORE_HINT = ("Check a backup with `fleetd restore --check BACKUP.tar`, then restore it with "
                 "`fleetd restore BACKUP.tar --data-dir NEW` and start fleetd with --data-dir NEW.")


def open_checked(path: Path) -> Connection:
    """A connection to ``path`` that has read the schema and taken (and released) the write lock.

    A damaged file or a lock another process holds ends here within seconds, with what to do next,
    instead of a traceback after the 30 s busy timeout.
    """
    conn = None
    try:
        conn = connect(path, busy_timeout=STARTUP_BUSY_TIMEOUT)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return conn
    except sqlite3.DatabaseError as e:
        if conn is not None:
            conn.close()
        raise _unusable(path, e) from None


def open_store(path: Path) -> Connection:
    """:func:`open_checked`, migrated, with the normal busy timeout: the writer's connection, the server's or an
    offline CLI command's."""
    conn = open_checked(path)
    try:
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
    return conn


def _unusable(path: Path, e: sqlite3.DatabaseError) -> StoreUnusable:
    code = getattr(e, "sqlite_errorcode", None)
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        holders = processes_using(path, Path(f"{path}-wal"), Path(f"{path}-shm"))
        who = f"another process ({', '.join(holders)})" if holders else "another process"
        return StoreUnusable(f"{who} is using the database {path} and holds its lock. Stop it (or let it "
                             "finish), then try again.")
    if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        return StoreUnusable(f"the database {path} is damaged ({e}). {_RESTORE_HINT}")
    return StoreUnusable(f"cannot use the database {path}: {e}. Check that it is a fleetd database that this "
                         f"user may read and write. {_RESTORE_HINT}")


def processes_using(*files: Path) -> list[str]:
    """"pid N (name)" of the other processes that have one of ``files`` open (Linux /proc; empty elsewhere)."""
    names = {str(f) for f in files}
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        if proc.name == str(os.getpid()):
            continue
        try:
            if any(os.readlink(fd) in names for fd in (proc / "fd").iterdir()):
                found.append(f"pid {proc.name} ({(proc / 'comm').read_text().strip()})")
        except OSError:
            continue
    return found


# --- the store ---------------------------------------------------------------

_STOP = object()
EffectHandler = Callable[[Any], None]


class _Write:
    """One queued write. Its effects go to ``loop``; without one, to ``effects`` (set before the future
    completes) when the caller waits to run them itself (``inline``)."""

    __slots__ = ("effects", "fn", "fut", "inline", "loop", "transactional")

    def __init__(self, fn: Callable[[Connection], Any], transactional: bool,
                 loop: asyncio.AbstractEventLoop | None, inline: bool) -> None:
        self.fn, self.transactional, self.loop, self.inline = fn, transactional, loop, inline
        self.fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.effects: list[Effect] | None = None


def open_connection(location: str | Path, *, readonly: bool = False) -> Connection:
    """A new connection to the store at ``location``, not migrated: a reader's (``readonly``) or an offline
    one. A path opens SQLite (:func:`connect`); a PostgreSQL DSN, the psycopg adapter (store/postgres.py, imported
    only then), which has the part of the API the storage modules use (hence the cast)."""
    if is_dsn(location):
        try:
            from . import postgres
        except ImportError as e:
            raise FailedPrecondition(
                f"this fleetd cannot use a PostgreSQL database: {e.name or 'psycopg'} is not installed. Install "
                "fleetd with its postgresql extra (pip install 'fleetd[postgresql]'), or leave the database "
                "setting empty for the data dir's SQLite file.") from None
        return cast(Connection, postgres.connect(str(location), readonly=readonly))
    return connect(location, readonly=readonly)


def open_migrated(location: str | Path) -> Connection:
    """A connection that may write, to a migrated store (the server's writer, an offline command's): :func:`open_store`
    for a SQLite file, a migrated adapter connection for a PostgreSQL DSN (migrate() holds an advisory lock, so
    servers starting together apply each migration once)."""
    if not is_dsn(location):
        return open_store(Path(location))
    conn = open_connection(location)
    try:
        migrate(conn)
    except Exception as e:  # a database error, said with what to do (store/postgres.py)
        conn.close()
        from . import postgres
        said = postgres.migration_failed(e, str(location))
        if said is e:
            raise
        raise said from None
    except BaseException:
        conn.close()
        raise
    return conn


class Store:
    """Async access to one database: ``await store.read(fn)`` / ``await store.write(fn)``. The location is a SQLite
    file's path, or a PostgreSQL DSN (``postgresql://...``: the connections are store/postgres.py's adapter, the
    same interface; :func:`open_connection`).

    ``fn`` receives a connection and runs on a worker thread. The effects a write records (:func:`effect`) run
    after its commit, in order, through the handlers registered with :meth:`on_effect`: for ``await write``
    on the caller's event loop before the caller resumes (even if it was cancelled meanwhile), for
    :meth:`write_sync` in the calling thread before it returns.
    """

    def __init__(self, location: str | Path, reader_threads: int = 4) -> None:
        # The SQLite file (None on PostgreSQL), or the PostgreSQL DSN (None on SQLite).
        self.dsn: str | None = str(location) if is_dsn(location) else None
        self.path: Path | None = None if self.dsn is not None else Path(location)
        self._local = threading.local()
        self._readers = concurrent.futures.ThreadPoolExecutor(
            max_workers=reader_threads, thread_name_prefix="fleetd-db-read"
        )
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="fleetd-db-write", daemon=True)
        self._write_conn = open_migrated(self.location)
        self._handlers: dict[type[Effect], list[EffectHandler]] = {}
        # PostgreSQL: the write's effects also go to the other replicas (store/changes.py; imported only then).
        self._notifier: Any = None
        if self.dsn is not None:
            from .changes import Notifier, new_origin
            self._notifier = Notifier(new_origin(), lambda e: type(e) in self._handlers)
        self.disk_full = False  # whether the last write failed on a full disk (/healthz reports it)
        self._writer.start()
        self._closed = False

    @property
    def location(self) -> str | Path:
        """The SQLite file or the PostgreSQL DSN."""
        return self.dsn if self.dsn is not None else cast(Path, self.path)

    def connect(self, *, readonly: bool = True) -> Connection:
        """A connection of the store's own, outside its pool (the caller closes it)."""
        return open_connection(self.location, readonly=readonly)

    # reads
    def _reader_conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect(readonly=True)
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return fn(self._reader_conn())

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.wrap_future(self.submit_read(fn))

    def read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self.submit_read(fn).result()

    def submit_read(self, fn: Callable[[sqlite3.Connection], T]) -> concurrent.futures.Future[T]:
        """Start ``fn`` on a reader without waiting for it (from any thread; a loop awaits asyncio.wrap_future)."""
        return self._readers.submit(self._run_read, fn)

    # effects
    def on_effect(self, kind: type[Effect], handler: EffectHandler) -> None:
        """Run ``handler(effect)`` for every committed effect of ``kind`` (registered once, at start)."""
        self._handlers.setdefault(kind, []).append(handler)

    @property
    def origin(self) -> str | None:
        """This replica's id in the change feed (None on SQLite)."""
        return None if self._notifier is None else str(self._notifier.origin)

    def effect_kinds(self) -> list[type[Effect]]:
        """The effect kinds that have handlers."""
        return list(self._handlers)

    def run_effects(self, effects: list[Effect]) -> None:
        for e in effects:
            for handler in self._handlers.get(type(e), ()):
                try:
                    handler(e)
                except Exception:  # the write has committed; one failing handler must not stop the others
                    log.exception("effect %s failed after its commit", type(e).__name__)

    # writes
    def _write_loop(self) -> None:
        conn = self._write_conn
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            job: _Write = item
            fut = job.fut
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                if job.transactional:
                    with transaction(conn):
                        result = job.fn(conn)
                        if self._notifier is not None and conn.effects:  # delivered after the commit, if any
                            self._notifier.send(conn, conn.effects)
                else:
                    result = job.fn(conn)
                    if self._notifier is not None and conn.effects:  # committed already: sent at once
                        self._notify_committed(conn)
            except BaseException as e:  # handed to the caller
                conn.effects.clear()  # nothing committed: nothing happened
                self.disk_full = disk.is_full(e)
                fut.set_exception(e)
            else:
                self.disk_full = False
                if conn.effects:  # a write without effects allocates nothing here
                    self._hand_over(job, conn.effects)
                    conn.effects = []
                fut.set_result(result)
        conn.close()

    def _notify_committed(self, conn: Connection) -> None:
        """Send the effects of a write that committed on its own: a failure to send must not fail the write."""
        try:
            self._notifier.send(conn, conn.effects)
        except Exception:
            log.exception("the other replicas were not told of %d effect(s) of a committed write; their caches "
                          "may be stale until their change feeds next reconnect", len(conn.effects))

    def _hand_over(self, job: _Write, effects: list[Effect]) -> None:
        if job.loop is None:
            if job.inline:
                job.effects = effects
            else:
                log.warning("%d effect(s) of a committed write dropped: it was queued outside an event loop",
                            len(effects))
            return
        try:
            # Queued before the future's own callback, so they run before the caller resumes, in commit order.
            job.loop.call_soon_threadsafe(self.run_effects, effects)
        except RuntimeError:  # the caller's loop has closed: there is no one left to tell
            log.warning("%d effect(s) of a committed write dropped: the event loop has closed", len(effects))

    def _submit(self, fn: Callable[[Connection], T], transactional: bool,
                loop: asyncio.AbstractEventLoop | None, inline: bool = False) -> _Write:
        job = _Write(fn, transactional, loop, inline)
        # Under the lock close() takes: a job is queued before the writer's stop, or refused; never after it, where
        # no one would ever run it and its caller would wait for ever (a part writing while the store closes).
        with self._submit_lock:
            if self._closed:
                raise FleetdError("the store is closed")
            self._queue.put(job)
        return job

    def submit_write(
        self, fn: Callable[[Connection], T], *, transactional: bool = True
    ) -> concurrent.futures.Future[T]:
        """Queue a write; await it with ``asyncio.wrap_future``. Its effects run on the running event loop (queued
        from a thread without one, a write must record none: they would be dropped)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        fut: concurrent.futures.Future[T] = self._submit(fn, transactional, loop).fut
        return fut

    async def write(self, fn: Callable[[Connection], T], *, transactional: bool = True) -> T:
        return await asyncio.wrap_future(self.submit_write(fn, transactional=transactional))

    def write_sync(self, fn: Callable[[Connection], T]) -> T:
        """A write from a thread without an event loop (start-up, tools, tests); its effects run here."""
        job = self._submit(fn, True, None, inline=True)
        result: T = job.fut.result()
        if job.effects:
            self.run_effects(job.effects)
        return result

    def close(self) -> None:
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._writer.join()
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            for c in self._reader_conns:
                c.close()
            self._reader_conns.clear()
