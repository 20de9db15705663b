"""N replicas on one PostgreSQL database behave as one server (issue 18): one replica at a time runs the fleet-scope
parts under the fleet lease (store/lease.py), and the effects of a write on one replica run on every other one
(store/changes.py). Each replica is an in-process Fleet with its own data dir (the fleet's keys copied, as
replicas share them) and its own app, event loop and background parts, on one test PostgreSQL database; the
kill -9 and SIGSTOP tests run the holder as a real process (tests/support/replica_proc.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from fleetd.app import asgi_app
from fleetd.core.config import Settings
from fleetd.core.events import Event
from fleetd.fleet import Fleet
from tests.conftest import make_key, rpc
from tests.support.devices_helper import TestDevice

log = logging.getLogger(__name__)

# Short lease timings for the in-process tests (the kill -9 test runs the defaults).
FAST = {"lease_seconds": 1.5, "lease_check_seconds": 0.25}


@pytest.fixture
def dsn(postgres_server: Any, pg_schema: str) -> Iterator[str]:
    name = postgres_server.create_database(template=pg_schema)
    yield postgres_server.dsn(name)
    postgres_server.drop_database(name)


def settings_for(data_dir: Path, **kw: Any) -> Settings:
    return Settings(**{"data_dir": str(data_dir), "tls": False, "mdns": False, "host": "127.0.0.1", **kw})


def share_keys(source: Path, target: Path) -> None:
    """Replicas share the fleet's keys (the CA and the token key): ``target`` gets ``source``'s."""
    target.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.suffix in (".pem", ".key"):
            shutil.copy2(f, target / f.name)


class Replica:
    def __init__(self, fleet: Fleet, client: TestClient[Any]) -> None:
        self.fleet, self.client = fleet, client

    @property
    def running(self) -> bool:
        lease = self.fleet.lease
        return lease is not None and lease.running

    def call(self, coro_fn: Callable[[], Any]) -> Any:
        """Run ``coro_fn()`` on this replica's event loop, without waiting for it (a concurrent future)."""
        return self.client.blocking_portal.start_task_soon(coro_fn)


@pytest.fixture
def replicas(tmp_path: Path, dsn: str) -> Iterator[Callable[..., list[Replica]]]:
    with ExitStack() as stack:
        made: list[Replica] = []

        def make(n: int, **kw: Any) -> list[Replica]:
            out = []
            for _ in range(n):
                data = tmp_path / f"replica{len(made)}"
                if made:
                    share_keys(made[0].fleet.data_dir, data)
                fleet = Fleet(settings_for(data, database=dsn, **{**FAST, **kw}), lock=False)
                stack.callback(fleet.close)
                client = stack.enter_context(TestClient(app=asgi_app(fleet)))
                r = Replica(fleet, client)
                made.append(r)
                out.append(r)
            return out
        yield make


def wait_until(what: Callable[[], Any], timeout: float, every: float = 0.02) -> float:
    """Seconds until ``what()`` is true; fails after ``timeout``."""
    t0 = time.monotonic()
    while not what():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not true after {timeout} s")
        time.sleep(every)
    return time.monotonic() - t0


def holds_for(what: Callable[[], bool], seconds: float, every: float = 0.02) -> float:
    """Seconds ``what()`` stayed true, checked every ``every``, up to ``seconds``."""
    t0 = time.monotonic()
    while what():
        if time.monotonic() - t0 >= seconds:
            return seconds
        time.sleep(every)
    return time.monotonic() - t0


def active_device(r: Replica, admin_key: str) -> TestDevice:
    token = rpc(r.client, "EnrollmentService", "CreateToken", {}, key=admin_key).json()["token"]
    d = TestDevice(r.client)
    assert d.enroll(token).status_code == 200
    assert d.authenticate().status_code == 200
    return d


def fleet_tasks(r: Replica) -> bool:
    """Whether the replica's orchestrator and presence loops run (two of the fleet-scope parts)."""
    return r.fleet.orchestrator._task is not None


def test_on_sqlite_nothing_of_it_runs(fleet: Fleet) -> None:
    """One process on its data dir: no lease, no change feed, the fleet-scope parts listed as they are."""
    assert fleet.changes is None and fleet.lease is None and fleet.store.origin is None
    assert "orchestrator" in [p.name for p in fleet.parts] and "lease" not in [p.name for p in fleet.parts]


