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

    def in_json_list(self, expr: str) -> str:
        """``expr`` is one of the values of a JSON list. Parameter: the list, as JSON text."""
        return f"{expr} IN (SELECT value FROM json_each(?))"

    def json_list_contains(self, column: str) -> str:
        """The JSON list in ``column`` holds a value. Parameter: the value."""
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

    def least(self, a: str, b: str) -> str:
        """The smaller of two values (SQLite's two-argument ``MIN``)."""
        return f"MIN({a}, {b})"

    def greatest(self, a: str, b: str) -> str:
        """The larger of two values (SQLite's two-argument ``MAX``)."""
        return f"MAX({a}, {b})"


SQLITE = Dialect()


def dialect_of(conn: Any) -> Dialect:
    """The dialect of a store connection: SQLite's for a sqlite3 connection; another backend's connection
    carries its own (a ``dialect`` attribute)."""
    if isinstance(conn, sqlite3.Connection):
        return SQLITE
    found = getattr(conn, "dialect", None)
    if not isinstance(found, Dialect):
        raise TypeError(f"{type(conn).__name__} is not a store connection: it has no SQL dialect")
    return found
