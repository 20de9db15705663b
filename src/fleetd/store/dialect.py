"""What differs between the databases fleetd's queries run on, and nothing else.

Storage modules (``<package>/storage.py``) write their SQL once, against the store's connection, with ``?``
placeholders and the forms both SQLite and PostgreSQL accept: ``INSERT ... ON CONFLICT (...) DO NOTHING`` or
``DO UPDATE SET col = excluded.col`` (never ``INSERT OR IGNORE`` / ``OR REPLACE``), ``RETURNING``, ``LIMIT``.
The few fragments that must differ — JSON inside a column, a JSON list as a parameter, the clock — come from the
connection's :class:`Dialect`, so that another backend is a new ``Dialect`` (and a connection that translates
``?`` placeholders) in store/, not an edit of every package. docs/architecture.md, "Where SQL lives".
"""

from __future__ import annotations

import sqlite3
from typing import Any, Literal


class Dialect:
    """SQL fragments for one database. Each method returns text to splice into a query; the values go in as
    parameters, in the order the docstring gives."""

    name = "sqlite"
    # What store.database.transaction begins a write with: SQLite takes the write lock at once, so that a write
    # never fails half-way on another connection's lock.
    begin_write = "BEGIN IMMEDIATE"
    # What opens a read transaction, whose statements all see one committed state (:func:`read_snapshot`): a
    # SQLite read transaction is a snapshot already.
    begin_read = "BEGIN"
    # Column types for the tables a query makes (temporary ones): PostgreSQL's REAL is single precision.
    integer, real = "INTEGER", "REAL"
    # The LIMIT parameter for "no limit".
    no_limit: int | None = -1

    def in_json_list(self, expr: str) -> str:
        """``expr`` is one of the values of a JSON list. Parameter: the list, as JSON text. Lists of ids: where the
        types differ (the number 5, the text '5'), PostgreSQL compares the text forms, SQLite the values."""
        return f"{expr} IN (SELECT value FROM json_each(?))"

    def json_list_contains(self, column: str) -> str:
        """The JSON list in ``column`` holds a value. Parameter: the value (compared as in :meth:`in_json_list`)."""
        return f"EXISTS (SELECT 1 FROM json_each({column}) WHERE value = ?)"

    def json_array_elements(self, alias: str) -> str:
        """A FROM item: each element of a JSON array as a row whose ``{alias}.value`` is the element (JSON).
        Parameter: the array, as JSON text."""
        return f"json_each(?) AS {alias}"

    def json_member(self, element: str, key: str, kind: Literal["text", "real", "json"]) -> str:
        """The member ``key`` (a fixed name, not user input) of the JSON object ``element`` as text, as a real
        number (JSON integers included), or as JSON text (objects); SQL NULL where the object has no such member."""
        op = "->" if kind == "json" else "->>"
        return f"{element} {op} '{key}'"

    def star_match(self, value: str, pattern: str) -> str:
        """``value`` matches ``pattern`` whole, where ``*`` stands for any run of characters and no other character
        is special (both are SQL expressions). Callers pass only patterns that core.names.DEVICE_TYPE_PATTERN
        accepted: GLOB's other wildcards (``?``, ``[``) never reach it."""
        return f"{value} GLOB {pattern}"

    def json_list_star_matches(self, column: str) -> str:
        """One of the patterns in the JSON list in ``column`` matches a value (see :meth:`star_match`).
        Parameter: the value."""
        return f"EXISTS (SELECT 1 FROM json_each({column}) WHERE {self.star_match('?', 'value')})"

    def json_key_equals(self, column: str) -> str:
        """The JSON object in ``column`` maps a key to a text value. Parameters: the key, the value."""
        return f"json_extract({column}, '$.\"' || ? || '\"') = ?"

    def now_epoch(self) -> str:
        """The database's clock, in seconds since the epoch (for expressions evaluated inside the database)."""
        return "((julianday('now') - 2440587.5) * 86400.0)"

    def json_set_key(self, column: str) -> str:
        """The JSON object in ``column`` with a key set to a text value (an expression, for ``UPDATE ... SET``).
        Parameters: the key, the value."""
        return f"json_set({column}, '$.\"' || ? || '\"', ?)"

    def semver_order(self, expr: str) -> str:
        """``expr`` (a version) as an ORDER BY term sorting by semantic-version precedence (SQLite: the
        ``semver`` collation store.database.connect registers)."""
        return f"{expr} COLLATE semver"

    def last_id(self, table: str) -> str:
        """The last id an AUTOINCREMENT (identity) column of ``table`` handed out, 0 before the first; it never goes
        down when rows are deleted."""
        return f"COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '{table}'), 0)"

    def insertion_order(self, key: str, alias: str = "") -> str:
        """An ORDER BY tie-break for rows of one time (``created_at``): SQLite's ``rowid``, the order they were
        inserted in. A PostgreSQL table has no such order: there, the row's key ``key`` (action ids sort by the
        millisecond they were made: clock.new_ordered_id), a total order all the same. ``alias``: "t." or ""."""
        return f"{alias}rowid"

    def sorted_scan(self, column: str) -> str:
        """``ORDER BY`` ``column``, an indexed one, read as a whole-table scan that the database sorts: SQLite's
        ``+column`` (walking the index, a table lookup a row, costs it twice as much); PostgreSQL's planner
        chooses by itself."""
        return f"+{column}"

    def table_exists(self) -> str:
        """A query with a row if the table named by its parameter exists (in the schema the store uses)."""
        return "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"

    def temp_table(self, name: str) -> str:
        """The qualified name of the connection's temporary table ``name`` (made with CREATE TEMP TABLE)."""
        return f"temp.{name}"

    def truncate(self, expr: str) -> str:
        """The number ``expr`` truncated toward zero to an integer (SQLite's CAST AS INTEGER; PostgreSQL's casts
        round, and its INTEGER is 32 bits)."""
        return f"CAST({expr} AS INTEGER)"

    def sum_int(self, expr: str) -> str:
        """SUM of an integer column, as an integer (PostgreSQL's SUM of a bigint is a numeric: a Decimal)."""
        return f"SUM({expr})"

    def least(self, a: str, b: str) -> str:
        """The smaller of two values, neither NULL (SQLite's two-argument ``MIN`` gives NULL if one is,
        PostgreSQL's ``LEAST`` the other)."""
        return f"MIN({a}, {b})"

    def greatest(self, a: str, b: str) -> str:
        """The larger of two values, neither NULL (see :meth:`least`)."""
        return f"MAX({a}, {b})"


