"""Every page of the web UI renders words, never a JavaScript value's name ("null", "undefined", "NaN").

A page that passes ``null`` to ``Element.append`` shows the text "null"; one that formats a missing field shows
"undefined". The test visits each route with data in it (a rollout, an alert rule, a DDI device, a pending device)
as an admin and as a viewer, waits until the page stops changing, and reads its visible text. The file is named to
run after test_web_ui.py, whose tests count the fleet's devices: what it adds it deletes again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.support.devices_helper import TestDevice

from .conftest import SIM_DEVICES, VIEWER, Fleet, log_in
from .test_web_ui import device_id, upload, wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Page

expect = pytest.importorskip("playwright.sync_api", reason="pip install '.[test]'").expect

LEAKED = re.compile(r"\b(null|undefined|NaN)\b|\[object Object\]")


class Pages:
    """The ids the routes need."""

    sim = ""
    pending = ""
    ddi = ""
    artifact = ""
    rollout = ""


@pytest.fixture(scope="module")
def pages(fleet: Fleet) -> Iterator[Pages]:
    p = Pages()
    art = upload(fleet, "textcheck", "1.0.0", b"text check\n" * 300)
    p.artifact = art["id"]
    p.sim = device_id(fleet, "sim-1")
    sims = [device_id(fleet, f"sim-{i}") for i in range(1, SIM_DEVICES + 1)]
    p.rollout = fleet.rpc("RolloutService", "CreateRollout", {"artifact": "textcheck@1.0.0", "device_ids": sims,
                                                              "stages": [100], "soak_seconds": 0})["id"]
    wait_for(lambda: fleet.rpc("RolloutService", "GetRollout", {"id": p.rollout})["state"] == "completed",
             timeout=30, what="the rollout to complete")
    rule = fleet.rpc("AlertService", "CreateRule", {"metric": "mem", "threshold": 1e9, "window_seconds": 60})
    fleet.rpc("EnrollmentService", "CreateToken", {"description": "text check", "tags": {"room": "lab"}})
    with fleet.server.client() as c:
        waiting = TestDevice(c, hardware_id="text-check-pending")
        assert waiting.enroll().status_code == 200
    p.pending = fleet.devices(search="text-check-pending")[0]["id"]
    p.ddi = fleet.rpc("DdiService", "CreateTargetToken", {"device": "text-check-ddi",
                                                          "device_type": "stm32mp1"})["device_id"]
    try:
        yield p
    finally:
        for did in (p.pending, p.ddi):
            fleet.rpc("DeviceAdminService", "DeleteDevice", {"id": did})
        fleet.rpc("AlertService", "DeleteRule", {"id": rule["id"]})


# The visible text of the page, leaving out <pre> blocks: they show a document as it is (the signed manifest is
# JSON, where null is a value).
VISIBLE_TEXT = """() => {
  const pres = [...document.querySelectorAll('pre')];
  const was = pres.map((p) => p.style.display);
  pres.forEach((p) => { p.style.display = 'none'; });
  const text = document.body.innerText;
  pres.forEach((p, i) => { p.style.display = was[i]; });
  return text;
}"""


def settled_text(page: Page) -> str:
    """The page's visible text once it has stopped changing (the pages load their data after the heading)."""
    page.locator("main h1").first.wait_for()
    last, same_since = "", time.monotonic()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = str(page.evaluate(VISIBLE_TEXT))
        if text != last:
            last, same_since = text, time.monotonic()
        elif time.monotonic() - same_since >= 0.6:
            return text
        time.sleep(0.1)
    return last


def leaks(page: Page, url: str, routes: list[str]) -> dict[str, list[str]]:
    """Route → the lines of its visible text that show a JavaScript value's name."""
    found = {}
    for route in routes:
        page.goto(f"{url}/#/{route}")
        lines = [line for line in settled_text(page).splitlines() if LEAKED.search(line)]
        if lines:
            found[route] = lines
    return found


def test_no_page_shows_null_or_undefined(admin_page: Page, anon_page: Page, fleet: Fleet, pages: Pages,
                                         page_errors: list[str]) -> None:
    routes = ["", "devices", "devices?status=pending", f"devices/{pages.sim}", f"devices/{pages.pending}",
              f"devices/{pages.ddi}", "artifacts", f"artifacts/{pages.artifact}", "rollouts",
              f"rollouts/{pages.rollout}", "alerts", "enrollment", "users", "audit", "audit?action=rollout.",
              "password", "no-such-page"]
    found = leaks(admin_page, fleet.server.url, routes)

    viewer = anon_page
    log_in(viewer, fleet.server.url, *VIEWER)
    viewer_routes = ["", "devices", f"devices/{pages.sim}", f"devices/{pages.ddi}", f"artifacts/{pages.artifact}",
                     f"rollouts/{pages.rollout}", "alerts", "audit"]
    found.update({f"{r} (viewer)": lines for r, lines in leaks(viewer, fleet.server.url, viewer_routes).items()})
    assert found == {}, "\n".join(f"{route}: {lines}" for route, lines in found.items())
    assert page_errors == []


def test_the_login_page_shows_no_null_either(anon_page: Page, fleet: Fleet, page_errors: list[str]) -> None:
    anon_page.goto(fleet.server.url + "/")
    expect(anon_page.get_by_role("button", name="Log in")).to_be_visible()
    assert not LEAKED.search(str(anon_page.evaluate(VISIBLE_TEXT)))
    assert page_errors == []


def test_the_rollout_page_names_its_devices_and_links_them(admin_page: Page, fleet: Fleet, pages: Pages,
                                                           page_errors: list[str]) -> None:
    page = admin_page
    page.goto(f"{fleet.server.url}/#/rollouts/{pages.rollout}")
    table = page.get_by_role("table", name="Devices in this rollout")
    for i in range(1, SIM_DEVICES + 1):
        did = device_id(fleet, f"sim-{i}")
        link = table.get_by_role("link", name=f"sim-{i}", exact=True)
        expect(link).to_have_attribute("href", f"#/devices/{did}")
        # The id stays on the row: two devices may have the same name.
        expect(table.locator("tr", has=page.get_by_role("link", name=f"sim-{i}", exact=True))).to_contain_text(did)
    table.get_by_role("link", name="sim-2", exact=True).click()
    expect(page.get_by_role("heading", name="sim-2")).to_be_visible()
    assert page_errors == []



def test_the_audit_page_shows_a_rollout_stage_as_one_entry(admin_page: Page, fleet: Fleet, pages: Pages,
                                                           page_errors: list[str]) -> None:
    page = admin_page
    page.goto(f"{fleet.server.url}/#/audit?action=rollout.stage")
    row = page.locator("table.data tbody tr", has_text="textcheck@1.0.0")
    expect(row).to_have_count(1)
    expect(row).to_contain_text(f"stage 1 (100 %): {SIM_DEVICES} installs of textcheck@1.0.0")
    expect(row.get_by_role("link", name=pages.rollout)).to_have_attribute("href", f"#/rollouts/{pages.rollout}")
    # No install of that stage has an entry of its own.
    installs = fleet.rpc("AuditService", "List", {"action": "action.install"})["entries"]
    assert [e for e in installs if e["details"].get("rollout") == pages.rollout] == []
    # A type no entry can have is an error in words, not an empty table.
    page.get_by_label("Action starts with").fill("artefact.")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("alert")).to_contain_text("no audit entry type begins with 'artefact.'")
    assert page_errors == []
