"""The logs action on the agent: a real app writes its log through the supervisor; the action sends its last lines,
bounded in lines and bytes, unless this device turned log upload off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_agent.applogs import ALLOW_ENV, last_lines
from tests.agent.apps_support import Device, make_action, wait_until

CHATTY_APP = b"""#!/bin/sh
i=1
while [ $i -le 500 ]; do echo "line $i"; i=$((i + 1)); done
echo done > written
while :; do sleep 1; done
"""


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Device]:
    d = Device(tmp_path / "state")
    yield d
    d.ex.stop()


@pytest.fixture
def chatty(dev: Device) -> Device:
    r = dev.install(CHATTY_APP, "1.0.0")
    assert r.final[0] == "succeeded", r.items
    wait_until(lambda: (dev.app() / "current" / "written").exists(), what="the app to write its 500 lines")
    wait_until(lambda: "line 500\n" in (dev.app() / "log").read_text(), what="line 500 in the log")
    return dev


def logs(dev: Device, app: str = "app", **params: object) -> tuple[tuple[str, str, int], dict[str, object] | None]:
    r = dev.run(make_action(None, kind="logs", component=app, params=dict(params)))
    return r.final, r.result


def test_the_last_lines_of_a_running_app(chatty: Device) -> None:
    (state, message, _), result = logs(chatty, lines=50)
    assert state == "succeeded", message
    assert result is not None and result["lines"] == 50 and result["truncated"] is False
    text = str(result["text"])
    assert text.splitlines() == [f"line {i}" for i in range(451, 501)]
    assert message == "the last 50 lines of app's log"
    # Without a number: the default 200.
    _, result = logs(chatty)
    assert result is not None and result["lines"] == 200 and str(result["text"]).endswith("line 500\n")


def test_turned_off_on_the_device(chatty: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_ENV, "0")
    (state, message, _), result = logs(chatty)
    assert state == "failed" and result is None
    assert f"{ALLOW_ENV}=0" in message and f"set {ALLOW_ENV}=1" in message and "restart fleet-agent" in message
    # Said before anything about the app: a device that keeps its logs tells nothing of what it runs.
    (state, message, _), _ = logs(chatty, app="nope")
    assert state == "failed" and "does not upload app logs" in message
    monkeypatch.setenv(ALLOW_ENV, "perhaps")
    (state, message, _), _ = logs(chatty)
    assert state == "failed" and f"{ALLOW_ENV} must be 1 or 0" in message
    monkeypatch.setenv(ALLOW_ENV, "yes")
    assert logs(chatty)[0][0] == "succeeded"


def test_an_app_that_is_not_installed_or_a_bad_count(dev: Device) -> None:
    (state, message, _), _ = logs(dev, app="nope")
    assert state == "failed" and "no app 'nope' is installed" in message
    (state, message, _), _ = logs(dev, app="../etc")
    assert state == "failed" and "refused" in message


def test_lines_asked_for_out_of_range_are_refused(chatty: Device) -> None:
    for bad in (0, 2001, "ten"):
        (state, message, _), _ = logs(chatty, lines=bad)
        assert state == "failed" and "lines must be 1..2000" in message, bad


# --- the bounds, on log files written here ---------------------------------------------------------

def test_the_byte_cap_cuts_whole_lines_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "log").write_bytes(b"".join(b"%04d %s\n" % (i, b"x" * 95) for i in range(100)))  # 101 bytes each
    message, r = last_lines(tmp_path, "app", {"lines": 50}, max_bytes=1000)
    assert r["lines"] == 9 and r["truncated"] is True
    assert str(r["text"]).startswith("0091 ") and len(str(r["text"]).encode()) <= 1000
    assert "the last 9 of the 50 lines asked for" in message and "cut to fit" in message
    # A log shorter than asked for is not cut.
    message, r = last_lines(tmp_path, "app", {"lines": 500}, max_bytes=1 << 20)
    assert r["lines"] == 100 and r["truncated"] is False and "all 100 lines" in message


def test_the_rotated_log_is_read_on(tmp_path: Path) -> None:
    (tmp_path / "log.1").write_text("old 1\nold 2\nold 3\n")
    (tmp_path / "log").write_text("new 1\nnew 2\n")
    _, r = last_lines(tmp_path, "app", {"lines": 4})
    assert r["text"] == "old 2\nold 3\nnew 1\nnew 2\n" and r["truncated"] is False


def test_one_line_longer_than_the_cap_sends_its_end(tmp_path: Path) -> None:
    (tmp_path / "log").write_bytes(b"a" * 5000 + b"THE END\n")
    _, r = last_lines(tmp_path, "app", {"lines": 1}, max_bytes=100)
    assert str(r["text"]).endswith("THE END\n") and len(str(r["text"])) == 100 and r["truncated"] is True


def test_control_characters_and_bad_bytes_stay_within_the_cap(tmp_path: Path) -> None:
    (tmp_path / "log").write_bytes(b"\x1b[31mred\x1b[0m\tok\r\nbell\x07\n" + b"\xff" * 300 + b"\n" + b"last\n")
    _, r = last_lines(tmp_path, "app", {"lines": 10}, max_bytes=400)
    # Each invalid byte became a 3-byte U+FFFD: that line no longer fits, the lines before it went with it.
    assert r["text"] == "last\n" and r["truncated"] is True
    _, r = last_lines(tmp_path, "app", {"lines": 10}, max_bytes=2000)
    assert str(r["text"]).startswith("red\tok\nbell?\n") and r["lines"] == 4


def test_an_empty_log(tmp_path: Path) -> None:
    message, r = last_lines(tmp_path, "app", {})
    assert r == {"text": "", "lines": 0, "truncated": False} and "written nothing" in message
