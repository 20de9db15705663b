"""`fleetd devices logs` against a real server and `fleetd simulate`: the device sends the lines in its report."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .server import ServerProcess, run_cli
from .test_simulate import call, join_token, push_artifact, start_sim, stop_sim, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(server: ServerProcess, admin_key: str) -> dict[str, str]:
    return {"FLEETD_SERVER": server.url, "FLEETD_API_KEY": admin_key, "FLEETD_CA": server.ca, "COLUMNS": "200"}


@pytest.fixture
def sim(server: ServerProcess, admin_key: str) -> Iterator[subprocess.Popen[str]]:
    p = start_sim(server, "--token", join_token(server, admin_key), "--ca", server.ca, "--devices", "1",
                  "--prefix", "logs", "--interval", "1")
    yield p
    if p.poll() is None:
        stop_sim(p)


def logs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("devices", "logs", *args, env=env, check=False, timeout=60)


def test_devices_logs_prints_the_lines_the_device_sends(server: ServerProcess, admin_key: str, env: dict[str, str],
                                                       sim: subprocess.Popen[str], tmp_path: Path) -> None:
    dev: dict[str, Any] = wait_for(lambda: next(iter(call(server, admin_key, "DeviceAdminService", "ListDevices",
                                                          {"search": "logs-1"})["devices"]), None), 20, "the device")
    push_artifact(server, admin_key, tmp_path, "chatty", "1.0.0", b"a chatty app\n")
    run_cli("devices", "deploy", dev["id"], "chatty@1.0.0", env=env)
    wait_for(lambda: any(c["name"] == "chatty" for c in call(server, admin_key, "DeviceAdminService", "GetDevice",
                                                              {"id": dev["id"]})["components"]), 30,
             "the device to report chatty")

    p = logs(env, dev["name"], "--app", "chatty", "--lines", "3")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 3 and lines[-1].endswith("logs-1 chatty 1.0.0: simulated log line 3 of 3"), p.stdout
    assert "it sends it at its next check-in" in p.stderr and "3 line(s) of chatty on logs-1" in p.stderr

    p = logs(env, dev["id"], "--app", "chatty", "--json")
    assert p.returncode == 0, p.stderr
    a = json.loads(p.stdout)
    assert (a["kind"], a["state"], a["result"]["lines"], a["result"]["truncated"]) == ("logs", "succeeded", 5, False)
    # The same lines again, from the action, without asking the device.
    again = logs(env, dev["name"], "--action", a["id"])
    assert again.returncode == 0 and again.stdout == a["result"]["text"]

    p = logs(env, dev["name"], "--app", "chatty-typo")
    assert p.returncode == 1 and "has no app 'chatty-typo'; it reports chatty" in p.stderr, p.stderr
    p = logs(env, dev["name"])
    assert p.returncode == 1 and "say which app: --app NAME" in p.stderr

    # A device that does not answer: the command gives up, says why, and how to get the lines later.
    stop_sim(sim)
    p = logs(env, dev["name"], "--app", "chatty", "--timeout", "2")
    assert p.returncode == 1
    err = " ".join(p.stderr.split())
    assert "has not sent the log within 2 s (the action is queued)" in err
    assert "picks the action up at its next check-in" in err and "--action act_" in err
