"""A power cut at every step of an update-module install (the app's power-cut test, tests/agent/
test_apps_powercut.py, for the modules): a real agent process (python -m tests.agent.apps_support install) dies
at step k (FLEET_AGENT_CRASH_AT, os._exit: no cleanup), then a fresh Executor starts over the same state dir.
The destination must hold the old version (or the new one once it was committed), with nothing half-written
beside it, and running the still-open action again must finish it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet_agent.modules import CRASH_ENV, CRASH_EXIT, MODULES_DIR_ENV
from fleet_agent.modules.sequence import CRASH_STEPS
from tests.agent.apps_support import REPO, Device, make_action
from tests.agent.v3_module import write_module

CUT_INSTALL = ("mod-fetched", "mod-Download", "mod-ArtifactInstall", "mod-ArtifactCommit")
CUT_ROLLBACK = ("mod-ArtifactRollback", "mod-ArtifactFailure")
CUT_REBOOT = ("mod-ArtifactReboot", "mod-ArtifactVerifyReboot")


def test_every_crash_step_is_exercised() -> None:
    # mod-container-switching: tests/agent/test_modules_container.py (it needs podman)
    assert set(CUT_INSTALL + CUT_ROLLBACK + CUT_REBOOT + ("mod-directory-switching", "mod-container-switching")
               ) == set(CRASH_STEPS)


def tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Setup:
    """A device with version 1 of component ``thing`` installed by ``module``; ``payload(v)`` makes a version."""

    def __init__(self, root: Path, module: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root, self.module = root, module
        self.dest = root / "dest" / ("www" if module == "directory" else "app.conf")
        self.dest.parent.mkdir(parents=True)
        self.modules = root / "modules"
        if module == "v3-test":
            self.dest = root / "dest"
            write_module(self.modules, self.dest)
        monkeypatch.setenv(MODULES_DIR_ENV, str(self.modules))
        self.dev = Device(root / "state")
        self.dev.ex.start()
        assert self.dev.run(self.action("1.0.0")).final[0] == "succeeded"
        self.dev.ex.stop()

    def payload(self, version: str, extra: str = "") -> tuple[bytes, str]:
        text = f"{version} {extra}\n".encode()
        if self.module == "directory":
            return tarball({"index.html": text, f"v{version}.txt": b""}), "site.tar"
        return text, "payload.txt"

    def action(self, version: str, extra: str = "") -> dict[str, Any]:
        data, file_name = self.payload(version, extra)
        meta = None if self.module == "v3-test" else {"path": str(self.dest)}
        return make_action(self.dev.artifact(data, version, name="thing", module=self.module, meta=meta,
                                             file_name=file_name))

    def content(self) -> str:
        if self.module == "directory":
            return (self.dest / "index.html").read_text()
        return (self.dest / "current" if self.module == "v3-test" else self.dest).read_text()

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.dest.parent.iterdir() if ".fleet-new" in p.name or ".trash" in p.name)

    def cut(self, step: str, action: dict[str, Any], expect_exit: int = CRASH_EXIT) -> None:
        root = self.dev.root
        (root / "blobs").mkdir(exist_ok=True)
        art = action["artifact"]
        (root / "blobs" / art["sha256"]).write_bytes(self.dev.server.blobs[art["sha256"]])
        (root / "action.json").write_text(json.dumps(action))
        env = dict(os.environ, **{CRASH_ENV: step, "PYTHONPATH": os.pathsep.join(
            [str(REPO), str(REPO / "agent"), str(REPO / "src")])})
        r = subprocess.run([sys.executable, "-m", "tests.agent.apps_support", "install", str(root)], env=env,
                           cwd=REPO, capture_output=True, timeout=60)
        assert r.returncode == expect_exit, f"step {step!r} was never reached: {r.stderr.decode()[-2000:]}"

    def restart(self) -> None:
        self.dev.ex = self.dev.executor()
        self.dev.ex.start()


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Setup]]:
    made: list[Setup] = []

    def setup(module: str) -> Setup:
        made.append(Setup(tmp_path, module, monkeypatch))
        return made[-1]

    yield setup
    for s in made:
        s.dev.ex.stop()


@pytest.mark.parametrize(("module", "step"), [
    *((m, step) for m in ("file", "directory", "v3-test") for step in CUT_INSTALL),
    ("directory", "mod-directory-switching")])
def test_a_cut_during_an_install_leaves_the_old_version_then_the_action_finishes(
        make: Callable[[str], Setup], module: str, step: str) -> None:
    setup = make(module)
    action = setup.action("2.0.0")
    setup.cut(step, action)
    setup.restart()
    assert setup.content() == "1.0.0 \n", "not committed: the old version is in place"
    assert setup.leftovers() == []
    assert not (setup.dev.root / "updates/thing/job.json").exists(), "undone: the action runs again"
    r = setup.dev.run(action)
    assert r.final[0] == "succeeded", r.items
    assert setup.content() == "2.0.0 \n" and setup.leftovers() == []


@pytest.mark.parametrize("step", CUT_ROLLBACK)
def test_a_cut_while_rolling_back_finishes_the_rollback(make: Callable[[str], Setup], step: str) -> None:
    setup = make("v3-test")  # the built-ins do not fail after ArtifactInstall
    action = setup.action("2.0.0", "fail-install")
    setup.cut(step, action)
    setup.restart()
    assert setup.content() == "1.0.0 \n"
    r = setup.dev.run(action)
    assert r.final[0] == "rolled_back" and "the payload asked to fail" in r.final[1], r.items
    assert setup.content() == "1.0.0 \n"


@pytest.mark.parametrize("step", CUT_REBOOT)
def test_a_cut_around_the_modules_reboot(make: Callable[[str], Setup], step: str) -> None:
    setup = make("v3-test")
    action = setup.action("2.0.0", "reboot-yes")
    setup.cut(step, action)
    setup.restart()
    # Cut after ArtifactReboot (the reboot it asked for): verified and committed at start. Cut after the verify,
    # before the commit: a spontaneous reboot, rolled back, and the action runs again.
    assert setup.content() == ("2.0.0 reboot-yes\n" if step == "mod-ArtifactReboot" else "1.0.0 \n")
    r = setup.dev.run(action)
    assert r.final[0] == "succeeded", r.items
    assert setup.content() == "2.0.0 reboot-yes\n"


def test_a_module_that_reboots_the_device_in_artifact_reboot(make: Callable[[str], Setup]) -> None:
    """NeedsArtifactReboot Yes, and ArtifactReboot really takes the agent down (kill -9 of its parent, as a
    reboot would): the next agent verifies and commits, and the action ends succeeded."""
    s = make("v3-test")
    write_module(s.modules, s.dest, reboot='kill -9 "$PPID"')
    action = s.action("2.0.0", "reboot-yes")
    s.cut("never", action, expect_exit=-9)
    s.restart()
    assert s.content() == "2.0.0 reboot-yes\n"
    r = s.dev.run(action)
    assert r.final[:2] == ("succeeded", "thing 2.0.0 is installed by the v3-test module (was 1.0.0)"), r.items