def test_on_postgresql_the_lease_holds_the_fleet_scope_parts(tmp_path: Path, dsn: str) -> None:
    from tests.test_lifecycle import background_classes

    fleet = Fleet(settings_for(tmp_path / "data", mdns=True, port=0, database=dsn, mqtt_url="mqtts://127.0.0.1:1"),
                  lock=False)  # every optional part listed (the MQTT bridge only connects when started)
    try:
        lease = fleet.lease
        assert lease is not None
        assert [p.name for p in fleet.parts] == ["telemetry intake", "change feed", "hub", "lease", "mqtt", "mdns"]
        assert all(p.scope == "process" for p in fleet.parts)
        assert [p.name for p in lease.parts] == ["rollups", "webhooks", "alerts", "presence", "maintenance",
                                                 "orchestrator"]
        assert all(p.scope == "fleet" for p in lease.parts)
        every = [type(p).__name__ for p in (*fleet.parts, *lease.parts)]
        assert sorted(every) == sorted(background_classes())
    finally:
        fleet.close()


def test_lease_timings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    from fleetd.core.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="at most a third of lease_seconds"):
        settings_for(tmp_path, lease_seconds=2, lease_check_seconds=1)
    with pytest.raises(InvalidArgument, match="lease_check_seconds must be positive"):
        settings_for(tmp_path, lease_check_seconds=0)
    assert settings_for(tmp_path, lease_seconds=3, lease_check_seconds=1).lease_seconds == 3


# --- the lease ------------------------------------------------------------------------------------------------------

def test_exactly_one_replica_runs_the_fleet_parts_and_another_takes_over(replicas: Any) -> None:
    rs = replicas(3)
    wait_until(lambda: any(r.running for r in rs), 10)
    time.sleep(3 * FAST["lease_seconds"])  # several checks: nobody else takes it
    holders = [r for r in rs if r.running]
    assert len(holders) == 1
    assert [fleet_tasks(r) for r in rs] == [r is holders[0] for r in rs]
    assert sum(r.fleet.lease.holding for r in rs) == 1  # type: ignore[union-attr]
    # The holder stops (as at shutdown): another replica takes over.
    old = holders[0]
    old.client.__exit__(None, None, None)
    assert not fleet_tasks(old)
    rest = [r for r in rs if r is not old]
    took = wait_until(lambda: any(r.running and fleet_tasks(r) for r in rest), 10)
    log.info("fleet lease: taken over %.2f s after the holder stopped", took)
    time.sleep(2 * FAST["lease_seconds"])
    assert sum(r.running for r in rest) == 1
    assert sum(fleet_tasks(r) for r in rest) == 1


def test_a_holder_that_loses_its_connection_stops_the_parts(replicas: Any, dsn: str) -> None:
    import psycopg

    [a] = replicas(1)
    wait_until(lambda: a.running, 10)
    pid = a.fleet.lease._conn.info.backend_pid  # type: ignore[union-attr]
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    # running goes False first, then the parts stop: wait for both, within the lease's time.
    wait_until(lambda: not a.running and not fleet_tasks(a), FAST["lease_seconds"])
    wait_until(lambda: a.running and fleet_tasks(a), 10)  # and takes the lease again when it can (running is set
    # before the parts start)


