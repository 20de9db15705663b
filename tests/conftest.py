"""Shared fixtures: an in-process Fleet + app, and helpers to call it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from litestar.testing import TestClient

from fleetd.accounts import users as auth
from fleetd.accounts.audit import SYSTEM
from fleetd.app import asgi_app
from fleetd.core.config import Settings
from fleetd.fleet import Fleet

# A fleet on PostgreSQL seals its keys in the database with a key encryption key (core/sealing.py): every test's
# Fleets and server processes get this one from the environment. Tests of a missing or wrong key change it.
os.environ.setdefault("FLEETD_KEY_ENCRYPTION_KEY", "dGVzdHMgb25seTogbm90IGEgc2VjcmV0IGF0IGFsbCE=")

if TYPE_CHECKING:
    from fleetd.store.database import Store
    from tests.support.services import Bucket, PostgresServer, S3Server


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), tls=False, mdns=False, host="127.0.0.1", port=8420)


@pytest.fixture
def fleet(settings: Settings, store_location: str | Path) -> Iterator[Fleet]:
    """A Fleet on SQLite (its data dir's file); in a module marked ``both_backends``, once on each backend: then on
    PostgreSQL ``store_location`` is the DSN (docs/testing.md), and ``fleet.settings.database`` (a second Fleet
    on the same database: ``Fleet(fleet.settings)``)."""
    if isinstance(store_location, str):
        settings = msgspec.structs.replace(settings, database=store_location)
    f = Fleet(settings)
    yield f
    f.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that take ``store_backend``, and tests of modules marked ``both_backends`` that take ``fleet`` (or
    ``store_location``), run once on SQLite and once on PostgreSQL; but not those marked ``sqlite_only(why)``."""
    if "store_location" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("sqlite_only"):
        return
    if "store_backend" in metafunc.fixturenames or metafunc.definition.get_closest_marker("both_backends"):
        metafunc.parametrize("store_location", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def client(fleet: Fleet) -> Iterator[TestClient[Any]]:
    """The app as ``fleetd serve`` runs it: Litestar behind the device lane."""
    with TestClient(app=asgi_app(fleet)) as c:
        yield c


def make_key(fleet: Fleet, role: str, name: str | None = None) -> str:
    key = fleet.store.write_sync(lambda c: auth.create_api_key(c, SYSTEM, name or f"test-{role}", role))
    assert key.key
    return key.key


@pytest.fixture
def admin_key(fleet: Fleet) -> str:
    return make_key(fleet, "admin")


@pytest.fixture
def viewer_key(fleet: Fleet) -> str:
    return make_key(fleet, "viewer")


@pytest.fixture
def operator_key(fleet: Fleet) -> str:
    return make_key(fleet, "operator")


def rpc(client: Any, service: str, method: str, body: Any = None, key: str | None = None,
        headers: dict[str, str] | None = None) -> Any:
    """POST a Connect call; returns the httpx response."""
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = f"Bearer {key}"
    h.update(headers or {})
    import json
    content = body if isinstance(body, (bytes, str)) else json.dumps(body if body is not None else {})
    return client.post(f"/fleetd.v1.{service}/{method}", content=content, headers=h)


# --- real services (tests/support/services, docs/testing.md): one server per session, started on first use -------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    from tests.support.services import PostgresServer
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def pg_schema(postgres_server: PostgresServer) -> str:
    """The name of a database that every PostgreSQL migration has been applied to; copy it, never use it (a
    database with a connection open cannot be a template)."""
    from fleetd.store import database, postgres
    name = postgres_server.create_database()
    conn = postgres.connect(postgres_server.dsn(name))
    try:
        database.migrate(conn)
    finally:
        conn.close()
    return name


@pytest.fixture
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | Path]:
    """Where a store is: a SQLite file (migrated by the Store that opens it), or, where the test runs on both
    backends (:func:`pytest_generate_tests`), a PostgreSQL DSN of a fresh copy of the migrated template
    (:func:`pg_schema`), dropped after the test."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield tmp_path / "fleetd.db"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create_database(template=request.getfixturevalue("pg_schema"))
    yield server.dsn(name)
    server.drop_database(name)


@pytest.fixture
def store_backend(store_location: str | Path) -> Iterator[Store]:
    """A migrated :class:`~fleetd.store.database.Store` on each backend in turn (docs/testing.md)."""
    from fleetd.store.database import Store
    store = Store(store_location)
    yield store
    store.close()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A ``postgresql://`` URL of a fresh, empty database of its own, dropped after the test."""
    name = postgres_server.create_database()
    yield postgres_server.dsn(name)
    postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from tests.support.services import S3Server
    with S3Server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[Bucket]:
    """A fresh, empty bucket (with the endpoint, region and keys to reach it), deleted after the test."""
    from tests.support.services import Bucket
    bucket = Bucket(s3_server, s3_server.create_bucket())
    yield bucket
    s3_server.delete_bucket(bucket.name)


@pytest.fixture
def two_replicas(tmp_path: Path, postgres_server: PostgresServer, pg_schema: str) -> Iterator[list[Fleet]]:
    """Two Fleets on one fresh copy of :func:`pg_schema`, each with a data dir of its own (tmp_path/r1, r2): replicas
    as far as shared state goes (tests/support/replica_fleets.py)."""
    from tests.support.replica_fleets import replicas
    name = postgres_server.create_database(template=pg_schema)
    try:
        with replicas(tmp_path, postgres_server.dsn(name)) as fleets:
            yield fleets
    finally:
        postgres_server.drop_database(name)



@contextlib.contextmanager
def template_copy(request: pytest.FixtureRequest, backend: str) -> Iterator[str | None]:
    """For a test or a module-scoped fixture parametrized by backend: None on "sqlite" (the caller makes its file),
    else the DSN of a fresh copy of the migrated PostgreSQL template, dropped after."""
    if backend == "sqlite":
        yield None
        return
    server = request.getfixturevalue("postgres_server")
    name = server.create_database(template=request.getfixturevalue("pg_schema"))
    try:
        yield server.dsn(name)
    finally:
        server.drop_database(name)
