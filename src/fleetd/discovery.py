"""mDNS: advertise the server as ``_fleetd._tcp.local.`` and browse for servers.

mDNS only tells a device *where* a server is, never whom to trust: the TXT
record carries the CA fingerprint so a device can compare it with the one its
join token pins, and a rogue server is refused at the TLS handshake.

Registration runs in a background task: probing for a unique name takes about
a second, and a host without a multicast-capable interface must still serve
(the advertiser logs a warning and gives up; devices then need the URL).

TXT record: ``version`` (fleetd version), ``scheme`` (https/http), ``port``,
``ca`` (hex SHA-256 of the fleet CA certificate, DER), ``path`` (``/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ifaddr  # a dependency of zeroconf
from zeroconf import DNSQuestionType, InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from . import __version__
from .core.errors import Unavailable
from .core.lifecycle import Scope
from .core.tasks import cancel_and_wait, within

if TYPE_CHECKING:
    from .fleet import Fleet

log = logging.getLogger(__name__)

SERVICE_TYPE = "_fleetd._tcp.local."
# DNS labels are at most 63 bytes.
_MAX_LABEL = 63
REGISTER_TIMEOUT = 15.0
CLOSE_TIMEOUT = 3.0
_ANY = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class Found:
    """One server seen on the network."""

    name: str  # the instance name, e.g. "fleetd on pi4"
    addresses: list[str]
    port: int
    txt: dict[str, str] = field(default_factory=dict)
    server: str = ""  # the mDNS host name its addresses belong to

    @property
    def url(self) -> str:
        """The base URL from the first address and the TXT scheme and path."""
        host = self.addresses[0] if self.addresses else self.server.rstrip(".")
        if ":" in host:
            host = f"[{host}]"
        scheme = self.txt.get("scheme", "https")
        path = self.txt.get("path", "/")
        return f"{scheme}://{host}:{self.port}{path}"


# --- advertising -------------------------------------------------------------

def instance_name(hostname: str | None = None) -> str:
    host = (hostname or socket.gethostname()).split(".")[0] or "localhost"
    prefix = "fleetd on "
    # Room for the "-N" zeroconf appends on a name conflict.
    room = _MAX_LABEL - len(prefix.encode()) - 4
    return prefix + host.encode()[:room].decode(errors="ignore")


def _server_name(hostname: str, port: int) -> str:
    """An mDNS host name of our own: reusing "<hostname>.local." would fight the OS responder (avahi)."""
    label = re.sub(r"[^A-Za-z0-9-]", "-", hostname.split(".")[0]).strip("-") or "host"
    suffix = f"-fleetd-{port}"
    return f"{label[:_MAX_LABEL - len(suffix)]}{suffix}.local."


def host_addresses(ipv6: bool) -> list[str]:
    """This host's addresses worth advertising: no loopback, no IPv6 link-local (it needs a scope)."""
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            addr = ipaddress.ip_address(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
            if addr.version == 6 and not ipv6:
                continue
            if addr.is_loopback or addr.is_unspecified or addr.is_multicast:
                continue
            if addr.version == 6 and addr.is_link_local:
                continue
            if str(addr) not in out:
                out.append(str(addr))
    return out


async def advertise_plan(listen_host: str) -> tuple[Any, IPVersion, list[str]]:
    """Interfaces to answer on, IP version, and addresses to advertise for a listen address."""
    if listen_host in _ANY:
        ipv6 = listen_host == "::"
        addrs = host_addresses(ipv6)
        if not addrs:
            log.info("mDNS: no non-loopback address; advertising loopback only")
            addrs = ["127.0.0.1"] + (["::1"] if ipv6 else [])
        return InterfaceChoice.All, IPVersion.All if ipv6 else IPVersion.V4Only, addrs
    try:
        addrs = [str(ipaddress.ip_address(listen_host))]
    except ValueError:  # a host name: what it resolves to is what the server listens on
        infos = await asyncio.get_running_loop().getaddrinfo(listen_host, None, type=socket.SOCK_STREAM)
        addrs = list(dict.fromkeys(str(i[4][0]).split("%")[0] for i in infos))
    versions = {ipaddress.ip_address(a).version for a in addrs}
    version = IPVersion.All if len(versions) == 2 else IPVersion.V6Only if 6 in versions else IPVersion.V4Only
    return list(addrs), version, addrs


class Advertiser:
    """Announces one fleetd server; ``await start()`` returns at once, ``await stop()`` says goodbye."""

    name = "mdns"
    scope: Scope = "process"  # docs/architecture.md, "Background parts"

    def __init__(self, *, listen_host: str, port: int, txt: dict[str, str], hostname: str | None = None) -> None:
        self.listen_host = listen_host
        self.port = port
        self.txt = txt
        self.hostname = hostname or socket.gethostname()
        self.instance: str | None = None  # the instance name actually registered (may get a "-2")
        self.addresses: list[str] = []
        self.error: str | None = None
        self._zc: AsyncZeroconf | None = None
        self._task: asyncio.Task[None] | None = None
        self._registered = asyncio.Event()

    @classmethod
    def for_fleet(cls, fleet: Fleet) -> Advertiser:
        s = fleet.settings
        txt = {"version": __version__, "scheme": s.scheme, "port": str(s.port),
               "ca": fleet.keys.ca_fingerprint, "path": "/"}
        return cls(listen_host=s.host, port=s.port, txt=txt)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._register(), name="fleetd-mdns-register")

    async def wait_registered(self, timeout: float) -> bool:
        """True once registered, False if registration failed or is still running after ``timeout``."""
        assert self._task is not None, "start() first"
        with contextlib.suppress(asyncio.TimeoutError):
            await within(asyncio.shield(self._task), timeout)
        return self._registered.is_set()

    async def _register(self) -> None:
        try:
            if self.port == 0:
                raise ValueError("the port is chosen by the OS (port 0); set a port to be advertised")
            interfaces, ip_version, self.addresses = await advertise_plan(self.listen_host)
            self._zc = AsyncZeroconf(interfaces=interfaces, ip_version=ip_version)
            info = AsyncServiceInfo(
                SERVICE_TYPE, f"{instance_name(self.hostname)}.{SERVICE_TYPE}", port=self.port,
                properties=self.txt, server=_server_name(self.hostname, self.port),
                parsed_addresses=self.addresses)
            announced = await within(
                self._zc.async_register_service(info, allow_name_change=True), REGISTER_TIMEOUT)
            await announced
        except asyncio.CancelledError:
            await self._close()
            raise
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            log.warning("mDNS advertisement failed (%s); devices on the LAN will not find this server "
                        "by themselves and need its URL", self.error)
            await self._close()
            return
        self.instance = info.name.removesuffix("." + SERVICE_TYPE)
        self._registered.set()
        log.info("mDNS: advertising %r (%s) on %s port %d", self.instance, SERVICE_TYPE,
                 ", ".join(self.addresses), self.port)

    async def stop(self) -> None:
        """Withdraw the advertisement (goodbye packets) and close the sockets."""
        await cancel_and_wait(self._task)
        await self._close()

    async def _close(self) -> None:
        zc, self._zc = self._zc, None
        if zc is None:
            return
        try:
            # async_close unregisters every service first, which sends the goodbyes.
            await within(zc.async_close(), CLOSE_TIMEOUT)
        except Exception as e:
            log.warning("mDNS: closing failed: %s", e)


