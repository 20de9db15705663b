"""A power cut at every step of an install: a real agent process (python -m tests.agent.apps_support install)
dies at step k (FLEET_AGENT_CRASH_AT, os._exit: no cleanup, its app process orphaned), then a fresh Executor
starts over the same state dir. ``current`` must name a complete version, state.json must agree with it, the
app must run once (the orphan killed), and running the still-open action again must finish it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet_agent.apps import CRASH_STEPS
from fleet_agent.modules import CRASH_ENV, CRASH_EXIT
from fleet_agent.supervisor import kill_stale
from tests.agent.apps_support import (
    REPO,
    Device,
    crashing_app,
    heartbeat_advances,
    heartbeat_app,
    make_action,
    make_artifact,
    wait_until,
)

GRACE = {"health": {"grace_seconds": 1}}
GOOD_STEPS = ("downloaded", "verified", "unpacked", "placed", "intent", "switched", "started", "watching",
              "committed")
BAD_STEPS = ("reverting", "reverted")


def test_every_crash_step_is_exercised() -> None:
    assert set(GOOD_STEPS + BAD_STEPS) == set(CRASH_STEPS)


@pytest.fixture(scope="module")
def with_v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir with app 1.0.0 installed (and stopped), copied for each test."""
    root = tmp_path_factory.mktemp("template") / "state"
    d = Device(root)
    d.ex.start()
    assert d.install(heartbeat_app("1.0.0"), "1.0.0", GRACE).final[0] == "succeeded"
    d.ex.stop()
    return root


def crash_at(root: Path, step: str, action: dict[str, Any], data: bytes) -> None:
    (root / "blobs").mkdir(exist_ok=True)
    (root / "blobs" / action["artifact"]["sha256"]).write_bytes(data)
    (root / "action.json").write_text(json.dumps(action))
    env = dict(os.environ, **{CRASH_ENV: step, "PYTHONPATH": str(REPO)})
    r = subprocess.run([sys.executable, "-m", "tests.agent.apps_support", "install", str(root)], env=env,
                       cwd=REPO, capture_output=True, timeout=60)
    assert r.returncode == CRASH_EXIT, f"step {step!r} was never reached: {r.stderr.decode()[-2000:]}"


def orphan(root: Path) -> int | None:
    try:
        return int((root / "apps/app/pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def assert_consistent(d: Device, expect: str) -> None:
    app = d.app()
    current = os.readlink(app / "current")
    assert current == expect
    assert (app / current / ".fleet-manifest.json").is_file(), "current names a complete version"
    st = d.state()
    assert st["version"] == current and "pending" not in st, st
    assert [p.name for p in app.iterdir() if p.name.startswith(".")] == [], "no leftovers of the cut"
    assert heartbeat_advances(app / current)
    assert d.ex.components()[0]["version"] == current


@pytest.fixture
def device(tmp_path: Path, with_v1: Path) -> Iterator[Device]:
    root = tmp_path / "state"
    shutil.copytree(with_v1, root, symlinks=True)
    d = Device(root)
    yield d
    d.ex.stop()
    kill_stale(root / "apps/app/pid")  # an orphan of the cut, should a test fail before start() killed it


@pytest.mark.parametrize("step", GOOD_STEPS)
def test_a_cut_during_an_upgrade_leaves_a_working_device(device: Device, step: str) -> None:
    data = heartbeat_app("2.0.0")
    # A zero health window keeps this fast; "watching" needs a window to be cut in.
    grace = GRACE if step == "watching" else {"health": {"grace_seconds": 0}}
    action = make_action(make_artifact(data, version="2.0.0", install=grace))
    device.server.add(data)
    crash_at(device.root, step, action, data)
    left = orphan(device.root)

    device.ex.start()
    # Not committed: back on the known-good version. Committed: the new one stays.
    assert_consistent(device, "2.0.0" if step == "committed" else "1.0.0")
    if left is not None:
        wait_until(lambda: not alive(left) or left == device.ex.sup.status("app").pid, what="the orphan to go")

    r = device.run(action)  # the action is still open on the server: the run loop hands it over again
    assert r.final[0] == "succeeded", r.items
    assert_consistent(device, "2.0.0")
    assert device.state()["previous_version"] == "1.0.0"


@pytest.mark.parametrize("step", BAD_STEPS)
def test_a_cut_while_going_back_from_a_bad_version_leaves_the_good_one(device: Device, step: str) -> None:
    data = crashing_app("2.0.0")
    action = make_action(make_artifact(data, version="2.0.0", install=GRACE))
    device.server.add(data)
    crash_at(device.root, step, action, data)

    device.ex.start()
    assert_consistent(device, "1.0.0")
    r = device.run(action)
    assert r.final[0] == "rolled_back", r.items
    assert_consistent(device, "1.0.0")


@pytest.mark.parametrize("step", ["intent", "switched", "started"])
def test_a_cut_during_a_first_install(tmp_path: Path, step: str) -> None:
    d = Device(tmp_path / "state")
    d.root.mkdir(parents=True)
    data = heartbeat_app("1.0.0")
    action = make_action(make_artifact(data, version="1.0.0", install=GRACE))
    d.server.add(data)
    try:
        crash_at(d.root, step, action, data)
        d.ex.start()
        if step == "intent":  # never switched: nothing is installed
            assert not d.app().exists() and d.ex.components() == []
        else:  # the only version there is: complete, so it runs, unconfirmed until the action finishes
            assert_consistent(d, "1.0.0")
            assert d.state()["health"] == ""
        r = d.run(action)
        assert r.final[0] == "succeeded", r.items
        assert_consistent(d, "1.0.0")
        assert d.state()["health"] == "healthy"
    finally:
        d.ex.stop()
        kill_stale(d.root / "apps/app/pid")
