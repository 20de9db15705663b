"""The CLI as a new user meets it (issue 15), against a real server: 80-column tables keep ids whole, device
refs by the start of an id, the deploy's pickup time, per-stage counts at rollout creation, and `rollouts watch`
and `simulate` printing lines as things change when stdout is not a terminal."""

from __future__ import annotations

import os
import queue
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from .server import ServerProcess, fleetd_cmd
from .test_cli_devices import _artifact, cli, cli_json, device, failing, new_token


@pytest.fixture(scope="module")
def env(server: ServerProcess, admin_key: str) -> dict[str, str]:
    return {"FLEETD_SERVER": server.url, "FLEETD_API_KEY": admin_key, "FLEETD_CA": server.ca, "COLUMNS": "80"}


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


class Lines:
    """A process's stdout, line by line as it comes, with the time each line arrived."""

    def __init__(self, p: subprocess.Popen[str]) -> None:
        self.p = p
        self.q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def next(self, timeout: float = 20) -> str | None:
        return self.q.get(timeout=timeout)

    def until(self, fragment: str, timeout: float = 20) -> list[str]:
        """Lines up to and including the first that holds ``fragment``."""
        seen, deadline = [], time.monotonic() + timeout
        while True:
            line = self.next(max(0.1, deadline - time.monotonic()))
            assert line is not None, f"exited before {fragment!r}: {seen}"
            seen.append(line)
            if fragment in line:
                return seen


def popen(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*fleetd_cmd(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})


def test_80_columns_keep_ids_and_kinds_whole(env: dict[str, str], server: ServerProcess, http: httpx.Client) -> None:
    run = secrets.token_hex(3)
    tok = new_token(env, "--tag", f"run={run}")
    d = device(http, "wide", tok["token"], name=f"a-rather-long-device-name-for-a-kitchen-pi-{run}")
    art = _artifact(server, f"app{run}", "1.0.0")
    cli(env, "devices", "deploy", d.device_id, art)
    listing = cli(env, "devices", "list", "--tag", f"run={run}").stdout
    assert d.device_id in listing and "…" not in listing
    assert max(len(line) for line in listing.splitlines()) <= 80
    actions = cli(env, "devices", "actions", d.device_id).stdout
    assert "install " in actions and "…" not in actions
    action_id = cli_json(env, "devices", "actions", d.device_id)[0]["id"]
    assert action_id in actions


def test_device_refs_by_the_start_of_an_id(env: dict[str, str], server: ServerProcess, http: httpx.Client) -> None:
    run = secrets.token_hex(3)
    tok = new_token(env, "--tag", f"run={run}")
    d, other = device(http, "pre", tok["token"]), device(http, "pre", tok["token"])
    start = d.device_id[:10]
    assert cli_json(env, "devices", "show", start)["id"] == d.device_id
    art = _artifact(server, f"app{run}", "1.0.0")
    out = cli(env, "devices", "deploy", start, art).stdout
    assert "next check-in, within ~60 s" in " ".join(out.split())
    assert [a["device_id"] for a in cli_json(env, "devices", "actions", start)] == [d.device_id]
    err = " ".join(failing(env, "devices", "show", "dev_").split())
    assert "more than one device" in err
    for command in (["delete", "--yes"], ["revoke"]):
        err = " ".join(failing(env, "devices", command[0], start, *command[1:]).split())
        assert "whole id" in err, (command, err)
    assert cli_json(env, "devices", "show", d.device_id)["status"] == "active"
    assert cli_json(env, "devices", "show", other.device_id)["status"] == "active"


def test_rollout_create_shows_each_stage_count(env: dict[str, str], server: ServerProcess,
                                               http: httpx.Client) -> None:
    run = secrets.token_hex(3)
    tok = new_token(env, "--tag", f"run={run}")
    for _ in range(6):
        device(http, "stg", tok["token"])
    art = _artifact(server, f"app{run}", "1.0.0")
    out = cli(env, "rollouts", "create", "--artifact", art, "--target", f"run={run}", "--stages", "50,100",
              "--start-at", "+2h").stdout
    rid = out.split("rollout ", 1)[1].split(":", 1)[0]
    got = cli_json(env, "rollouts", "show", rid)
    counts = [s["targeted"] for s in got["stages"]]
    assert sum(counts) == 6
    assert "to 6 device(s) in 2 stage(s)" in out
    for i, n in enumerate(counts):
        assert f"stage {i + 1} (up to {(50, 100)[i]}%): {n} device(s)" in out
    cli(env, "rollouts", "cancel", rid)


def test_rollouts_watch_without_a_terminal_prints_a_line_per_change(env: dict[str, str], server: ServerProcess,
                                                                    http: httpx.Client) -> None:
    run = secrets.token_hex(3)
    tok = new_token(env, "--tag", f"run={run}")
    device(http, "wat", tok["token"])
    art = _artifact(server, f"app{run}", "1.0.0")
    rid = cli_json(env, "rollouts", "create", "--artifact", art, "--target", f"run={run}", "--start-at", "+2h")["id"]
    watcher = popen(env, "rollouts", "watch", rid, "--interval", "0.2")
    try:
        lines = Lines(watcher)
        first = lines.until(rid)
        assert "scheduled stage -/3" in first[-1] and "of 1" in first[-1]
        cli(env, "rollouts", "pause", rid)
        assert "paused" in lines.until(" paused ")[-1]  # while it runs, not only at the end
        assert watcher.poll() is None
        cli(env, "rollouts", "cancel", rid)
        assert "cancelled" in lines.until(" cancelled ")[-1]
        assert lines.next() is None
        watcher.wait(10)
    finally:
        watcher.kill()
    assert watcher.returncode == 1  # it did not complete


def test_simulate_without_a_terminal_prints_status_lines_while_it_runs(env: dict[str, str],
                                                                       server: ServerProcess) -> None:
    tok = new_token(env)["token"]
    sim = popen(env, "simulate", "--token", tok, "--devices", "3", "--duration", "8",
                "--prefix", f"line{secrets.token_hex(3)}")
    try:
        lines = Lines(sim)
        seen = lines.until("enrolled 3/3, active 3")
        assert sim.poll() is None, seen  # printed while running, not only in the summary at the end
        assert all("check-ins/s" in line for line in seen)
        sim.wait(30)
    finally:
        sim.kill()
    assert sim.returncode == 0
