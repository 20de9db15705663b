"""The os-image module with Debian's real RAUC and SWUpdate, each on a board without a real bootloader
(tests/agent/rauc_board.py: file-backed slots, RAUC's custom bootloader backend keeping the boot state in
files, ``rauc service`` on a private bus; tests/agent/swu_board.py: file-backed slots, the bootloader
environment a GRUB environment file that swupdate -B grub writes in a private mount namespace).

A reboot is simulated faithfully: the agent runs its reboot command (FLEET_AGENT_REBOOT_CMD, here a marker
file), the test stops the agent (Executor.stop, or the process dies), the board's bootloader picks a slot, then
a new agent starts over the same state dir. "The agent reached the server" is the install action coming back
to it (Device.run)."""

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

from fleet_agent.apps import REBOOT_ENV
from fleet_agent.modules import CRASH_ENV, CRASH_EXIT
from tests.agent.apps_support import REPO, Device, Reports, make_action, wait_until
from tests.agent.rauc_board import Board, tools_missing
from tests.agent.swu_board import SwuBoard

V2 = b"root file system 2\n" * 100
BACKENDS = [
    pytest.param("rauc", marks=pytest.mark.skipif(bool(tools_missing()), reason=f"needs {tools_missing()}")),
    pytest.param("swupdate", marks=pytest.mark.skipif(not (shutil.which("swupdate") and shutil.which("unshare")),
                                                      reason="needs swupdate (.ci/run installs it)")),
]


