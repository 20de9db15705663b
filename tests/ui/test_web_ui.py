"""The web UI in a real browser against a real server with simulated devices."""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.devices_helper import TestDevice

from .conftest import ADMIN, SIM_DEVICES, VIEWER, Fleet, log_in

if TYPE_CHECKING:
    from playwright.sync_api import Page

expect = pytest.importorskip("playwright.sync_api", reason="pip install '.[test]'").expect


def upload(fleet: Fleet, name: str, version: str, data: bytes) -> dict[str, Any]:
    """An artifact for the simulated devices, through the API (as the CLI does)."""
    ticket = fleet.rpc("ArtifactService", "CreateUpload", {"name": name, "version": version, "device_types": ["sim"],
                                                           "file_name": f"{name}.bin", "size": len(data)})
    with fleet.server.client(fleet.admin_key) as c:
        r = c.put(f"/v1/uploads/{ticket['upload_id']}", content=data)
    assert r.status_code == 201, r.text
    return dict(r.json())


def device_id(fleet: Fleet, name: str) -> str:
    return str(next(d["id"] for d in fleet.devices(search=name) if d["name"] == name))


def wait_for(check: Any, timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_login_form_then_overview(anon_page: Page, fleet: Fleet, shot: Any, page_errors: list[str]) -> None:
    page = anon_page
    page.goto(fleet.server.url + "/")
    expect(page.get_by_role("heading", name="Log in to fleetd")).to_be_visible()
    expect(page.locator("#topbar")).to_be_hidden()
    shot(page, "login")

    page.get_by_label("Username").fill(ADMIN[0])
    page.get_by_label("Password", exact=True).fill("not-the-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Not logged in: wrong username or password")

    page.get_by_label("Password", exact=True).fill(ADMIN[1])
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    counts = page.get_by_label("Device counts")
    expect(counts.locator(".stat", has_text="online").locator(".n")).to_have_text(str(SIM_DEVICES))
    expect(counts.locator(".stat", has_text="pending").locator(".n")).not_to_have_text("0")
    expect(page.locator("#live")).to_have_text("Live")  # the event stream is connected
    assert page_errors == []


def test_must_change_password_then_logout(anon_page: Page, fleet: Fleet, page_errors: list[str]) -> None:
    created = fleet.rpc("UserService", "CreateUser", {"username": "newbie", "role": "operator"})
    assert created["user"]["must_change_password"] is True
    page = anon_page
    page.goto(fleet.server.url + "/")
    page.get_by_label("Username").fill("newbie")
    page.get_by_label("Password", exact=True).fill(created["password"])
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Choose a new password")).to_be_visible()
    page.get_by_label("New password", exact=True).fill("short")
    page.get_by_label("New password again").fill("short")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("alert")).to_contain_text("at least 10 characters")

    page.get_by_label("New password", exact=True).fill("a-much-better-password")
    page.get_by_label("New password again").fill("a-much-better-password")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.locator("#who")).to_contain_text("newbie")
    users = {u["username"]: u for u in fleet.rpc("UserService", "ListUsers")["users"]}
    assert users["newbie"]["must_change_password"] is False

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_text("You have logged out.")).to_be_visible()
    page.reload()
    expect(page.get_by_role("heading", name="Log in to fleetd")).to_be_visible()
    assert page_errors == []


def test_devices_table_and_claim(admin_page: Page, fleet: Fleet, shot: Any, page_errors: list[str]) -> None:
    page = admin_page
    page.goto(fleet.server.url + "/#/devices")
    table = page.locator("table.data")
    for i in range(1, SIM_DEVICES + 1):
        expect(table.get_by_role("link", name=f"sim-{i}", exact=True)).to_be_visible()
    row = table.locator("tr", has_text="pending-1")
    expect(row.locator(".claim")).to_have_text(fleet.pending_code)
    expect(page.get_by_text(f"Showing 1\u2013{SIM_DEVICES + 1} of {SIM_DEVICES + 1} devices")).to_be_visible()
    shot(page, "devices")

    # Sorting by name descending puts pending-1 below the sim devices.
    page.get_by_role("button", name="Name").click()
    page.get_by_role("button", name="Name").click()
    expect(page.locator("th[aria-sort=descending]")).to_have_text(re.compile("Name"))
    expect(table.locator("tbody tr").first).to_contain_text(f"sim-{SIM_DEVICES}")

    # Filter: only pending devices.
    page.get_by_label("Status").select_option("pending")
    expect(table.locator("tbody tr")).to_have_count(1)
    assert "status=pending" in page.url

    row.get_by_role("button", name="Claim", exact=True).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(fleet.pending_code)
    dialog.get_by_label("Name (optional)").fill("claimed-one")
    dialog.get_by_role("button", name="Claim").click()
    expect(page.get_by_text("No device matches these filters.")).to_be_visible()
    claimed = fleet.devices(search="pending-1")[0]
    assert claimed["status"] == "active" and claimed["name"] == "claimed-one"
    assert page_errors == []


