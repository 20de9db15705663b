"""DDI devices in rollouts: a failing one trips the gate and the others are sent back to the previous version
as a new deploymentBase; a cancelled rollout reaches a device that fetched it as cancelAction; and a DDI device
and a real fleet-agent take part in one rollout side by side."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.e2e_helpers import PYTHON, Admin, AgentProcess, advancing, agent_env

from .client import DdiDevice
from .conftest import Fleetd, wait_for

pytestmark = pytest.mark.e2e


def rollout(fleetd: Fleetd, *args: str) -> str:
    return str(fleetd.cli_json("rollouts", "create", *args)["id"])


def shown(fleetd: Fleetd, rid: str) -> dict[str, Any]:
    return dict(fleetd.cli_json("rollouts", "show", rid))


def device(fleetd: Fleetd, controller_id: str, *, tags: dict[str, str], device_type: str,
           fail: set[str] | None = None, hold: set[str] | None = None) -> tuple[str, DdiDevice]:
    tok = fleetd.target_token(controller_id, device_type, tags)
    return tok["device_id"], DdiDevice(fleetd.ddi(controller_id, tok["token"]), fail=fail, hold=hold)


def test_a_failing_ddi_device_halts_the_rollout_and_the_others_go_back(fleetd: Fleetd) -> None:
    tags = {"ring": "gate"}
    fleetd.push("gateapp", "1.0.0", b"gate one\n" * 200, "ddi-gate")
    fleetd.push("gateapp", "2.0.0", b"gate two\n" * 200, "ddi-gate")
    good_id, good = device(fleetd, "gate-good", tags=tags, device_type="ddi-gate")
    bad_id, bad = device(fleetd, "gate-bad", tags=tags, device_type="ddi-gate")
    good.start()
    bad.start()
    try:
        # Both run 1.0.0 first, so that there is a version to go back to.
        fleetd.cli_json("devices", "deploy", "--tag", "ring=gate", "gateapp@1.0.0")
        for d in (good, bad):
            d.wait("1.0.0 installed", lambda d: d.installed.get("gateapp") == "1.0.0")
        wait_for("both to report 1.0.0", lambda: all(fleetd.component(d, "gateapp") == "1.0.0"
                                                     for d in (good_id, bad_id)))
        bad.stop()  # off the network while the rollout starts

        rid = rollout(fleetd, "--artifact", "gateapp@2.0.0", "--target", "ring=gate", "--stages", "100",
                      "--soak", "30s", "--max-failure", "0%")
        good.wait("2.0.0 installed", lambda d: d.installed.get("gateapp") == "2.0.0")
        wait_for("the good device to report 2.0.0", lambda: fleetd.component(good_id, "gateapp") == "2.0.0")

        # The bad one comes back, fetches 2.0.0, and its install fails.
        bad = DdiDevice(fleetd.ddi("gate-bad", fleetd.target_token("gate-bad")["token"]), fail={"2.0.0"}).start()
        bad.wait("a failure sent", lambda d: any(f[2] == "failure" for f in d.log.feedback))
        halted = wait_for("the rollout to roll back", lambda: (s := shown(fleetd, rid))["state"] == "rolled_back"
                          and s, 20)
        assert "failed on purpose" in str(halted["reason"]), halted["reason"]

        # The good device gets a new deployment: the previous version, which it installs.
        good.wait("1.0.0 installed again", lambda d: d.installed.get("gateapp") == "1.0.0"
                  and len(d.log.deployments) == 3)
        back = good.log.deployments[-1]
        assert [c.version for c in back.chunks] == ["1.0.0"]
        assert back.action_id not in {d.action_id for d in good.log.deployments[:-1]}
        rb = wait_for("the rollback action to succeed", lambda: [
            a for a in fleetd.actions(good_id) if a["kind"] == "rollback" and a["state"] == "succeeded"])
        assert rb[0]["rollout_id"] == rid
        wait_for("the good device to report 1.0.0", lambda: fleetd.component(good_id, "gateapp") == "1.0.0")
        # The failed device never left 1.0.0, and gets no rollback.
        assert fleetd.component(bad_id, "gateapp") == "1.0.0"
        assert not [a for a in fleetd.actions(bad_id) if a["kind"] == "rollback"]
        assert good.log.errors == [] and [e for e in bad.log.errors if "failed" not in e] == []
    finally:
        good.stop()
        bad.stop()


def test_a_cancelled_rollout_reaches_a_device_that_fetched_it_as_cancel_action(fleetd: Fleetd) -> None:
    fleetd.push("holdapp", "1.0.0", b"never finishes\n" * 100, "ddi-hold")
    dev_id, dev = device(fleetd, "hold-board", tags={"ring": "hold"}, device_type="ddi-hold", hold={"1.0.0"})
    dev.start()
    try:
        rid = rollout(fleetd, "--artifact", "holdapp@1.0.0", "--target", "ring=hold", "--stages", "100",
                      "--soak", "5s")
        dev.wait("the deployment fetched and under way", lambda d: d.log.deployments and any(
            f[1] == "proceeding" for f in d.log.feedback))
        aid = dev.log.deployments[0].action_id
        [act] = [a for a in fleetd.actions(dev_id) if a["rollout_id"] == rid]
        assert act["state"] in ("downloading", "verifying", "installing")

        fleetd.cli("rollouts", "cancel", rid)
        assert shown(fleetd, rid)["state"] == "cancelled"
        dev.wait("the cancel acknowledged", lambda d: d.log.cancels)
        assert dev.log.cancels == [(aid, 200)]
        assert fleetd.action(dev_id, act["id"])["state"] == "cancelled"
        # Once acknowledged, the device is left alone: no cancelAction, no deploymentBase.
        polls = dev.log.polls
        dev.wait("more polls", lambda d: d.log.polls >= polls + 3)
        assert dev.log.cancels == [(aid, 200)] and len(dev.log.deployments) == 1
        assert "holdapp" not in dev.installed and dev.log.errors == []
    finally:
        dev.stop()


# --- side by side with a real agent -----------------------------------------------------------

HEARTBEAT_APP = """#!/bin/sh
while :; do date +%s.%N > "$HEARTBEAT.tmp" && mv "$HEARTBEAT.tmp" "$HEARTBEAT"; sleep 0.2; done
"""


@pytest.fixture
def agent(fleetd: Fleetd, tmp_path: Path) -> Iterator[tuple[str, AgentProcess]]:
    """A fleet-agent process of type linux-side with tag ring=side, checking in every 5 s."""
    admin = Admin(fleetd.server, fleetd.key)
    token = admin.token(description="side by side", tags={"ring": "side"})["token"]
    state = tmp_path / "agent-state"
    ident = ["--state-dir", str(state), "--server", fleetd.server.url, "--device-type", "linux-side",
             "--hardware-id", "side-agent"]
    p = subprocess.run([PYTHON, "-m", "fleet_agent", "enroll", *ident, "--json"], capture_output=True, text=True,
                       env=agent_env(FLEET_AGENT_TOKEN=token), timeout=60)
    assert p.returncode == 0, p.stderr
    device_id = json.loads(p.stdout)["device_id"]
    admin.call("DeviceAdminService", "UpdateDevice", {"id": device_id, "poll_interval": 5})
    proc = AgentProcess([PYTHON, "-m", "fleet_agent", "run", *ident], tmp_path / "agent.log", agent_env())
    try:
        yield device_id, proc
    finally:
        proc.stop()
        for pidfile in state.glob("apps/*/pid"):  # the app runs in its own process group
            with contextlib.suppress(OSError, ValueError, IndexError):
                os.killpg(int(pidfile.read_text().split()[0]), signal.SIGKILL)


def test_a_ddi_device_and_an_agent_take_part_in_one_rollout(fleetd: Fleetd, agent: tuple[str, AgentProcess],
                                                            tmp_path: Path) -> None:
    agent_id, proc = agent
    ddi_id, ddi = device(fleetd, "side-board", tags={"ring": "side"}, device_type="ddi-side")
    ddi.start()
    beat = tmp_path / "heartbeat"
    try:
        wait_for("the agent online", lambda: fleetd.device(agent_id)["online"], 30)
        app = tmp_path / "sideapp.sh"
        app.write_text(HEARTBEAT_APP)
        fleetd.cli_json("artifacts", "push", str(app), "--name", "sideapp", "--version", "1.0.0", "--device-type",
                        "linux-side", "--device-type", "ddi-side", "--env", f"HEARTBEAT={beat}",
                        "--health-grace", "1")
        rid = rollout(fleetd, "--artifact", "sideapp@1.0.0", "--target", "ring=side", "--stages", "50,100",
                      "--soak", "2s")
        done = fleetd.cli("rollouts", "watch", rid, "--json", "--interval", "1", check=False)
        assert done.returncode == 0, f"{done.stdout}{done.stderr}\n--- agent ---\n{proc.log()[-4000:]}"
        final = json.loads(done.stdout)
        assert final["state"] == "completed"
        assert sum(s["succeeded"] for s in final["stages"]) == 2
        placed = fleetd.call("RolloutService", "ListRolloutDevices", {"id": rid})["devices"]
        assert {d["device_id"] for d in placed} == {agent_id, ddi_id}

        assert fleetd.component(agent_id, "sideapp") == "1.0.0" and advancing(beat)
        assert fleetd.component(ddi_id, "sideapp") == "1.0.0" and ddi.installed == {"sideapp": "1.0.0"}
        [dep] = ddi.log.deployments
        assert [(c.part, c.name, c.version) for c in dep.chunks] == [("bApp", "sideapp", "1.0.0")]
        assert ddi.log.errors == []
    finally:
        ddi.stop()

