"""A PostgreSQL connection shaped like the store's sqlite3 ones, for the storage modules' SQL.

Imported only when a PostgreSQL DSN is used: neither ``import fleetd.app`` nor a SQLite server loads psycopg
(tests/store/test_postgres_adapter.py holds this). The storage modules call the part of sqlite3's API this module
gives: ``execute`` / ``executemany`` with ``?`` placeholders, returning a cursor with ``fetchone`` / ``fetchall`` /
``fetchmany``, iteration, ``rowcount``, ``lastrowid`` and a settable ``row_factory`` (``None``: plain tuples);
rows that index by position and by column name (:class:`Row`, like sqlite3.Row); ``in_transaction``;
``effects`` (store.database.effect); and ``dialect``, the :class:`~fleetd.store.dialect.PostgresDialect`.
A constraint violation raises ``sqlite3.IntegrityError`` (from psycopg's), which is what the storage modules
catch on either backend.

The connection is in autocommit mode, as the store's sqlite3 connections are (``isolation_level=None``):
store.database.transaction sends ``BEGIN`` ... ``COMMIT`` itself. Only psycopg APIs that its pure-Python
implementation has over the system's libpq are used (no psycopg_binary-only features).
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import conninfo, pq, rows

from ..core import dsn as dsns
from ..core.errors import FailedPrecondition, InvalidArgument, Unavailable
from .dialect import POSTGRESQL, PostgresDialect

log = logging.getLogger(__name__)

# Seconds a statement waits for a lock another connection holds (SQLite's busy timeout).
LOCK_TIMEOUT = 30.0
# Seconds to wait for the server to answer a new connection, unless the DSN says (libpq's default: for ever).
CONNECT_TIMEOUT = 10

# What a placeholder can hide in: quoted text ('...', E'...' with backslash escapes, $tag$...$tag$), quoted
# identifiers ("..."), comments (-- and /* */). A ? in any of them is not a placeholder; a % anywhere must be
# doubled, as psycopg reads %s, %b, %t and %% wherever they are.
_TOKENS = re.compile(r"""
      (?<![\w$])[Ee]'(?:[^'\\]|\\.|'')*'
    | '(?:[^']|'')*'
    | "(?:[^"]|"")*"
    | --[^\n]*
    | /\*.*?\*/
    | \$(?P<tag>[A-Za-z_][A-Za-z_0-9]*|)\$.*?\$(?P=tag)\$
    | [?%]
""", re.VERBOSE | re.DOTALL)


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """``sql`` with psycopg's placeholders: each ``?`` outside quotes and comments becomes ``%s``, and every ``%``
    becomes ``%%``. Cached per SQL text: the storage modules build their statements from a few templates."""
    def one(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "?":
            return "%s"
        return token.replace("%", "%%")
    return _TOKENS.sub(one, sql)


class _Columns:
    """The column names of one result, and where each is (by exact name first, then lower-cased, as sqlite3.Row
    finds a column in any case)."""

    __slots__ = ("index", "names")

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.index: dict[str, int] = {}
        for pos, name in enumerate(self.names):
            self.index.setdefault(name, pos)
        for pos, name in enumerate(self.names):
            self.index.setdefault(name.lower(), pos)


class Row:
    """One result row: ``row[0]``, ``row["name"]`` (any case, as sqlite3.Row), ``row.keys()``, ``len``, iteration,
    and equality with another Row of the same columns and values."""

    __slots__ = ("_columns", "_values")

    def __init__(self, columns: _Columns, values: Sequence[Any]) -> None:
        self._columns, self._values = columns, tuple(values)

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            pos = self._columns.index.get(key)
            if pos is None:
                pos = self._columns.index.get(key.lower())
                if pos is None:
                    raise IndexError(f"no such column: {key}")
            return self._values[pos]
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._columns.names)

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Row) and self.keys() == other.keys() and self._values == other._values

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self.keys(), self._values, strict=True))!r})"


def _row_maker(cursor: psycopg.Cursor[Any]) -> rows.RowMaker[Row]:
    return functools.partial(Row, _Columns([c.name for c in cursor.description or ()]))


class Cursor:
    """A psycopg cursor with sqlite3's cursor API (the part the storage modules use)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._cur: psycopg.Cursor[Any] = conn.raw.cursor(row_factory=_row_maker)
        self._lastrowid: int | None = None
        self._inserted: str | None = None  # the table of the last INSERT that stored rows, for lastrowid

    @property
    def row_factory(self) -> type[Row] | None:
        return Row if self._cur.row_factory is _row_maker else None

    @row_factory.setter
    def row_factory(self, factory: type[Row] | None) -> None:
        if factory is None:
            self._cur.row_factory = rows.tuple_row
        elif factory is Row:
            self._cur.row_factory = _row_maker
        else:
            raise TypeError("a PostgreSQL store cursor makes Row objects (row_factory = Row) or plain tuples "
                            "(row_factory = None)")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        try:
            if params:
                self._cur.execute(translate(sql), params)
            else:  # no parameters: psycopg reads no placeholders (nor % signs) in the text
                self._cur.execute(sql)
        except psycopg.IntegrityError as e:
            raise _integrity_error(e) from e
        except psycopg.DataError as e:
            raise _data_error(e) from e
        except psycopg.OperationalError as e:
            raise _lost(self._conn, e) from e
        self._note_insert(sql)
        return self

    def executemany(self, sql: str, seq_of_params: Iterable[Sequence[Any]]) -> Cursor:
        try:
            self._cur.executemany(translate(sql), seq_of_params)
        except psycopg.IntegrityError as e:
            raise _integrity_error(e) from e
        except psycopg.DataError as e:
            raise _data_error(e) from e
        except psycopg.OperationalError as e:
            raise _lost(self._conn, e) from e
        return self

    def _note_insert(self, sql: str) -> None:
        if (self._cur.statusmessage or "").startswith("INSERT ") and self._cur.rowcount > 0:
            table = _inserted_table(sql)
            if table is not None:
                self._inserted, self._lastrowid = table, None

    @property
    def lastrowid(self) -> int | None:
        """The id of the last row the last INSERT through :meth:`execute` stored (sqlite3's lastrowid; None
        before any): the current value of its table's identity sequence in this session, read once, when asked.
        Read it before the connection inserts into the same table again."""
        if self._inserted is not None:
            table, self._inserted = self._inserted, None
            row = self._conn.raw.execute(
                "SELECT currval(pg_get_serial_sequence(%s, a.attname)) FROM pg_attribute a "
                "WHERE a.attrelid = %s::regclass AND a.attidentity <> '' AND NOT a.attisdropped",
                (table, table)).fetchone()
            if row is None:
                raise psycopg.NotSupportedError(
                    f"lastrowid: table {table} has no identity column (SQLite's rowid has no PostgreSQL "
                    "counterpart); add RETURNING to the INSERT to read what it stored")
            self._lastrowid = int(row[0])
        return self._lastrowid

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    @property
    def description(self) -> Any:
        return self._cur.description

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    def fetchmany(self, size: int = 1) -> list[Any]:
        return self._cur.fetchmany(size)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cur)

    def close(self) -> None:
        self._cur.close()