def test_bulk_tag(admin_page: Page, fleet: Fleet, page_errors: list[str]) -> None:
    page = admin_page
    page.goto(fleet.server.url + "/#/devices?q=sim-")
    expect(page.locator("table.data tbody tr")).to_have_count(SIM_DEVICES)
    expect(page.get_by_role("region", name="Selected devices")).to_be_hidden()
    page.get_by_label("Select sim-1").check()
    page.get_by_label("Select sim-2").check()
    bulk = page.get_by_role("region", name="Selected devices")
    expect(bulk).to_contain_text("2 selected")
    bulk.get_by_label("Tag").fill("site=lab")
    bulk.get_by_role("button", name="Add tag").click()
    expect(page.locator("table.data tr", has_text="sim-2").locator(".chip", has_text="site=lab")).to_be_visible()
    tagged = sorted(d["name"] for d in fleet.devices(tags={"site": "lab"}))
    assert tagged == ["sim-1", "sim-2"]
    assert page_errors == []


def test_upload_artifact_with_progress(admin_page: Page, fleet: Fleet, shot: Any, page_errors: list[str]) -> None:
    page = admin_page
    page.goto(fleet.server.url + "/#/artifacts")
    data = os.urandom(3 * 1024 * 1024)
    page.get_by_label("File").set_input_files({"name": "hello-1.0.0.bin", "mimeType": "application/octet-stream",
                                               "buffer": data})
    expect(page.get_by_label("Name", exact=True)).to_have_value("hello")  # guessed from the file name
    expect(page.get_by_label("Version")).to_have_value("1.0.0")
    page.get_by_label("Device types").fill("sim")
    page.evaluate("""() => { window.__seen = []; const bar = document.querySelector('progress');
        new MutationObserver(() => window.__seen.push(bar.value)).observe(bar, {attributes: true}); }""")
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.locator(".success")).to_contain_text("Stored hello@1.0.0")
    expect(page.locator("progress")).to_have_js_property("value", 100)
    expect(page.locator(".progress-row")).to_contain_text("100 %")
    seen = page.evaluate("window.__seen")
    assert seen and seen[-1] == 100, seen
    shot(page, "artifacts")
    stored = fleet.rpc("ArtifactService", "GetArtifact", {"id": "hello@1.0.0"})
    assert stored["size"] == len(data)

    page.get_by_role("link", name="Open it").click()
    expect(page.get_by_role("heading", name="hello 1.0.0")).to_be_visible()
    expect(page.get_by_label("Manifest")).to_contain_text(stored["sha256"])
    expect(page.get_by_text(stored["signature"])).to_be_visible()
    shot(page, "artifact")
    assert page_errors == []


