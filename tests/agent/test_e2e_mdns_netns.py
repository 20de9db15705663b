"""mDNS discovery across a real link: a server in one network namespace, the agent in another.

The agent is given a join token and no server URL: it must find the server by
mDNS and enroll. A rogue fleetd (its own data dir, so its own CA) advertised on
the same link is refused, whether its mDNS record is honest about its CA or
lies with the real server's fingerprint: the token pins the CA, mDNS only says
where to look.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd import discovery
from tests.e2e.server import ServerProcess

from . import netns
from .e2e_helpers import AGENT_SRC, PYTHON, Admin, agent_env, builder, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(netns.unavailable() is not None,
                                                  reason=str(netns.unavailable()))]


@pytest.fixture(scope="module")
def lan() -> Iterator[tuple[netns.Netns, netns.Netns]]:
    with netns.lan() as pair:
        yield pair


@pytest.fixture(scope="module")
def zipapp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(builder.build(AGENT_SRC, tmp_path_factory.mktemp("agent")))


@pytest.fixture(scope="module")
def real(lan: tuple[netns.Netns, netns.Netns], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The fleet's server, in the first namespace (the rogue test stops it: it must go last)."""
    s = start_in(lan[0], tmp_path_factory.mktemp("mdns") / "real")
    yield s
    s.stop()


def start_in(ns: netns.Netns, data_dir: Path) -> ServerProcess:
    """A fleetd listening on the namespace's LAN address, advertising itself by mDNS."""
    s = ServerProcess(data_dir, mdns=True, host=ns.address)
    ns.call(s.start)
    wait_for("the mDNS advertisement", lambda: "mDNS: advertising" in s.log(), 15, log=s.log)
    return s


def fingerprint(server: ServerProcess) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    return x509.load_pem_x509_certificate(Path(server.ca).read_bytes()).fingerprint(hashes.SHA256()).hex()


def agent(ns: netns.Netns, zipapp: Path, state_dir: Path, *args: str,
          token: str = "") -> subprocess.CompletedProcess[str]:
    env = agent_env(FLEET_AGENT_MDNS_TIMEOUT="3", **({"FLEET_AGENT_TOKEN": token} if token else {}))
    return subprocess.run([*ns.exec_prefix(), PYTHON, str(zipapp), *args, "--state-dir", str(state_dir)],
                          capture_output=True, text=True, env=env, timeout=60)


def test_agent_finds_the_server_by_mdns_and_enrolls(lan: tuple[netns.Netns, netns.Netns], real: ServerProcess,
                                                    zipapp: Path, tmp_path: Path) -> None:
    ns1, ns2 = lan
    admin = Admin(real)
    token = ns1.call(admin.token, description="mdns")["token"]
    state_dir = tmp_path / "agent"
    p = agent(ns2, zipapp, state_dir, "enroll", "--json", token=token)  # no --server
    assert p.returncode == 0, f"stdout:{p.stdout}\nstderr:{p.stderr}\nserver log:\n{real.log()}"
    enrolled = json.loads(p.stdout)
    assert enrolled["server"].rstrip("/") == f"https://{ns1.address}:{real.port}"
    assert enrolled["ca_fingerprint"] == fingerprint(real) and enrolled["status"] == "active"
    assert json.loads((state_dir / "state.json").read_text())["discovered"] is True

    # The server it found is the one it works with: one iteration of the run loop checks in.
    p = agent(ns2, zipapp, state_dir, "run", "--once")
    assert p.returncode == 0, p.stderr
    device = ns1.call(admin.device, enrolled["device_id"])
    assert device["online"] and device["last_addr"] == ns2.address


def test_a_rogue_server_is_refused(lan: tuple[netns.Netns, netns.Netns], real: ServerProcess, zipapp: Path,
                                   tmp_path: Path) -> None:
    ns1, ns2 = lan
    token = ns1.call(Admin(real).token, description="for the real fleet")["token"]
    real_fp = fingerprint(real)
    real.stop()  # from here on only the rogue answers
    rogue = start_in(ns1, tmp_path / "rogue")
    liar = None
    try:
        rogue_fp = fingerprint(rogue)
        assert rogue_fp != real_fp

        # An honest rogue: its mDNS record names its own CA, which is not the token's.
        p = agent(ns2, zipapp, tmp_path / "agent1", "enroll", token=token)
        assert p.returncode != 0, p.stdout
        assert rogue_fp in p.stderr and real_fp in p.stderr and "refusing" in p.stderr, p.stderr
        assert not (tmp_path / "agent1" / "state.json").exists()

        # A lying rogue: its record claims the real fleet's CA. The CA it serves gives it away.
        liar = Liar(ns1, rogue.port, real_fp)
        liar.start()
        p = agent(ns2, zipapp, tmp_path / "agent2", "enroll", token=token)
        assert p.returncode != 0, p.stdout
        assert f"its CA has fingerprint {rogue_fp}" in p.stderr and f"pins {real_fp}" in p.stderr, p.stderr
        assert not (tmp_path / "agent2" / "state.json").exists()
        assert ns1.call(Admin(rogue).devices) == []  # nothing reached the rogue's Enroll
    finally:
        if liar is not None:
            liar.stop()
        rogue.stop()


class Liar:
    """An mDNS record for the rogue's port whose TXT claims another fleet's CA, advertised from a namespace."""

    def __init__(self, ns: netns.Netns, port: int, claimed_ca: str) -> None:
        self.ns, self.port, self.claimed_ca = ns, port, claimed_ca
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: ns.call(self._serve), daemon=True)
        self.error: str | None = None

    def _serve(self) -> None:
        async def run() -> None:
            adv = discovery.Advertiser(listen_host=self.ns.address, port=self.port, hostname="liar",
                                       txt={"version": "0", "scheme": "https", "port": str(self.port),
                                            "path": "/", "ca": self.claimed_ca})
            await adv.start()
            if not await adv.wait_registered(10):
                self.error = adv.error or "not registered"
            self._ready.set()
            while not self._stop.is_set():
                await asyncio.sleep(0.05)
            await adv.stop()

        asyncio.run(run())

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(15) and self.error is None, self.error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