class PostgresDialect(Dialect):
    """PostgreSQL's fragments, with the same meaning and the same parameters in the same order as SQLite's. JSON
    is stored as text and cast to ``jsonb`` where a query reads inside it; jsonb's ``?`` operators are never used
    (the connection turns every ``?`` outside quotes into a parameter): functions such as ``jsonb_exists`` are.
    ``semver_key`` and ``last_id`` are SQL functions that migrations/postgresql/0001_platform.sql creates."""

    name = "postgresql"
    # READ COMMITTED, the default: the store's single writer does not need the database to serialize writers.
    begin_write = "BEGIN"
    # READ COMMITTED takes a new snapshot per statement: a read of several statements needs REPEATABLE READ.
    begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ"
    integer, real = "bigint", "double precision"
    no_limit = None

    def in_json_list(self, expr: str) -> str:
        # As text: the lists are of ids; a text column keeps its index (text::text is no cast at all).
        return f"({expr})::text IN (SELECT jsonb_array_elements_text((?)::jsonb))"

    def json_list_contains(self, column: str) -> str:
        return (f"EXISTS (SELECT 1 FROM jsonb_array_elements_text(({column})::jsonb) AS e(value) "
                "WHERE e.value = (?)::text)")

    def json_array_elements(self, alias: str) -> str:
        return f"jsonb_array_elements((?)::jsonb) AS {alias}(value)"

    def json_member(self, element: str, key: str, kind: Literal["text", "real", "json"]) -> str:
        if kind == "real":
            return f"((({element})::jsonb ->> '{key}')::double precision)"
        if kind == "json":
            return f"((({element})::jsonb -> '{key}')::text)"
        return f"(({element})::jsonb ->> '{key}')"

    def star_match(self, value: str, pattern: str) -> str:
        # LIKE with the pattern's own LIKE wildcards and escape character (backslash) escaped, then * as %.
        escaped = (f"replace(replace(replace(replace(({pattern})::text, '\\', '\\\\'), '%', '\\%'), "
                   "'_', '\\_'), '*', '%')")
        return f"(({value})::text LIKE {escaped})"

    def json_list_star_matches(self, column: str) -> str:
        return (f"EXISTS (SELECT 1 FROM jsonb_array_elements_text(({column})::jsonb) AS e(value) "
                f"WHERE {self.star_match('?', 'e.value')})")

    def json_key_equals(self, column: str) -> str:
        return f"(({column})::jsonb ->> (?)::text) = (?)::text"

    def now_epoch(self) -> str:
        # The statement's start, as SQLite's 'now' is the same for a whole statement.
        return "(EXTRACT(EPOCH FROM statement_timestamp())::double precision)"

    def json_set_key(self, column: str) -> str:
        return f"(jsonb_set(({column})::jsonb, ARRAY[(?)::text], to_jsonb((?)::text))::text)"

    def semver_order(self, expr: str) -> str:
        return f'semver_key({expr}) COLLATE "C"'

    def last_id(self, table: str) -> str:
        return f"last_id('{table}')"

    def insertion_order(self, key: str, alias: str = "") -> str:
        return f"{alias}{key}"

    def sorted_scan(self, column: str) -> str:
        return column

    def table_exists(self) -> str:
        return "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND tablename = ?"

    def temp_table(self, name: str) -> str:
        return f"pg_temp.{name}"

    def truncate(self, expr: str) -> str:
        return f"trunc({expr})::bigint"

    def sum_int(self, expr: str) -> str:
        return f"SUM({expr})::bigint"

    def least(self, a: str, b: str) -> str:
        return f"LEAST({a}, {b})"

    def greatest(self, a: str, b: str) -> str:
        return f"GREATEST({a}, {b})"


SQLITE = Dialect()
POSTGRESQL = PostgresDialect()


def dialect_of(conn: Any) -> Dialect:
    """The dialect of a store connection: SQLite's for a sqlite3 connection; another backend's connection
    carries its own (a ``dialect`` attribute)."""
    if isinstance(conn, sqlite3.Connection):
        return SQLITE
    found = getattr(conn, "dialect", None)
    if not isinstance(found, Dialect):
        raise TypeError(f"{type(conn).__name__} is not a store connection: it has no SQL dialect")
    return found
