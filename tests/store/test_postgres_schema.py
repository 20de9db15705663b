"""migrations/postgresql/: each file applies on an empty PostgreSQL database, and the schema they make is SQLite's
(migrations/): the same tables, columns, keys, constraints, indexes and triggers, and triggers that write the same
rows. tests/store/conftest.py builds the migrated schema once and hands out copies."""

from __future__ import annotations

import concurrent.futures
import functools
import re
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import pytest

from fleetd.core.errors import FailedPrecondition
from fleetd.store import database
from fleetd.store.dialect import POSTGRESQL, SQLITE

# --- the migrations ------------------------------------------------------------------------------------------------


def _listed(dialect: Any) -> list[tuple[int, str]]:
    return [(v, n) for v, n, _ in database.available_migrations(database.migrations_folder(dialect))]


def test_both_databases_have_the_same_migrations() -> None:
    sqlite, pg = _listed(SQLITE), _listed(POSTGRESQL)
    assert sqlite == pg, (f"migrations/ and migrations/postgresql/ differ: only SQLite's "
                          f"{sorted(set(sqlite) - set(pg))}, only PostgreSQL's {sorted(set(pg) - set(sqlite))}")
    assert len(sqlite) >= 10


def test_every_migration_applies_on_an_empty_database(postgres_dsn: str) -> None:
    from fleetd.store import postgres
    conn = postgres.connect(postgres_dsn)
    try:
        applied = database.migrate(conn)
        assert applied == [f"{v:04d}_{n}" for v, n in _listed(SQLITE)]
        rows = conn.execute("SELECT version, name, applied_at FROM schema_migrations ORDER BY version").fetchall()
        assert [(r["version"], r["name"]) for r in rows] == _listed(SQLITE)
        assert all(isinstance(r["applied_at"], float) and r["applied_at"] > 1.7e9 for r in rows)
        assert database.migrate(conn) == []  # applied once
        assert not conn.in_transaction
    finally:
        conn.close()


def test_servers_starting_together_apply_each_migration_once(postgres_dsn: str) -> None:
    from fleetd.store import postgres
    conns = [postgres.connect(postgres_dsn) for _ in range(3)]
    try:
        with concurrent.futures.ThreadPoolExecutor(len(conns)) as pool:
            results = list(pool.map(database.migrate, conns))
        assert sorted(map(len, results)) == [0, 0, len(_listed(SQLITE))]
        assert conns[0].execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(_listed(SQLITE))
    finally:
        for c in conns:
            c.close()


def test_a_newer_schema_is_refused_as_on_sqlite(pg: Any, sq: sqlite3.Connection) -> None:
    refused = []
    newest = _listed(SQLITE)[-1][0]
    for conn in (sq, pg):
        conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                     (newest + 1, "from_the_future", 0.0))
        with pytest.raises(FailedPrecondition, match="written by a newer fleetd") as e:
            database.migrate(conn)
        refused.append(str(e.value))
    assert refused[0] == refused[1]
    assert f"at schema version {newest + 1} but this fleetd knows only up to {newest};" in refused[1]
    # The refusal left the SQLite connection's foreign keys as they were.
    assert sq.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_a_failing_migration_changes_nothing(postgres_dsn: str, tmp_path: Any) -> None:
    from fleetd.store import postgres
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_good.sql").write_text("CREATE TABLE a (id bigint PRIMARY KEY);\n")
    (folder / "0002_bad.sql").write_text("CREATE TABLE b (id bigint PRIMARY KEY);\nINSERT INTO nowhere VALUES (1);\n")
    conn = postgres.connect(postgres_dsn)
    try:
        with pytest.raises(Exception, match="nowhere"):
            database.migrate(conn, folder)
        assert not conn.in_transaction
        assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] == 1
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert tables == {"a", "schema_migrations"}  # 0002's table went with its transaction
    finally:
        conn.close()


# --- the schema: SQLite's and PostgreSQL's, read back from each database's catalog ----------------------------------

# How each SQLite type is written in PostgreSQL (migrations/postgresql/0001_platform.sql).
TYPES = {"TEXT": "text", "INTEGER": "bigint", "REAL": "double precision", "BLOB": "bytea"}
ON_DELETE = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