@contextmanager
def holder_process(tmp_path: Path, dsn: str, timings: dict[str, float] | None = None
                   ) -> Iterator[subprocess.Popen[str]]:
    """A replica as a real process (tests/support/replica_proc.py) on the data dir tmp_path/proc, once it runs the
    fleet-scope parts (it holds the lease); killed at the end. ``timings``: its lease settings (default: the
    defaults)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    args = [str(timings["lease_seconds"]), str(timings["lease_check_seconds"])] if timings else []
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.replica_proc", dsn, str(tmp_path / "proc"), *args],
                            stdout=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).parent.parent)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "running", line
        share_keys(tmp_path / "proc", tmp_path / "inproc")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_failover_after_kill_9_of_the_holder(tmp_path: Path, dsn: str) -> None:
    """The holder is a real process, killed with SIGKILL; the defaults' timings (lease_seconds 6)."""
    with holder_process(tmp_path, dsn) as proc:
        fleet = Fleet(settings_for(tmp_path / "inproc", database=dsn), lock=False)
        try:
            with TestClient(app=asgi_app(fleet)) as client:
                r = Replica(fleet, client)
                time.sleep(2)
                assert not r.running and fleet.lease is not None and not fleet.lease.holding
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                took = wait_until(lambda: r.running, 30)
                log.warning("fleet lease failover after kill -9 of the holder: %.2f s (lease_seconds %g)", took,
                            fleet.settings.lease_seconds)
                assert took <= 10
                wait_until(lambda: fleet_tasks(r), 5)  # running is set before the parts start
        finally:
            fleet.close()


def test_a_paused_holder_keeps_the_lease_until_it_resumes_or_dies(tmp_path: Path, dsn: str) -> None:
    """SIGSTOP (a paused VM, a debugger): the holder's kernel keeps its connection, so it keeps the advisory lock and
    no other replica starts the fleet-scope parts, however long the pause (docs/decisions.md, "Replicas: the fleet
    lease ..."); SIGCONT: the holder carries on, its parts never stopped; paused again and killed: another replica
    takes over."""
    lease_seconds = FAST["lease_seconds"]
    with holder_process(tmp_path, dsn, FAST) as proc:
        assert proc.stdout is not None
        fleet = Fleet(settings_for(tmp_path / "inproc", database=dsn, **FAST), lock=False)
        try:
            with TestClient(app=asgi_app(fleet)) as client:
                r = Replica(fleet, client)
                lease = fleet.lease
                assert lease is not None

                def nothing_here() -> bool:
                    return not lease.holding and not r.running and not fleet_tasks(r)

                proc.send_signal(signal.SIGSTOP)
                held_off = holds_for(nothing_here, 2 * lease_seconds)
                assert held_off >= 2 * lease_seconds, f"another replica took the lease {held_off:.2f} s into the pause"
                proc.send_signal(signal.SIGCONT)
                # The holder resumes with its parts running: it would print "stopped" had it stopped them.
                ready, _, _ = select.select([proc.stdout], [], [], lease_seconds)
                assert not ready, f"the resumed holder: {proc.stdout.readline().strip()!r}"
                assert proc.poll() is None and nothing_here()
                proc.send_signal(signal.SIGSTOP)
                assert holds_for(nothing_here, lease_seconds) >= lease_seconds
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                took = wait_until(lambda: r.running, 10)
                log.warning("fleet lease failover after kill -9 of a paused holder: %.2f s (lease_seconds %g)", took,
                            lease_seconds)
                wait_until(lambda: fleet_tasks(r), 5)  # running is set before the parts start
        finally:
            fleet.close()


# --- the change feed -----------------------------------------------------------------------------------------------

def test_a_device_revoked_through_one_replica_is_refused_by_the_others(replicas: Any) -> None:
    r1, r2, r3 = replicas(3)
    admin = make_key(r1.fleet, "admin")
    d = active_device(r1, admin)
    # Enrolled through replica 1: the others' hubs know it (its token works on them).
    for r in (r2, r3):
        d.client = r.client
        wait_until(lambda: d.call("CheckIn", {}).status_code == 200, 5)
    assert rpc(r1.client, "DeviceAdminService", "RevokeDevice", {"id": d.device_id}, key=admin).status_code == 200
    t0 = time.monotonic()
    for r in (r2, r3):
        d.client = r.client
        wait_until(lambda: d.call("CheckIn", {}).status_code == 401, 5, every=0.005)
    log.warning("revocation through replica 1 refused by replicas 2 and 3 after %.3f s", time.monotonic() - t0)
    assert r2.fleet.hub.runtime[d.device_id].status == "revoked"


