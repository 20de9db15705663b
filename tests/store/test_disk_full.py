"""A full disk: uploads and database writes answer resource_exhausted with the free space, /healthz says degraded."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from fleetd.app import create_app
from fleetd.core.config import Settings
from fleetd.fleet import Fleet
from fleetd.store.blobs import TMP_DIR, _TempBlob
from tests.artifacts.test_artifacts import error, open_upload, put
from tests.ddi.test_ddi_server import Ddi, target
from tests.support.devices_helper import TestDevice


@pytest.fixture
def full_disk_for_uploads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Temp files of uploads write to /dev/full: the kernel's ENOSPC, without filling a real disk."""
    real_open = os.open

    def open_on_full_disk(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        fd = real_open(path, flags, mode, **kw)
        if str(path).endswith(".part"):
            full = real_open("/dev/full", os.O_WRONLY)
            os.dup2(full, fd)
            os.close(full)
        return fd

    monkeypatch.setattr(os, "open", open_on_full_disk)
    yield


def health(client: Any) -> tuple[int, dict[str, Any]]:
    r = client.get("/healthz")
    return r.status_code, r.json()


def assert_disk_full(r: Any, fleet: Fleet) -> None:
    status, code, message = error(r)
    assert (status, code) == (429, "resource_exhausted"), r.text
    assert message.startswith(f"the disk holding the data dir {fleet.data_dir} is full (")
    assert " free); free space or move the data dir" in message
    assert r.headers["Retry-After"] == "60"


def test_an_upload_on_a_full_disk_is_resource_exhausted_and_degrades_health(
        client: Any, fleet: Fleet, operator_key: str, monkeypatch: pytest.MonkeyPatch,
        full_disk_for_uploads: None) -> None:
    data = os.urandom(2 << 20)
    r = put(client, operator_key, open_upload(client, operator_key, size=len(data)).json(), data)
    assert_disk_full(r, fleet)
    assert not list((fleet.data_dir / "blobs" / TMP_DIR).iterdir())  # the temp file went too
    status, body = health(client)
    assert (status, body["status"]) == (503, "degraded")
    assert body["reasons"] == ["the last file upload failed: the disk is full"]
    monkeypatch.undo()  # space again
    r = put(client, operator_key, open_upload(client, operator_key, size=len(data)).json(), data)
    assert r.status_code == 201, r.text
    assert health(client) == (200, {"status": "ok", "version": health(client)[1]["version"]})


def test_an_enrollment_on_a_full_database_is_resource_exhausted_and_degrades_health(client: Any,
                                                                                     fleet: Fleet) -> None:
    def limit_pages(extra: int) -> None:
        # SQLite's own limit on the file's size gives the error a full disk gives: SQLITE_FULL.
        fleet.store.write_sync(lambda c: c.execute(
            f"PRAGMA max_page_count = {c.execute('PRAGMA page_count').fetchone()[0] + extra}").fetchone())

    limit_pages(0)
    # The largest inventory a device may send (30 KiB) needs pages the file may not grow by.
    r = TestDevice(client).enroll(inventory={"extra": {f"k{i:03}": "x" * 300 for i in range(100)}})
    assert_disk_full(r, fleet)
    status, body = health(client)
    assert (status, body["reasons"]) == (503, ["the last database write failed: the disk is full"])
    limit_pages(10_000)
    assert TestDevice(client).enroll().status_code == 200  # the writer goes on after the failure
    assert health(client)[0] == 200


def test_a_ddi_write_on_a_full_database_is_resource_exhausted(client: Any, fleet: Fleet, admin_key: str) -> None:
    ddi = Ddi(client, "ctl-full", target(client, admin_key, "ctl-full")["token"])
    assert ddi.poll()  # registered while there is room
    fleet.store.write_sync(lambda c: c.execute(
        f"PRAGMA max_page_count = {c.execute('PRAGMA page_count').fetchone()[0]}").fetchone())
    r = ddi.config({f"k{i:03}": "x" * 120 for i in range(100)})
    assert r.status_code == 429, r.text
    assert r.json()["message"].startswith(f"the disk holding the data dir {fleet.data_dir} is full (")
    assert r.headers["Retry-After"] == "60"


def test_health_is_degraded_below_the_free_space_threshold(tmp_path: Path) -> None:
    def health_with(min_free_mib: int) -> tuple[int, dict[str, Any]]:
        settings = Settings(data_dir=str(tmp_path / "data"), tls=False, mdns=False,
                            disk_min_free_mib=min_free_mib)
        fleet = Fleet(settings)
        try:
            with TestClient(app=create_app(fleet)) as client:
                return health(client)
        finally:
            fleet.close()

    status, body = health_with(1 << 40)  # a disk of an exbibyte would do
    assert (status, body["status"]) == (503, "degraded")
    [reason] = body["reasons"]
    assert reason.startswith(f"the disk holding {tmp_path / 'data'} has ")
    assert reason.endswith(" free, less than disk_min_free_mib (1099511627776 MiB)")
    assert health_with(0)[0] == 200


def test_temp_files_of_dead_uploads_are_removed_at_start_but_not_live_ones(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path / "data"), tls=False, mdns=False)
    Fleet(settings).close()
    tmp = tmp_path / "data" / "blobs" / TMP_DIR
    dead = tmp / "0123456789abcdef.part"
    dead.write_bytes(b"half an upload")
    live = _TempBlob(tmp)  # another process's upload in progress (its lock conflicts with ours as well)
    live.write(b"still coming")
    fleet = Fleet(settings)
    try:
        assert not dead.exists()
        assert live.path.exists()
        live.finish()
    finally:
        live.discard()
        fleet.close()
