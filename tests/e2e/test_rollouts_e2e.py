"""Rollouts end to end: a real server, `fleetd simulate` devices, and the `fleetd rollouts` commands.

Short soaks (2 s), passes every half second and check-ins every second keep the file around a minute.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .server import ServerProcess, run_cli
from .test_simulate import call, push_artifact, start_sim, stop_sim, wait_for

FAST = {"FLEETD_ROLLOUT_PASS_SECONDS": "0.5", "FLEETD_ENROLL_RATE_PER_MINUTE": "100000"}
DEVICES = 200


class Sim:
    """One group of simulated devices (tagged group=NAME), restartable with another fail rate."""

    def __init__(self, server: ServerProcess, key: str, name: str, devices: int, state: Path) -> None:
        self.server, self.key, self.name, self.devices, self.state = server, key, name, devices, state
        self.token = str(call(server, key, "EnrollmentService", "CreateToken",
                              {"uses": 0, "expires_in": 3600, "tags": {"group": name}})["token"])
        self.proc: subprocess.Popen[str] | None = None

    def start(self, fail_rate: float = 0.0) -> None:
        self.proc = start_sim(self.server, "--token", self.token, "--ca", self.server.ca, "--devices",
                              str(self.devices), "--prefix", self.name, "--interval", "1", "--fail-rate",
                              str(fail_rate), "--state", str(self.state))
        wait_for(lambda: len(self.listed()) == self.devices and all(d["online"] for d in self.listed()), 40,
                 f"{self.devices} {self.name} devices online")

    def stop(self) -> dict[str, Any]:
        assert self.proc is not None
        summary, self.proc = stop_sim(self.proc), None
        return summary

    def listed(self) -> list[dict[str, Any]]:
        return list(call(self.server, self.key, "DeviceAdminService", "ListDevices",
                         {"tags": {"group": self.name}, "limit": 10000})["devices"])

    def versions(self, component: str) -> dict[str, str | None]:
        return {d["id"]: next((c["version"] for c in d["components"] if c["name"] == component), None)
                for d in self.listed()}


def cli(server: ServerProcess, key: str, *args: str, check: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--server", server.url, "--api-key", key, "--ca", server.ca, check=check, timeout=timeout)


def db_rows(server: ServerProcess, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{server.data_dir / 'fleetd.db'}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def rollout_actions(server: ServerProcess, rid: str, kind: str) -> list[tuple[str, str, str]]:
    """(device, action id, state) of every ``kind`` action of a rollout."""
    return [(r[0], r[1], r[2]) for r in db_rows(
        server, "SELECT device_id, id, state FROM actions WHERE rollout_id = ? AND kind = ?", rid, kind)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("rollouts") / "data", env=FAST).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def key(server: ServerProcess) -> str:
    return server.create_key("admin", "rollouts-e2e")


@pytest.fixture(scope="module")
def fleet200(server: ServerProcess, key: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    tmp = tmp_path_factory.mktemp("artifacts")
    push_artifact(server, key, tmp, "simapp", "1.0.0", b"simapp one\n" * 100)
    push_artifact(server, key, tmp, "simapp", "2.0.0", b"simapp two\n" * 100)
    sim = Sim(server, key, "ro", DEVICES, tmp / "sim-state.json")
    sim.start()
    yield sim
    if sim.proc is not None:
        sim.stop()


@pytest.mark.e2e
def test_a_three_stage_rollout_completes_on_200_devices(server: ServerProcess, key: str, fleet200: Sim) -> None:
    created = json.loads(cli(server, key, "rollouts", "create", "--artifact", "simapp@1.0.0", "--target", "group=ro",
                             "--stages", "10,50,100", "--soak", "2s", "--json").stdout)
    rid = created["id"]
    assert created["state"] == "scheduled" and [s["percent"] for s in created["stages"]] == [10, 50, 100]
    done = cli(server, key, "rollouts", "watch", rid, "--json", "--interval", "1", timeout=90)
    assert json.loads(done.stdout)["state"] == "completed"

    shown = json.loads(cli(server, key, "rollouts", "show", rid, "--json").stdout)
    assert shown["state"] == "completed" and shown["reason"] == ""
    assert [s["state"] for s in shown["stages"]] == ["completed"] * 3
    assert sum(s["targeted"] for s in shown["stages"]) == DEVICES
    for s in shown["stages"]:
        assert s["targeted"] > 0 and s["succeeded"] == s["targeted"], s
        assert s["queued"] == s["in_progress"] == s["failed"] == s["skipped"] == 0, s
    assert set(fleet200.versions("simapp").values()) == {"1.0.0"}  # every device reports the new version
    listed = json.loads(cli(server, key, "rollouts", "list", "--json").stdout)
    assert [(r["id"], r["state"]) for r in listed] == [(rid, "completed")]
    devices = json.loads(cli(server, key, "rollouts", "devices", rid, "--status", "succeeded", "--json").stdout)
    assert len(devices) == DEVICES
    installs = rollout_actions(server, rid, "install")
    assert len(installs) == DEVICES and len({d for d, _, _ in installs}) == DEVICES
    assert {state for _, _, state in installs} == {"succeeded"}
    # Stages started in order, each after the previous one ended.
    stages = db_rows(server, "SELECT idx, started_at, ended_at FROM rollout_stages WHERE rollout_id = ? ORDER BY idx",
                     rid)
    assert [s[0] for s in stages] == [0, 1, 2]
    assert all(stages[i][2] <= stages[i + 1][1] for i in range(2))
    audit = [r[0] for r in db_rows(server, "SELECT action FROM audit_log WHERE target = ? ORDER BY id", rid)]
    assert audit == ["rollout.create", "rollout.stage", "rollout.start", "rollout.stage", "rollout.stage",
                     "rollout.complete"]


@pytest.mark.e2e
def test_a_bad_release_halts_in_its_first_stage_and_rolls_back(server: ServerProcess, key: str,
                                                                fleet200: Sim) -> None:
    before = fleet200.versions("simapp")
    fleet200.stop()
    fleet200.start(fail_rate=0.3)
    # A fifth of 200 devices in the first stage: at a 30 % fail rate, more than 5 % of them fail for sure.
    rid = json.loads(cli(server, key, "rollouts", "create", "--artifact", "simapp@2.0.0", "--target", "group=ro",
                         "--stages", "20,60,100", "--soak", "2s", "--max-failure", "5%", "--json").stdout)["id"]
    watched = cli(server, key, "rollouts", "watch", rid, "--interval", "1", check=False, timeout=90)
    assert watched.returncode == 1 and "rolled back" in watched.stderr, watched.stderr

    shown = json.loads(cli(server, key, "rollouts", "show", rid, "--json").stdout)
    assert shown["state"] == "rolled_back" and shown["stage"] == 0
    assert shown["reason"].startswith("stage 1 (20%)") and "more than the 5% allowed" in shown["reason"]
    assert "simulated failure" in shown["reason"]
    failed, attempted = map(int, re.search(r"(\d+) of (\d+) attempted", shown["reason"]).groups())  # type: ignore[union-attr]
    assert failed > 0.05 * attempted and failed >= 1
    first = shown["stages"][0]
    assert first["failed"] >= failed and first["state"] == "rolled_back"
    assert [s["state"] for s in shown["stages"][1:]] == ["pending", "pending"]

    placed = call(server, key, "RolloutService", "ListRolloutDevices", {"id": rid, "limit": 1000})["devices"]
    in_first = {d["device_id"] for d in placed if d["stage"] == 0}
    assert len(placed) == DEVICES and 0 < len(in_first) < DEVICES
    installs = rollout_actions(server, rid, "install")
    assert {d for d, _, _ in installs} <= in_first  # devices outside the first stage never got it
    assert len(installs) == len({d for d, _, _ in installs})

    # Every device that installed 2.0.0 got a rollback to the version it ran before. The simulated devices
    # fail 30 % of those too (--fail-rate applies to every install): those stay on 2.0.0, and say so.
    def settled() -> dict[str, str] | None:
        backs = {d: state for d, _, state in rollout_actions(server, rid, "rollback")}
        if not backs or any(state not in ("succeeded", "failed") for state in backs.values()):
            return None
        expected = {d: "2.0.0" if backs.get(d) == "failed" else v for d, v in before.items()}
        return backs if fleet200.versions("simapp") == expected else None

    backs = wait_for(settled, 40, "the rollbacks to end, and every device to report the version it should run")
    succeeded = {d for d, _, s in installs if s == "succeeded"}
    assert succeeded and succeeded <= set(backs) <= in_first
    rb = json.loads(cli(server, key, "rollouts", "show", rid, "--json").stdout)["rollback"]
    assert rb == {"actions": len(backs), "open": 0, "succeeded": list(backs.values()).count("succeeded"),
                  "failed": list(backs.values()).count("failed")}


@pytest.mark.e2e
def test_a_server_restart_mid_stage_installs_no_device_twice(tmp_path: Path) -> None:
    own = ServerProcess(tmp_path / "data", env=FAST).start()
    sim: Sim | None = None
    try:
        key = own.create_key("admin")
        push_artifact(own, key, tmp_path, "restartapp", "1.0.0", b"survives restarts\n" * 100)
        sim = Sim(own, key, "rs", 60, tmp_path / "sim-state.json")
        sim.start()
        rid = json.loads(cli(own, key, "rollouts", "create", "--artifact", "restartapp@1.0.0", "--target",
                             "group=rs", "--stages", "50,100", "--soak", "4s", "--json").stdout)["id"]

        def some_installed() -> list[tuple[str, str, str]] | None:
            installs = rollout_actions(own, rid, "install")
            return installs if any(s == "succeeded" for _, _, s in installs) else None

        first = {d: a for d, a, _ in wait_for(some_installed, 30, "the first installs")}
        own.kill9()  # mid-stage: the first stage's devices are soaking
        own.start()
        done = json.loads(cli(own, key, "rollouts", "watch", rid, "--json", "--interval", "1", timeout=90).stdout)
        assert done["state"] == "completed"
        installs = rollout_actions(own, rid, "install")
        devices = [d for d, _, _ in installs]
        assert len(devices) == len(set(devices)) == 60  # every device once, none twice
        assert all(a == dict((d, a) for d, a, _ in installs)[d] for d, a in first.items())
        assert set(sim.versions("restartapp").values()) == {"1.0.0"}
        # The server's record, not the simulator's count: a report committed just before the kill -9
        # loses its response, so the simulator cannot count it although the action did succeed.
        assert {s for _, _, s in installs} == {"succeeded"}
    finally:
        if sim is not None and sim.proc is not None:
            sim.stop()
        own.stop()
