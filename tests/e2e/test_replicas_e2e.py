"""Three `fleetd serve` replicas on one PostgreSQL database and one S3 bucket, behind haproxy configured as
docs/scaling.md says (its configuration is read from that file), with 200 simulated devices and a real fleet-agent
going through the load balancer (issue 18).

- a staged rollout completes while the replica holding the fleet lease is killed with kill -9 mid-stage: no device
  installs twice, no stage is skipped;
- a device revoked through replica 1 is refused by replicas 2 and 3;
- the web UI's event stream on replica 3 sees an action change made through replica 1;
- an upload through replica 1 downloads through replica 2 (with Range), and by a pre-signed redirect through a
  fourth replica that joins.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest

from tests.agent.e2e_helpers import PYTHON, AgentProcess, agent_env
from tests.support.devices_helper import TestDevice
from tests.support.services import HAProxy
from tests.support.services._process import free_ports

from .server import ServerProcess
from .test_events import SSEReader
from .test_rollouts_e2e import Sim, cli
from .test_simulate import call, push_artifact, wait_for

if TYPE_CHECKING:
    from tests.support.services import PostgresServer

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DEVICES = 200


def scaling_haproxy_config() -> str:
    """The haproxy configuration docs/scaling.md gives operators."""
    text = (ROOT / "docs" / "scaling.md").read_text()
    m = re.search(r"```haproxy\n(.*?)```", text, re.S)
    assert m, "docs/scaling.md has no haproxy configuration block"
    return m.group(1)


def lease_held(replica: ServerProcess, key: str) -> bool:
    with replica.client(key) as c:
        text = c.get("/metrics").text
    return re.search(r"^fleetd_fleet_lease_held 1(\.0)?$", text, re.M) is not None


class Cluster:
    def __init__(self, replicas: list[ServerProcess], lb: HAProxy, dsn: str, key: str) -> None:
        self.replicas, self.lb, self.dsn, self.key = replicas, lb, dsn, key
        self.env: dict[str, str] = {}
        # The load balancer's address, seen as a server: every replica's certificate (from the one CA) names
        # 127.0.0.1, so clients pin r1's ca.pem and reach any replica through it.
        self.front = ServerProcess(replicas[0].data_dir, database=dsn)
        self.front.port = lb.port

    def holder(self) -> ServerProcess | None:
        """The running replica that says (in /metrics) it holds the fleet lease; None while none does."""
        alive = [r for r in self.replicas if r.proc is not None and r.proc.poll() is None]
        holding = [r for r in alive if lease_held(r, self.key)]
        assert len(holding) <= 1, [r.url for r in holding]
        return holding[0] if holding else None

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn) as conn:
            return [tuple(r) for r in conn.execute(sql, args)]


@pytest.fixture(scope="module")
def cluster(postgres_server: PostgresServer, s3_server: Any, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    from tests.support.services import Bucket
    dsn = postgres_server.dsn(postgres_server.create_database())
    bucket = Bucket(s3_server, s3_server.create_bucket())
    base = tmp_path_factory.mktemp("replicas")
    ports = free_ports(3)
    lb = HAProxy([f"127.0.0.1:{p}" for p in ports], config=scaling_haproxy_config())
    env = {"FLEETD_ROLLOUT_PASS_SECONDS": "0.5", "FLEETD_ENROLL_RATE_PER_MINUTE": "100000",
           "FLEETD_LEASE_SECONDS": "3", "FLEETD_LEASE_CHECK_SECONDS": "1", "FLEETD_LOG_LEVEL": "info",
           "FLEETD_BLOB_STORE": f"s3://{bucket.name}/fleet", "FLEETD_S3_ENDPOINT": bucket.endpoint,
           "FLEETD_S3_REGION": bucket.region, "AWS_ACCESS_KEY_ID": bucket.access_key,
           "AWS_SECRET_ACCESS_KEY": bucket.secret_key}
    replicas = []
    for i, port in enumerate(ports):
        r = ServerProcess(base / f"r{i + 1}", database=dsn, env=env)
        r.port = port
        replicas.append(r)
    with lb:
        try:
            replicas[0].start(timeout=60)  # migrates the database and makes the keys; the others read them
            for r in replicas[1:]:
                r.start(timeout=60)
            key = replicas[0].create_key("admin", "replicas-e2e")
            c = Cluster(replicas, lb, dsn, key)
            c.env = env
            wait_for(lambda: set(lb.states().values()) == {"UP"}, 20, "haproxy to see three healthy replicas")
            yield c
        finally:
            for r in replicas:
                if r.proc is not None and r.proc.poll() is None:
                    r.stop()
            s3_server.delete_bucket(bucket.name)


def start_agent(cluster: Cluster, tmp: Path) -> tuple[str, AgentProcess]:
    """A real fleet-agent enrolled through the load balancer, tagged group=ha like the simulated devices."""
    token = call(cluster.front, cluster.key, "EnrollmentService", "CreateToken",
                 {"uses": 0, "expires_in": 3600, "tags": {"group": "ha"}})["token"]
    ident = ["--state-dir", str(tmp / "state"), "--server", cluster.front.url, "--device-type", "linux-ha",
             "--hardware-id", "ha-agent"]
    p = subprocess.run([PYTHON, "-m", "fleet_agent", "enroll", *ident, "--json"], capture_output=True, text=True,
                       env=agent_env(FLEET_AGENT_TOKEN=token), timeout=60)
    assert p.returncode == 0, p.stderr
    device_id = json.loads(p.stdout)["device_id"]
    call(cluster.front, cluster.key, "DeviceAdminService", "UpdateDevice", {"id": device_id, "poll_interval": 5})
    return device_id, AgentProcess([PYTHON, "-m", "fleet_agent", "run", *ident], tmp / "agent.log", agent_env())


def test_a_rollout_completes_while_the_lease_holder_is_killed(cluster: Cluster, tmp_path: Path) -> None:
    front, key = cluster.front, cluster.key
    app = tmp_path / "app.sh"
    app.write_text("#!/bin/sh\nwhile :; do sleep 1; done\n")
    # Pushed through the load balancer: CreateUpload and the PUT may reach different replicas.
    cli(front, key, "artifacts", "push", str(app), "--name", "haapp", "--version", "1.0.0", "--device-type", "sim",
        "--device-type", "linux-ha", "--health-grace", "1", "--json")
    sim = Sim(front, key, "ha", DEVICES, tmp_path / "sim-state.json")
    sim.start()
    agent_id, agent_proc = start_agent(cluster, tmp_path)
    try:
        wait_for(lambda: call(front, key, "DeviceAdminService", "GetDevice", {"id": agent_id})["online"], 30,
                 "the agent to be online")
        holder = wait_for(cluster.holder, 20, "a replica to hold the fleet lease")
        rid = json.loads(cli(front, key, "rollouts", "create", "--artifact", "haapp@1.0.0", "--target", "group=ha",
                             "--stages", "10,50,100", "--soak", "3s", "--json").stdout)["id"]

        def second_stage_started() -> bool:
            return bool(cluster.rows("SELECT 1 FROM rollout_stages WHERE rollout_id = %s AND idx = 1 "
                                     "AND started_at IS NOT NULL", rid))

        try:
            wait_for(second_stage_started, 60, "the second stage to start")
        except AssertionError:
            raise AssertionError(cli(front, key, "rollouts", "show", rid, "--json").stdout) from None
        killed_at = time.monotonic()
        holder.kill9()  # mid-stage: its installs are under way, the orchestrator was on it
        new = wait_for(cluster.holder, 30, "another replica to take the fleet lease")
        assert new is not holder
        took = time.monotonic() - killed_at
        assert took < 15, f"the lease moved {took:.1f} s after the kill"  # target 10 s; measured in make bench
        done = json.loads(cli(front, key, "rollouts", "watch", rid, "--json", "--interval", "1", timeout=150).stdout)
        assert done["state"] == "completed", done
    finally:
        sim.stop()
        agent_proc.stop()
    installs = cluster.rows("SELECT device_id FROM actions WHERE rollout_id = %s AND kind = 'install'", rid)
    devices = [d for (d,) in installs]
    assert len(devices) == len(set(devices)) == DEVICES + 1  # every device once, none twice (the agent too)
    stages = cluster.rows("SELECT idx, started_at, ended_at FROM rollout_stages WHERE rollout_id = %s ORDER BY idx",
                          rid)
    assert [s[0] for s in stages] == [0, 1, 2] and all(s[1] and s[2] for s in stages)
    assert all(stages[i][2] <= stages[i + 1][1] for i in range(2))  # no stage skipped or overlapped
    assert {s for (s,) in cluster.rows("SELECT state FROM actions WHERE rollout_id = %s", rid)} == {"succeeded"}
    got = call(front, key, "DeviceAdminService", "GetDevice", {"id": agent_id})
    assert ("haapp", "1.0.0") in [(c["name"], c["version"]) for c in got["components"]], agent_proc.log()[-3000:]
    holder.start(timeout=60)  # back for the next tests


def test_a_device_revoked_through_one_replica_is_refused_by_the_others(cluster: Cluster) -> None:
    r1, r2, r3 = cluster.replicas
    token = call(r1, cluster.key, "EnrollmentService", "CreateToken", {"uses": 1, "expires_in": 600})["token"]
    dev = TestDevice(r1.client())
    assert dev.enroll(token).status_code == 200 and dev.authenticate().status_code == 200
    on = {r: TestDevice(r.client()) for r in (r2, r3)}
    for d in on.values():
        d.device_id, d.token = dev.device_id, dev.token  # the same device, its token, through other replicas
        assert d.call("CheckIn", {}).status_code == 200
    call(r1, cluster.key, "DeviceAdminService", "RevokeDevice", {"id": dev.device_id})
    revoked_at = time.monotonic()
    for r, d in on.items():
        wait_for(lambda d=d: d.call("CheckIn", {}).status_code == 401, 5, f"{r.url} to refuse the revoked device")
    assert time.monotonic() - revoked_at < 5


def test_the_event_stream_on_replica_3_sees_a_change_made_through_replica_1(cluster: Cluster,
                                                                            tmp_path: Path) -> None:
    r1, _, r3 = cluster.replicas
    push_artifact(r1, cluster.key, tmp_path, "evapp", "1.0.0", b"event app\n" * 100)
    token = call(r1, cluster.key, "EnrollmentService", "CreateToken", {"uses": 1, "expires_in": 600})["token"]
    dev = TestDevice(r1.client())
    assert dev.enroll(token).status_code == 200
    reader = SSEReader(r3, cluster.key).start()
    try:
        action = call(r1, cluster.key, "DeviceAdminService", "Deploy",
                      {"device_ids": [dev.device_id], "artifact": "evapp@1.0.0"})["action_ids"][0]
        call(r1, cluster.key, "DeviceAdminService", "CancelAction", {"id": action})
        reader.wait(lambda: reader.of("action.state", id=action, state="cancelled"),
                    "replica 3's stream to carry the cancel made through replica 1", timeout=10)
    finally:
        reader.close()


def test_an_upload_through_one_replica_downloads_through_the_others(cluster: Cluster, tmp_path: Path) -> None:
    r1, r2, _ = cluster.replicas
    # A fourth replica joins, outside the load balancer, answering blob GETs with a redirect to the bucket (the
    # bucket here is plain http, which devices refuse: so it serves only this test's client).
    r4 = ServerProcess(tmp_path / "r4", database=cluster.dsn,
                       env={**cluster.env, "FLEETD_S3_PRESIGNED_DOWNLOADS": "true"}).start(timeout=60)
    payload = os.urandom(3 << 20)
    pushed = push_artifact(r1, cluster.key, tmp_path, "dlapp", "1.0.0", payload)
    sha = hashlib.sha256(payload).hexdigest()
    assert pushed["sha256"] == sha
    with r2.client(cluster.key) as c:
        got = c.get(f"/v1/blobs/{sha}", headers={"Range": "bytes=1000-2999"})
        assert got.status_code == 206 and got.content == payload[1000:3000]
    try:
        with r4.client(cluster.key) as c:
            moved = c.get(f"/v1/blobs/{sha}")
    finally:
        r4.stop()
    assert moved.status_code == 307, moved.text
    fetched = httpx.get(moved.headers["location"], timeout=30)  # the bucket itself, no fleetd credentials
    assert fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() == sha