def _data_error(e: psycopg.DataError) -> Exception:
    """A value PostgreSQL cannot store, such as text with a NUL character (SQLite stores it; PostgreSQL's text type
    cannot, and psycopg refuses it before sending): the caller's input, so InvalidArgument (400), not a 500."""
    if "NUL" in str(e):
        return InvalidArgument("text may not contain NUL (0x00) characters; remove them and send it again")
    return e


def _integrity_error(e: psycopg.IntegrityError) -> sqlite3.IntegrityError:
    """A constraint violation as sqlite3's exception, so that the storage modules catch one class on both
    backends (the psycopg error is its ``__cause__``, with the SQLSTATE). The transaction is aborted all the
    same: store.database.may_fail is how a write goes on after one."""
    return sqlite3.IntegrityError(" ".join(str(e).split()))


class ConnectionLost(Unavailable, psycopg.OperationalError):
    """The database went away while the server runs (a restart, a failover, a dropped network): ``unavailable``
    (HTTP 503) to the caller, who may try again, as devices do; the connection reconnects for the next statement
    (:meth:`Connection._recover`). Still a psycopg.OperationalError for the store's callers."""


def _lost(conn: Connection, e: psycopg.OperationalError) -> psycopg.OperationalError:
    """What a statement that failed with ``e`` raises: ConnectionLost if its session is gone, else ``e``."""
    if not conn.raw.broken:
        return e
    log.warning("lost the connection to PostgreSQL: %s", " ".join(str(e).split()))
    return ConnectionLost("the connection to PostgreSQL was lost (its cause is in the server log); the statement "
                          "may not have run: try again")


_INSERT_INTO = re.compile(r'\s*INSERT\s+INTO\s+((?:"[^"]+"|[\w.]+))', re.IGNORECASE)


@functools.lru_cache(maxsize=256)
def _inserted_table(sql: str) -> str | None:
    m = _INSERT_INTO.match(sql)
    return m.group(1) if m else None