def test_an_action_made_through_one_replica_is_handed_out_by_another(replicas: Any) -> None:
    """The hub's open-actions set (a check-in reads actions only for the devices in it) follows ActionsOpen."""
    r1, r2 = replicas(2)
    admin = make_key(r1.fleet, "admin")
    d = active_device(r1, admin)
    d.client = r2.client
    wait_until(lambda: d.call("CheckIn", {}).status_code == 200, 5)
    assert d.device_id not in r2.fleet.hub.open_actions
    r = rpc(r1.client, "DeviceAdminService", "CreateAction", {"device_ids": [d.device_id], "kind": "reboot"},
            key=admin)
    assert r.status_code == 200, r.text
    [action_id] = r.json()["action_ids"]
    wait_until(lambda: d.device_id in r2.fleet.hub.open_actions, 5)
    assert [a["id"] for a in d.call("CheckIn", {}).json()["actions"]] == [action_id]


def test_ddi_tokens_travel_with_their_bytes_and_entries(replicas: Any) -> None:
    """Effects with bytes and dataclass fields (a DDI token's hash and entry) decode whole on another replica."""
    from fleetd.ddi.tokens import TokenAdded, TokenEntry, TokensDropped, secret_hash
    from fleetd.store.database import effect

    r1, r2 = replicas(2)
    entry = TokenEntry("tok-1", "gateway", None, "cam", {"site": "a"})
    r1.fleet.store.write_sync(lambda c: effect(c, TokenAdded(secret_hash("s3cret"), entry)))
    wait_until(lambda: r2.fleet.ddi.tokens.lookup("gateway", "s3cret") is not None, 5)
    assert r2.fleet.ddi.tokens.lookup("gateway", "s3cret") == entry
    r1.fleet.store.write_sync(lambda c: effect(c, TokensDropped((secret_hash("s3cret"),))))
    wait_until(lambda: r2.fleet.ddi.tokens.lookup("gateway", "s3cret") is None, 5)


def first_event(r: Replica, type: str) -> Any:
    """A subscriber on ``r``'s event bus; the future of the first event of ``type`` it gets."""
    async def first() -> Event:
        async for ev in r.fleet.events.subscribe():
            if ev.type == type:
                return ev
        raise AssertionError("the subscription ended")

    async def wait() -> Event:  # bounded: a test that fails must not leave it waiting on the replica's loop
        return await asyncio.wait_for(first(), 10)
    subscribers = r.fleet.events.subscriber_count
    fut = r.call(wait)
    wait_until(lambda: r.fleet.events.subscriber_count > subscribers, 5)
    return fut


def test_an_event_published_on_one_replica_reaches_subscribers_of_another(replicas: Any) -> None:
    r1, _r2, r3 = replicas(3)
    admin = make_key(r1.fleet, "admin")
    seen = first_event(r3, "device.enrolled")
    t0 = time.monotonic()
    d = active_device(r1, admin)
    ev = seen.result(5)
    log.warning("device.enrolled from replica 1 on replica 3's event bus after %.3f s", time.monotonic() - t0)
    assert ev.data["id"] == d.device_id