def test_deploy_from_device_page_and_watch_it_live(admin_page: Page, fleet: Fleet, shot: Any,
                                                   page_errors: list[str]) -> None:
    upload(fleet, "app", "2.0.0", b"app two\n" * 1000)
    did = device_id(fleet, "sim-3")
    page = admin_page
    page.goto(f"{fleet.server.url}/#/devices/{did}")
    expect(page.get_by_role("heading", name="sim-3")).to_be_visible()
    info = page.locator("section", has=page.get_by_role("heading", name="Device", exact=True))
    expect(info.locator("dd", has_text="HTTPS poll")).to_have_count(1)  # how it connects; no certificate yet
    expect(info.locator("dd", has_text="no certificate")).to_have_count(1)
    page.get_by_label("Deploy artifact").fill("app@2.0.0")
    page.get_by_role("button", name="Deploy", exact=True).click()
    page.get_by_role("dialog").get_by_role("button", name="Deploy").click()
    history = page.locator("section", has=page.get_by_role("heading", name="Action history"))
    row = history.locator("tbody tr", has_text="app@2.0.0")
    expect(row).to_have_count(1)
    # The device installs it within seconds; the page follows over the event stream, without a reload.
    expect(row).to_have_attribute("data-state", "succeeded", timeout=20_000)
    installed = page.locator("section", has=page.get_by_role("heading", name="Installed software"))
    expect(installed.locator("tbody tr", has_text="app")).to_contain_text("2.0.0", timeout=10_000)
    # The simulated devices send cpu, mem and temp: the telemetry chart draws the first of them.
    expect(page.get_by_label("Metric")).to_have_value("cpu", timeout=15_000)
    expect(page.get_by_role("img", name=re.compile(r"^cpu \(avg"))).to_be_visible()
    shot(page, "device")

    # An error is shown in words: a version that does not exist.
    page.get_by_label("Deploy artifact").fill("app@9.9.9")
    page.get_by_role("button", name="Deploy", exact=True).click()
    page.get_by_role("dialog").get_by_role("button", name="Deploy").click()
    expect(page.get_by_role("alert").filter(has_text="app@9.9.9")).to_have_text(re.compile(
        r"^Not found: no artifact 'app@9\.9\.9'"))
    assert page_errors == []


def test_rekey_from_device_page_shows_the_token_once(admin_page: Page, fleet: Fleet, page_errors: list[str]) -> None:
    did = device_id(fleet, "sim-2")
    page = admin_page
    page.goto(f"{fleet.server.url}/#/devices/{did}")
    expect(page.get_by_role("heading", name="sim-2")).to_be_visible()
    page.get_by_role("button", name="Re-key", exact=True).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("does not need re-keying")  # the simulated device is online
    dialog.get_by_role("button", name="Make re-key token").click()
    command = page.get_by_label("On the device, with the agent installed")
    expect(command).to_contain_text("fleet-agent enroll")
    token = page.get_by_label("Re-key token").inner_text().strip()
    assert token.startswith("fdj1.") and token in command.inner_text()
    listed = fleet.rpc("EnrollmentService", "ListTokens", {})["tokens"]
    assert [t["device_id"] for t in listed if t["id"] == token.split(".")[2]] == [did]
    assert page_errors == []


def test_overview_versions_chart(admin_page: Page, fleet: Fleet, shot: Any, page_errors: list[str]) -> None:
    upload(fleet, "sensor", "1.1.0", b"sensor one one\n" * 500)
    upload(fleet, "sensor", "1.2.0", b"sensor one two\n" * 500)
    ids = [device_id(fleet, f"sim-{i}") for i in range(1, SIM_DEVICES + 1)]
    fleet.rpc("DeviceAdminService", "Deploy", {"artifact": "sensor@1.2.0", "device_ids": ids[:2]})
    fleet.rpc("DeviceAdminService", "Deploy", {"artifact": "sensor@1.1.0", "device_ids": ids[2:]})
    wait_for(lambda: sum(any(c["name"] == "sensor" for c in d["components"]) for d in fleet.devices(search="sim-"))
             == SIM_DEVICES, what="sensor installed everywhere")
    page = admin_page
    page.goto(fleet.server.url + "/")
    chart = page.locator("figure", has=page.locator("figcaption", has_text="sensor")).locator("svg")
    expect(chart).to_have_attribute("aria-label", re.compile(r"1\.2\.0: 2 devices; 1\.1\.0: 1 device"), timeout=15_000)
    shot(page, "overview")
    assert page_errors == []


def test_enrollment_token_and_audit(admin_page: Page, fleet: Fleet, shot: Any, page_errors: list[str]) -> None:
    page = admin_page
    page.goto(fleet.server.url + "/#/enrollment")
    page.get_by_label("Description").fill("kitchen pis")
    page.get_by_label("Tags for its devices").fill("room=kitchen")
    page.get_by_role("button", name="Create join token").click()
    command = page.get_by_label("Install command (run on the device as root or as a user who may sudo)")
    expect(command).to_contain_text(re.compile(r"--token '?fdj1\."))
    expect(command).to_contain_text("--pinnedpubkey")
    expect(page.get_by_role("img", name="QR code of the join token")).to_be_visible()
    expect(page.locator("table.data tr", has_text="kitchen pis")).to_contain_text("room=kitchen")
    shot(page, "enrollment")

    page.goto(fleet.server.url + "/#/audit")
    page.get_by_label("Action starts with").fill("token.")
    page.get_by_role("button", name="Apply").click()
    rows = page.locator("table.data tbody tr")
    expect(rows.first).to_contain_text("token.create")
    expect(page.locator("table.data")).not_to_contain_text("auth.login")
    shot(page, "audit")
    assert page_errors == []


