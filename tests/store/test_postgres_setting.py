"""A fleet whose `database` setting is a PostgreSQL DSN: what a start that cannot use it says (docs/operations.md,
"PostgreSQL"). Each error names the database (never the password) and what to do, and leaves nothing open."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import psycopg
import pytest
from psycopg import sql

import fleetd.store
from fleetd.core.config import Settings
from fleetd.core.errors import FailedPrecondition
from fleetd.fleet import Fleet, open_offline
from fleetd.store.database import Store

if TYPE_CHECKING:
    from tests.support.services import PostgresServer

SECRET = "pw-never-shown-0815"


def with_password(dsn: str, user: str = "fleetd") -> str:
    return dsn.replace("postgresql://fleetd@", f"postgresql://{user}:{SECRET}@", 1)


@pytest.fixture
def weak_role(postgres_server: PostgresServer, postgres_dsn: str) -> Iterator[str]:
    """A DSN of a fresh database for a role that may connect but not create tables in its public schema."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute(sql.SQL("DROP ROLE IF EXISTS weak"))
        conn.execute(sql.SQL("CREATE ROLE weak LOGIN"))
    yield with_password(postgres_dsn, "weak")
    postgres_server.drop_database(postgres_dsn.rsplit("/", 1)[1])  # before its role: the database grants to it
    with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS weak")


def test_a_role_without_create_on_the_schema_is_told_what_to_grant(weak_role: str, tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition) as e:
        Fleet(Settings(data_dir=str(tmp_path / "data"), database=weak_role, mdns=False))
    said = str(e.value)
    assert "may not create fleetd's tables" in said and "user=weak" in said, said
    assert "GRANT CREATE ON SCHEMA public" in said and SECRET not in said, said
    # The data dir's lock is free again: the start may be retried at once.
    with pytest.raises(FailedPrecondition, match="may not create"):
        open_offline(tmp_path / "data", weak_role)


def test_a_missing_database_is_named(postgres_server: PostgresServer, tmp_path: Path) -> None:
    dsn = with_password(postgres_server.dsn("no_such_db"))
    with pytest.raises(FailedPrecondition) as e:
        Store(dsn)
    said = str(e.value)
    assert "cannot connect to the PostgreSQL database" in said and "dbname=no_such_db" in said, said
    assert '"no_such_db" does not exist' in said and SECRET not in said, said


def test_a_malformed_dsn_is_refused_without_its_password() -> None:
    with pytest.raises(FailedPrecondition) as e:
        Store(f"postgresql://fleetd:{SECRET} x@127.0.0.1/db")
    said = str(e.value)
    assert "the PostgreSQL DSN is not valid" in said and SECRET not in said, said


def test_without_psycopg_the_start_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what `import psycopg` finds when it is not installed
    monkeypatch.delitem(sys.modules, "fleetd.store.postgres", raising=False)
    monkeypatch.delattr(fleetd.store, "postgres", raising=False)
    settings = msgspec.structs.replace(Settings(data_dir=str(tmp_path / "data"), mdns=False),
                                       database="postgresql://fleetd@127.0.0.1/fleetd")
    with pytest.raises(FailedPrecondition, match=r"psycopg is not installed.*fleetd\[postgresql\]"):
        Fleet(settings)
    Fleet(Settings(data_dir=settings.data_dir, mdns=False)).close()  # the failed start left the data dir unlocked