@dataclass
class Table:
    columns: list[tuple[str, str, bool, str | None]] = field(default_factory=list)  # name, type, NOT NULL, default
    primary_key: list[str] = field(default_factory=list)
    unique: set[tuple[str, ...]] = field(default_factory=set)
    foreign_keys: set[tuple[tuple[str, ...], str, tuple[str, ...], str]] = field(default_factory=set)
    indexes: dict[str, tuple[tuple[str, ...], bool, str]] = field(default_factory=dict)  # columns, unique, WHERE
    checks: list[frozenset[str]] = field(default_factory=list)  # the quoted values each CHECK names
    triggers: set[str] = field(default_factory=set)


def _default(text: str | None) -> str | None:
    """A column default as both catalogs can agree on it: no casts, numbers unquoted."""
    if text is None:
        return None
    text = re.sub(r"::(?:double precision|[a-z]+)$", "", text.strip())
    return text.strip("'") if re.fullmatch(r"'-?\d+(\.\d+)?'", text) else text


def _predicate(text: str) -> str:
    """An index's WHERE as both can agree on it."""
    return re.sub(r"\s+", " ", re.sub(r"::(?:double precision|[a-z]+)|[()]", "", text)).strip().lower()


def _checks(create_table: str) -> list[frozenset[str]]:
    found = []
    for m in re.finditer(r"CHECK\s*\(", create_table, re.IGNORECASE):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(create_table[i], 0)
            i += 1
        found.append(frozenset(re.findall(r"'([^']*)'", create_table[m.end():i - 1])))
    return sorted(found, key=sorted)


def sqlite_schema(conn: sqlite3.Connection) -> dict[str, Table]:
    out: dict[str, Table] = {}
    for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' "
                                  "AND name NOT LIKE 'sqlite_%'").fetchall():
        t = out[name] = Table(checks=_checks(sql))
        info = conn.execute(f"PRAGMA table_info({name})").fetchall()
        # A PRIMARY KEY column cannot hold NULL (PostgreSQL's never can; SQLite's INTEGER PRIMARY KEY cannot, and no
        # fleetd code stores a NULL key in the others).
        t.columns = [(r["name"], TYPES[r["type"]], bool(r["notnull"] or r["pk"]), _default(r["dflt_value"]))
                     for r in info]
        t.primary_key = [r["name"] for r in sorted(info, key=lambda r: r["pk"]) if r["pk"]]
        for idx in conn.execute(f"PRAGMA index_list({name})").fetchall():
            cols = tuple(r["name"] for r in conn.execute(f"PRAGMA index_info({idx['name']})"))
            if idx["origin"] == "u":
                t.unique.add(cols)
            elif idx["origin"] == "c":
                (index_sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (idx["name"],)).fetchone()
                where = index_sql.split(" WHERE ", 1)[1] if " WHERE " in index_sql else ""
                t.indexes[idx["name"]] = (cols, bool(idx["unique"]), _predicate(where))
        fks: dict[int, list[Any]] = {}
        for r in conn.execute(f"PRAGMA foreign_key_list({name})").fetchall():
            fks.setdefault(r["id"], []).append(r)
        for refs in fks.values():
            t.foreign_keys.add((tuple(r["from"] for r in refs), refs[0]["table"], tuple(r["to"] for r in refs),
                                refs[0]["on_delete"]))
    for name, table in conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'"):
        out[table].triggers.add(name)
    return out


