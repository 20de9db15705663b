"""Self-update: the launcher's trial run of a new agent, and the Executor's side of it.

The "agents" are tiny stand-ins (tests/agent/apps_support.py: ``fake_agent_source``) run by the real
launcher as ``python <agent>/fleet-agent.pyz run --state-dir D``: "good" confirms itself (as after its first
check-in) and carries out D/action.json with the real Executor, "crash" exits 1 at once, "hang" never
confirms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from fleet_agent import launcher, selfupdate
from tests.agent.apps_support import (
    REPO,
    Device,
    fake_agent_source,
    make_action,
    make_artifact,
    read_reports,
    zipapp_bytes,
)

LAUNCHER = Path(launcher.__file__)


def put_agent(root: Path, version: str, content: str | bytes) -> None:
    d = root / "agent" / version
    d.mkdir(parents=True, exist_ok=True)
    (d / "fleet-agent.pyz").write_bytes(content.encode() if isinstance(content, str) else content)


def link(root: Path, name: str, version: str) -> None:
    os.symlink(version, root / "agent" / name)


def read_link(root: Path, name: str) -> str | None:
    try:
        return os.readlink(root / "agent" / name)
    except OSError:
        return None


def run_launcher(root: Path, trial_seconds: float = 30,
                 extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_AGENT_")}
    env.update(FLEET_AGENT_TRIAL_SECONDS=str(trial_seconds), PYTHONPATH=str(REPO), FLEET_AGENT_SUPERVISOR="builtin")
    return subprocess.run([sys.executable, str(LAUNCHER), "--state-dir", str(root), *extra], env=env,
                          capture_output=True, text=True, timeout=90)


def runs(root: Path) -> list[dict[str, Any]]:
    out = []
    for r in read_reports(root / "runs.jsonl"):
        r["version"] = Path(r.pop("argv0")).parent.name
        out.append(r)
    return out


def note(root: Path) -> dict[str, Any] | None:
    p = root / "agent" / launcher.NOTE
    return json.loads(p.read_text()) if p.exists() else None


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "state"
    put_agent(r, "1.0.0", fake_agent_source("good"))
    link(r, "current", "1.0.0")
    return r


# --- the launcher alone -----------------------------------------------------------------------

def test_the_launcher_keeps_a_new_agent_that_confirms(root: Path) -> None:
    put_agent(root, "2.0.0", fake_agent_source("good"))
    link(root, "next", "2.0.0")
    r = run_launcher(root)
    assert r.returncode == 0, r.stderr
    assert runs(root) == [{"version": "2.0.0", "trial": "2.0.0", "launched": "1", "behaviour": "good"}]
    assert read_link(root, "current") == "2.0.0" and read_link(root, "previous") == "1.0.0"
    assert read_link(root, "next") is None and note(root) is None


def test_the_launcher_restores_the_previous_agent_when_the_new_one_crashes(root: Path) -> None:
    put_agent(root, "2.0.0", fake_agent_source("crash"))
    link(root, "next", "2.0.0")
    r = run_launcher(root)
    assert r.returncode == 0, r.stderr
    assert [(x["version"], x["trial"]) for x in runs(root)] == [("2.0.0", "2.0.0"), ("1.0.0", None)]
    assert read_link(root, "current") == "1.0.0" and read_link(root, "next") is None
    assert note(root) == {"version": "2.0.0", "restored": "1.0.0",
                          "reason": "the new agent 2.0.0 exited with code 1 before its first successful check-in"}


def test_the_launcher_stops_a_new_agent_that_never_confirms(root: Path) -> None:
    put_agent(root, "2.0.0", fake_agent_source("hang"))
    link(root, "next", "2.0.0")
    r = run_launcher(root, trial_seconds=1.5)
    assert r.returncode == 0, r.stderr
    assert [x["version"] for x in runs(root)] == ["2.0.0", "1.0.0"]
    assert read_link(root, "current") == "1.0.0"
    assert note(root)["reason"] == "the new agent 2.0.0 did not check in within its 1.5 s trial"  # type: ignore[index]


def test_the_launcher_ends_with_the_agents_exit_code(tmp_path: Path) -> None:
    root = tmp_path / "state"
    put_agent(root, "1.0.0", fake_agent_source("crash"))
    link(root, "current", "1.0.0")
    assert run_launcher(root).returncode == 1


def test_the_launcher_runs_the_given_agent_while_none_is_installed(tmp_path: Path) -> None:
    root = tmp_path / "state"
    (root / "agent").mkdir(parents=True)
    r = run_launcher(root)
    assert r.returncode != 0 and "no agent to run" in r.stderr and "--agent PATH" in r.stderr
    first = tmp_path / "fleet-agent.pyz"
    first.write_text(fake_agent_source("good"))
    assert run_launcher(root, extra=("--agent", str(first))).returncode == 0
    assert [x["launched"] for x in read_reports(root / "runs.jsonl")] == ["1"]


# --- the whole update: Executor → exit 75 → launcher trial → confirm or roll back --------------

def stage_update(root: Path, behaviour: str) -> bytes:
    pyz = zipapp_bytes(fake_agent_source(behaviour))
    art = make_artifact(pyz, name="fleet-agent", version="2.0.0", kind="agent", file_name="fleet-agent-2.0.0.pyz")
    (root / "blobs").mkdir()
    (root / "blobs" / art["sha256"]).write_bytes(pyz)
    (root / "action.json").write_text(json.dumps(make_action(art)))
    return pyz


def test_an_agent_update_that_checks_in_is_kept(root: Path) -> None:
    pyz = stage_update(root, "good")
    r = run_launcher(root)
    assert r.returncode == 0, r.stderr
    assert [(x["version"], x["trial"]) for x in runs(root)] == [("1.0.0", None), ("2.0.0", "2.0.0")]
    reports = read_reports(root / "reports.jsonl")
    states = [x["state"] for x in reports]
    assert states[0] == "downloading" and "verifying" in states and states[-2:] == ["installing", "succeeded"]
    assert reports[-1]["message"] == "the agent 2.0.0 runs and has checked in"
    assert read_link(root, "current") == "2.0.0" and read_link(root, "previous") == "1.0.0"
    assert (root / "agent/2.0.0/fleet-agent.pyz").read_bytes() == pyz
    assert {"name": "fleet-agent", "version": "2.0.0", "state": "running", "health": "healthy",
            "restarts": 0} in Device(root).ex.components()


def test_an_agent_update_that_crashes_is_rolled_back_and_reported(root: Path) -> None:
    stage_update(root, "crash")
    r = run_launcher(root)
    assert r.returncode == 0, r.stderr
    assert [(x["version"], x["trial"]) for x in runs(root)] == [("1.0.0", None), ("2.0.0", "2.0.0"),
                                                                  ("1.0.0", None)]
    final = read_reports(root / "reports.jsonl")[-1]
    assert final["state"] == "rolled_back"
    assert "the new agent 2.0.0 exited with code 1 before its first successful check-in" in final["message"]
    assert "the previous agent 1.0.0 runs again" in final["message"]
    assert read_link(root, "current") == "1.0.0"
    assert not (root / "agent/2.0.0").exists() and note(root) is None


# --- the Executor's refusals -------------------------------------------------------------------

def test_an_agent_not_started_by_the_launcher_does_not_update_itself(root: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(launcher.LAUNCHED_ENV, raising=False)
    d = Device(root)
    pyz = zipapp_bytes("print('agent')\n")
    r = d.run(make_action(d.artifact(pyz, "2.0.0", name="fleet-agent", kind="agent", file_name="a.pyz")))
    assert r.final[0] == "failed" and "not started by the fleet-agent launcher" in r.final[1]
    assert d.server.requests == []


def test_an_agent_artifact_that_is_not_a_zipapp_is_refused(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(launcher.LAUNCHED_ENV, "1")
    d = Device(root)
    d.ex.exit_for_update = lambda: pytest.fail("must not restart into a broken agent")
    r = d.run(make_action(d.artifact(b"#!/bin/sh\n", "2.0.0", name="fleet-agent", kind="agent", file_name="a.pyz")))
    assert r.final[0] == "failed" and "not a zipapp" in r.final[1]
    assert read_link(root, "next") is None


def test_confirm_switches_current_only_for_the_agent_on_trial(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    put_agent(root, "0.9.0", "old")
    put_agent(root, "2.0.0", zipapp_bytes(""))
    link(root, "next", "2.0.0")
    monkeypatch.delenv(launcher.TRIAL_ENV, raising=False)
    assert selfupdate.confirm(root) is False and read_link(root, "current") == "1.0.0"
    monkeypatch.setenv(launcher.TRIAL_ENV, "2.0.0")
    assert selfupdate.confirm(root) is True
    assert (read_link(root, "current"), read_link(root, "previous"), read_link(root, "next")) == \
        ("2.0.0", "1.0.0", None)
    assert sorted(p.name for p in (root / "agent").iterdir() if not p.is_symlink()) == ["1.0.0", "2.0.0"]
    assert selfupdate.confirm(root) is True  # idempotent


def test_the_zipapp_check_reads_the_archive(tmp_path: Path) -> None:
    f = tmp_path / "x.pyz"
    with zipfile.ZipFile(f, "w") as z:
        z.writestr("other.py", "")
    with pytest.raises(ValueError, match=r"without __main__\.py"):
        selfupdate.stage(tmp_path, "2.0.0", f, "fleet-agent")


def test_stopping_the_launcher_stops_the_agent(tmp_path: Path) -> None:
    import signal
    import time

    root = tmp_path / "state"
    put_agent(root, "1.0.0", fake_agent_source("hang"))
    link(root, "current", "1.0.0")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_AGENT_")}
    p = subprocess.Popen([sys.executable, str(LAUNCHER), "--state-dir", str(root)], env=env)
    try:
        deadline = time.monotonic() + 20
        while not (root / "runs.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 128 + signal.SIGTERM  # the agent ended by the forwarded TERM
    finally:
        p.kill()
        p.wait()
