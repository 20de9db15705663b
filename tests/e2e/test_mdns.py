"""mDNS on loopback: a real `fleetd serve` advertises itself, says goodbye, and stays quiet with --no-mdns."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from zeroconf import DNSQuestionType, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

from fleetd import __version__, discovery

from . import server as server_module
from .server import ServerProcess, free_port

pytestmark = pytest.mark.e2e

LOOPBACK = ["127.0.0.1"]

# ServerProcess always passes --no-mdns. This shim runs the same fleetd command
# (the venv's or $FLEETD_BIN) without that flag, replacing itself (exec) so that
# signals reach the server.
_SHIM = ("import json, os, sys; cmd = json.loads(sys.argv[1]); "
         "os.execvp(cmd[0], cmd + [a for a in sys.argv[2:] if a != '--no-mdns'])")


@pytest.fixture
def mdns_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerProcess]:
    real = server_module.fleetd_cmd()
    monkeypatch.setattr(server_module, "fleetd_cmd", lambda: [sys.executable, "-c", _SHIM, json.dumps(real)])
    s = ServerProcess(tmp_path / "data")
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.stop()


def ca_fingerprint(pem_path: str) -> str:
    cert = x509.load_pem_x509_certificate(Path(pem_path).read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


async def browse_until(port: int, deadline: float) -> discovery.Found | None:
    while time.monotonic() < deadline:
        for found in await discovery.browse(1.5, interfaces=LOOPBACK):
            if found.port == port:
                return found
    return None


class Watcher:
    """A browser left running, to see the goodbye when a server stops."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ServiceStateChange]] = []
        self.changed = asyncio.Event()

    def __call__(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        self.events.append((name, state_change))
        self.changed.set()

    async def wait_for(self, name: str, change: ServiceStateChange, timeout: float) -> bool:
        end = asyncio.get_running_loop().time() + timeout
        while (name, change) not in self.events:
            self.changed.clear()
            left = end - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                return False
        return True


def test_server_advertises_where_and_which_ca_and_says_goodbye(mdns_server: ServerProcess) -> None:
    srv = mdns_server.start()
    fingerprint = ca_fingerprint(srv.ca)

    async def as_a_device(found: discovery.Found) -> None:
        # Trust nothing from mDNS but the address: fetch the CA, check it against the pin, then use it.
        async with httpx.AsyncClient(verify=False) as c:
            pem = (await c.get(found.url + "v1/ca.pem")).content
        cert = x509.load_pem_x509_certificate(pem)
        assert hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest() == fingerprint
        async with httpx.AsyncClient(verify=ssl.create_default_context(cadata=pem.decode())) as c:
            assert (await c.get(found.url + "healthz")).json()["status"] == "ok"

    async def scenario() -> tuple[discovery.Found | None, bool, bool]:
        aiozc = AsyncZeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)
        watcher = Watcher()
        browser = AsyncServiceBrowser(aiozc.zeroconf, discovery.SERVICE_TYPE, handlers=[watcher],
                                      question_type=DNSQuestionType.QM)
        try:
            found = await browse_until(srv.port, time.monotonic() + 8)
            if found is None:
                return None, False, False
            await as_a_device(found)
            full = f"{found.name}.{discovery.SERVICE_TYPE}"
            seen = await watcher.wait_for(full, ServiceStateChange.Added, 2)
            await asyncio.get_running_loop().run_in_executor(None, srv.stop)
            gone = await watcher.wait_for(full, ServiceStateChange.Removed, 3)
            return found, seen, gone
        finally:
            await browser.async_cancel()
            await aiozc.async_close()

    found, seen, gone = asyncio.run(scenario())
    assert found is not None, f"server on port {srv.port} not found by mDNS; server log:\n{srv.log()}"
    assert found.txt == {"version": __version__, "scheme": "https", "port": str(srv.port),
                         "ca": fingerprint, "path": "/"}
    assert found.addresses == ["127.0.0.1"]  # it listens on 127.0.0.1, so it advertises only that
    assert found.name.startswith("fleetd on ")
    assert found.url == f"https://127.0.0.1:{srv.port}/"
    assert "mDNS: advertising" in srv.log()
    assert seen, "the long-running browser never saw the server"
    assert gone, f"no goodbye within 3 s of stopping the server; log:\n{srv.log()}"


def test_no_mdns_means_nothing_is_advertised(own_server: ServerProcess) -> None:
    srv = own_server.start()  # ServerProcess passes --no-mdns
    # A control advertised in-process at the same time proves the browse itself works.
    control = discovery.Advertiser(listen_host="127.0.0.1", port=free_port(), txt={"ca": "control"},
                                   hostname="control")

    async def scenario() -> list[discovery.Found]:
        await control.start()
        try:
            return await discovery.browse(2.5, interfaces=LOOPBACK)
        finally:
            await control.stop()

    found = asyncio.run(scenario())
    ports = {f.port for f in found}
    assert control.port in ports, f"the control advertisement was not seen: {found}"
    assert srv.port not in ports


def test_registration_failure_warns_and_never_blocks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "fleetd.discovery")

    async def scenario() -> tuple[float, bool, bool, str | None, str | None]:
        # 192.0.2.0/24 is TEST-NET-1, no interface here has .77: no multicast socket can be made for it.
        bad = discovery.Advertiser(listen_host="192.0.2.77", port=8420, txt={})
        zero = discovery.Advertiser(listen_host="127.0.0.1", port=0, txt={})
        t = time.monotonic()
        await bad.start()
        await zero.start()
        started = time.monotonic() - t
        ok_bad = await bad.wait_registered(5)
        ok_zero = await zero.wait_registered(5)
        await bad.stop()
        await zero.stop()
        return started, ok_bad, ok_zero, bad.error, zero.error

    started, ok_bad, ok_zero, bad_error, zero_error = asyncio.run(scenario())
    assert started < 0.1
    assert not ok_bad and bad_error
    assert not ok_zero and zero_error and "port 0" in zero_error
    assert caplog.text.count("mDNS advertisement failed") == 2


def test_advertised_addresses_follow_the_listen_address() -> None:
    interfaces, version, addrs = asyncio.run(discovery.advertise_plan("127.0.0.1"))
    assert (interfaces, version, addrs) == (["127.0.0.1"], IPVersion.V4Only, ["127.0.0.1"])
    _, version, addrs = asyncio.run(discovery.advertise_plan("localhost"))
    assert "127.0.0.1" in addrs or "::1" in addrs
    _, version, addrs = asyncio.run(discovery.advertise_plan("0.0.0.0"))
    assert version is IPVersion.V4Only and addrs
    own = discovery.host_addresses(ipv6=False)
    # all the host's IPv4 addresses but loopback; loopback only when there is nothing else
    assert addrs == (own or ["127.0.0.1"])
    assert all(":" not in a and not a.startswith("127.") for a in own)
    assert all(not a.startswith(("127.", "::1", "fe80")) for a in discovery.host_addresses(ipv6=True))
