"""store/dialect.py on both databases: each Dialect method's fragment, in the same query over the same rows, gives
the same result on SQLite and on PostgreSQL (and the result it should)."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest

from fleetd.core.semver import Version
from fleetd.store.dialect import POSTGRESQL, Dialect, dialect_of

# Portable DDL: both databases read these types the same way (PostgreSQL's REAL would be single precision).
SCRATCH = ("CREATE TABLE things (id TEXT PRIMARY KEY, n BIGINT, tags TEXT NOT NULL, kinds TEXT NOT NULL, "
           "lo DOUBLE PRECISION, hi DOUBLE PRECISION)")
THINGS = [
    ("a", 1, {"site.region": "eu", "hw-rev": "2", "site": "x"}, ["cam", "gw", 5], 1.5, 2),
    ("b", 2, {"site": {"region": "eu"}, "hw_rev": "2"}, ["cam*", "gw-x"], -3, -4.25),
    ("c", 3, {"site.region": "us", "hw-rev": "3"}, [], 0, 0),
    ("d", None, {}, [7, "7x", "a%b", "a_b", "back\\slash*"], 10, 10),
]


@pytest.fixture
def both(sq: sqlite3.Connection, pg: Any) -> list[Any]:
    for conn in (sq, pg):
        conn.execute(SCRATCH)
        conn.executemany("INSERT INTO things VALUES (?, ?, ?, ?, ?, ?)",
                         [(i, n, json.dumps(t), json.dumps(k), lo, hi) for i, n, t, k, lo, hi in THINGS])
    return [sq, pg]


def same(conns: list[Any], build: Callable[[Dialect], str], params: Any = ()) -> list[tuple[Any, ...]]:
    """The rows of the query ``build`` makes with each connection's dialect; they must be equal."""
    got = [[tuple(r) for r in c.execute(build(dialect_of(c)), params).fetchall()] for c in conns]
    assert got[0] == got[1], f"SQLite: {got[0]}\nPostgreSQL: {got[1]}"
    return got[0]


def ids(conns: list[Any], where: Callable[[Dialect], str], params: Any) -> list[str]:
    return [r[0] for r in same(conns, lambda d: f"SELECT id FROM things WHERE {where(d)} ORDER BY id", params)]


def test_the_dialects(sq: sqlite3.Connection, pg: Any) -> None:
    assert dialect_of(pg) is POSTGRESQL and POSTGRESQL.name == "postgresql"
    assert dialect_of(sq).name == "sqlite"
    # Every fragment method is PostgreSQL's own: none falls back to SQLite's text.
    methods = [m for m in vars(Dialect) if not m.startswith("_") and callable(getattr(Dialect, m))]
    assert len(methods) >= 13
    assert POSTGRESQL.begin_write == "BEGIN"
    assert [m for m in methods if m not in vars(type(POSTGRESQL))] == []


def test_in_json_list(both: list[Any]) -> None:
    assert ids(both, lambda d: d.in_json_list("id"), [json.dumps(["c", "a", "zz"])]) == ["a", "c"]
    assert ids(both, lambda d: d.in_json_list("id"), [json.dumps([])]) == []
    assert ids(both, lambda d: d.in_json_list("n"), [json.dumps([3, 1, 99])]) == ["a", "c"]


def test_json_list_contains(both: list[Any]) -> None:
    contains = lambda d: d.json_list_contains("kinds")  # noqa: E731
    assert ids(both, contains, ["cam"]) == ["a"]
    assert ids(both, contains, ["gw"]) == ["a"]
    assert ids(both, contains, [5]) == ["a"]
    assert ids(both, contains, [7]) == ["d"]
    assert ids(both, contains, ["7x"]) == ["d"]
    assert ids(both, contains, ["ca"]) == []


def test_json_array_elements_and_members(both: list[Any]) -> None:
    points = json.dumps([{"name": "temp", "ts": 5, "value": 21.5, "tags": {"k": "v"}},
                         {"name": "rpm", "ts": 1.25, "value": 3},
                         {"name": "x", "value": -1, "tags": {}}])

    def query(d: Dialect) -> str:
        m = lambda key, kind: d.json_member("p.value", key, kind)  # noqa: E731
        return (f"SELECT {m('name', 'text')}, {m('ts', 'real')}, {m('value', 'real')}, {m('tags', 'json')}, "
                f"NULLIF({m('tags', 'json')}, '{{}}') FROM {d.json_array_elements('p')}")

    rows = [c.execute(query(dialect_of(c)), [points]).fetchall() for c in both]
    parsed = [[(r[0], r[1], r[2], r[3] and json.loads(r[3]), r[4] and json.loads(r[4])) for r in got]
              for got in rows]
    assert parsed[0] == parsed[1] == [("temp", 5, 21.5, {"k": "v"}, {"k": "v"}), ("rpm", 1.25, 3, None, None),
                                      ("x", None, -1, {}, None)]
    assert all(isinstance(r[1], float) for r in rows[1] if r[1] is not None)