# --- browsing ----------------------------------------------------------------

async def browse(timeout: float = 3.0, *, interfaces: list[str] | None = None) -> list[Found]:
    """Every fleetd server that answers within ``timeout`` seconds, sorted by name.

    ``interfaces`` limits the search to the interfaces with those addresses
    (``["127.0.0.1"]`` finds a server advertised on loopback only); default all.
    """
    try:
        aiozc = AsyncZeroconf(interfaces=interfaces or InterfaceChoice.All)
    except Exception as e:
        raise Unavailable(f"cannot browse mDNS on this host ({e}); give the server's URL instead") from None
    zc = aiozc.zeroconf
    resolving: dict[str, asyncio.Task[AsyncServiceInfo]] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    async def resolve(name: str) -> AsyncServiceInfo:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        await info.async_request(zc, max(1.0, (deadline - loop.time()) * 1000), DNSQuestionType.QM)
        return info

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            task = resolving.pop(name, None)
            if task:
                task.cancel()
        elif name not in resolving:
            resolving[name] = asyncio.ensure_future(resolve(name))

    # QM (multicast answers), not the default first QU question: a unicast answer to port 5353 reaches
    # just one of the sockets sharing that port on this host, often not ours.
    browser = AsyncServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change], question_type=DNSQuestionType.QM)
    try:
        await asyncio.sleep(timeout)
        # What the resolvers got is in the cache; an unfinished one still may have all records there.
        found = []
        for name in sorted(resolving):
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if info.load_from_cache(zc) and info.port:
                found.append(_found(info))
        return found
    finally:
        await browser.async_cancel()
        for task in resolving.values():
            task.cancel()
        await asyncio.gather(*resolving.values(), return_exceptions=True)
        await aiozc.async_close()


def _found(info: AsyncServiceInfo) -> Found:
    return Found(
        name=info.name.removesuffix("." + SERVICE_TYPE),
        addresses=info.parsed_scoped_addresses(),
        port=int(info.port or 0),
        txt={k: v or "" for k, v in info.decoded_properties.items()},
        server=info.server or "",
    )


__all__ = ["SERVICE_TYPE", "Advertiser", "Found", "advertise_plan", "browse", "host_addresses", "instance_name"]