class Connection:
    """A store connection to PostgreSQL (see the module's docstring). ``raw`` is the psycopg connection.

    It reconnects by itself after the server went away (a restart, a failover, a dropped network): the next
    statement outside a transaction opens a new session, so the store recovers without a restart of fleetd. A
    connection lost inside a transaction is not resumed: the statement raises, the transaction's ROLLBACK is
    answered by the new session, and nothing of it was committed (its caller was told it failed)."""

    dialect: PostgresDialect = POSTGRESQL

    def __init__(self, raw: psycopg.Connection[Any], reopen: Callable[[], psycopg.Connection[Any]]) -> None:
        self.raw = raw
        self._reopen = reopen
        self._in_tx = False  # between a BEGIN and its COMMIT/ROLLBACK, as sent through execute()
        self.effects: list[Any] = []  # store.database.effect

    def cursor(self) -> Cursor:
        return Cursor(self)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if self.raw.broken:
            self._recover(sql)
        if sql == "COMMIT" or sql == "ROLLBACK":
            self._in_tx = False
        cursor = self.cursor().execute(sql, params)
        if sql.startswith("BEGIN"):
            self._in_tx = True
        return cursor

    def _recover(self, sql: str) -> None:
        if self._in_tx and sql != "ROLLBACK":
            raise ConnectionLost("the connection to PostgreSQL was lost inside a transaction, which the server "
                                 "rolled back; nothing of it was committed: try again")
        try:
            self.raw = self._reopen()
        except FailedPrecondition as e:  # what and where: the server is still away, which may pass
            raise ConnectionLost(str(e)) from None
        self._in_tx = False
        log.warning("reconnected to PostgreSQL after losing the connection")

    def executemany(self, sql: str, seq_of_params: Iterable[Sequence[Any]]) -> Cursor:
        if self.raw.broken:
            self._recover(sql)
        return self.cursor().executemany(sql, seq_of_params)

    def executescript(self, sql: str) -> Cursor:
        """Run a script of several statements as it is (no placeholders), inside the transaction open, if one is
        (unlike sqlite3's, it does not commit first): migrations run this way."""
        return self.execute(sql)  # no parameters: the text goes as it is

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != pq.TransactionStatus.IDLE

    def close(self) -> None:
        self.raw.close()


def _where(given: dict[str, Any]) -> str:
    """Which database a DSN names, for a message: host, port, database and user, never the password."""
    return " ".join(f"{k}={given[k]}" for k in ("host", "hostaddr", "port", "dbname", "user") if k in given) \
        or "libpq defaults"


def _detail(e: BaseException, dsn: str) -> str:
    detail = dsns.scrub(" ".join(str(e).split()), dsn)
    return detail if detail.endswith((".", "?")) else detail + "."


def migration_failed(e: Exception, dsn: str) -> Exception:
    """What to raise for ``e``, which migrating the database at ``dsn`` raised: a database error (most likely a
    role without CREATE on the schema) as FailedPrecondition saying what to do; anything else as it is."""
    if not isinstance(e, psycopg.Error):
        return e
    where = _where(conninfo.conninfo_to_dict(dsn))
    if isinstance(e, psycopg.errors.InsufficientPrivilege):
        return FailedPrecondition(
            f"the PostgreSQL role may not create fleetd's tables ({where}): {_detail(e, dsn)} Give it CREATE on "
            "the schema (GRANT CREATE ON SCHEMA public TO the role, or make it the database's owner), then start "
            "again: docs/operations.md, \"PostgreSQL\".")
    return FailedPrecondition(f"cannot bring the PostgreSQL database ({where}) to fleetd's schema: "
                              f"{_detail(e, dsn)} Nothing of the failed migration was kept.")


def connect(dsn: str, *, readonly: bool = False, lock_timeout: float = LOCK_TIMEOUT) -> Connection:
    """A store connection to the database at ``dsn`` (``postgresql://USER@HOST:PORT/DB`` or libpq's key=value
    form); ``readonly``: one that may not write (the store's readers). A database that cannot be reached, or that
    refuses us, raises FailedPrecondition saying which one (never its password) and what to check."""
    reopen = functools.partial(_open_raw, dsn, readonly, lock_timeout)
    return Connection(reopen(), reopen)


def _open_raw(dsn: str, readonly: bool, lock_timeout: float) -> psycopg.Connection[Any]:
    try:
        given = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as e:  # its message may quote the DSN's password: taken out
        raise FailedPrecondition(f"the PostgreSQL DSN is not valid ({dsns.scrub(str(e), dsn)}); write it as "
                                 "postgresql://USER@HOST:PORT/DATABASE or as libpq's key=value pairs") from None
    extra: dict[str, Any] = {} if "connect_timeout" in given else {"connect_timeout": CONNECT_TIMEOUT}
    try:
        raw = psycopg.connect(dsn, autocommit=True, application_name="fleetd", **extra)
    except psycopg.OperationalError as e:
        raise FailedPrecondition(
            f"cannot connect to the PostgreSQL database ({_where(given)}): {_detail(e, dsn)} Check that "
            "the server runs and accepts connections from this host, and the DSN's user, password and database."
        ) from None
    try:
        raw.execute(f"SET lock_timeout = {int(lock_timeout * 1000)}")
        if readonly:
            raw.execute("SET default_transaction_read_only = on")
    except BaseException:
        raw.close()
        raise
    return raw
