"""store/postgres.py: the PostgreSQL connection the storage modules get, with sqlite3's API; and that nothing loads
psycopg unless a PostgreSQL database is used."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fleetd.core.effects import Effect
from fleetd.core.errors import InvalidArgument, Unavailable
from fleetd.store import database
from fleetd.store.dialect import POSTGRESQL, dialect_of

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT ? FROM t WHERE a = ?", "SELECT %s FROM t WHERE a = %s"),
    ("SELECT '?', ? WHERE b LIKE 'x%' AND c % 2 = ?", "SELECT '?', %s WHERE b LIKE 'x%%' AND c %% 2 = %s"),
    ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', %s"),
    ('SELECT "odd?col", ?', 'SELECT "odd?col", %s'),
    ("SELECT E'a\\'?', ?", "SELECT E'a\\'?', %s"),
    ("SELECT type='a\\', ?", "SELECT type='a\\', %s"),  # a backslash ends no standard string
    ("SELECT $$ ? % $$, $f$ ? $f$, ?", "SELECT $$ ? %% $$, $f$ ? $f$, %s"),
    ("SELECT ? -- why?\n, /* what? */ ?", "SELECT %s -- why?\n, /* what? */ %s"),
    ("SELECT %s, ?", "SELECT %%s, %s"),
])
def test_translate_turns_only_real_placeholders_into_psycopg_ones(sql: str, expected: str) -> None:
    from fleetd.store.postgres import translate
    assert translate(sql) == expected


def test_placeholders_in_literals_and_percent_signs_on_a_real_server(pg: Any) -> None:
    row = pg.execute("SELECT '?' AS q, ? AS p, 'a%b' AS pct, 7 % ? AS m, \"q?\" FROM (SELECT 1 AS \"q?\") s",
                     ["x", 3]).fetchone()
    assert tuple(row) == ("?", "x", "a%b", 1, 1)
    # Without parameters the text goes as it is: % and ? are just characters.
    assert tuple(pg.execute("SELECT 'a%b?' AS s, 7 % 4 AS m").fetchone()) == ("a%b?", 3)


def test_rows_by_name_and_position(pg: Any, sq: Any) -> None:
    sql = "SELECT 1 AS one, 'x' AS two, NULL AS three"
    pg_row, sq_row = pg.execute(sql).fetchone(), sq.execute(sql).fetchone()
    for row in (pg_row, sq_row):
        by_name = (row["one"], row["ONE"], row["two"], row["Two"], row["three"])
        assert (row[0], row[1], row[2], *by_name) == (1, "x", None, 1, 1, "x", "x", None)
        assert len(row) == 3 and list(row) == [1, "x", None] and row[1:] == ("x", None)
        with pytest.raises(IndexError):
            row["four"]
    assert pg_row.keys() == sq_row.keys() == ["one", "two", "three"]
    assert dict(zip(pg_row.keys(), pg_row, strict=True))["three"] is None


def test_plain_tuples_on_request(pg: Any) -> None:
    cur = pg.cursor()
    assert cur.row_factory is not None
    cur.row_factory = None
    assert cur.execute("SELECT 1, 'a'").fetchall() == [(1, "a")]
    with pytest.raises(TypeError, match="row_factory = Row"):
        cur.row_factory = dict


def test_executemany_fetchmany_rowcount_and_iteration(pg: Any) -> None:
    pg.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BIGINT, b BYTEA)")
    cur = pg.executemany("INSERT INTO t VALUES (?, ?, ?)", [(f"k{i}", i, bytes([i])) for i in range(5)])
    assert cur.rowcount == 5
    cur = pg.execute("SELECT k, v, b FROM t ORDER BY v")
    assert [tuple(r) for r in cur.fetchmany(2)] == [("k0", 0, b"\x00"), ("k1", 1, b"\x01")]
    assert [r["k"] for r in cur] == ["k2", "k3", "k4"]
    assert pg.execute("UPDATE t SET v = v + 1 WHERE v >= ?", [3]).rowcount == 2
    assert pg.execute("SELECT v FROM t WHERE k = ?", ["nope"]).fetchone() is None


def test_lastrowid_is_the_last_id_an_insert_stored(pg: Any) -> None:
    import psycopg
    cur = pg.execute("INSERT INTO audit_log (ts, actor_kind, action) VALUES (?, 'system', 'a')", [1.0])
    assert cur.lastrowid == 1
    cur = pg.execute("INSERT INTO audit_log (ts, actor_kind, action) SELECT ts + 1, actor_kind, 'b' FROM audit_log "
                     "UNION ALL SELECT 5.0, 'system', 'c'")
    assert cur.rowcount == 2 and cur.lastrowid == 3
    assert pg.execute("SELECT MAX(id) FROM audit_log").fetchone()[0] == 3
    assert pg.cursor().lastrowid is None  # before any insert, as sqlite3's
    # A table without an identity column: SQLite's rowid has no counterpart, and the error says what to do.
    assert cur.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')").rowcount == 1
    with pytest.raises(psycopg.NotSupportedError, match=r"meta has no identity column.*RETURNING"):
        _ = cur.lastrowid
    # An insert that stored nothing leaves it as it was.
    assert cur.execute("INSERT INTO audit_log (ts, actor_kind, action) VALUES (6.0, 'system', 'd')").lastrowid == 4
    assert cur.execute("INSERT INTO meta (key, value) VALUES ('k', 'w') ON CONFLICT (key) DO NOTHING").rowcount == 0
    assert cur.lastrowid == 4


def test_text_with_a_nul_character_is_the_callers_error(pg: Any) -> None:
    """PostgreSQL cannot store NUL in text (SQLite can): a request carrying one gets a 400 saying so, not a 500."""
    with pytest.raises(InvalidArgument, match="NUL"):
        pg.execute("SELECT ? AS t", ["a\x00b"])
    with pytest.raises(InvalidArgument, match="NUL"):
        pg.executemany("SELECT ?", [["ok"], ["a\x00b"]])
    assert tuple(pg.execute("SELECT ? AS t", ["still fine"]).fetchone()) == ("still fine",)


def test_transaction_commits_and_rolls_back(pg: Any) -> None:
    import psycopg
    with database.transaction(pg):
        assert pg.in_transaction
        pg.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ["a", "1"])
    assert not pg.in_transaction
    with pytest.raises(ZeroDivisionError), database.transaction(pg):
        pg.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ["b", "2"])
        1 / 0  # noqa: B018
    assert not pg.in_transaction
    # A failed statement: the caller sees its error (a constraint's as sqlite3's, which the storage modules
    # catch, from psycopg's), and the transaction is rolled back whole.
    with pytest.raises(sqlite3.IntegrityError, match="duplicate key") as failed, database.transaction(pg):
        pg.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ["c", "3"])
        pg.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ["a", "again"])
    assert isinstance(failed.value.__cause__, psycopg.errors.UniqueViolation)
    with pytest.raises(sqlite3.IntegrityError):
        pg.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [["d", "4"], ["a", "again"]])
    assert not pg.in_transaction
    assert [tuple(r) for r in pg.execute("SELECT key, value FROM meta ORDER BY key")] == [("a", "1")]


def _cut(pg: Any) -> None:
    """End ``pg``'s session from the server side, as a restart or failover of PostgreSQL does."""
    import psycopg
    pid = pg.raw.info.backend_pid
    with psycopg.connect(pg.raw.info.dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_connection_the_server_dropped_reconnects_for_the_next_statement(pg: Any) -> None:
    import psycopg
    pid = pg.raw.info.backend_pid
    _cut(pg)
    # The statement that finds the session gone fails (it may not have run: it is not retried), as unavailable
    # (HTTP 503: try again) to an API caller...
    with pytest.raises(psycopg.OperationalError) as lost:
        pg.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ["lost", "1"])
    assert isinstance(lost.value, Unavailable) and "try again" in str(lost.value)
    # ...and the next one runs on a new session, with the connection's settings.
    pg.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ["after", "2"])
    assert pg.raw.info.backend_pid != pid
    assert pg.execute("SHOW lock_timeout").fetchone()[0] == "30s"
    assert [tuple(r) for r in pg.execute("SELECT key FROM meta WHERE key IN ('lost', 'after')")] == [("after",)]