def postgres_schema(conn: Any) -> dict[str, Table]:
    """The tables, not their partitions (the raw telemetry's: a partitioned table is one table here)."""
    out: dict[str, Table] = {}
    for r in conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name NOT IN (SELECT relname FROM pg_class WHERE relispartition) "
            "ORDER BY table_name, ordinal_position").fetchall():
        out.setdefault(r["table_name"], Table()).columns.append(
            (r["column_name"], r["data_type"], r["is_nullable"] == "NO", _default(r["column_default"])))

    def names(table: str, nums: list[int]) -> tuple[str, ...]:
        attrs = dict(conn.execute("SELECT attnum, attname FROM pg_attribute WHERE attrelid = (?)::regclass",
                                  (table,)).fetchall())
        return tuple(attrs[n] for n in nums)

    for r in conn.execute(
            "SELECT c.conrelid::regclass::text AS tbl, c.contype, c.conkey, "
            "c.confrelid::regclass::text AS ref, c.confkey, c.confdeltype, pg_get_constraintdef(c.oid) AS def "
            "FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace JOIN pg_class t ON t.oid = c.conrelid "
            "WHERE n.nspname = 'public' AND NOT t.relispartition").fetchall():
        t = out[r["tbl"]]
        cols = names(r["tbl"], r["conkey"])
        if r["contype"] == "p":
            t.primary_key = list(cols)
        elif r["contype"] == "u":
            t.unique.add(cols)
        elif r["contype"] == "f":
            t.foreign_keys.add((cols, r["ref"], names(r["ref"], r["confkey"]), ON_DELETE[r["confdeltype"]]))
        elif r["contype"] == "c":
            t.checks.append(frozenset(re.findall(r"'([^']*)'", r["def"])))
    for t in out.values():
        t.checks.sort(key=sorted)
    for r in conn.execute(
            "SELECT i.indrelid::regclass::text AS tbl, x.relname AS name, i.indkey::int2[] AS cols, "
            "i.indisunique, pg_get_expr(i.indpred, i.indrelid) AS pred FROM pg_index i "
            "JOIN pg_class x ON x.oid = i.indexrelid JOIN pg_namespace n ON n.oid = x.relnamespace "
            "WHERE n.nspname = 'public' AND NOT x.relispartition "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid "
            "AND c.contype IN ('p', 'u'))").fetchall():
        out[r["tbl"]].indexes[r["name"]] = (names(r["tbl"], list(r["cols"])), r["indisunique"],
                                            _predicate(r["pred"] or ""))
    for r in conn.execute("SELECT tgrelid::regclass::text AS tbl, tgname FROM pg_trigger WHERE NOT tgisinternal"):
        out[r["tbl"]].triggers.add(r["tgname"])
    raw = out.get("telemetry")
    if raw is not None and not raw.primary_key and raw.indexes.get("telemetry_id") == (("id",), False, ""):
        # Partitioned by time (migrations/postgresql/0004): a primary key would have to include ts; the identity
        # keeps ids unique and the index on id stands for SQLite's INTEGER PRIMARY KEY.
        del raw.indexes["telemetry_id"]
        raw.primary_key = ["id"]
    return out


@pytest.fixture(scope="module")
def schemas(postgres_server: Any, pg_schema: str) -> tuple[dict[str, Table], dict[str, Table]]:
    """(SQLite's, PostgreSQL's), read once; the template over a connection closed at once, so that it can still
    be copied."""
    from fleetd.store import postgres
    pg = postgres.connect(postgres_server.dsn(pg_schema))
    try:
        pg_tables = postgres_schema(pg)
    finally:
        pg.close()
    return _sqlite_tables(), pg_tables


@functools.cache
def _sqlite_tables() -> dict[str, Table]:
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    try:
        database.migrate(conn)
        return sqlite_schema(conn)
    finally:
        conn.close()


def test_the_same_tables(schemas: tuple[dict[str, Table], dict[str, Table]]) -> None:
    sqlite, pg = schemas
    assert sorted(sqlite) == sorted(pg), (f"only in SQLite: {sorted(set(sqlite) - set(pg))}, "
                                          f"only in PostgreSQL: {sorted(set(pg) - set(sqlite))}")


@pytest.mark.parametrize("table", sorted(_sqlite_tables()))
def test_the_same_table(table: str, schemas: tuple[dict[str, Table], dict[str, Table]]) -> None:
    sqlite, pg = schemas[0][table], schemas[1].get(table)
    assert pg is not None, f"PostgreSQL has no table {table}"
    differences = [f"{table}.{part}:\n  SQLite:     {getattr(sqlite, part)!r}\n  PostgreSQL: {getattr(pg, part)!r}"
                   for part in Table.__dataclass_fields__ if getattr(sqlite, part) != getattr(pg, part)]
    assert not differences, "the schemas differ:\n" + "\n".join(differences)


def test_the_comparison_sees_a_difference(schemas: tuple[dict[str, Table], dict[str, Table]]) -> None:
    """The readers are not blind: a changed copy of PostgreSQL's users table differs from SQLite's."""
    sqlite = schemas[0]["users"]
    changed = Table(**{**vars(schemas[1]["users"]), "columns": schemas[1]["users"].columns[:-1]})
    assert sqlite.columns != changed.columns
    assert sqlite.unique == {("username",)} and sqlite.checks == [frozenset({"admin", "operator", "viewer"})]
    assert schemas[1]["actions"].indexes["actions_open"] == (("device_id",), False, "open = 1")
    assert "device_changes_device_moved" in schemas[1]["devices"].triggers


# --- the triggers write the same rows ------------------------------------------------------------------------------

