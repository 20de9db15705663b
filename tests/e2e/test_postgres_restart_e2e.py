"""PostgreSQL restarted under load: the replicas report unhealthy, recover by themselves, nothing acknowledged is lost.

A PostgreSQL of this test's own (the session's is shared: it is not restarted) and two `fleetd serve` replicas on
it, each with a data dir of its own. A device per replica pushes telemetry batches and checks in, in a loop, with
its own bearer token, and records every batch the server acknowledged. PostgreSQL is stopped (fast shutdown: every
connection dropped) and started again two seconds later on the same port. /healthz, polled all along, answers 503
while it is away and 200 again on its own (the store reconnects: store/postgres.py, Connection._recover), the same
fleetd processes go on serving the load, and every acknowledged batch is in the database.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from fleetd.cli.devclient import DeviceClient, DeviceError
from fleetd.cli.sim_transport import make_http_client
from tests.support.services import PostgresServer

from .server import ServerProcess
from .test_simulate import join_token, wait_for

pytestmark = pytest.mark.e2e

DOWN = 2.0  # seconds PostgreSQL is away
RECOVERY = 30.0  # the ceiling for /healthz to answer 200 again once it is back
METRICS = ("cpu", "mem", "temp")  # the points of one batch; each batch's points carry its number as their value


@dataclass
class LoadDevice:
    """A device pushing telemetry and checking in through one server, as fast as it is answered."""

    server: ServerProcess
    hardware_id: str
    device_id: str = ""
    acked: list[tuple[int, float]] = field(default_factory=list)  # (batch number, time.monotonic() of the ack)
    check_ins: list[float] = field(default_factory=list)
    errors: list[DeviceError] = field(default_factory=list)

    async def run(self, token: str, stop: threading.Event) -> None:
        ca = Path(self.server.ca).read_text()
        async with make_http_client(self.server.url, ca, 2) as http:
            client = DeviceClient(http, self.server.url, self.hardware_id, "sim")
            self.device_id = (await client.enroll(token)).device_id
            batch = 0
            while not stop.is_set():
                batch += 1
                points = [{"name": name, "value": float(batch), "ts": time.time()} for name in METRICS]
                try:
                    assert await client.push_telemetry(points) == len(METRICS)
                    self.acked.append((batch, time.monotonic()))
                    await client.check_in({"hostname": self.hardware_id}, [])
                    self.check_ins.append(time.monotonic())
                except DeviceError as e:  # not acknowledged: the device would send it again; this one moves on
                    self.errors.append(e)
                    await asyncio.sleep(0.2)
                await asyncio.sleep(0.05)

    def acked_since(self, t: float) -> int:
        return sum(1 for _, at in self.acked if at > t)


class HealthPoller(threading.Thread):
    """GET /healthz on each server every 0.1 s: (time.monotonic(), server index, status; 0 for no answer)."""

    def __init__(self, servers: list[ServerProcess]) -> None:
        super().__init__(daemon=True)
        self.servers = servers
        self.seen: list[tuple[float, int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        clients = [s.client(timeout=2) for s in self.servers]
        try:
            while not self.stop.is_set():
                for i, c in enumerate(clients):
                    try:
                        status = c.get("/healthz").status_code
                    except httpx.HTTPError:
                        status = 0
                    self.seen.append((time.monotonic(), i, status))
                time.sleep(0.1)
        finally:
            for c in clients:
                c.close()

    def statuses(self, server: int, after: float, before: float = float("inf")) -> list[int]:
        return [status for t, i, status in list(self.seen) if i == server and after < t < before]


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as pg:
        yield pg


def test_postgresql_restarted_under_load(tmp_path: Path, postgres: PostgresServer) -> None:
    dsn = postgres.dsn(postgres.create_database())
    servers: list[ServerProcess] = []
    stop = threading.Event()
    health = HealthPoller(servers)
    load: threading.Thread | None = None
    try:
        for name in ("r1", "r2"):
            servers.append(ServerProcess(tmp_path / name, database=dsn).start())
        key = servers[0].create_key("admin")
        token = join_token(servers[0], key)
        devices = [LoadDevice(s, f"load-{n}") for n, s in enumerate(servers, 1)]

        async def run_all() -> None:
            await asyncio.gather(*(d.run(token, stop) for d in devices))

        load = threading.Thread(target=asyncio.run, args=(run_all(),), daemon=True)
        load.start()
        health.start()
        wait_for(lambda: all(len(d.acked) >= 10 for d in devices), 20, "the load to run on both replicas")

        down_at = time.monotonic()
        postgres.restart(down=DOWN)
        up_at = time.monotonic()

        def healthy_again() -> bool:
            return all(health.statuses(i, up_at)[-3:] == [200] * 3 for i in range(len(servers)))

        wait_for(healthy_again, RECOVERY, "/healthz to answer 200 again on every replica")
        recovered = time.monotonic()
        wait_for(lambda: all(d.acked_since(recovered) >= 10 and d.check_ins[-1] > recovered for d in devices), 20,
                 "the load to go on after the recovery")
        assert [s.proc.poll() if s.proc else "not started" for s in servers] == [None, None]  # never restarted
    finally:
        stop.set()
        health.stop.set()
        if load is not None:
            load.join(15)
        for s in servers:
            s.stop()

    for i, s in enumerate(servers):
        during = health.statuses(i, down_at, up_at)
        assert 503 in during and 0 not in during, (s.data_dir.name, during)  # unhealthy, yet answering
        assert health.statuses(i, recovered)[-5:] == [200] * 5  # and still, when the load has gone on
        assert "reconnected to PostgreSQL after losing the connection" in s.log(), s.log()
    assert recovered - up_at < RECOVERY
    # What the devices heard while the database was away: "unavailable, try again" (HTTP 503), which a device
    # retries (fleet_agent keeps the points queued), never a refusal that makes it drop them.
    errors = [e for d in devices for e in d.errors]
    assert errors and {(e.code, e.http_status) for e in errors} == {("unavailable", 503)}, errors

    # Every batch a replica acknowledged is stored whole.
    with psycopg.connect(dsn) as conn:
        for d in devices:
            stored: dict[float, int] = dict(conn.execute(
                "SELECT value, COUNT(*) FROM telemetry WHERE device_id = %s GROUP BY value", (d.device_id,)).fetchall())
            acked = [batch for batch, _ in d.acked]
            missing = [b for b in acked if stored.get(float(b)) != len(METRICS)]
            assert not missing, (d.hardware_id, missing, [str(e) for e in d.errors[:3]])
            assert len(acked) >= 20
