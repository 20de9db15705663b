"""The SQLite store and the migration runner."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from fleetd.core.effects import Effect
from fleetd.core.errors import FailedPrecondition, FleetdError
from fleetd.store.database import Store, available_migrations, connect, effect, migrate, schema_version, transaction


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


def test_writes_are_serialized_and_transactional(tmp_path: Path) -> None:
    store = Store(tmp_path / "fleetd.db")
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


def test_writes_never_run_on_the_calling_thread(tmp_path: Path) -> None:
    store = Store(tmp_path / "fleetd.db")
    try:
        seen = store.write_sync(lambda c: threading.current_thread().name)
        assert seen == "fleetd-db-write"

        async def read_name() -> str:
            return await store.read(lambda c: threading.current_thread().name)
        assert asyncio.run(read_name()).startswith("fleetd-db-read")
    finally:
        store.close()


def test_readers_cannot_write(tmp_path: Path) -> None:
    store = Store(tmp_path / "fleetd.db")
    try:
        with pytest.raises(sqlite3.OperationalError):
            store.read_sync(lambda c: c.execute("CREATE TABLE x (y)"))
    finally:
        store.close()


def test_offline_writer_is_seen_by_store_at_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "fleetd.db")
    try:
        store.write_sync(lambda c: c.execute("CREATE TABLE t (n INTEGER)"))
        assert store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 0
        other = connect(tmp_path / "fleetd.db")
        other.execute("INSERT INTO t VALUES (1)")
        other.close()
        assert store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 1
    finally:
        store.close()


# --- effects after commit ------------------------------------------------------------------

class Noted(Effect, frozen=True):
    n: int


def test_effects_run_after_the_commit_in_order_and_never_for_a_failed_write(tmp_path: Path) -> None:
    store = Store(tmp_path / "fx.sqlite")
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


def test_a_cancelled_caller_still_gets_its_effects_run(tmp_path: Path) -> None:
    """The commit happened: the hub and the event stream must hear of it even if the request went away."""
    store = Store(tmp_path / "fx.sqlite")
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
