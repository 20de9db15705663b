"""E2E fixtures: one shared server for read-mostly tests; tests that kill or reconfigure start their own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import ServerProcess

# The binary's smoke test needs a built binary: `make smoke` sets FLEETD_BIN and runs it.
collect_ignore = [] if os.environ.get("FLEETD_BIN") else ["test_binary.py"]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # The alerts test's webhook receiver listens on this host: allowed as an admin would allow one.
    s = ServerProcess(tmp_path_factory.mktemp("shared") / "data",
                      env={"FLEETD_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32"}).start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def admin_key(server: ServerProcess) -> str:
    return server.create_key("admin", "e2e-admin")


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server for this test alone (for kill -9, restarts, special settings)."""
    s = ServerProcess(tmp_path / "data")
    yield s
    if s.proc is not None:
        s.stop()
