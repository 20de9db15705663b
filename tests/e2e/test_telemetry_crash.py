"""kill -9 between a telemetry insert and the rollup pass that would merge its per-minute sums: after the restart the
rollups hold every acknowledged point exactly once."""

from __future__ import annotations

import re
import secrets
import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.devices_helper import TestDevice

from .server import ServerProcess

pytestmark = pytest.mark.e2e
T = float(int(time.time() // 3600) * 3600 - 3600)  # the start of the last whole hour: every point below is in it


def lag(server: ServerProcess, key: str) -> int:
    with server.client(key) as c:
        text = c.get("/metrics").raise_for_status().text
    m = re.search(r"^fleetd_telemetry_rollup_lag_points (\d+)", text, re.M)
    assert m, text
    return int(m.group(1))


def wait_rolled_up(server: ServerProcess, key: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while lag(server, key):
        assert time.monotonic() < deadline, "the rollups did not catch up"
        time.sleep(0.2)


def push(d: TestDevice, values: list[float]) -> None:
    points = [{"name": "temp", "value": v, "ts": T + 60 * (i % 3) + 1} for i, v in enumerate(values)]
    r = d.call("PushTelemetry", {"points": points})
    assert r.status_code == 200 and r.json()["accepted"] == len(values), r.text


def minutes(data: Path) -> dict[int, tuple[int, float, float, float]]:
    conn = sqlite3.connect(data / "fleetd.db")
    try:
        return {ts - T: (n, s, lo, hi) for ts, n, s, lo, hi in conn.execute(
            "SELECT ts, count, sum, min, max FROM telemetry_minute")}
    finally:
        conn.close()


def state(data: Path) -> tuple[int, int]:
    """(the rollup watermark, the newest raw id)."""
    conn = sqlite3.connect(data / "fleetd.db")
    try:
        return conn.execute("SELECT rolled_up_to, (SELECT MAX(id) FROM telemetry) FROM telemetry_rollup_state"
                            ).fetchone()
    finally:
        conn.close()


def test_kill_9_between_insert_and_merge_loses_nothing_and_counts_nothing_twice(own_server: ServerProcess) -> None:
    server = own_server.start()
    admin = server.create_key("admin", "rollup-crash")
    token = server.rpc("EnrollmentService", "CreateToken", {}, admin).json()["token"]
    a, b, c = [1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0], [100.0, 200.0]
    with server.client() as http:
        d = TestDevice(http, hardware_id=f"rollup-{secrets.token_hex(3)}")
        assert d.enroll(token).status_code == 200 and d.authenticate().status_code == 200
        push(d, a)
        wait_rolled_up(server, admin)  # a: merged from the writer's sums by a pass (every 10 s)
        push(d, b)  # acknowledged, so committed; its sums are in memory until the next pass, 10 s away
    server.kill9()
    watermark, newest = state(server.data_dir)
    assert newest - watermark == len(b), "the kill came after the merge: the test proves nothing"

    server.start()
    with server.client() as http:
        d.client = http
        assert d.authenticate().status_code == 200
        push(d, c)
        wait_rolled_up(server, admin)  # b from the rows (the sums died with the process), then c from the sums
    server.stop()

    want: dict[int, list[float]] = {}
    for batch in (a, b, c):
        for i, v in enumerate(batch):
            want.setdefault(60 * (i % 3), []).append(v)
    assert minutes(server.data_dir) == {m: (len(vs), sum(vs), min(vs), max(vs)) for m, vs in want.items()}
