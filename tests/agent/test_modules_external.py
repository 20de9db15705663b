"""An external v3 module (a shell script written from the protocol, tests/agent/v3_module.py) driven through every
state by a real Executor: success, a failing ArtifactInstall rolled back, NeedsArtifactReboot Yes and Automatic
(the reboot simulated by a new Executor over the same state dir, as a restarted agent), a failed verify."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_agent import inventory
from fleet_agent.modules import MODULES_DIR_ENV
from tests.agent.apps_support import DEVICE_TYPE, Device, Reports, make_action
from tests.agent.v3_module import calls, write_module

MODULE = "v3-test"


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "dest"


@pytest.fixture
def dev(tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Device]:
    write_module(tmp_path / "modules", dest)
    monkeypatch.setenv(MODULES_DIR_ENV, str(tmp_path / "modules"))
    d = Device(tmp_path / "state")
    d.ex.start()
    yield d
    d.ex.stop()


def action(dev: Device, payload: bytes, version: str, **meta: str) -> dict:
    return make_action(dev.artifact(payload, version, name="thing", module=MODULE, file_name="payload.txt",
                                    meta=meta or None))


def test_the_module_is_listed_in_the_inventory(dev: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    for env in ("FLEET_AGENT_CONTAINER_RUNTIME", "FLEET_AGENT_RAUC", "FLEET_AGENT_SWUPDATE"):
        monkeypatch.setenv(env, "/nonexistent/tool")  # container and os-image: only with their tools
    assert inventory.collect()["extra"]["update_modules"] == f"app,file,directory,{MODULE}"
    monkeypatch.setenv("FLEET_AGENT_CONTAINER_RUNTIME", "/bin/true")
    monkeypatch.setenv("FLEET_AGENT_RAUC", "/bin/true")
    assert inventory.collect()["extra"]["update_modules"] == f"app,file,directory,container,os-image,{MODULE}"


def test_an_install_goes_through_the_states_in_order(dev: Device, dest: Path) -> None:
    r = dev.run(action(dev, b"v1\n", "1.0.0", colour="blue"))
    assert r.final[:2] == ("succeeded", "thing 1.0.0 is installed by the v3-test module")
    assert calls(dest) == ["Download", "SupportsRollback", "ArtifactInstall", "NeedsArtifactReboot",
                           "ArtifactCommit", "Cleanup"]
    assert (dest / "current").read_text() == "v1\n"
    assert json.loads((dest / "meta-data").read_text()) == {"colour": "blue"}
    assert (dest / "device_type").read_text().strip() == DEVICE_TYPE
    # Called with the File Tree as the working directory and second argument.
    first = (dest / "calls").read_text().splitlines()[0]
    assert first == f"Download thing-1.0.0 cwd={dev.root / 'updates/thing/tree'}"
    assert not (dev.root / "updates/thing/tree").exists(), "the tree goes after Cleanup"
    log = (dev.root / "updates/thing/module.log").read_text()
    assert "--- v3-test ArtifactInstall: exit 0" in log


def test_a_failing_install_is_rolled_back(dev: Device, dest: Path) -> None:
    assert dev.run(action(dev, b"v1\n", "1.0.0")).final[0] == "succeeded"
    (dest / "calls").unlink()
    r = dev.run(action(dev, b"v2 fail-install\n", "2.0.0"))
    assert r.final[0] == "rolled_back", r.items
    assert "ArtifactInstall failed: module v3-test ArtifactInstall exited with code 3: the payload asked to fail" \
        in r.final[1] and "rolled back to version 1.0.0" in r.final[1]
    assert calls(dest) == ["Download", "SupportsRollback", "ArtifactInstall", "ArtifactRollback",
                           "ArtifactFailure", "Cleanup"]
    assert (dest / "current").read_text() == "v1\n"
    assert next(c for c in dev.ex.components() if c["name"] == "thing")["version"] == "1.0.0"


def test_needs_reboot_yes_runs_artifact_reboot_then_verifies(dev: Device, dest: Path) -> None:
    r = dev.run(action(dev, b"v1 reboot-yes\n", "1.0.0"))
    assert r.final[0] == "succeeded", r.items
    assert calls(dest) == ["Download", "SupportsRollback", "ArtifactInstall", "NeedsArtifactReboot",
                           "ArtifactReboot", "ArtifactVerifyReboot", "ArtifactCommit", "Cleanup"]


def test_a_failed_verify_after_a_reboot_rolls_back_with_a_rollback_reboot(dev: Device, dest: Path) -> None:
    r = dev.run(action(dev, b"v1 reboot-yes fail-verify\n", "1.0.0"))
    assert r.final[0] == "rolled_back" and "came up wrong" in r.final[1], r.items
    assert calls(dest)[-6:] == ["ArtifactVerifyReboot", "ArtifactRollback", "ArtifactRollbackReboot",
                                "ArtifactVerifyRollbackReboot", "ArtifactFailure", "Cleanup"]
    assert not (dest / "current").exists(), "a first install rolled back leaves nothing"


def test_automatic_reboots_the_device_and_finishes_after_the_restart(dev: Device, dest: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "rebooted"
    monkeypatch.setenv("FLEET_AGENT_REBOOT_CMD", f"touch {marker}")
    act = action(dev, b"v1 reboot-automatic\n", "1.0.0")
    r = Reports()
    dev.ex.execute(act, r)
    assert marker.exists(), "the agent ran the reboot command"
    assert r.states[-1] == "installing" and "rebooting the device" in r.final[1], "no final state before the reboot"
    assert calls(dest)[-1] == "NeedsArtifactReboot"
    dev.ex.stop()
    # The device comes back: a new agent over the same state dir verifies and commits at its start ...
    dev.ex = dev.executor()
    dev.ex.start()
    assert calls(dest)[-3:] == ["ArtifactVerifyReboot", "ArtifactCommit", "Cleanup"]
    assert (dest / "current").read_text() == "v1 reboot-automatic\n"
    # ... and the action, still open on the server, gets its outcome when it is handed over again.
    again = dev.run(act)
    assert again.final[:2] == ("succeeded", "thing 1.0.0 is installed by the v3-test module")
    assert not (dev.root / "updates/thing/job.json").exists()


def test_a_module_the_device_lacks_fails_before_any_download(dev: Device) -> None:
    art = dev.artifact(b"x", "1.0.0", name="other", module="not-here", file_name="x.txt")
    r = dev.run(make_action(art))
    assert r.final[0] == "failed" and "this device has no update module 'not-here'" in r.final[1]
    assert dev.server.requests == []


def test_a_rollback_action_needs_a_module_that_supports_rollback(dev: Device, dest: Path, tmp_path: Path) -> None:
    write_module(tmp_path / "modules", dest, name="no-rollback")
    script = tmp_path / "modules" / "no-rollback"
    script.write_text(script.read_text().replace("        echo Yes\n", "        echo No\n", 1))
    art = dev.artifact(b"v1\n", "1.0.0", name="nr", module="no-rollback", file_name="payload.txt")
    r = dev.run(make_action(art, kind="rollback"))
    assert r.final[0] == "failed" and "does not support rollback, so a rollback cannot use it" in r.final[1]


def steer(tmp_path: Path, dest: Path, state: str, line: str) -> None:
    """Make the test module do ``line`` in ``state`` (before its own case)."""
    script = tmp_path / "modules" / MODULE
    text = script.read_text()
    script.write_text(text.replace('case "$STATE" in\n', f'[ "$STATE" = {state} ] && {{ {line}; }}\ncase "$STATE" in\n',
                                   1))


def test_a_failed_download_runs_only_cleanup(dev: Device, dest: Path, tmp_path: Path) -> None:
    steer(tmp_path, dest, "Download", "echo 'no space for it' >&2; exit 5")
    r = dev.run(action(dev, b"v1\n", "1.0.0"))
    assert r.final[0] == "failed" and "Download failed: module v3-test Download exited with code 5: no space" \
        in r.final[1], r.items
    assert calls(dest) == ["Download", "Cleanup"] and not (dest / "current").exists()


def test_an_answer_outside_the_protocol_fails_the_install(dev: Device, dest: Path, tmp_path: Path) -> None:
    steer(tmp_path, dest, "NeedsArtifactReboot", "echo Maybe; exit 0")
    r = dev.run(action(dev, b"v1\n", "1.0.0"))
    assert r.final[0] == "rolled_back", r.items
    assert r.final[1].startswith("module v3-test answered 'Maybe' to NeedsArtifactReboot; the v3 protocol allows "
                                 "No, Yes, Automatic; rolled back")
    assert calls(dest)[-4:] == ["NeedsArtifactReboot", "ArtifactRollback", "ArtifactFailure", "Cleanup"]
