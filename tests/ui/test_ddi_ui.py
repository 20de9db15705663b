"""hawkBit DDI and RTOS firmware in the web UI: gateway tokens, target tokens, what viewers see, RTOS images.

Each token the UI shows is tried against the real DDI API of the shared server, so a test passes only when the
page shows the token that works (and, after a revoke, stops working).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from .conftest import VIEWER, Fleet, log_in
from .test_web_ui import upload

if TYPE_CHECKING:
    from playwright.sync_api import Page

expect = pytest.importorskip("playwright.sync_api", reason="pip install '.[test]'").expect

TOKEN = re.compile(r"^[0-9a-f]{32}$")


def poll(fleet: Fleet, controller_id: str, scheme: str, token: str) -> int:
    """One DDI poll as a hawkBit client makes it; the HTTP status."""
    with fleet.server.client() as c:
        r = c.get(f"/DEFAULT/controller/v1/{controller_id}", headers={"Authorization": f"{scheme} {token}",
                                                                      "Accept": "application/hal+json"})
    return r.status_code


@pytest.fixture
def registered(fleet: Fleet) -> Iterator[list[str]]:
    """Controller ids a test registers, deleted afterwards: the other UI tests count the fleet's devices."""
    made: list[str] = []
    yield made
    for cid in made:
        fleet.rpc("DeviceAdminService", "DeleteDevice", {"id": cid})


def ddi_device(fleet: Fleet, registered: list[str], controller_id: str) -> tuple[str, str]:
    """A DDI device made as `fleetd devices ddi-token` makes it: (device id, its target token)."""
    r = fleet.rpc("DdiService", "CreateTargetToken", {"device": controller_id, "device_type": "stm32mp1"})
    registered.append(controller_id)
    return str(r["device_id"]), str(r["token"])


def test_gateway_token_create_list_revoke(admin_page: Page, fleet: Fleet, registered: list[str], shot: Any,
                                          page_errors: list[str]) -> None:
    page = admin_page
    page.goto(fleet.server.url + "/#/enrollment")
    form = page.get_by_role("form", name="Create a hawkBit gateway token")
    form.get_by_label("Purpose").fill("line 3 station")
    form.get_by_label("Device type of the devices it registers").fill("stm32mp1")
    form.get_by_label("Tags of the devices it registers").fill("site=plant-3")
    form.get_by_role("button", name="Create gateway token").click()

    secret = page.get_by_label("Gateway token (shown once)")
    expect(secret).to_have_text(TOKEN)
    token = secret.inner_text().strip()
    expect(page.get_by_label("DDI base URL")).to_have_text(f"{fleet.server.url}/DEFAULT/controller/v1/<controller id>")
    expect(form.locator("dl")).to_contain_text("DEFAULT")
    row = page.locator("table.data tr", has_text="line 3 station")
    expect(row).to_contain_text("stm32mp1")
    expect(row.locator(".chip")).to_have_text("site=plant-3")
    expect(row).to_have_attribute("data-state", "active")
    shot(page, "ddi-gateway-tokens")

    # The token on the page is the real one: its first poll registers the controller with the token's type and tags.
    assert poll(fleet, "gw-board-1", "GatewayToken", token) == 200
    registered.append("gw-board-1")
    registered = next(d for d in fleet.devices(search="gw-board-1") if d["hardware_id"] == "gw-board-1")
    assert registered["device_type"] == "stm32mp1" and registered["tags"] == {"site": "plant-3"}

    tid = next(t["id"] for t in fleet.rpc("DdiService", "ListGatewayTokens")["tokens"]
               if t["description"] == "line 3 station")
    page.get_by_role("button", name=f"Revoke gateway token {tid}").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("refused at once")
    dialog.get_by_role("button", name="Revoke").click()
    expect(row).to_have_count(0)  # the list shows active tokens only
    page.get_by_label("Also show revoked gateway tokens").check()
    expect(row).to_have_attribute("data-state", "revoked")
    expect(row.locator(".badge")).to_have_text("revoked")
    expect(row.get_by_role("button", name=re.compile("Revoke"))).to_have_count(0)
    assert poll(fleet, "gw-board-2", "GatewayToken", token) == 401
    assert page_errors == []


