"""Browser tests of the web UI: a real `fleetd serve`, simulated devices, Debian's chromium driven by Playwright.

The browser trusts the fleet's own CA by ``ignore_https_errors=True`` on the
context: acceptable for a test on loopback (the CA is generated per run), never
what a user does. Screenshots go to tests/screenshots/ (git-ignored); their paths
are listed at the end of the run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.devices_helper import TestDevice

from ..e2e.server import ServerProcess, fleetd_cmd, run_cli

CHROMIUM = os.environ.get("FLEETD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "screenshots"
ADMIN = ("ui-admin", "admin-password-1")
VIEWER = ("ui-viewer", "viewer-password-1")
SIM_DEVICES = 3

try:
    from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None  # type: ignore[assignment]

MISSING = "" if sync_playwright is not None and shutil.which(CHROMIUM) else (
    f"the UI tests need playwright (pip install '.[test]') and chromium at {CHROMIUM} (apt-get install chromium)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if MISSING and os.environ.get("FLEETD_REQUIRE_BROWSER"):
        # CI sets this: there, a skipped UI test would hide a broken setup.
        raise pytest.UsageError(MISSING)
    if MISSING:
        here = Path(__file__).parent
        for item in items:
            if here in item.path.parents:
                item.add_marker(pytest.mark.skip(reason=MISSING))

_shots: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _shots:
        terminalreporter.write_sep("-", "web UI screenshots")
        for p in _shots:
            terminalreporter.write_line(p)


class Fleet:
    """What the tests need to know about the running fleet."""

    def __init__(self, server: ServerProcess, admin_key: str) -> None:
        self.server = server
        self.admin_key = admin_key
        self.pending: TestDevice | None = None
        self.pending_code = ""

    def rpc(self, service: str, method: str, body: Any = None) -> Any:
        r = self.server.rpc(service, method, body, api_key=self.admin_key)
        assert r.status_code == 200, r.text
        return r.json()

    def devices(self, **filters: Any) -> list[dict[str, Any]]:
        return list(self.rpc("DeviceAdminService", "ListDevices", filters)["devices"])


@pytest.fixture(scope="package")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    data = tmp_path_factory.mktemp("ui") / "data"
    server = ServerProcess(data, env={"FLEETD_LOGIN_RATE_PER_MINUTE": "100"}).start()
    sim: subprocess.Popen[str] | None = None
    try:
        for (user, pw), role in ((ADMIN, "admin"), (VIEWER, "viewer")):
            run_cli("users", "create", user, "--role", role, "--password", pw, "--data-dir", str(data))
        f = Fleet(server, server.create_key("admin", "ui-tests"))
        token = f.rpc("EnrollmentService", "CreateToken", {"description": "ui tests"})["token"]
        sim = subprocess.Popen([*fleetd_cmd(), "simulate", "--server", server.url, "--token", token, "--ca", server.ca,
                                "-n", str(SIM_DEVICES), "--interval", "1", "--prefix", "sim"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, text=True)
        with server.client() as c:
            f.pending = TestDevice(c, hardware_id="pending-1")
            r = f.pending.enroll()
            assert r.status_code == 200, r.text
            f.pending_code = r.json()["claim_code"]
        deadline = time.monotonic() + 20
        while len([d for d in f.devices(status="active") if d["online"]]) < SIM_DEVICES:
            assert time.monotonic() < deadline, f"simulated devices did not come online:\n{server.log()[-3000:]}"
            time.sleep(0.2)
        yield f
    finally:
        if sim is not None:
            sim.send_signal(signal.SIGINT)
            try:
                sim.wait(10)
            except subprocess.TimeoutExpired:
                sim.kill()
        server.stop()


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    assert sync_playwright is not None
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def new_context(browser: Browser, **kw: Any) -> BrowserContext:
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900}, **kw)
    ctx.set_default_timeout(10_000)
    return ctx


def log_in(page: Page, url: str, user: str, password: str) -> None:
    page.goto(url + "/")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()
    page.locator("#topbar:not([hidden])").wait_for()


def _login_state(browser: Browser, url: str, user: str, password: str) -> dict[str, Any]:
    ctx = new_context(browser)
    page = ctx.new_page()
    log_in(page, url, user, password)
    state: dict[str, Any] = dict(ctx.storage_state())
    ctx.close()
    return state


@pytest.fixture(scope="package")
def admin_state(browser: Browser, fleet: Fleet) -> dict[str, Any]:
    """Cookies and local storage of a logged-in admin, so each test starts logged in without another Login."""
    return _login_state(browser, fleet.server.url, *ADMIN)


@pytest.fixture
def page_errors() -> list[str]:
    return []


def _page(browser: Browser, errors: list[str], **kw: Any) -> Iterator[Page]:
    ctx = new_context(browser, **kw)
    page = ctx.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    # Failed API calls log "Failed to load resource" by design; anything else logged as an error is a bug.
    page.on("console", lambda m: errors.append(m.text)
            if m.type == "error" and "Failed to load resource" not in m.text else None)
    yield page
    ctx.close()


@pytest.fixture
def admin_page(browser: Browser, admin_state: dict[str, Any], page_errors: list[str]) -> Iterator[Page]:
    yield from _page(browser, page_errors, storage_state=admin_state)


@pytest.fixture
def anon_page(browser: Browser, page_errors: list[str]) -> Iterator[Page]:
    yield from _page(browser, page_errors)


@pytest.fixture
def shot() -> Any:
    """shot(page, "devices") saves tests/screenshots/ui-devices.png and lists it at the end of the run."""
    def take(page: Page, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"ui-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        _shots.append(str(path))
        print(f"screenshot: {path}")
        return path
    return take