def test_users_and_keys(admin_page: Page, fleet: Fleet, shot: Any, page_errors: list[str]) -> None:
    page = admin_page
    page.goto(fleet.server.url + "/#/users")
    expect(page.locator("table.data").first).to_contain_text(VIEWER[0])
    page.get_by_label("Name", exact=True).fill("grafana")
    page.get_by_role("button", name="Create API key").click()
    expect(page.get_by_label("API key grafana (shown once)")).to_contain_text("fk_")
    keys = {k["name"] for k in fleet.rpc("UserService", "ListKeys")["keys"]}
    assert "grafana" in keys
    shot(page, "users")
    assert page_errors == []


def test_viewer_sees_no_write_buttons(anon_page: Page, fleet: Fleet, shot: Any, page_errors: list[str]) -> None:
    with fleet.server.client() as c:
        waiting = TestDevice(c, hardware_id="pending-for-viewer")
        assert waiting.enroll().status_code == 200
    page = anon_page
    log_in(page, fleet.server.url, *VIEWER)
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Devices")).to_be_visible()
    for hidden in ("Users & keys", "Audit log", "Enrollment"):
        expect(nav.get_by_text(hidden)).to_have_count(0)

    page.goto(fleet.server.url + "/#/devices")
    expect(page.locator("table.data tr", has_text="pending-for-viewer").locator(".claim")).to_be_visible()
    expect(page.get_by_role("button", name="Claim", exact=True)).to_have_count(0)
    expect(page.locator("table.data input[type=checkbox]")).to_have_count(0)
    expect(page.get_by_role("link", name="Add devices")).to_have_count(0)

    page.goto(f"{fleet.server.url}/#/devices/{device_id(fleet, 'sim-1')}")
    expect(page.get_by_role("heading", name="Installed software")).to_be_visible()
    for name in ("Deploy", "Revoke device", "Reboot device", "Restart app", "Add tag"):
        expect(page.get_by_role("button", name=name, exact=True)).to_have_count(0)

    page.goto(fleet.server.url + "/#/artifacts")
    expect(page.get_by_role("heading", name="All artifacts")).to_be_visible()
    expect(page.get_by_role("heading", name="Upload an artifact")).to_have_count(0)

    page.goto(fleet.server.url + "/#/users")
    expect(page.get_by_role("heading", name="Users & keys is not available")).to_be_visible()
    expect(page.get_by_text("This page needs the admin role; you are viewer.")).to_be_visible()
    shot(page, "viewer")
    assert page_errors == []


def test_rollout_created_in_the_ui_completes_live(admin_page: Page, fleet: Fleet, shot: Any,
                                                  page_errors: list[str]) -> None:
    upload(fleet, "roll", "1.0.0", b"roll one\n" * 800)
    page = admin_page
    page.goto(fleet.server.url + "/#/rollouts?artifact=roll@1.0.0")
    form = page.get_by_role("form", name="Start a rollout")
    expect(form.get_by_label("Artifact")).to_have_value("roll@1.0.0")
    form.get_by_label("Device types").fill("sim")
    form.get_by_label("Devices with tags").fill("site=lab")  # tagged by test_bulk_tag: sim-1 and sim-2
    expect(form.get_by_text("Target: 2 active devices of type sim tagged site=lab.")).to_be_visible()
    form.get_by_label("Stages").fill("50,100")
    form.get_by_label("Soak time per stage (minutes)").fill("0")
    form.get_by_role("button", name="Start rollout").click()
    # Each stage's device count is said as soon as it is created (the two devices split by hash, not 1 + 1).
    expect(page.locator("#toasts .toast", has_text="roll@1.0.0 created")).to_have_text(re.compile(
        r"created: stage 1 [012] devices?, stage 2 [012] devices?$"))
    expect(page.get_by_role("heading", name="Rollout of roll@1.0.0")).to_be_visible()
    # Both stages run and the rollout completes while the page is open; the event stream updates it.
    expect(page.locator(".page-head .badge")).to_have_text("completed", timeout=30_000)
    expect(page.locator("ol.stages li[data-state=completed]")).to_have_count(2)
    expect(page.locator("tr[data-status=succeeded]")).to_have_count(2)
    shot(page, "rollout")
    assert page_errors == []