def test_target_token_for_a_ddi_device(admin_page: Page, fleet: Fleet, registered: list[str], shot: Any,
                                       page_errors: list[str]) -> None:
    did, first = ddi_device(fleet, registered, "ui-ddi-1")
    assert poll(fleet, "ui-ddi-1", "TargetToken", first) == 200
    page = admin_page
    page.goto(f"{fleet.server.url}/#/devices/{did}")
    expect(page.get_by_role("heading", name="ui-ddi-1", exact=True)).to_be_visible()
    card = page.locator("section", has=page.get_by_role("heading", name="hawkBit DDI"))
    expect(card.locator("dl")).to_contain_text("Controller ID")
    expect(card.locator("dd").first).to_have_text("ui-ddi-1")
    expect(card).to_contain_text(f"{fleet.server.url}/DEFAULT/controller/v1/ui-ddi-1")
    expect(page.locator(".page-head")).to_contain_text("hawkBit DDI")
    # DDI has no restart or reboot; rolling back (a new deployment of the previous version) it has.
    expect(page.get_by_role("button", name="Roll back app")).to_be_visible()
    for name in ("Restart app", "Reboot device"):
        expect(page.get_by_role("button", name=name)).to_be_hidden()

    card.get_by_role("button", name="New target token").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("replaces the device's current target token")
    dialog.get_by_role("button", name="Create token").click()
    secret = page.get_by_label("Target token for ui-ddi-1 (shown once)")
    expect(secret).to_have_text(TOKEN)
    second = secret.inner_text().strip()
    assert second != first
    expect(card.get_by_role("button", name="Copy").first).to_be_visible()
    shot(page, "ddi-target-token")
    # The new token works and the one it replaced does not.
    assert poll(fleet, "ui-ddi-1", "TargetToken", second) == 200
    assert poll(fleet, "ui-ddi-1", "TargetToken", first) == 401

    card.get_by_role("button", name="Revoke target token").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("refused until an admin gives it a new token")
    dialog.get_by_role("button", name="Revoke").click()
    expect(card.get_by_role("status")).to_have_text(re.compile(r"^Revoked the target token of ui-ddi-1"))
    expect(secret).to_have_count(0)  # the revoked token is no longer on show
    assert poll(fleet, "ui-ddi-1", "TargetToken", second) == 401
    assert page_errors == []


def test_viewer_sees_ddi_but_cannot_make_tokens(anon_page: Page, fleet: Fleet, registered: list[str], shot: Any,
                                                page_errors: list[str]) -> None:
    did, token = ddi_device(fleet, registered, "ui-ddi-viewer")
    page = anon_page
    log_in(page, fleet.server.url, *VIEWER)
    page.goto(f"{fleet.server.url}/#/devices/{did}")
    card = page.locator("section", has=page.get_by_role("heading", name="hawkBit DDI"))
    expect(card.locator("dd").first).to_have_text("ui-ddi-viewer")
    expect(page.get_by_role("heading", name="Installed software")).to_be_visible()
    for name in ("New target token", "Revoke target token"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    shot(page, "ddi-viewer-device")

    page.goto(fleet.server.url + "/#/enrollment")
    expect(page.get_by_role("heading", name="Enrollment is not available")).to_be_visible()
    expect(page.get_by_text("hawkBit gateway tokens")).to_have_count(0)
    assert poll(fleet, "ui-ddi-viewer", "TargetToken", token) == 200  # nothing the viewer did touched it
    assert page_errors == []


@pytest.fixture
def uploaded(fleet: Fleet) -> Iterator[list[str]]:
    """Artifacts a test stores, deleted afterwards: the other UI tests expect their own artifacts only."""
    made: list[str] = []
    yield made
    for ref in made:
        fleet.rpc("ArtifactService", "DeleteArtifact", {"id": ref})


def test_rtos_image_upload_shows_format_and_counter(admin_page: Page, fleet: Fleet, uploaded: list[str], shot: Any,
                                                   page_errors: list[str]) -> None:
    upload(fleet, "plain-app", "1.0.0", b"a raw file\n" * 100)
    uploaded.append("plain-app@1.0.0")
    page = admin_page
    page.goto(fleet.server.url + "/#/artifacts")
    form = page.get_by_role("form", name="Upload an artifact")
    expect(form.get_by_label("Security counter")).to_be_hidden()  # only firmware can be an RTOS image
    form.get_by_label("File").set_input_files({"name": "sensor-fw-1.4.0.bin", "mimeType": "application/octet-stream",
                                               "buffer": b"\x7fzephyr" * 4096})
    form.get_by_label("Kind").select_option("firmware")
    form.get_by_label("Format").select_option("rtos-image")
    form.get_by_label("Security counter").fill("3")
    form.get_by_label("Device types").fill("nrf52840-sensor")
    form.get_by_role("button", name="Upload", exact=True).click()
    expect(page.locator(".success")).to_contain_text("Stored sensor-fw@1.4.0")
    uploaded.append("sensor-fw@1.4.0")
    stored = fleet.rpc("ArtifactService", "GetArtifact", {"id": "sensor-fw@1.4.0"})
    assert stored["format"] == "rtos-image" and stored["security_counter"] == 3

    row = page.locator("table.data tr", has=page.get_by_role("link", name="sensor-fw", exact=True))
    expect(row).to_contain_text("RTOS image")
    expect(row).to_contain_text("security counter 3")
    raw = page.locator("table.data tr", has=page.get_by_role("link", name="plain-app", exact=True))
    expect(raw).to_contain_text("raw")
    expect(raw).not_to_contain_text("security counter")
    shot(page, "ddi-rtos-artifacts")

    page.get_by_role("link", name="sensor-fw", exact=True).click()
    expect(page.get_by_role("heading", name="sensor-fw 1.4.0")).to_be_visible()
    props = page.locator("section", has=page.get_by_role("heading", name="Artifact", exact=True)).locator("dl")
    expect(props).to_contain_text("RTOS image")
    expect(props.locator("dt", has_text="Security counter").locator("+ dd")).to_contain_text("3")
    expect(page.get_by_label("Manifest")).to_contain_text('"security_counter": 3')
    shot(page, "ddi-rtos-artifact")
    assert page_errors == []
