"""After an automatic rollback the agent reports the health of the version it went back to (the server showed "—"
for a version that ran fine), and its log says, at INFO, that it rolled back and why."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_agent import apps
from tests.agent.apps_support import Device, crashing_app, heartbeat_advances, heartbeat_app

WINDOW = {"health": {"grace_seconds": 1}}


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Device]:
    d = Device(tmp_path / "state")
    d.ex.start()
    yield d
    d.ex.stop()


def info_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fleet_agent.apps" and r.levelno == logging.INFO]


def test_the_restored_version_reports_healthy_and_the_log_says_why(dev: Device,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fleet_agent")
    assert dev.install(heartbeat_app("1.0.0"), "1.0.0", WINDOW).final[0] == "succeeded"
    r = dev.install(crashing_app("2.0.0"), "2.0.0", WINDOW)
    state, message, _ = r.final
    assert state == "rolled_back", r.items
    assert "went back to 1.0.0, which passed its health check" in message
    assert dev.ex.components() == [{"name": "app", "version": "1.0.0", "state": "running", "health": "healthy",
                                    "restarts": 0}]
    assert heartbeat_advances(dev.app() / "1.0.0")
    lines = info_lines(caplog)
    assert any(line.startswith("app 2.0.0 failed its health check (it exited (code 3)") and
               line.endswith("rolling back to 1.0.0") for line in lines), lines
    assert "app is back on 1.0.0, which passed its health check" in lines


def test_a_restored_version_that_fails_its_check_too_is_reported_unhealthy(dev: Device, tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fleet_agent")
    ok = tmp_path / "camera-ok"
    ok.touch()
    probe = {"health": {"grace_seconds": 1, "command": ["test", "-f", str(ok)]}}
    assert dev.install(heartbeat_app("1.0.0"), "1.0.0", probe).final[0] == "succeeded"
    ok.unlink()  # the camera is gone: 1.0.0 would fail its check now too
    r = dev.install(crashing_app("2.0.0"), "2.0.0", WINDOW)
    state, message, _ = r.final
    assert state == "failed", r.items
    assert "went back to 1.0.0, which failed its health check too (the health command" in message
    # Left running (its restart policy applies), and honest about its health.
    assert dev.ex.components() == [{"name": "app", "version": "1.0.0", "state": "running", "health": "unhealthy",
                                    "restarts": 0}]
    assert "1.0.0 failed its health check too" in dev.state()["last_error"]
    assert any("rolling back to 1.0.0" in line for line in info_lines(caplog))


class PowerCut(BaseException):
    """Not an Exception: the executor's error handling must not see it, as it would not see a power cut."""


def test_after_a_power_cut_the_restored_version_keeps_its_health(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "state"
    d = Device(root)
    d.ex.start()
    assert d.install(heartbeat_app("1.0.0"), "1.0.0", WINDOW).final[0] == "succeeded"

    def crashpoint(step: str) -> None:
        if step == "watching":  # 2.0.0 runs but is not committed
            raise PowerCut

    monkeypatch.setattr(apps, "crashpoint", crashpoint)
    with pytest.raises(PowerCut):
        d.install(heartbeat_app("2.0.0"), "2.0.0", WINDOW)
    d.ex.sup.close()  # the power is gone: so are the app's processes
    caplog.set_level(logging.INFO, logger="fleet_agent")
    again = Device(root)
    again.ex.start()
    try:
        assert again.current() == "1.0.0"
        assert again.ex.components() == [{"name": "app", "version": "1.0.0", "state": "running", "health": "healthy",
                                          "restarts": 0}]
        assert "app: the install of 2.0.0 was interrupted; going back to 1.0.0" in info_lines(caplog)
    finally:
        again.ex.stop()
