"""The built-in supervisor with real processes: restart policies, backoff, logs, process groups, stale children;
and the systemd backend's unit file (systemd itself is not available here)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_agent.supervisor import ProcessSpec, Supervisor, kill_stale
from fleet_agent.systemd import SystemdSupervisor, make_supervisor, systemd_in_charge, unit_text
from tests.agent.apps_support import wait_until


@pytest.fixture
def sup() -> Iterator[Supervisor]:
    s = Supervisor(log_limit=10_000)
    yield s
    s.close()


def spec(tmp_path: Path, script: str, restart: str = "on-failure", name: str = "app") -> ProcessSpec:
    return ProcessSpec(name=name, argv=["/bin/sh", "-c", script], cwd=str(tmp_path), env={"GREETING": "hello"},
                       log=tmp_path / "log", pidfile=tmp_path / "pid", restart=restart)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_always_restarts_even_a_clean_exit(sup: Supervisor, tmp_path: Path) -> None:
    sup.start(spec(tmp_path, "echo $GREETING; exit 0", restart="always"))
    wait_until(lambda: sup.status("app").restarts >= 1, what="a restart")
    assert "hello" in (tmp_path / "log").read_text()


def test_resume_leaves_the_very_spec_running_and_starts_another(sup: Supervisor, tmp_path: Path) -> None:
    # At the agent's start, an install's recovery may have started the version it went back to already.
    first = spec(tmp_path, "sleep 30")
    sup.start(first)
    pid = sup.status("app").pid
    sup.resume(spec(tmp_path, "sleep 30"))
    assert sup.status("app").pid == pid and alive(pid)
    sup.resume(spec(tmp_path, "sleep 31"))
    assert sup.status("app").pid != pid
    wait_until(lambda: not alive(pid), what="the other spec's process to stop")


def test_on_failure_restarts_a_failure_but_not_a_clean_exit(sup: Supervisor, tmp_path: Path) -> None:
    sup.start(spec(tmp_path, "exit 0"))
    wait_until(lambda: sup.status("app").exits == 1, what="the exit")
    time.sleep(0.7)
    s = sup.status("app")
    assert (s.state, s.restarts, s.last_exit) == ("stopped", 0, 0)
    sup.start(spec(tmp_path, "exit 2"))
    wait_until(lambda: sup.status("app").restarts >= 1, what="a restart")
    assert sup.status("app").last_exit == 2


def test_never_leaves_a_failed_app_failed(sup: Supervisor, tmp_path: Path) -> None:
    sup.start(spec(tmp_path, "exit 5", restart="never"))
    wait_until(lambda: sup.status("app").exits == 1, what="the exit")
    time.sleep(0.7)
    s = sup.status("app")
    assert (s.state, s.restarts, s.last_exit) == ("failed", 0, 5)
    assert "restart policy never: not restarting" in (tmp_path / "log").read_text()


def test_quick_failures_back_off(sup: Supervisor, tmp_path: Path) -> None:
    sup.start(spec(tmp_path, "exit 1"))
    time.sleep(2.0)
    # 0.5 s, then 1 s, then 2 s between attempts: at most 2 restarts in 2 s, where no backoff would give dozens.
    assert 1 <= sup.status("app").restarts <= 2
    assert "restarting in 1.0 s" in (tmp_path / "log").read_text()


def test_the_log_is_rotated(sup: Supervisor, tmp_path: Path) -> None:
    line = "x" * 99
    sup.start(spec(tmp_path, f"for i in $(seq 250); do echo {line}; sleep 0.002; done; sleep 30"))
    wait_until(lambda: (tmp_path / "log.1").exists() and (tmp_path / "log").stat().st_size > 0, what="a rotation")
    assert (tmp_path / "log.1").stat().st_size <= 10_000
    assert (tmp_path / "log").stat().st_size <= 10_000


def test_stop_ends_the_whole_process_group(sup: Supervisor, tmp_path: Path) -> None:
    sup.start(spec(tmp_path, "sleep 300 & echo $! > child; wait"))
    child = int(wait_until(lambda: (tmp_path / "child").exists() and (tmp_path / "child").read_text().strip(),
                           what="the grandchild"))
    pid = sup.status("app").pid
    assert pid and alive(pid) and alive(child)
    sup.stop("app")
    assert not alive(pid)
    # SIGKILL to the group is delivered asynchronously: the grandchild is gone a moment later, not at once.
    wait_until(lambda: not alive(child), what="the grandchild to be killed with its group", timeout=5)
    assert sup.status("app").state == "stopped" and not (tmp_path / "pid").exists()


def test_a_missing_program_is_a_failure_that_says_so(sup: Supervisor, tmp_path: Path) -> None:
    s = spec(tmp_path, "", restart="never")
    s.argv = [str(tmp_path / "nope")]
    sup.start(s)
    st = sup.status("app")
    assert st.state == "failed" and "cannot run" in st.error and "No such file" in st.error


def test_children_left_by_a_crashed_agent_are_killed_but_recycled_pids_are_not(tmp_path: Path) -> None:
    crashed = Supervisor()
    crashed.start(spec(tmp_path, "sleep 300"))
    orphan = crashed.status("app").pid
    assert orphan
    fresh = Supervisor()
    try:
        fresh.start(spec(tmp_path, "sleep 300"))  # the same pid file: the orphan goes first
        assert not alive(orphan)
        assert fresh.status("app").state == "running"
    finally:
        fresh.close()
        crashed.close()
    unrelated = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "pid").write_text(f"{unrelated.pid} 12345\n")  # same pid, another process's start time
        kill_stale(tmp_path / "pid")
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()


def test_a_systemd_unit_quotes_what_systemd_would_expand(tmp_path: Path) -> None:
    s = ProcessSpec(name="cam", argv=["/opt/cam/run", "--title", 'a "b" 100% $HOME'], cwd="/opt/cam dir",
                    env={"A": "x y"}, log=tmp_path / "log", pidfile=tmp_path / "pid", restart="never",
                    description="cam 1.0.0")
    text = unit_text(s)
    assert 'ExecStart="/opt/cam/run" "--title" "a \\"b\\" 100%% $$HOME"' in text
    assert 'WorkingDirectory="/opt/cam dir"' in text and 'Environment="A=x y"' in text
    assert "Restart=no" in text and f"StandardOutput=append:{tmp_path / 'log'}" in text


def test_the_builtin_supervisor_is_used_without_systemd_or_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_AGENT_SUPERVISOR", "builtin")
    assert isinstance(make_supervisor(), Supervisor)
    monkeypatch.setenv("FLEET_AGENT_SUPERVISOR", "systemd")
    assert isinstance(make_supervisor(), SystemdSupervisor)
    monkeypatch.delenv("FLEET_AGENT_SUPERVISOR")
    assert isinstance(make_supervisor(), SystemdSupervisor if systemd_in_charge() else Supervisor)


def test_the_systemd_backend_drives_systemctl(tmp_path: Path) -> None:
    # systemd is not PID 1 here: a stand-in systemctl records its calls and answers `show` like systemd.
    calls = tmp_path / "calls"
    fake = tmp_path / "systemctl"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n"
                    "[ \"$1\" = show ] && "
                    "printf 'ActiveState=active\\nNRestarts=3\\nMainPID=4242\\nExecMainStatus=0\\n'\n"
                    "exit 0\n")
    fake.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    sd = SystemdSupervisor(unit_dir=units, systemctl=str(fake))
    s = spec(tmp_path, "sleep 1")
    sd.start(s)
    assert (units / "fleet-app-app.service").read_text() == unit_text(s)
    log = calls.read_text().splitlines()
    assert log[:3] == ["daemon-reload", "enable fleet-app-app.service", "restart fleet-app-app.service"]
    st = sd.status("app")
    assert (st.state, st.pid, st.restarts) == ("running", 4242, 0)  # restarts count from the install
    calls.write_text("")
    sd.resume(s)  # the agent restarted: the app runs this very unit, leave it alone
    assert "restart" not in calls.read_text()
    sd.forget("app")
    assert not (units / "fleet-app-app.service").exists()
    assert "disable --now fleet-app-app.service" in calls.read_text()
