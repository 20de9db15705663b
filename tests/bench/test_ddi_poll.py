"""The DDI poll benchmark's parts: its DDI devices and tokens are what a real server accepts, wrk's GET mode sends
them, and the case runs end to end on a tiny fleet without touching the seeded data dir.

Run with ``python -m pytest tests/bench/test_ddi_poll.py -q`` (pytest skips tests/bench by default).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from fleetd.fleet import DB_NAME
from fleetd.store.database import connect

from . import cases, ddi_poll, seed
from .loadgen import check_clean, run_wrk
from .procs import find_tool
from .servers import start_fleetd

needs_wrk = pytest.mark.skipif(find_tool("wrk") is None, reason="wrk is not installed")


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> seed.Fixture:
    return seed.create(tmp_path_factory.mktemp("bench-ddi") / "data", devices=30, blob_mib=1)


def devices_in(data: Path) -> int:
    conn = connect(data / DB_NAME, readonly=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM devices").fetchone()[0])
    finally:
        conn.close()


def test_the_ddi_devices_poll_a_real_server_and_leave_the_seeded_fleet_alone(fixture: seed.Fixture,
                                                                             tmp_path: Path) -> None:
    cfg = cases.Config(tokens=5)
    data, gets, posts = ddi_poll.prepare(cfg, fixture, tmp_path)
    assert devices_in(fixture.path) == 30 and devices_in(data) == 35
    assert not [p for p in (data / "blobs").rglob("*") if p.is_file()]  # the blobs stay behind
    lines = [line.split("\t") for line in gets.read_text().splitlines()]
    assert len(lines) == 5 and len(posts.read_text().splitlines()) == 5
    svc = start_fleetd(data, tmp_path)
    try:
        with httpx.Client(base_url=svc.url, verify=ssl.create_default_context(cafile=data / "ca.pem")) as c:
            for auth, path in lines:
                assert auth.startswith("TargetToken ") and path.startswith("/DEFAULT/controller/v1/ddi-bench-")
                r = c.get(path, headers={"Authorization": auth})
                assert r.status_code == 200, r.text
                assert r.json()["config"]["polling"]["sleep"].count(":") == 2
            # A token polls only its own controller.
            assert c.get(lines[0][1], headers={"Authorization": lines[1][0]}).status_code == 401
    finally:
        svc.stop()


@needs_wrk
def test_wrk_sends_each_devices_poll_with_its_token(fixture: seed.Fixture, tmp_path: Path) -> None:
    data, gets, _ = ddi_poll.prepare(cases.Config(tokens=20), fixture, tmp_path)
    svc = start_fleetd(data, tmp_path)
    try:
        run = run_wrk(svc.url + "/DEFAULT/controller/v1/x", seconds=1, threads=1, connections=4,
                      server_pid=svc.pid, gets_file=gets)
    finally:
        svc.stop()
    check_clean(run, "DDI polls")  # a wrong path or token would be a 401, and counted
    assert run.requests > 20 and run.non_2xx == 0


@needs_wrk
def test_the_ddi_case_measures_polls_checkins_and_the_baseline(fixture: seed.Fixture, tmp_path: Path) -> None:
    cfg = cases.Config(tokens=10, runs=1, seconds=1, warmup=1, connections=4, threads=1)
    (tmp_path / "logs").mkdir()
    r = ddi_poll.bench(cfg, fixture, tmp_path, tmp_path / "logs")
    assert r.name == "ddi"
    for kind in ("ddi", "checkin", "baseline"):
        assert r.data[kind]["rps"] > 0 and len(r.data[kind]["runs"]) == 1
    assert r.data["ddi_devices_seen"] == 10  # every polling device's last-seen moved
    assert [t.what for t in r.targets] == ["DDI poll rps ratio vs hello world", "DDI poll p99 ratio vs hello world"]
    assert r.rows[0][0] == "DDI poll rps" and r.rows[0][3] == f"{r.data['rps_ratio']:.2f}"
    assert not (tmp_path / "ddi-data").exists()
    assert devices_in(fixture.path) == 30
