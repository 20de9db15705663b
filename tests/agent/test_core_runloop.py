"""The run loop against a real server: reports and telemetry queue on disk while the server is down and are
delivered after it comes back; report answers that mean "drop it"; cancelled actions; re-authentication;
a revoked device; SIGTERM; one agent per state dir; and the idle RSS of `fleet-agent run`."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from fleet_agent import discovery
from fleet_agent.config import Settings
from fleet_agent.enroll import Enrolled, EnrollOptions, enroll
from fleet_agent.queue import DiskQueue, queue_stats
from fleet_agent.runloop import RunLoop
from fleet_agent.worker import NullExecutor, load_executor
from tests.e2e.server import ServerProcess

from .core_support import AGENT, agent_env, call, make_token, ok, run_agent, state, wait_for

pytestmark = pytest.mark.e2e

FAST = {"FLEET_AGENT_POLL_INTERVAL": "0.2", "FLEET_AGENT_MAX_BACKOFF": "0.3"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("runloop") / "data").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> str:
    return server.create_key("admin", "agent-core")


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path / "data").start()
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.stop()


def enrolled(server: ServerProcess, key: str, sd: Path, hardware_id: str) -> tuple[Settings, Enrolled]:
    settings = Settings.from_env(str(sd), FAST)
    return settings, enroll(settings, EnrollOptions(token=make_token(server, key), server=server.url,
                                                    hardware_id=hardware_id))


def create_action(server: ServerProcess, key: str, device_id: str, kind: str = "config",
                  **extra: Any) -> str:
    body = {"device_ids": [device_id], "kind": kind, **extra}
    return str(call(server, key, "DeviceAdminService", "CreateAction", body)["action_ids"][0])


def action(server: ServerProcess, key: str, device_id: str, action_id: str) -> dict[str, Any]:
    acts = call(server, key, "DeviceAdminService", "ListActions", {"device_id": device_id})["actions"]
    return next(a for a in acts if a["id"] == action_id)


def action_state(server: ServerProcess, key: str, device_id: str, action_id: str, want: str) -> bool:
    return bool(action(server, key, device_id, action_id)["state"] == want)


def telemetry_ts(server: ServerProcess, device_id: str, name: str) -> list[float]:
    conn = sqlite3.connect(f"file:{server.data_dir / 'fleetd.db'}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT ts FROM telemetry WHERE device_id = ? AND name = ?",
                                           (device_id, name))]
    finally:
        conn.close()


def queued_uptime_ts(queue_dir: Path) -> list[float]:
    """The ``uptime`` points waiting in a telemetry queue folder (read without disturbing the agent)."""
    out = []
    for f in sorted(queue_dir.glob("*.json")):
        with contextlib.suppress(FileNotFoundError):
            out += [p["ts"] for p in json.loads(f.read_text())["points"] if p["name"] == "uptime"]
    return out


class Scripted:
    """An executor whose actions report `installing`, then wait for the test, then end as told."""

    def __init__(self, outcome: tuple[str, str] = ("succeeded", "applied")) -> None:
        self.outcome = outcome
        self.started = threading.Event()
        self.release = threading.Event()
        self.executed: list[str] = []
        self.stopped = False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True

    def busy(self) -> bool:
        return False

    def components(self) -> list[dict[str, Any]]:
        return [{"name": "webcam", "version": "1.0.0", "state": "running", "health": "healthy", "restarts": 0}]

    def execute(self, action: dict[str, Any], report: Any) -> None:
        self.executed.append(action["id"])
        report("installing", "applying", 10)
        self.started.set()
        assert self.release.wait(30)
        report(*self.outcome, 100)


def start_loop(loop: RunLoop) -> threading.Thread:
    t = threading.Thread(target=loop.run, name="test-runloop", daemon=True)
    t.start()
    return t


# --- offline ---------------------------------------------------------------------

def test_a_report_made_while_the_server_is_down_is_delivered_when_it_is_back(own_server: ServerProcess,
                                                                               tmp_path: Path) -> None:
    key = own_server.create_key()
    sd = tmp_path / "agent"
    settings, res = enrolled(own_server, key, sd, "core-off-1")
    did = res.state.device_id
    ex = Scripted()
    loop = RunLoop(settings, res.state, res.client, executor=ex)
    aid = create_action(own_server, key, did, params={"log_level": "debug"})
    t = start_loop(loop)
    try:
        assert ex.started.wait(10)
        wait_for(lambda: action_state(own_server, key, did, aid, "installing"), 10, "installing on the server")
        own_server.stop()
        down = time.time()
        ex.release.set()
        # The final report waits on disk; the loop keeps trying with backoff and keeps sampling telemetry.
        wait_for(lambda: queue_stats(settings.paths.reports_queue)["items"] == 1, 10, "the report on disk")
        wait_for(lambda: loop.backoff.failures >= 3, 10, "several failed tries")
        wait_for(lambda: queue_stats(settings.paths.telemetry_queue)["items"] >= 2, 10, "telemetry on disk")
        assert t.is_alive()
        item = DiskQueue(settings.paths.reports_queue).peek(1)[0][1]
        assert item == {"action_id": aid, "state": "succeeded", "message": "applied", "progress": 100}
        up = time.time()
        own_server.start()
        wait_for(lambda: action_state(own_server, key, did, aid, "succeeded"), 15, "succeeded on the server")
        wait_for(lambda: queue_stats(settings.paths.reports_queue)["items"] == 0, 10, "the reports queue drained")
        wait_for(lambda: queue_stats(settings.paths.telemetry_queue)["items"] == 0, 10, "telemetry drained")
        # Points sampled while the server was down arrived, with the time they were taken.
        assert any(down <= ts <= up for ts in telemetry_ts(own_server, did, "uptime"))
        d = call(own_server, key, "DeviceAdminService", "GetDevice", {"id": did})
        assert [(c["name"], c["version"]) for c in d["components"]] == [("webcam", "1.0.0")]
        assert ex.executed == [aid]  # never run twice, though the server listed it at every check-in
    finally:
        ex.release.set()
        loop.stop()
        t.join(10)
    assert not t.is_alive() and ex.stopped


def test_run_keeps_looping_offline_and_drains_after_a_restart(own_server: ServerProcess, tmp_path: Path) -> None:
    key = own_server.create_key()
    sd = tmp_path / "agent"
    ok(run_agent(sd, "enroll", "--token", make_token(own_server, key), "--server", own_server.url,
                 "--hardware-id", "core-off-2"))
    did = state(sd)["device_id"]
    env = agent_env(FLEET_AGENT_POLL_INTERVAL="0.3", FLEET_AGENT_MAX_BACKOFF="0.5")
    p = subprocess.Popen([*AGENT, "run", "--state-dir", str(sd)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    try:
        wait_for(lambda: telemetry_ts(own_server, did, "uptime"), 10, "first telemetry")
        # One agent per state dir.
        second = run_agent(sd, "run", "--once")
        assert second.returncode == 1 and "another fleet-agent is using" in second.stderr

        own_server.stop()
        down = time.time()
        wait_for(lambda: queue_stats(sd / "queue" / "telemetry")["items"] >= 3, 15, "telemetry queued on disk")
        assert p.poll() is None
        status = json.loads(ok(run_agent(sd, "status", "--json")).stdout)
        assert status["running"] and "cannot reach" in status["last_error"]
        assert status["queues"]["telemetry"]["items"] >= 3

        queued = queued_uptime_ts(sd / "queue" / "telemetry")
        assert len([ts for ts in queued if ts >= down]) >= 2
        own_server.start()
        wait_for(lambda: queue_stats(sd / "queue" / "telemetry")["items"] == 0, 15, "the telemetry queue drained")
        # Every point that waited on disk arrived, stamped with the time it was taken.
        assert set(queued) <= set(telemetry_ts(own_server, did, "uptime"))
        status = json.loads(ok(run_agent(sd, "status", "--json")).stdout)
        assert status["last_error"] == "" or "cannot reach" not in status["last_error"]
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=15)
    assert p.returncode == 0, err
    assert "server unreachable" in err and "got SIGTERM; stopping" in err


# --- what the server answers to reports -----------------------------------------------

def test_reports_the_server_will_never_take_are_dropped(server: ServerProcess, admin: str, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    settings, res = enrolled(server, admin, tmp_path / "agent", "core-drop-1")
    did = res.state.device_id
    loop = RunLoop(settings, res.state, res.client, executor=NullExecutor(settings.paths.root))
    first = create_action(server, admin, did)
    # Without app support the action fails, saying why.
    assert loop.iteration(once=True) is True
    a = action(server, admin, did, first)
    assert a["state"] == "failed" and "this agent cannot run config actions yet" in a["message"]

    second = create_action(server, admin, did, kind="restart", component="webcam")
    q = loop.reports
    q.put({"action_id": first, "state": "succeeded"})                  # already ended as failed
    q.put({"action_id": "act_0123456789ab", "state": "failed"})        # unknown
    q.put({"action_id": second, "state": "downloading"})               # a restart has no download step
    q.put({"action_id": second, "state": "succeeded", "message": "restarted"})
    with caplog.at_level(logging.INFO, logger="fleet_agent"):
        assert loop.drain_reports() is True
    assert len(q) == 0
    assert action(server, admin, did, first)["state"] == "failed"
    assert action(server, admin, did, second)["state"] == "succeeded"
    text = caplog.text
    assert "already ended on the server" in text and "no longer knows action act_0123456789ab" in text
    assert "refused a report for action" in text
    res.client.close()


def test_an_action_cancelled_before_it_starts_is_never_run(server: ServerProcess, admin: str,
                                                           tmp_path: Path) -> None:
    settings, res = enrolled(server, admin, tmp_path / "agent", "core-cancel-1")
    did = res.state.device_id
    ex = Scripted()
    loop = RunLoop(settings, res.state, res.client, executor=ex)
    a = create_action(server, admin, did, params={"n": "1"})
    b = create_action(server, admin, did, params={"n": "2"})
    t = start_loop(loop)
    try:
        assert ex.started.wait(10)
        call(server, admin, "DeviceAdminService", "CancelAction", {"id": b})
        checkins = loop.checkins
        wait_for(lambda: loop.checkins >= checkins + 2, 10, "two more check-ins")
        ex.release.set()
        wait_for(lambda: action_state(server, admin, did, a, "succeeded"), 10, "the first action done")
        time.sleep(0.5)
        assert ex.executed == [a]
        assert action(server, admin, did, b)["state"] == "cancelled"
    finally:
        ex.release.set()
        loop.stop()
        t.join(10)


def test_a_rejected_token_is_replaced_once(server: ServerProcess, admin: str, tmp_path: Path) -> None:
    _, res = enrolled(server, admin, tmp_path / "agent", "core-reauth-1")
    client = res.client
    client._token, client._expires = "fdt.not-a-token", time.monotonic() + 3600
    assert client.call("CheckIn", {"components": []})["status"] == "active"
    assert client._token.startswith("fdt.") and client._token != "fdt.not-a-token"
    client.close()


def test_without_apps_module_the_loop_falls_back(server: ServerProcess, admin: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    settings, res = enrolled(server, admin, tmp_path / "agent", "core-noapps-1")
    monkeypatch.setitem(sys.modules, "fleet_agent.apps", None)  # as if apps.py were not there
    ex = load_executor(settings.paths.root, res.client, res.state)
    assert isinstance(ex, NullExecutor)
    res.client.close()


def test_a_revoked_device_is_told_and_stops_sending(server: ServerProcess, admin: str, tmp_path: Path) -> None:
    sd = tmp_path / "agent"
    ok(run_agent(sd, "enroll", "--token", make_token(server, admin), "--server", server.url, "--hardware-id",
                 "core-rev-1"))
    call(server, admin, "DeviceAdminService", "RevokeDevice", {"id": state(sd)["device_id"]})
    p = run_agent(sd, "run", "--once")
    assert p.returncode == 1 and "the server refuses this device" in p.stderr and "revoked" in p.stderr
    assert state(sd)["status"] == "revoked"


# --- resources ----------------------------------------------------------------------

def test_idle_rss_of_run(server: ServerProcess, admin: str, tmp_path: Path) -> None:
    sd = tmp_path / "agent"
    ok(run_agent(sd, "enroll", "--token", make_token(server, admin), "--server", server.url, "--hardware-id",
                 "core-rss-1"))
    p = subprocess.Popen([*AGENT, "run", "--state-dir", str(sd)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=agent_env(FLEET_AGENT_POLL_INTERVAL="0.25"))
    try:
        seen: set[float] = set()

        def checkins() -> bool:
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                seen.add(json.loads((sd / "runtime.json").read_text())["last_checkin"])
            return len(seen - {0.0}) >= 10

        wait_for(checkins, 20, "ten check-ins")
        status = Path(f"/proc/{p.pid}/status").read_text()
        rss_kib = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
        maps = Path(f"/proc/{p.pid}/maps").read_text()
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=15)
    print(f"\nfleet-agent run: idle VmRSS {rss_kib} KiB ({rss_kib / 1024:.1f} MiB) after 10 check-ins")
    assert p.returncode == 0
    assert "/zeroconf/" not in maps  # mDNS is loaded only to find a server
    assert rss_kib < 40 * 1024, f"idle RSS {rss_kib} KiB is over the 40 MiB target"


# --- the server moved -------------------------------------------------------------------

def test_a_server_found_by_mdns_is_looked_up_again_when_it_moves(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = ServerProcess(data).start()
    key = first.create_key()
    settings, res = enrolled(first, key, tmp_path / "agent", "core-moved-1")
    res.state.discovered = True  # as if enrolled by mDNS
    loop = RunLoop(settings, res.state, res.client, executor=NullExecutor(settings.paths.root))
    assert loop.iteration()
    first.kill9()  # (a graceful stop would wait for the agent's idle keep-alive connection)
    # The same fleet (same data dir, same CA) comes back on another port, and says so on mDNS.
    second = ServerProcess(data).start()
    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        zc.register_service(ServiceInfo(
            discovery.SERVICE_TYPE, f"core-moved.{discovery.SERVICE_TYPE}", port=second.port,
            properties={"scheme": "https", "ca": res.state.ca_fingerprint, "path": "/"},
            server="core-moved-test.local.", parsed_addresses=["127.0.0.1"]))
        results = [loop.iteration() for _ in range(3)]  # the third failure looks again
        assert results == [False, False, False]
        assert loop.client.base_url == second.url
        assert loop.iteration()
        assert state(tmp_path / "agent")["server"] == second.url
        d = call(second, key, "DeviceAdminService", "GetDevice", {"id": res.state.device_id})
        assert d["last_seen"]
    finally:
        zc.close()
        res.client.close()
        second.stop()


def test_telemetry_refused_by_a_quota_is_dropped_not_retried_forever(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """resource_exhausted without Retry-After (the metric-name limits) would be refused again: the batch goes,
    and the points after it are not held behind it."""
    s = ServerProcess(tmp_path / "data", env={"FLEETD_MAX_METRIC_NAMES_PER_DEVICE": "2"}).start()
    try:
        key = s.create_key("admin", "agent-quota")
        settings, res = enrolled(s, key, tmp_path / "agent", "core-quota-1")
        loop = RunLoop(settings, res.state, res.client, executor=NullExecutor(settings.paths.root))
        loop.telemetry.put({"points": [{"name": n, "value": 1.0} for n in ("a", "b", "c")]})
        with caplog.at_level(logging.INFO, logger="fleet_agent"):
            loop.push_telemetry()
        assert queue_stats(settings.paths.telemetry_queue)["items"] == 0
        assert "at most 2 per device (setting max_metric_names_per_device)" in caplog.text
        loop.telemetry.put({"points": [{"name": "a", "value": 2.0}]})
        loop.push_telemetry()
        assert queue_stats(settings.paths.telemetry_queue)["items"] == 0
        res.client.close()
    finally:
        s.stop()


def test_app_support_is_loaded_only_when_there_is_an_app_or_an_action(tmp_path: Path) -> None:
    """apps.py and its imports cost about 2 MiB: an agent with nothing to supervise must not load them."""
    from fleet_agent.worker import LazyExecutor

    loaded: list[NullExecutor] = []

    def load() -> NullExecutor:
        loaded.append(NullExecutor(tmp_path))
        return loaded[-1]

    idle = LazyExecutor(tmp_path, load)
    idle.start()
    assert idle.components() == [] and not idle.busy() and loaded == []
    reports: list[tuple[str, str, int]] = []
    idle.execute({"id": "a1", "kind": "restart"}, lambda *r: reports.append(r))
    idle.execute({"id": "a2", "kind": "restart"}, lambda *r: reports.append(r))
    assert len(loaded) == 1 and [r[0] for r in reports] == ["failed", "failed"]

    (tmp_path / "apps" / "thermo").mkdir(parents=True)  # an installed (or half-installed) app: bring it up at once
    with_app = LazyExecutor(tmp_path, load)
    with_app.start()
    assert len(loaded) == 2


# --- the check-in interval ----------------------------------------------------------

def test_the_loop_checks_in_sooner_while_an_action_is_open(server: ServerProcess, admin: str,
                                                          tmp_path: Path) -> None:
    """The server's next_checkin (10 s while an action is open, else the 60 s poll interval) sets the sleep."""
    sd = tmp_path / "agent"
    settings = Settings.from_env(str(sd), {"FLEET_AGENT_MAX_BACKOFF": "0.3"})  # no poll override: the server's
    res = enroll(settings, EnrollOptions(token=make_token(server, admin), server=server.url,
                                         hardware_id="core-sooner-1"))
    did = res.state.device_id
    ex = Scripted()
    loop = RunLoop(settings, res.state, res.client, executor=ex)
    assert loop.iteration()
    assert (loop.poll_interval, loop.next_checkin) == (60, 60)
    aid = create_action(server, admin, did, params={"n": "1"})
    try:
        assert loop.iteration()
        assert ex.started.wait(10)
        assert (loop.poll_interval, loop.next_checkin) == (60, 10)
        ex.release.set()
        wait_for(lambda: loop.iteration() and action_state(server, admin, did, aid, "succeeded"), 10,
                 "the action's end reported")
        assert loop.iteration()
        assert (loop.poll_interval, loop.next_checkin) == (60, 60)
    finally:
        ex.release.set()
        loop.stop()
