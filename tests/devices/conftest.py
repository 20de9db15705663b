"""Fixtures of the device tests."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from fleetd.app import asgi_app
from fleetd.core.config import Settings
from fleetd.fleet import Fleet
from tests.conftest import make_key, template_copy


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[Fleet, Any, str]]:
    """A fleet, a client of its app and an admin key, once per backend for the module."""
    with tempfile.TemporaryDirectory() as d, template_copy(request, request.param) as dsn:
        settings = Settings(data_dir=str(Path(d) / "data"), tls=False, mdns=False, host="127.0.0.1",
                            database=dsn or "")
        fleet = Fleet(settings)
        try:
            with TestClient(app=asgi_app(fleet)) as client:
                yield fleet, client, make_key(fleet, "admin")
        finally:
            fleet.close()
