"""The protocol client (agent/rtos/src/client.c) on a simulated device, one fleet_client_poll at a time, against a
scripted transport (agent/rtos/tests/client_harness.c): what it does with check-in answers the server or a
broken proxy could send."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Iterator
from ctypes import POINTER, byref, c_char_p, c_int, c_uint32, c_void_p
from pathlib import Path
from typing import Any

import pytest

from tests.rtos.shimlib import DOWNLOADING, IDLE, NONE, OK, Device, image, load

OLD = image("1.0.0", 1)
SHA = "ab" * 32
E_HTTP, POLL_BUSY = -11, 1


@pytest.fixture
def dev(shim_build: Path) -> Iterator[Device]:
    lib = load(shim_build)
    lib.shim_client_poll.restype = c_int
    lib.shim_client_poll.argtypes = [c_void_p, c_char_p, c_int, c_char_p, c_uint32, POINTER(c_int)]
    with Device(lib) as d:
        d.program(d.layout.primary_off, OLD)
        assert d.boot()[0] == OK
        yield d


def poll(d: Device, actions: list[dict[str, Any]], report_status: int = 200) -> tuple[int, str, bool]:
    answer = json.dumps({"status": "active", "poll_interval": 60, "actions": actions}).encode()
    log = ctypes.create_string_buffer(16384)
    rebooted = c_int(0)
    rc = d.lib.shim_client_poll(d.d, answer, report_status, log, len(log), byref(rebooted))
    return rc, log.value.decode(), bool(rebooted.value)


def reports(log: str) -> list[dict[str, Any]]:
    return [json.loads(line.split(" ", 2)[2]) for line in log.splitlines() if "/ReportStatus " in line]


def artifact(version: str = "1.1.0") -> dict[str, Any]:
    return {"name": "firmware", "version": version, "sha256": SHA, "size": 4000}


def test_an_install_for_the_firmware_is_taken(dev: Device) -> None:
    rc, log, _ = poll(dev, [{"id": "act_1", "kind": "install", "component": "firmware", "state": "queued",
                             "artifact": artifact()}])
    assert f"GET /v1/blobs/{SHA}" in log  # started downloading (the scripted server has no blob: 404)
    assert rc == E_HTTP and dev.status().state == DOWNLOADING


def test_an_action_without_a_component_is_not_taken_for_the_firmware(dev: Device) -> None:
    # The first action fills the client's component buffer with "firmware"; the second has no component at all
    # and must not be read as the firmware's (it was: an uninitialised buffer kept the previous action's value).
    rc, log, _ = poll(dev, [
        {"id": "act_r", "kind": "restart", "component": "firmware", "state": "queued", "artifact": None},
        {"id": "act_x", "kind": "install", "state": "queued", "artifact": artifact()},
    ])
    assert "/v1/blobs/" not in log and not reports(log)
    assert rc == OK and dev.status().state == IDLE


def test_a_logs_action_is_reported_failed_and_a_download_under_way_goes_on(dev: Device) -> None:
    # The shim runs one firmware image and has no apps: a logs action fails at once (left alone, it would stay
    # open forever), and, taken before an install whose download is under way, does not abort that download.
    install = {"id": "act_1", "kind": "install", "component": "firmware", "state": "downloading",
               "artifact": artifact()}
    poll(dev, [install])
    assert dev.status().state == DOWNLOADING
    logs = {"id": "act_l", "kind": "logs", "component": "firmware", "state": "queued", "params": {"lines": 200}}
    rc, log, rebooted = poll(dev, [logs, install])
    [r] = reports(log)
    assert (r["action_id"], r["state"]) == ("act_l", "failed") and "no app logs" in r["message"], r
    assert rc == POLL_BUSY and not rebooted and dev.status().state == DOWNLOADING


def test_an_install_without_an_artifact_is_reported_failed_not_succeeded(dev: Device) -> None:
    rc, log, rebooted = poll(dev, [{"id": "act_1", "kind": "install", "component": "firmware", "state": "queued",
                                    "artifact": None}])
    [r] = reports(log)
    assert r["action_id"] == "act_1" and r["state"] == "failed", r
    assert "artifact" in r["message"]
    assert rc == POLL_BUSY and not rebooted and dev.status().state == IDLE


def test_a_rollback_with_no_previous_version_keeps_the_firmware(dev: Device) -> None:
    rc, log, _ = poll(dev, [{"id": "act_1", "kind": "rollback", "component": "firmware", "state": "queued",
                             "rollback": True, "artifact": None, "params": {"no_previous_version": True}}])
    [r] = reports(log)
    assert r["state"] == "succeeded" and "keeping the running firmware" in r["message"]
    assert rc == POLL_BUSY


def test_an_artifact_the_client_cannot_hold_is_reported_failed_not_ignored(dev: Device) -> None:
    # A version longer than the client's buffer: silently skipping the action would leave it queued forever.
    rc, log, _ = poll(dev, [{"id": "act_1", "kind": "install", "component": "firmware", "state": "queued",
                             "artifact": artifact("1.2.3-rc.1+build.20261124.abcdef")}])
    [r] = reports(log)
    assert r["action_id"] == "act_1" and r["state"] == "failed" and "artifact" in r["message"], r
    assert rc == POLL_BUSY and "/v1/blobs/" not in log


def test_a_reboot_action_whose_report_fails_does_not_reboot(dev: Device) -> None:
    # The action stays in every check-in until its report arrives: rebooting without it reboots again at
    # every poll for as long as reports fail.
    action = {"id": "act_b", "kind": "reboot", "component": "", "state": "queued", "artifact": None}
    rc, log, rebooted = poll(dev, [action], report_status=503)
    assert reports(log) and not rebooted and rc == E_HTTP
    rc, log, rebooted = poll(dev, [action], report_status=200)
    assert rebooted and reports(log)[-1]["state"] == "succeeded"


def test_a_trial_is_confirmed_when_the_check_in_answer_is_too_large_to_read(dev: Device) -> None:
    # A 200 from the server proves the trial image reached it, even when the answer (many open actions, long
    # manifests) does not fit the 4 KiB response buffer: not confirming would revert a good image.
    new = image("1.1.0", 2)
    assert dev.download(new) == OK
    assert dev.boot()[1].trial == 1
    other = {"id": "act_o", "kind": "config", "component": "", "state": "queued", "artifact": None,
             "params": {"note": "x" * 5000}}
    rc, log, _ = poll(dev, [other])
    s = dev.status()
    assert (s.state, s.result, s.min_security_counter) == (IDLE, NONE, 2), (rc, log)  # confirmed, reported, acked
    assert reports(log)[-1]["state"] == "succeeded"
    rc, r = dev.boot()
    assert rc == OK and r.trial == 0 and str(r.header.version) == "1.1.0"
