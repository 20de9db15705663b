"""A PostgreSQL server (Debian's postgresql package) in a temp dir on a free loopback port, tuned for tests."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psycopg
from psycopg import sql

from ._process import Service, ServiceError, free_port

SERVER_BIN_GLOB = "/usr/lib/postgresql/*/bin"
USER = "fleetd"  # the superuser initdb creates; loopback connections are trusted (no password)


def server_bindir() -> Path:
    """The newest installed server's bin dir (``pg_config --bindir`` may name the client's, without initdb)."""
    found = [Path(d) for d in Path("/").glob(SERVER_BIN_GLOB.lstrip("/")) if (Path(d) / "initdb").exists()]
    if not found:
        raise ServiceError(f"no PostgreSQL server: nothing matches {SERVER_BIN_GLOB}/initdb. Install Debian's "
                           "server package (apt-get install postgresql; .ci/run does) and run the tests again.")
    return max(found, key=lambda d: [int(n) for n in re.findall(r"\d+", d.parent.name)] or [0])


class PostgresServer(Service):
    """``with PostgresServer() as pg:`` initdb's a cluster, starts ``postgres`` and waits for ``pg_isready``.

    As root it runs as the ``postgres`` user (the server refuses root). Durability is off (fsync,
    synchronous_commit, full_page_writes): a crash loses the temp dir anyway. ``settings`` replaces any of the
    server settings (the benchmarks turn durability back on). ``pg.dsn(db)`` is a ``postgresql://`` URL;
    ``pg.create_database()`` makes a fresh, empty database in about 0.1 s.
    """

    name = "postgres"

    def __init__(self, bindir: Path | None = None, settings: dict[str, str] | None = None) -> None:
        self.bindir = bindir or server_bindir()
        self.settings = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                         "shared_buffers": "16MB", "max_connections": "100", "log_min_messages": "warning",
                         **(settings or {})}
        super().__init__(run_as="postgres")
        self.port = free_port()
        self.host = "127.0.0.1"
        self._names = itertools.count(1)

    def _start(self) -> None:
        data = self.dir / "data"
        self._run([str(self.bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8",
                   "--locale=C.UTF-8", "--no-sync", "--no-instructions"], "initdb")
        self._launch()

    def _launch(self) -> None:
        data = self.dir / "data"
        options = [arg for name, value in self.settings.items() for arg in ("-c", f"{name}={value}")]
        self._spawn([str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.dir),
                     "-c", f"listen_addresses={self.host}", *options])
        self._wait(self._isready, 30, "accepting connections (pg_isready)")

    def _isready(self) -> bool:
        argv = [str(self.bindir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port), "-U", USER,
                "-d", "postgres"]
        return subprocess.run(argv, env={**os.environ, "PGCONNECT_TIMEOUT": "2"}).returncode == 0

    # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, disconnect, stop.
    _stop_signal = signal.SIGINT

    def restart(self, down: float = 0.0) -> None:
        """Stop the server (fast shutdown: its clients lose their connections) and, ``down`` seconds later, start
        it again on the same port and data dir; returns once it accepts connections."""
        self._stop_process()
        if self._log is not None:
            self._log.close()
            self._log = None
        time.sleep(down)
        self._launch()

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@{self.host}:{self.port}/{database}"

    def _admin(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(statement)

    def create_database(self, template: str | None = None) -> str:
        """A new database (a copy of ``template`` if given), named ``test_<n>``; returns its name."""
        name = f"test_{next(self._names)}"
        if template:
            # FILE_COPY copies the template's files (with fsync off, its checkpoint costs little): about 0.15 s
            # where the default, WAL_LOG, writes the whole template through the WAL (0.4 s); the storage tests
            # make one copy per test on PostgreSQL.
            self._admin(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(template)))
        else:
            self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop it even if a test left connections open (WITH (FORCE) disconnects them)."""
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