@pytest.mark.parametrize(("value", "pattern", "match"), [
    ("cam-v2", "cam-*", 1), ("cam_v2", "cam-*", 0), ("Cam-v2", "cam-*", 0), ("cam", "cam*", 1), ("x", "*", 1),
    ("", "*", 1), ("", "", 1), ("ab", "a", 0), ("a%b", "a%b", 1), ("axyb", "a%b", 0), ("a_b", "a_b", 1),
    ("axb", "a_b", 0), ("back\\slash", "back\\*", 1), ("backslash", "back\\*", 0), ("a*b", "a*b", 1),
    ("a.b", "*.*", 1), ("ab", "*.*", 0),
])
def test_star_match(sq: sqlite3.Connection, pg: Any, value: str, pattern: str, match: int) -> None:
    assert same([sq, pg], lambda d: f"SELECT CASE WHEN {d.star_match('?', '?')} THEN 1 ELSE 0 END",
                [value, pattern]) == [(match,)]


def test_json_list_star_matches(both: list[Any]) -> None:
    matches = lambda d: d.json_list_star_matches("kinds")  # noqa: E731
    assert ids(both, matches, ["cam"]) == ["a", "b"]
    assert ids(both, matches, ["camera"]) == ["b"]
    assert ids(both, matches, ["gw-x"]) == ["b"]
    assert ids(both, matches, ["gw-1x"]) == []
    assert ids(both, matches, ["a%b"]) == ["d"]
    assert ids(both, matches, ["axb"]) == []
    assert ids(both, matches, ["back\\slash and more"]) == ["d"]


def test_json_key_equals(both: list[Any]) -> None:
    eq = lambda d: d.json_key_equals("tags")  # noqa: E731
    assert ids(both, eq, ["site.region", "eu"]) == ["a"]  # a key with a dot is one key, not a path
    assert ids(both, eq, ["hw-rev", "2"]) == ["a"]
    assert ids(both, eq, ["hw_rev", "2"]) == ["b"]
    assert ids(both, eq, ["site", "x"]) == ["a"]
    assert ids(both, lambda d: f"{eq(d)} AND {eq(d)}", ["site.region", "us", "hw-rev", "3"]) == ["c"]
    assert ids(both, eq, ["missing", "eu"]) == []


def test_json_set_key(both: list[Any]) -> None:
    for conn in both:
        d = dialect_of(conn)
        conn.execute(f"UPDATE things SET tags = {d.json_set_key('tags')} WHERE id IN (?, ?)",
                     ["new.key", "v", "a", "d"])
        conn.execute(f"UPDATE things SET tags = {d.json_set_key('tags')} WHERE id = ?", ["site", "y", "a"])
    got = [{r[0]: json.loads(r[1]) for r in c.execute("SELECT id, tags FROM things")} for c in both]
    assert got[0] == got[1]
    assert got[1]["a"] == {"site.region": "eu", "hw-rev": "2", "site": "y", "new.key": "v"}
    assert got[1]["d"] == {"new.key": "v"}
    assert got[1]["b"] == dict(THINGS[1][2])


def test_now_epoch(both: list[Any]) -> None:
    for conn in both:
        before = time.time()
        (now,) = conn.execute(f"SELECT {dialect_of(conn).now_epoch()}").fetchone()
        assert isinstance(now, float)
        assert before - 1 <= now <= time.time() + 1


VERSIONS = ["0.9.9", "1.0.0-0", "1.0.0-1", "1.0.0-2", "1.0.0-10", "1.0.0-0a", "1.0.0-alpha", "1.0.0-alpha.1",
            "1.0.0-alpha.beta", "1.0.0-alpha.beta.1", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1",
            "1.0.0-rc.1+build.5", "1.0.0", "1.0.0+zzz", "1.0.1", "1.2.0", "1.10.0", "1.10.0-x-y", "2.0.0",
            "10.0.0", "100.0.0-A", "100.0.0-Z", "100.0.0-a", "100.0.0", "12345678901234567890.0.0"]


