"""The device page's Logs control: an app's last lines, asked for with a logs action and shown when they arrive."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pytest

from .conftest import VIEWER, Fleet, log_in
from .test_web_ui import device_id, upload, wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Page

expect = pytest.importorskip("playwright.sync_api", reason="pip install '.[test]'").expect


def test_logs_of_an_app_from_the_device_page(admin_page: Page, anon_page: Page, fleet: Fleet, shot: Any,
                                             page_errors: list[str]) -> None:
    upload(fleet, "logger", "1.0.0", b"a logger\n")
    did = device_id(fleet, "sim-1")
    fleet.rpc("DeviceAdminService", "Deploy", {"device_ids": [did], "artifact": "logger@1.0.0"})
    wait_for(lambda: any(c["name"] == "logger" for c in fleet.rpc("DeviceAdminService", "GetDevice",
                                                                  {"id": did})["components"]),
             what="sim-1 to report logger")
    page = admin_page
    page.goto(f"{fleet.server.url}/#/devices/{did}")
    expect(page.get_by_role("heading", name="sim-1")).to_be_visible()
    page.get_by_role("button", name="Logs of logger").click()
    box = page.locator("section", has=page.get_by_role("heading", name="Log of logger"))
    expect(box).to_contain_text("it sends them at its next check-in")
    # The simulated device answers with five synthetic lines at its next check-in (every second here).
    lines = box.get_by_label("Log of logger")
    expect(lines).to_contain_text("sim-1 logger 1.0.0: simulated log line 5 of 5", timeout=15_000)
    assert lines.inner_text().count("simulated log line") == 5
    expect(box).to_contain_text(re.compile(r"5 lines of logger, sent"))
    shot(page, "device-logs")
    action = fleet.rpc("DeviceAdminService", "ListActions", {"device_id": did})["actions"][0]
    assert (action["kind"], action["component"], action["params"]) == ("logs", "logger", {"lines": 200})
    # The box survives the page's live refreshes and closes on request.
    box.get_by_role("button", name="Close").click()
    expect(box).to_have_count(0)
    assert page_errors == []

    # A viewer may read the page but not ask a device for its logs.
    log_in(anon_page, fleet.server.url, *VIEWER)
    anon_page.goto(f"{fleet.server.url}/#/devices/{did}")
    installed = anon_page.locator("section", has=anon_page.get_by_role("heading", name="Installed software"))
    expect(installed.locator("tbody tr", has_text="logger")).to_have_count(1)
    expect(anon_page.get_by_role("button", name="Logs of logger")).to_have_count(0)
