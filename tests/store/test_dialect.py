"""store/dialect.py: which dialect a connection has, and each SQL fragment in a real query on SQLite."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from fleetd.core.errors import InvalidArgument
from fleetd.devices import registry, storage
from fleetd.store import database
from fleetd.store.dialect import SQLITE, Dialect, dialect_of


@pytest.fixture
def conn(tmp_path: Path) -> database.Connection:
    c = database.connect(tmp_path / "t.db")
    c.execute("CREATE TABLE things (id TEXT PRIMARY KEY, tags TEXT NOT NULL, kinds TEXT NOT NULL)")
    c.executemany("INSERT INTO things VALUES (?, ?, ?)", [
        ("a", json.dumps({"site.region": "eu", "hw-rev": "2", "site": "x"}), json.dumps(["cam", "gw"])),
        ("b", json.dumps({"site": {"region": "eu"}, "hw_rev": "2"}), json.dumps(["cam"])),
        ("c", json.dumps({"site.region": "us", "hw-rev": "3"}), json.dumps([])),
    ])
    return c


def _ids(conn: sqlite3.Connection, where: str, args: list[object]) -> list[str]:
    return [r[0] for r in conn.execute(f"SELECT id FROM things WHERE {where} ORDER BY id", args)]


def test_a_store_connection_speaks_sqlite(conn: database.Connection) -> None:
    assert dialect_of(conn) is SQLITE
    assert SQLITE.name == "sqlite"


def test_another_backend_brings_its_dialect_and_anything_else_is_refused() -> None:
    class Other:
        dialect = Dialect()

    other = Other()
    assert dialect_of(other) is other.dialect
    with pytest.raises(TypeError, match="object is not a store connection: it has no SQL dialect"):
        dialect_of(object())

    class Wrong:
        dialect = "sqlite"  # a name is not a Dialect

    with pytest.raises(TypeError, match="Wrong is not a store connection"):
        dialect_of(Wrong())


def test_json_key_equals_takes_the_key_literally(conn: database.Connection) -> None:
    eq = dialect_of(conn).json_key_equals("tags")
    # A '.' in the key is part of the key, not a path into a nested object (b has site → region).
    assert _ids(conn, eq, ["site.region", "eu"]) == ["a"]
    assert _ids(conn, eq, ["hw-rev", "2"]) == ["a"]
    assert _ids(conn, eq, ["hw_rev", "2"]) == ["b"]
    assert _ids(conn, eq, ["site", "x"]) == ["a"]
    assert _ids(conn, f"{eq} AND {eq}", ["site.region", "us", "hw-rev", "3"]) == ["c"]
    assert _ids(conn, eq, ["missing", "eu"]) == []


def test_in_json_list(conn: database.Connection) -> None:
    frag = dialect_of(conn).in_json_list("id")
    assert _ids(conn, frag, [json.dumps(["c", "a", "zz"])]) == ["a", "c"]
    assert _ids(conn, frag, [json.dumps([])]) == []


def test_json_list_contains(conn: database.Connection) -> None:
    frag = dialect_of(conn).json_list_contains("kinds")
    assert _ids(conn, frag, ["cam"]) == ["a", "b"]
    assert _ids(conn, frag, ["gw"]) == ["a"]
    assert _ids(conn, frag, ["ca"]) == []


def test_now_epoch_is_the_clock_in_seconds(conn: database.Connection) -> None:
    before = time.time()
    (db_now,) = conn.execute(f"SELECT {dialect_of(conn).now_epoch()}").fetchone()
    assert before - 1 <= db_now <= time.time() + 1


def test_device_filters_by_tags_whose_keys_have_dots_and_dashes(tmp_path: Path) -> None:
    conn = database.connect(tmp_path / "fleet.db")
    database.migrate(conn)
    for i, tags in enumerate([{"site.region": "eu", "hw-rev": "2"}, {"site.region": "us", "hw-rev": "2"}, {}]):
        storage.insert_device(conn, device_id=f"dev_{i}", hardware_id=f"hw-{i}", name=f"d{i}", device_type="cam",
                              public_key=b"k", status="active", claim_code=None, token_id=None,
                              tags=json.dumps(tags), inventory="{}", poll_interval=60, created_at=float(i),
                              enrolled_at=float(i), last_addr=None)
    assert registry.select_ids(conn, tags={"hw-rev": "2"}) == ["dev_0", "dev_1"]
    assert registry.select_ids(conn, tags={"hw-rev": "2", "site.region": "us"}) == ["dev_1"]
    devices, total = registry.list_devices(conn, tags={"site.region": "eu"})
    assert ([d.id for d in devices], total) == (["dev_0"], 1)
    # The key goes into the query as a parameter, but only once the tag-key rule accepted it.
    with pytest.raises(InvalidArgument, match="tag key"):
        registry.select_ids(conn, tags={'a"b': "x"})
