"""The SQLite store and the migration runner."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from fleetd.db import Store, available_migrations, connect, migrate, schema_version
from fleetd.errors import FailedPrecondition, FleetdError


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