def test_semver_order(sq: sqlite3.Connection, pg: Any) -> None:
    shuffled = random.Random(18).sample(VERSIONS, len(VERSIONS))
    for conn in (sq, pg):
        conn.execute("CREATE TABLE versions (v TEXT PRIMARY KEY)")
        conn.executemany("INSERT INTO versions VALUES (?)", [(v,) for v in shuffled])
    expected = sorted(VERSIONS, key=lambda v: (Version(v), v))
    ascending = same([sq, pg], lambda d: f"SELECT v FROM versions ORDER BY {d.semver_order('v')}, v")
    assert [v for (v,) in ascending] == expected
    descending = same([sq, pg], lambda d: f"SELECT v FROM versions ORDER BY {d.semver_order('v')} DESC, v DESC")
    assert [v for (v,) in descending] == expected[::-1]


def test_semver_order_refuses_what_is_no_version(pg: Any) -> None:
    import psycopg
    for bad in ["1.0", "01.0.0", "1.0.0-", "1.0.0-01", "v1.0.0", "x" * 200]:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="is not a semantic version"):
            pg.execute(f"SELECT {POSTGRESQL.semver_order('?')}", [bad]).fetchall()


def test_least_and_greatest(both: list[Any]) -> None:
    rows = same(both, lambda d: f"SELECT id, {d.least('lo', 'hi')}, {d.greatest('lo', 'hi')} FROM things ORDER BY id")
    assert rows == [("a", 1.5, 2), ("b", -4.25, -3), ("c", 0, 0), ("d", 10, 10)]


def test_last_id_counts_past_deleted_rows(sq: sqlite3.Connection, pg: Any) -> None:
    last = lambda d: f"SELECT {d.last_id('audit_log')}"  # noqa: E731
    assert same([sq, pg], last) == [(0,)]
    for conn in (sq, pg):
        conn.executemany("INSERT INTO audit_log (ts, actor_kind, action) VALUES (?, 'system', 'x')",
                         [(1.0,), (2.0,), (3.0,)])
        conn.execute("DELETE FROM audit_log WHERE ts > ?", [1.5])
    assert same([sq, pg], last) == [(3,)]
    for conn in (sq, pg):
        conn.execute("DELETE FROM audit_log")
        conn.execute("INSERT INTO audit_log (ts, actor_kind, action) VALUES (4.0, 'system', 'x')")
    assert same([sq, pg], lambda d: "SELECT id FROM audit_log") == [(4,)]
    assert same([sq, pg], last) == [(4,)]


def test_table_exists_and_the_temp_table_name(pg: Any, sq: sqlite3.Connection) -> None:
    for conn in (sq, pg):
        d = dialect_of(conn)
        assert conn.execute(d.table_exists(), ("devices",)).fetchone() is not None
        assert conn.execute(d.table_exists(), ("no_such_table",)).fetchone() is None
        conn.execute(f"CREATE TEMP TABLE scratch (n {d.integer}, x {d.real})")
        conn.execute(f"INSERT INTO {d.temp_table('scratch')} VALUES (?, ?)", (2**40, 0.1))
        assert tuple(conn.execute(f"SELECT n, x FROM {d.temp_table('scratch')}").fetchone()) == (2**40, 0.1)


def test_truncate_sum_int_and_no_limit_agree(pg: Any, sq: sqlite3.Connection) -> None:
    got = []
    for conn in (sq, pg):
        d = dialect_of(conn)
        row = conn.execute(f"SELECT {d.truncate('(? - ?) / ?')}, {d.truncate('?')}, {d.sum_int('n')} "
                           "FROM (SELECT 2 AS n UNION ALL SELECT 3) t", (100.0, 1.0, 60.0, -2.7)).fetchone()
        names = [r[0] for r in conn.execute("SELECT 'a' UNION ALL SELECT 'b' ORDER BY 1 LIMIT ? OFFSET ?",
                                            (d.no_limit, 1))]
        got.append((tuple(row), names))
        assert all(type(v) is int for v in row)  # not PostgreSQL's numeric (a Decimal) for the SUM
    assert got[0] == got[1] == ((1, -2, 5), ["b"])