class Rig:
    def __init__(self, backend: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.board: Board | SwuBoard = Board(root / "board") if backend == "rauc" else SwuBoard(root / "board")
        for k, v in self.board.env.items():
            monkeypatch.setenv(k, v)
        self.marker = root / "reboot-requested"
        monkeypatch.setenv(REBOOT_ENV, f"touch {self.marker}")
        self.dev = Device(root / "state")
        self.dev.ex.start()

    def action(self, version: str, data: bytes, **meta: str) -> dict[str, Any]:
        return make_action(self.dev.artifact(data, version, name="os", module="os-image",
                                             file_name=self.board.file_name, meta=meta or None))

    def execute(self, action: dict[str, Any]) -> Reports:
        r = Reports()
        self.dev.ex.execute(action, r)
        return r

    def reboot(self, *, agent_comes_up: bool = True) -> str:
        """The agent asked for a reboot (or the power was cut): stop it, boot the board, start a new agent."""
        self.marker.unlink(missing_ok=True)
        self.dev.ex.stop()
        slot = self.board.boot()
        if agent_comes_up:
            self.dev.ex = self.dev.executor()
            self.dev.ex.start()
        return slot

    def journal(self) -> dict[str, Any]:
        return json.loads((self.dev.root / "updates/os/job.json").read_text())


@pytest.fixture(params=BACKENDS)
def rig(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    r = Rig(request.param, tmp_path, monkeypatch)
    yield r
    r.dev.ex.stop()
    r.board.close()


def test_install_reboot_then_confirmed_once_the_new_slot_reaches_the_server(rig: Rig) -> None:
    act = rig.action("2.0", rig.board.image("2.0", V2), trial_seconds="60")
    r = rig.execute(act)
    assert r.states[-1] == "installing" and "rebooting the device" in r.final[1], r.final
    assert rig.marker.exists(), "the agent ran the reboot command"
    assert rig.board.slot("B")[:len(V2)] == V2, "the other slot was written"
    assert rig.board.next_slot() == "B" and not rig.board.confirmed("B")
    assert rig.reboot() == "B"
    # Started in the new slot: not confirmed until the server is reached.
    assert not rig.board.confirmed("B"), "not confirmed at start"
    assert rig.journal()["state"] == "ArtifactReboot"
    r = rig.dev.run(act)
    assert r.final[:2] == ("succeeded", "os 2.0 is installed by the os-image module"), r.items
    assert rig.board.confirmed("B")
    assert rig.dev.ex.updates._timers == {}, "the trial window's timer is cancelled"
    assert [rig.reboot() for _ in range(4)] == ["B"] * 4, "confirmed: the new slot boots for good"


def test_a_new_slot_that_never_reaches_the_server_ends_rolled_back_in_the_old_slot(rig: Rig) -> None:
    act = rig.action("2.0", rig.board.image("2.0", V2), trial_seconds="1")
    assert "rebooting the device" in rig.execute(act).final[1]
    assert rig.reboot() == "B"
    # The server is never reached: the trial window ends, the slot is given up and the device reboots.
    wait_until(rig.marker.exists, 15, "the reboot after the trial window")
    assert rig.board.left("B")
    assert rig.reboot() == "A"
    r = rig.dev.run(act)  # back online in the old slot
    assert r.final[0] == "rolled_back", r.items
    assert "did not reach the server within its trial window (1.0 s)" in r.final[1]
    assert rig.board.confirmed("A") and rig.board.left("B")
    assert rig.board.slot("A")[:8] == b"\0" * 8, "the old slot was never written"
    assert rig.reboot() == "A"
    assert not (rig.dev.root / "updates/os/installed.json").exists()


def test_a_new_os_that_does_not_come_up_falls_back_in_the_bootloader(rig: Rig) -> None:
    act = rig.action("2.0", rig.board.image("2.0", V2), trial_seconds="60")
    assert "rebooting the device" in rig.execute(act).final[1]
    # The new slot's OS does not come up (no agent): the bootloader tries it, then falls back.
    booted = [rig.reboot(agent_comes_up=False) for _ in range(4)]
    assert booted == ["B", "B", "B", "A"], booted
    rig.dev.ex = rig.dev.executor()
    rig.dev.ex.start()
    r = rig.dev.run(act)
    assert r.final[0] == "rolled_back" and "the bootloader fell back" in r.final[1], r.items
    assert rig.board.confirmed("A") and rig.board.left("B")
    assert not rig.marker.exists(), "no reboot: the device already runs the old slot"


def test_an_image_for_another_board_is_refused_and_nothing_changes(rig: Rig) -> None:
    r = rig.dev.run(rig.action("2.0", rig.board.foreign_image()))
    assert r.final[0] == "rolled_back" and "ArtifactInstall failed" in r.final[1], r.items
    reason = "Compatible mismatch" if isinstance(rig.board, Board) else "SW not compatible with hardware"
    assert reason in r.final[1], r.final
    assert rig.board.next_slot() == "A" and rig.board.confirmed("A") and not rig.marker.exists()
    assert rig.board.slot("B")[:8] == b"\0" * 8


@pytest.mark.parametrize(("meta", "file_name", "message"), [
    ({"backend": "yocto"}, "os.img", "os-image back end 'yocto' is not one this agent has"),
    ({}, "os.img", "cannot tell the back end of this artifact"),
    ({"backend": "rauc", "trial_seconds": "soon"}, "os.img", "trial_seconds 'soon' must be a number of seconds"),
])
def test_bad_metadata_is_refused_before_any_tool_runs(tmp_path: Path, meta: dict[str, str], file_name: str,
                                                      message: str) -> None:
    dev = Device(tmp_path / "state")
    dev.ex.start()
    try:
        r = dev.run(make_action(dev.artifact(b"image", "2.0", name="os", module="os-image", file_name=file_name,
                                             meta=meta or None)))
    finally:
        dev.ex.stop()
    assert r.final[0] == "failed" and r.final[1].startswith("Download failed: ") and message in r.final[1], r.final


# --- power cuts ------------------------------------------------------------------------------------

# mod-fetched is left out: the module has not run yet, as in mod-Download (test_modules_powercut covers it).
CUTS = ("mod-Download", "mod-ArtifactInstall", "mod-ArtifactVerifyReboot", "mod-ArtifactCommit")


@pytest.mark.parametrize("step", CUTS)
def test_a_power_cut_at_each_step_leaves_a_bootable_slot_and_the_install_finishes(rig: Rig, step: str) -> None:
    act = rig.action("2.0", rig.board.image("2.0", V2), trial_seconds="60")
    root = rig.dev.root
    (root / "blobs").mkdir(exist_ok=True)
    (root / "blobs" / act["artifact"]["sha256"]).write_bytes(rig.dev.server.blobs[act["artifact"]["sha256"]])
    (root / "action.json").write_text(json.dumps(act))
    rig.dev.ex.stop()
    env = dict(os.environ, **{CRASH_ENV: step, "PYTHONPATH": os.pathsep.join(
        [str(REPO), str(REPO / "agent"), str(REPO / "src")])})

    def agent_process() -> int:  # a real agent process: starts (recovers), then runs the action
        return subprocess.run([sys.executable, "-m", "tests.agent.apps_support", "install", str(root)], env=env,
                              cwd=REPO, capture_output=True, timeout=120).returncode

    reached = agent_process()
    if step in ("mod-ArtifactVerifyReboot", "mod-ArtifactCommit"):  # steps after the reboot
        assert reached == 0 and rig.marker.exists()
        rig.marker.unlink()
        rig.board.boot()
        reached = agent_process()
    assert reached == CRASH_EXIT, f"step {step} was never reached"
    assert rig.board.boot() in ("A", "B")  # the power comes back: a slot boots
    rig.dev.ex = rig.dev.executor()
    rig.dev.ex.start()
    # The action comes back (after any reboot the agent asks for) until it ends.
    for _ in range(4):
        if rig.marker.exists():
            rig.reboot()
        r = rig.execute(act)
        if r.final[0] in ("succeeded", "failed", "rolled_back"):
            break
        assert rig.marker.exists(), r.items
    assert r.final[0] == "succeeded", r.items
    assert rig.board.booted() == "B" and rig.board.confirmed("B"), (rig.board.boots, r.items)
    assert rig.board.slot("B")[:len(V2)] == V2
