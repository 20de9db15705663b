"""PostgreSQL connection fixtures: the migrated schema is built once per session, in a template database
(``pg_schema``, tests/conftest.py), and each test that wants it gets a copy (about as cheap as an empty database:
docs/testing.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fleetd.store import database

if TYPE_CHECKING:
    from fleetd.store import postgres
    from tests.support.services import PostgresServer


@pytest.fixture
def pg(postgres_server: PostgresServer, pg_schema: str) -> Iterator[postgres.Connection]:
    """A store connection to a fresh copy of the migrated PostgreSQL schema."""
    from fleetd.store import postgres
    name = postgres_server.create_database(template=pg_schema)
    conn = postgres.connect(postgres_server.dsn(name))
    yield conn
    conn.close()
    postgres_server.drop_database(name)


@pytest.fixture
def sq(tmp_path: Path) -> Iterator[database.Connection]:
    """A store connection to a fresh, migrated SQLite database: what ``pg`` is compared with."""
    conn = database.connect(tmp_path / "fleet.db")
    database.migrate(conn)
    yield conn
    conn.close()
