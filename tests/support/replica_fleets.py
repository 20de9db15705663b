"""Several in-process Fleets on one PostgreSQL database, each with a data dir of its own: the replicas of one fleet
as far as shared state goes (sessions, rate limits, upload sessions, keys). Not a server process: the app of each is
driven through litestar's TestClient."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from fleetd.core.config import Settings
from fleetd.fleet import Fleet


def replica_settings(base: Path, name: str, **overrides: object) -> Settings:
    return Settings(data_dir=str(base / name), tls=False, mdns=False, host="127.0.0.1", port=8420,
                    **overrides)  # type: ignore[arg-type]


@contextlib.contextmanager
def replicas(base: Path, dsn: str, n: int = 2, **overrides: object) -> Iterator[list[Fleet]]:
    """``n`` Fleets on the database ``dsn``, data dirs ``base``/r1, r2...; closed after."""
    fleets: list[Fleet] = []
    try:
        for i in range(n):
            fleets.append(Fleet(replica_settings(base, f"r{i + 1}", database=dsn, **overrides), lock=False))
        yield fleets
    finally:
        for f in fleets:
            f.close()