CHANGES = [
    ("INSERT INTO devices (id, hardware_id, name, device_type, public_key, status, created_at) "
     "VALUES (?, ?, ?, 'cam', ?, 'active', 1.0)", [("d1", "h1", "one", b"k"), ("d2", "h2", "two", b"k")]),
    ("UPDATE devices SET last_seen = 5.0 WHERE id = ?", [("d1",)]),  # not logged
    ("UPDATE devices SET tags = '{\"a\": \"b\"}' WHERE id = ?", [("d2",)]),
    ("UPDATE devices SET status = status WHERE id = ?", [("d1",)]),  # UPDATE OF: named in SET is enough
    ("INSERT INTO device_components (device_id, name, version, updated_at) VALUES (?, ?, '1.0.0', 1.0)",
     [("d1", "app"), ("d2", "app"), ("d1", "fw")]),
    ("UPDATE device_components SET health = 'ok' WHERE device_id = ? AND name = ?", [("d1", "fw")]),
    ("DELETE FROM device_components WHERE device_id = ? AND name = ?", [("d1", "fw")]),
    ("INSERT INTO blobs (sha256, size, md5, sha1, created_at) VALUES (?, 1, '', '', 1.0)", [("s1",)]),
    ("INSERT INTO artifacts (id, name, version, kind, device_types, sha256, size, file_name, manifest, signature, "
     "created_at) VALUES (?, 'app', ?, 'app', '[\"cam\"]', 's1', 1, 'f', ?, 'sig', 1.0)",
     [("a1", "1.0.0", b"{}"), ("a2", "2.0.0", b"{}")]),
    ("INSERT INTO actions (id, device_id, kind, artifact_id, state, created_at, updated_at) "
     "VALUES (?, ?, 'install', 'a1', 'queued', ?, ?)", [("x1", "d1", 1.0, 1.0), ("x2", "d2", 2.0, 2.0),
                                                        ("x3", "d1", 3.0, 3.0)]),
    ("UPDATE actions SET state = 'running', progress = 50 WHERE id = ?", [("x1",)]),
    ("INSERT INTO rollouts (id, artifact_id, component, target, stages, max_failure, soak_seconds, "
     "offline_timeout, state, created_at, updated_at) VALUES (?, 'a1', 'app', '{}', '[100]', 0, 0, 60, "
     "'running', 1.0, 1.0)", [("r1",)]),
    ("INSERT INTO rollout_faults (rollout_id, device_id, reason, at) VALUES (?, ?, 'crash', 2.0)", [("r1", "d2")]),
    ("DELETE FROM actions WHERE id = ?", [("x3",)]),
    ("DELETE FROM artifacts WHERE id = ?", [("a2",)]),
    ("DELETE FROM devices WHERE id = ?", [("d2",)]),  # its component and action go by cascade, through triggers
    ("DELETE FROM device_changes WHERE seq <= ?", [(3,)]),
]


def test_the_triggers_write_the_same_rows(pg: Any, sq: sqlite3.Connection) -> None:
    logs = []
    for conn in (sq, pg):
        for sql, rows in CHANGES:
            for params in rows:
                conn.execute(sql, params)
        rows_of = lambda sql, c=conn: [tuple(r) for r in c.execute(sql)]  # noqa: E731
        logs.append({
            "device_changes": rows_of("SELECT seq, device_id FROM device_changes ORDER BY seq"),
            "ddi_ids": rows_of("SELECT num, kind, ref FROM ddi_ids ORDER BY num"),
            "last_seq": rows_of(f"SELECT {database.dialect_of(conn).last_id('device_changes')}")[0][0],
        })
    assert logs[0] == logs[1]
    # And what they are: d1 and d2 made, d2 retagged, d1's status set; three components, one updated, one dropped;
    # three actions and one moved; a fault on d2; x3 gone; d2 gone with its component and its action; then the
    # first three entries deleted, which does not lower the last sequence number.
    assert logs[1]["device_changes"] == list(enumerate(
        ["d1", "d1", "d2", "d1", "d1", "d1", "d1", "d2", "d1", "d1", "d2", "d2", "d2"], start=4))
    assert logs[1]["ddi_ids"] == [(1, "artifact", "a1"), (3, "action", "x1")]
    assert logs[1]["last_seq"] == 16


def test_usernames_are_one_in_any_case_as_with_sqlite_nocase(pg: Any, sq: sqlite3.Connection) -> None:
    insert = ("INSERT INTO users (id, username, password_hash, role, created_at, updated_at) "
              "VALUES (?, ?, 'h', 'admin', 0, 0)")
    for conn in (sq, pg):
        conn.execute(insert, ("u1", "Alice"))
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(insert, ("u2", "aLICE"))
        assert [r[0] for r in conn.execute("SELECT id FROM users WHERE username = ?", ("ALICE",))] == ["u1"]