def test_a_connection_lost_inside_a_transaction_is_not_resumed_outside_it(pg: Any) -> None:
    import psycopg
    with pytest.raises(psycopg.OperationalError), database.transaction(pg):
        pg.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ["first", "1"])
        _cut(pg)
        # A caller that swallows the error must still not write outside the transaction:
        with contextlib.suppress(psycopg.OperationalError):
            pg.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ["second", "2"])
        pg.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ["third", "3"])
    assert not pg.in_transaction  # the ROLLBACK went to a new session
    assert pg.execute("SELECT count(*) FROM meta WHERE key IN ('first', 'second', 'third')").fetchone()[0] == 0


def test_a_store_on_postgresql_recovers_after_its_sessions_were_dropped(postgres_server: Any, pg_schema: str) -> None:
    import psycopg
    name = postgres_server.create_database(template=pg_schema)
    store = database.Store(postgres_server.dsn(name), reader_threads=1)
    try:
        def put(value: str) -> Any:
            return lambda c: c.execute("INSERT INTO meta (key, value) VALUES (?, ?)", [value, value])
        store.write_sync(put("before"))
        assert store.read_sync(lambda c: c.execute("SELECT count(*) FROM meta").fetchone()[0]) >= 1
        with psycopg.connect(postgres_server.dsn(name), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        outcomes = []
        for value in ("a", "b"):
            try:
                store.write_sync(put(value))
                outcomes.append("ok")
            except psycopg.OperationalError:
                outcomes.append("failed")
        assert outcomes in (["failed", "ok"], ["ok", "ok"]), outcomes
        keys: set[str] | None = None
        for _ in range(2):  # the reader's first statement may find its session gone too
            try:
                keys = {r[0] for r in store.read_sync(lambda c: c.execute("SELECT key FROM meta").fetchall())}
                break
            except psycopg.OperationalError:
                continue
        assert keys is not None and {"before", "b"} <= keys
        assert ("a" in keys) == (outcomes[0] == "ok")  # what was acknowledged is there; what failed is not
    finally:
        store.close()
        postgres_server.drop_database(name)


def test_the_connection_carries_its_dialect_and_effects(pg: Any) -> None:
    assert dialect_of(pg) is POSTGRESQL
    e = Effect()
    database.effect(pg, e)
    assert pg.effects == [e]
    with database.transaction(pg):  # a transaction drops effects recorded before it, as on SQLite
        pass
    assert pg.effects == []


def test_a_readonly_connection_cannot_write(postgres_server: Any, pg_schema: str) -> None:
    import psycopg

    from fleetd.store import postgres
    name = postgres_server.create_database(template=pg_schema)
    conn = postgres.connect(postgres_server.dsn(name), readonly=True)
    try:
        assert conn.execute("SELECT count(*) FROM meta").fetchone()[0] == 0
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
    finally:
        conn.close()
        postgres_server.drop_database(name)


def test_neither_the_app_nor_a_sqlite_server_loads_psycopg(tmp_path: Path) -> None:
    code = f"""
import sys
import fleetd.app, fleetd.cli
from fleetd.core.config import load_settings
from fleetd.fleet import Fleet
def loaded():
    return sorted(m for m in sys.modules if m.split(".")[0] in ("psycopg", "psycopg_binary", "psycopg_pool")
                  or m == "fleetd.store.postgres")
fleet = Fleet(load_settings({{"data_dir": {str(tmp_path / "data")!r}, "mdns": False}}, None), first_admin=True)
app = fleetd.app.asgi_app(fleet)
print(loaded())
fleet.close()
import fleetd.store.postgres
print("psycopg" in loaded())
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:2] == ["[]", "True"], p.stdout


def test_a_database_that_cannot_be_reached_says_which_and_what_to_check(postgres_server: Any) -> None:
    from fleetd.core.errors import FailedPrecondition
    from fleetd.store import postgres
    from tests.support.services._process import free_port
    port = free_port()  # nothing listens there
    with pytest.raises(FailedPrecondition, match=rf"cannot connect to the PostgreSQL database \(host=127.0.0.1 "
                       rf"port={port} dbname=fleet user=fleetd\): .*Check that the server runs") as e:
        postgres.connect(f"postgresql://fleetd:s3cret@127.0.0.1:{port}/fleet")
    assert "s3cret" not in str(e.value)
    with pytest.raises(FailedPrecondition, match="database \"nope\" does not exist"):
        postgres.connect(postgres_server.dsn("nope"))
    with pytest.raises(FailedPrecondition, match="the PostgreSQL DSN is not valid"):
        postgres.connect("postgresql://[broken")