def test_the_change_feed_delay_from_commit_to_handler(replicas: Any) -> None:
    """From the commit of a write on replica 1 to its effect's handler on replica 2 (target: at most 1 s)."""
    from fleetd.core.effects import Publish
    from fleetd.store.database import effect

    r1, r2 = replicas(2)
    delays = []
    for i in range(30):
        seen = first_event(r2, f"test.delay.{i}")
        queued = time.time()  # before the write: the delay measured bounds commit-to-handler from above
        r1.fleet.store.write_sync(lambda c, i=i: effect(c, Publish(f"test.delay.{i}", {})))
        delays.append(seen.result(5).ts - queued)
    delays.sort()
    log.warning("change feed, write (queue, commit) on replica 1 to handler on replica 2: median %.1f ms, max %.1f ms",
                delays[len(delays) // 2] * 1000, delays[-1] * 1000)
    assert delays[-1] < 1.0


def test_effects_too_large_for_one_notification_arrive_whole(replicas: Any) -> None:
    from fleetd.core.effects import Publish
    from fleetd.store.database import effect

    r1, r2 = replicas(2)
    seen = first_event(r2, "test.large")
    big = {"text": "é" * 20_000, "n": list(range(3000))}  # ~55 kB of JSON: 8 notifications
    r1.fleet.store.write_sync(lambda c: effect(c, Publish("test.large", big)))
    assert seen.result(5).data == big


def test_a_listener_that_lost_its_connection_reloads_the_caches(replicas: Any, dsn: str) -> None:
    import psycopg

    r1, r2 = replicas(2)
    admin = make_key(r1.fleet, "admin")
    d = active_device(r1, admin)
    d.client = r2.client
    wait_until(lambda: d.call("CheckIn", {}).status_code == 200, 5)
    dropped = first_event(r2, "dropped")
    feed = r2.fleet.changes
    assert feed is not None and feed._conn is not None and feed.reconnects == 0
    with psycopg.connect(dsn, autocommit=True) as admin_conn:
        admin_conn.execute("SELECT pg_terminate_backend(%s)", (feed._conn.info.backend_pid,))
    # Revoked while replica 2 listens to nobody: only the reload can tell it.
    d.client = r1.client
    assert rpc(r1.client, "DeviceAdminService", "RevokeDevice", {"id": d.device_id}, key=admin).status_code == 200
    wait_until(lambda: feed.reconnects == 1, 10)
    assert "lost its connection" in dropped.result(5).data["reason"]
    d.client = r2.client
    wait_until(lambda: d.call("CheckIn", {}).status_code == 401, 5)
    assert r2.fleet.hub.runtime[d.device_id].status == "revoked"


def test_presence_of_a_device_checking_in_on_another_replica(replicas: Any) -> None:
    """Only the lease holder's presence runs; a device that checks in on another replica comes online there from
    the last contact that replica's hub stored, and every replica's event stream has the event."""
    r1, r2 = replicas(2)
    wait_until(lambda: r1.running or r2.running, 10)
    holder, other = (r1, r2) if r1.running else (r2, r1)
    admin = make_key(holder.fleet, "admin")
    d = active_device(other, admin)
    online_on_other = first_event(other, "device.online")
    online_on_holder = first_event(holder, "device.online")
    assert d.call("CheckIn", {}).status_code == 200  # through the replica that does not hold the lease
    assert online_on_holder.result(15).data["device_id"] == d.device_id
    assert online_on_other.result(5).data["device_id"] == d.device_id
    assert holder.fleet.hub.last_seen(d.device_id) is not None


def test_an_alert_rule_made_through_another_replica_reaches_the_holders_engine(replicas: Any) -> None:
    """Alert rules are cached by the engine; only the lease holder's evaluates, and it hears of rule changes made
    through any replica (the AlertRulesChanged effect). Points that arrive at another replica wake no engine there."""
    from fleetd.accounts.audit import SYSTEM
    from fleetd.alerts.engine import AlertRule

    r1, r2 = replicas(2)
    wait_until(lambda: r1.running or r2.running, 10)
    holder, other = (r1, r2) if r1.running else (r2, r1)
    wait_until(lambda: holder.fleet.alerts._loaded, 5)  # its first pass loaded the (no) rules
    new = AlertRule(id="", name="hot", kind="threshold", metric="temp", aggregate="avg", comparison=">",
                    threshold=80.0, window_seconds=120)
    made = other.call(lambda: other.fleet.alerts.create_rule(SYSTEM, new)).result(5)

    def heard() -> bool:  # the change reaches the holder through the database's notifications, a moment later
        holder.call(holder.fleet.alerts.evaluate).result(5)
        return made.id in holder.fleet.alerts.rules
    wait_until(heard, 5, every=0.1)
    other.fleet.alerts.note_points("dev-x", [])  # not the holder: nothing is scheduled
    assert not other.fleet.alerts._dirty and not other.fleet.alerts._kick_pending


def test_a_restarted_orchestrator_builds_its_trackers_afresh(fleet: Fleet) -> None:
    """A replica that takes the lease again must not trust trackers from before: another replica's passes may have
    dropped the change-log entries they would read."""
    orchestrator = fleet.orchestrator

    async def restart() -> None:
        await orchestrator.start()
        orchestrator._trackers["r-old"] = object()  # type: ignore[assignment]
        orchestrator._seq = 41
        await orchestrator.stop()
        await orchestrator.start()
        try:
            assert orchestrator._trackers == {} and orchestrator._seq is None
        finally:
            await orchestrator.stop()
    asyncio.run(restart())