def test_rollout_rolled_back_shows_its_reason(admin_page: Page, fleet: Fleet, shot: Any,
                                              page_errors: list[str]) -> None:
    upload(fleet, "roll", "1.1.0", b"roll one one\n" * 800)
    ids = [device_id(fleet, "sim-1"), device_id(fleet, "sim-2")]
    r = fleet.rpc("RolloutService", "CreateRollout", {"artifact": "roll@1.1.0", "device_ids": ids, "stages": [100],
                                                      "soak_seconds": 3600})
    page = admin_page
    page.goto(f"{fleet.server.url}/#/rollouts/{r['id']}")
    expect(page.locator("tr[data-status=soaking]")).to_have_count(2, timeout=20_000)
    page.get_by_role("button", name="Roll back").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Reason").fill("the new build leaks memory")
    dialog.get_by_role("button", name="Roll back").click()
    expect(page.locator(".page-head .badge")).to_have_text(re.compile("rolled back|rolling back"))
    expect(page.locator("p.reason[role=status]")).to_contain_text(re.compile("rolled back.*the new build leaks memory",
                                                                            re.IGNORECASE))
    shot(page, "rollout-rolled-back")
    assert fleet.rpc("RolloutService", "GetRollout", {"id": r["id"]})["state"] == "rolled_back"
    assert page_errors == []


def test_alert_rule_fires_and_shows_live(admin_page: Page, fleet: Fleet, shot: Any, page_errors: list[str]) -> None:
    page = admin_page
    page.goto(fleet.server.url + "/#/alerts")
    expect(page.get_by_text("Nothing is firing.")).to_be_visible()
    form = page.get_by_role("form", name="Create an alert rule")
    form.get_by_label("Metric").fill("cpu")  # the simulated devices send cpu, mem and temp
    form.get_by_label("Threshold").fill("-1")
    form.get_by_label("Window (minutes)").fill("1")
    form.get_by_label("Devices with tags").fill("site=lab")
    form.get_by_role("button", name="Create rule").click()
    expect(page.locator("table.data").nth(1)).to_contain_text("avg(cpu) over 1 min > -1")
    incidents = page.locator("section", has=page.get_by_role("heading", name="Incidents")).locator("tbody tr")
    expect(incidents).to_have_count(2, timeout=20_000)  # sim-1 and sim-2, without a reload
    expect(incidents.first).to_contain_text("firing")
    shot(page, "alerts")
    assert page_errors == []


def test_without_the_event_stream_the_ui_polls(browser: Any, admin_state: dict[str, Any], fleet: Fleet,
                                               page_errors: list[str]) -> None:
    ctx = browser.new_context(ignore_https_errors=True, storage_state=admin_state)
    try:
        page = ctx.new_page()
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        # A proxy that does not pass server-sent events through.
        page.route("**/v1/events", lambda route: route.fulfill(status=404, body="no"))
        page.goto(fleet.server.url + "/#/devices")
        expect(page.locator("#live")).to_have_text("Updates every 10 s")
        expect(page.locator("table.data")).to_contain_text("sim-1")
    finally:
        ctx.close()
    assert page_errors == []


def test_a_queued_action_says_when_the_device_picks_it_up(admin_page: Page, fleet: Fleet,
                                                          page_errors: list[str]) -> None:
    """A device that has not checked in since: its page says queued actions wait for its next check-in."""
    token = fleet.rpc("EnrollmentService", "CreateToken", {"description": "ui hint"})["token"]
    with fleet.server.client() as c:
        quiet = TestDevice(c, hardware_id="quiet-1", device_type="pi-hint")
        assert quiet.enroll(token).status_code == 200
    did = quiet.device_id
    try:
        fleet.rpc("DeviceAdminService", "CreateAction", {"device_ids": [did], "kind": "reboot"})
        page = admin_page
        page.goto(f"{fleet.server.url}/#/devices/{did}")
        history = page.locator("section", has=page.get_by_role("heading", name="Action history"))
        expect(history.locator("tbody tr[data-state=queued]")).to_have_count(1)
        expect(history.locator("[data-hint=pickup]")).to_have_text(
            "quiet-1 picks up queued actions at its next check-in (every 60 s): when it comes back online.")
        assert page_errors == []
    finally:
        fleet.rpc("DeviceAdminService", "DeleteDevice", {"id": did})
