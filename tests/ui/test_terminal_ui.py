"""The device page's terminal (docs/remote-access.md): xterm.js in Chromium on a real agent's remote-access
channel, through the operator's login (cookie + CSRF) and the session WebSocket."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.agent.e2e_helpers import Admin
from tests.e2e.server import ServerProcess, run_cli
from tests.remote.helpers import ALLOWED, Device, enroll_and_run, wait_channel
from tests.support.devices_helper import TestDevice

from .conftest import ADMIN, log_in, new_context

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

expect = pytest.importorskip("playwright.sync_api", reason="pip install '.[test]'").expect


@pytest.fixture(scope="module")
def remote_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("ui-remote") / "data"
    s = ServerProcess(data, env={"FLEETD_REMOTE_ACCESS": "true"}).start()
    try:
        run_cli("users", "create", ADMIN[0], "--role", "admin", "--password", ADMIN[1], "--data-dir", str(data))
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def agent(remote_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    admin = Admin(remote_server)
    d = enroll_and_run(remote_server, admin, tmp_path_factory.mktemp("ui-dev"), ALLOWED)
    try:
        wait_channel(remote_server, admin, d)
        yield d
    finally:
        d.agent.stop()


def test_a_command_typed_in_the_device_pages_terminal_shows_its_output(
        browser: Browser, remote_server: ServerProcess, agent: Device, shot: Any) -> None:
    errors: list[str] = []
    ctx = new_context(browser)
    page: Page = ctx.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    # A CSP violation (xterm.js's style elements, the WebSocket) is logged as a console error.
    page.on("console", lambda m: errors.append(m.text)
            if m.type == "error" and "Failed to load resource" not in m.text else None)
    try:
        url = remote_server.url
        log_in(page, url, *ADMIN)
        name = Admin(remote_server).device(agent.id)["name"]
        page.goto(f"{url}/#/devices/{agent.id}")
        expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()
        with page.expect_response(lambda r: r.url.endswith("/v1/remote/terminal")) as answer:
            page.get_by_role("button", name="Open terminal").click()
        headers = answer.value.headers
        assert "style-src 'self' 'unsafe-inline'" in headers["content-security-policy"]
        assert "frame-ancestors 'self'" in headers["content-security-policy"]
        term = page.frame_locator(f'iframe[title="Terminal on {name}"]')
        expect(term.get_by_role("status")).to_contain_text("Connected as", timeout=15_000)
        page.keyboard.type("echo $((6*7))-from-the-browser; stty size\n")
        rows = term.locator(".xterm-rows")
        after = re.compile(r"42-from-the-browser\s*(\d+) (\d+)")
        expect(rows).to_contain_text(after, timeout=10_000)
        # The pty has the frame's size, which the fit addon made of the box (not the 80x24 default).
        m = after.search(rows.inner_text())
        assert m and m.groups() != ("24", "80"), rows.inner_text()
        shot(page, "device-terminal")
        page.keyboard.type("exit 3\n")
        expect(term.get_by_role("status")).to_contain_text("exited with status 3")
        assert errors == []

        session = next(e for e in Admin(remote_server).call("AuditService", "List", {
            "action": "device.remote_session"})["entries"] if e["target"] == agent.id)
        assert session["details"]["end"] == "exit" and session["details"]["bytes_in"] > 0, session
    finally:
        ctx.close()


def test_no_terminal_for_a_device_without_a_channel(browser: Browser, remote_server: ServerProcess,
                                                     agent: Device) -> None:
    with remote_server.client() as c:
        other = TestDevice(c, hardware_id="no-channel-1")
        r = other.enroll()
        assert r.status_code == 200, r.text
    did = next(d["id"] for d in Admin(remote_server).devices() if d["hardware_id"] == "no-channel-1")
    ctx = new_context(browser)
    page = ctx.new_page()
    try:
        log_in(page, remote_server.url, *ADMIN)
        with page.expect_response(lambda r: f"/v1/remote/devices/{did}" in r.url) as answer:
            page.goto(f"{remote_server.url}/#/devices/{did}")
        assert answer.value.json()["channel"] is False
        expect(page.get_by_role("heading", name="Installed software")).to_be_visible()
        expect(page.get_by_role("button", name="Open terminal")).to_have_count(0)
        # The device with its channel has the button: the difference is the channel.
        page.goto(f"{remote_server.url}/#/devices/{agent.id}")
        expect(page.get_by_role("button", name="Open terminal")).to_be_visible()
    finally:
        ctx.close()
