"""The SQLite store and the migration runner."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from fleetd.core.effects import Effect
from fleetd.core.errors import FailedPrecondition, FleetdError
from fleetd.store.database import (
    Store,
    available_migrations,
    connect,
    effect,
    may_fail,
    migrate,
    migrations_folder,
    read_snapshot,
    schema_version,
    transaction,
)
from fleetd.store.dialect import POSTGRESQL


def write_migrations(folder: Path, *sqls: str) -> Path:
    folder.mkdir(exist_ok=True)
    for i, sql in enumerate(sqls, 1):
        (folder / f"{i:04d}_m{i}.sql").write_text(sql)
    return folder


def test_migrations_apply_in_order_once(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", "CREATE TABLE a (x INTEGER);",
                              "ALTER TABLE a ADD COLUMN y TEXT; INSERT INTO a VALUES (1, 'one');")
    conn = connect(tmp_path / "db.sqlite")
    assert migrate(conn, folder) == ["0001_m1", "0002_m2"]
    assert migrate(conn, folder) == []
    assert conn.execute("SELECT COUNT(*) FROM a").fetchone()[0] == 1
    assert schema_version(conn) == 2


def test_failed_migration_rolls_back_whole(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", "CREATE TABLE a (x INTEGER);",
                              "CREATE TABLE b (x INTEGER); INSERT INTO nonexistent VALUES (1);")
    conn = connect(tmp_path / "db.sqlite")
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, folder)
    assert schema_version(conn) == 1
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "b" not in tables and "a" in tables


def test_refuses_database_newer_than_code(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", "CREATE TABLE a (x INTEGER);")
    conn = connect(tmp_path / "db.sqlite")
    migrate(conn, folder)
    conn.execute("INSERT INTO schema_migrations VALUES (2, 'future', 0)")
    with pytest.raises(FailedPrecondition, match="newer fleetd"):
        migrate(conn, folder)


def test_migration_numbering_must_have_no_gaps(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "0001_a.sql").write_text("SELECT 1;")
    (folder / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(FleetdError, match="without gaps"):
        available_migrations(folder)


def test_shipped_migrations_are_well_formed() -> None:
    assert available_migrations()[0][0] == 1


def test_a_migration_may_rebuild_a_table_that_others_refer_to(tmp_path: Path) -> None:
    # SQLite changes a CHECK only by rebuilding the table; with foreign keys on, dropping the old table would
    # delete every row that refers to it (ON DELETE CASCADE). The runner migrates with them off.
    folder = write_migrations(
        tmp_path / "m",
        "CREATE TABLE p (id TEXT PRIMARY KEY, k TEXT CHECK (k IN ('a'))); "
        "CREATE TABLE c (pid TEXT REFERENCES p(id) ON DELETE CASCADE);",
        "INSERT INTO p VALUES ('x', 'a'); INSERT INTO c VALUES ('x');",
        "CREATE TABLE p_new (id TEXT PRIMARY KEY, k TEXT CHECK (k IN ('a', 'b'))); "
        "INSERT INTO p_new SELECT * FROM p; DROP TABLE p; ALTER TABLE p_new RENAME TO p;")
    conn = connect(tmp_path / "db.sqlite")
    migrate(conn, folder)
    assert conn.execute("SELECT COUNT(*) FROM c").fetchone()[0] == 1
    conn.execute("INSERT INTO p VALUES ('y', 'b')")
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1  # on again after migrating
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO c VALUES ('nobody')")


def test_a_migration_that_breaks_a_foreign_key_is_refused(tmp_path: Path) -> None:
    folder = write_migrations(
        tmp_path / "m",
        "CREATE TABLE p (id TEXT PRIMARY KEY); CREATE TABLE c (pid TEXT REFERENCES p(id)); "
        "INSERT INTO p VALUES ('x'); INSERT INTO c VALUES ('x');",
        "DELETE FROM p;")
    conn = connect(tmp_path / "db.sqlite")
    with pytest.raises(FleetdError, match="0002_m2 would leave 1 row"):
        migrate(conn, folder)
    assert schema_version(conn) == 1 and conn.execute("SELECT COUNT(*) FROM p").fetchone()[0] == 1


def test_the_logs_kind_migration_keeps_actions_and_what_refers_to_them(tmp_path: Path) -> None:
    shipped = available_migrations()
    before = tmp_path / "before"
    before.mkdir()
    for _, _, path in shipped:
        if path.name < "0009":
            (before / path.name).write_text(path.read_text())
    conn = connect(tmp_path / "db.sqlite")
    migrate(conn, before)
    conn.execute("INSERT INTO devices (id, hardware_id, name, device_type, public_key, status, created_at) "
                 "VALUES ('dev_1', 'hw1', 'pi', 'linux', x'00', 'active', 1)")
    conn.execute("INSERT INTO actions (id, device_id, kind, state, created_at, updated_at) "
                 "VALUES ('act_1', 'dev_1', 'restart', 'succeeded', 1, 1)")
    conn.execute("INSERT INTO action_events (action_id, ts, state) VALUES ('act_1', 1, 'queued')")
    conn.execute("INSERT INTO ddi_action_state (action_id, device_id) VALUES ('act_1', 'dev_1')")
    migrate(conn)
    assert conn.execute("SELECT COUNT(*) FROM action_events").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM ddi_action_state").fetchone()[0] == 1
    conn.execute("INSERT INTO actions (id, device_id, kind, state, created_at, updated_at) "
                 "VALUES ('act_2', 'dev_1', 'logs', 'queued', 2, 2)")
    # The triggers came back with the table: the new action has its DDI number.
    assert conn.execute("SELECT COUNT(*) FROM ddi_ids WHERE kind = 'action'").fetchone()[0] == 2
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        conn.execute("INSERT INTO actions (id, device_id, kind, state, created_at, updated_at) "
                     "VALUES ('act_3', 'dev_1', 'frobnicate', 'queued', 2, 2)")
    conn.execute("DELETE FROM devices WHERE id = 'dev_1'")  # the cascade still reaches the rebuilt table
    assert conn.execute("SELECT COUNT(*) FROM action_events").fetchone()[0] == 0


def test_writes_are_serialized_and_transactional(store_backend: Store) -> None:
    store = store_backend
    try:
        store.write_sync(lambda c: c.execute("CREATE TABLE t (n INTEGER)"))

        def failing(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO t VALUES (1)")
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            store.write_sync(failing)
        assert store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 0

        async def many() -> None:
            await asyncio.gather(*(store.write(lambda c, i=i: c.execute("INSERT INTO t VALUES (?)", (i,)))
                                   for i in range(200)))
        asyncio.run(many())
        assert store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 200
    finally:
        store.close()


def test_writes_never_run_on_the_calling_thread(store_backend: Store) -> None:
    store = store_backend
    try:
        seen = store.write_sync(lambda c: threading.current_thread().name)
        assert seen == "fleetd-db-write"

        async def read_name() -> str:
            return await store.read(lambda c: threading.current_thread().name)
        assert asyncio.run(read_name()).startswith("fleetd-db-read")
    finally:
        store.close()


def test_readers_cannot_write(store_backend: Store) -> None:
    store = store_backend
    try:
        with pytest.raises(Exception, match=r"read-?only"):
            store.read_sync(lambda c: c.execute("CREATE TABLE x (y integer)"))
    finally:
        store.close()


def test_offline_writer_is_seen_by_store_at_once(store_backend: Store) -> None:
    store = store_backend
    try:
        store.write_sync(lambda c: c.execute("CREATE TABLE t (n INTEGER)"))
        assert store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 0
        other = store.connect(readonly=False)
        other.execute("INSERT INTO t VALUES (1)")
        other.close()
        assert store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 1
    finally:
        store.close()


# --- effects after commit ------------------------------------------------------------------

class Noted(Effect, frozen=True):
    n: int


def test_effects_run_after_the_commit_in_order_and_never_for_a_failed_write(store_backend: Store) -> None:
    store = store_backend
    ran: list[tuple[int, int]] = []  # (effect, rows committed when it ran)
    try:
        store.write_sync(lambda c: c.execute("CREATE TABLE t (n INTEGER)"))

        def committed_rows() -> int:
            return int(store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM t").fetchone()[0]))

        store.on_effect(Noted, lambda e: ran.append((e.n, committed_rows())))

        def insert(conn: sqlite3.Connection, first: int) -> str:
            before = len(ran)
            for n in (first, first + 1, first + 2):
                conn.execute("INSERT INTO t VALUES (?)", (n,))
                effect(conn, Noted(n))
            assert len(ran) == before  # recorded, not run: nothing has committed yet
            return "done"

        def failing(conn: sqlite3.Connection) -> None:
            insert(conn, 10)
            raise RuntimeError("boom")

        async def scenario() -> None:
            assert await store.write(lambda c: insert(c, 1)) == "done"
            assert ran == [(1, 3), (2, 3), (3, 3)]  # before the caller resumes; each saw the commit
            with pytest.raises(RuntimeError, match="boom"):
                await store.write(failing)
            await store.write(lambda c: None, transactional=False)  # the failed write's effects were dropped
            assert await store.write(lambda c: c.execute("SELECT 1").fetchone()[0]) == 1
            assert ran == [(1, 3), (2, 3), (3, 3)]

        asyncio.run(scenario())
        assert store.write_sync(lambda c: insert(c, 4)) == "done"
        assert ran[3:] == [(4, 6), (5, 6), (6, 6)]
        with pytest.raises(RuntimeError):
            store.write_sync(failing)
        assert len(ran) == 6 and committed_rows() == 6
    finally:
        store.close()


def test_a_cancelled_caller_still_gets_its_effects_run(store_backend: Store) -> None:
    """The commit happened: the hub and the event stream must hear of it even if the request went away."""
    store = store_backend
    ran: list[int] = []
    store.on_effect(Noted, lambda e: ran.append(e.n))
    started, release = threading.Event(), threading.Event()

    def slow(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)
        effect(conn, Noted(7))

    async def scenario() -> None:
        task = asyncio.ensure_future(store.write(slow))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.write(lambda c: None)  # the writer has finished the slow write, and its effect was queued
        assert ran == [7]

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_an_offline_transaction_drops_its_effects(tmp_path: Path) -> None:
    conn = connect(tmp_path / "off.sqlite")
    with transaction(conn):
        effect(conn, Noted(1))
    with transaction(conn):
        assert conn.effects == []  # no server here to tell: the next transaction starts clean
    conn.close()


# --- the same on PostgreSQL: snapshots, constraint errors ------------------------------------------------------

def test_a_read_snapshot_sees_one_committed_state(store_backend: Store) -> None:
    """A reader's multi-statement read does not see a write committed between its statements (PostgreSQL's
    default READ COMMITTED would: read_snapshot takes REPEATABLE READ there)."""
    store = store_backend
    store.write_sync(lambda c: c.execute("CREATE TABLE t (n INTEGER)"))
    store.write_sync(lambda c: c.execute("INSERT INTO t VALUES (1)"))

    def read(conn: sqlite3.Connection) -> tuple[int, int]:
        with read_snapshot(conn):
            first = conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]
            store.submit_write(lambda c: c.execute("INSERT INTO t VALUES (2)")).result()
            return first, conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]

    assert store.read_sync(read) == (1, 1)
    assert store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 2


def test_constraint_errors_are_sqlite3s_and_may_fail_lets_the_write_go_on(store_backend: Store) -> None:
    store = store_backend
    store.write_sync(lambda c: c.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)"))

    def twice(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(sqlite3.IntegrityError), may_fail(conn):
            conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("INSERT INTO t VALUES (2)")  # the transaction is still usable
        return "committed"

    assert store.write_sync(twice) == "committed"
    assert store.read_sync(lambda c: [r[0] for r in c.execute("SELECT n FROM t ORDER BY n")]) == [1, 2]
    with pytest.raises(sqlite3.IntegrityError):
        store.write_sync(lambda c: c.execute("INSERT INTO t VALUES (2)"))


def test_a_store_on_an_empty_postgresql_database_migrates_it(postgres_dsn: str) -> None:
    store = Store(postgres_dsn)
    try:
        assert store.path is None and store.dsn == postgres_dsn
        newest = available_migrations(migrations_folder(POSTGRESQL))[-1][0]
        assert store.write_sync(schema_version) == newest
        assert store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM devices").fetchone()[0]) == 0
    finally:
        store.close()
