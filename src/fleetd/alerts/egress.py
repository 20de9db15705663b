"""Where the server's own outgoing requests (webhooks) may go: a check on every address a URL's host resolves to.

A webhook URL is typed by an admin, but the server sends the requests, from
inside the network it runs in. So by default it refuses addresses that reach
the server itself or its neighbourhood rather than the internet:

* always: loopback, link-local (with the cloud metadata address
  169.254.169.254), unspecified, multicast, reserved, and the other metadata
  addresses (fd00:ec2::254, 100.100.100.200);
* unless ``webhook_allow_private``: private ranges (10/8, 172.16/12,
  192.168/16, fc00::/7, 100.64/10 carrier-grade NAT);
* ``webhook_allowed_networks`` (CIDRs) lets any of these through but the
  metadata addresses: for a receiver on this host (127.0.0.1/32) or one chosen
  LAN address.

The check runs when a webhook is saved (a clear error) and at each delivery
after DNS resolution, and the delivery connects to the very address that was
checked (:class:`PinnedTransport`), so a name that resolves differently later
(DNS rebinding) cannot slip past it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.config import Network, parse_networks
from ..core.errors import InvalidArgument
from ..core.tasks import within

if TYPE_CHECKING:
    import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA = tuple(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7",
                                                   "100.64.0.0/10"))
NAT64 = ipaddress.ip_network("64:ff9b::/96")
ALLOW_PRIVATE_HINT = "set webhook_allow_private = true (env FLEETD_WEBHOOK_ALLOW_PRIVATE=1) to allow LAN receivers"
ALLOW_NETWORK_HINT = ("list it in webhook_allowed_networks (e.g. 127.0.0.1/32: flag --webhook-allowed-network, "
                      "env FLEETD_WEBHOOK_ALLOWED_NETWORKS) if the receiver really is there")


class Refused(Exception):
    """The destination is not allowed; the message says why and which setting would allow it."""


class Unresolvable(Refused):
    """The host has no address (now)."""


def _kind(ip: Address) -> str | None:
    """What makes ``ip`` non-public, or None for a public address."""
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if any(ip in n for n in PRIVATE):
        return "a private address"
    if not ip.is_global:
        return "a reserved address"
    return None


@dataclass(frozen=True)
class Policy:
    allow_private: bool = False
    allowed: tuple[Network, ...] = ()

    @classmethod
    def of(cls, allow_private: bool, allowed_networks: list[str]) -> Policy:
        return cls(allow_private, parse_networks(allowed_networks))

    def refusal(self, ip: Address) -> str | None:
        """Why ``ip`` may not be a webhook's destination, or None."""
        if isinstance(ip, ipaddress.IPv6Address):  # an IPv4 address in IPv6 clothes is judged as itself
            if ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            elif ip in NAT64:
                ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip in METADATA:
            return f"{ip} is a cloud metadata address, never a webhook receiver"
        kind = _kind(ip)
        if kind is None or any(ip.version == n.version and ip in n for n in self.allowed):
            return None
        if kind == "a private address" and self.allow_private:
            return None
        hint = ALLOW_PRIVATE_HINT if kind == "a private address" else ALLOW_NETWORK_HINT
        return f"{ip} is {kind}; {hint}"

    async def resolve(self, host: str, port: int) -> Address:
        """The address to connect to for ``host``: every address it resolves to must be allowed."""
        try:
            addresses: list[Address] = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as e:
                raise Unresolvable(f"cannot resolve {host}: {e}") from None
            addresses = list(dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos))
        for ip in addresses:
            why = self.refusal(ip)
            if why is not None:
                via = "" if str(ip) == host else f"{host} resolves to {ip}: "
                raise Refused(f"webhook destination refused: {via}{why}")
        if not addresses:
            raise Unresolvable(f"cannot resolve {host}: no addresses")
        return addresses[0]

    async def check_url_host(self, host: str, port: int) -> None:
        """At save time: refuse a host whose addresses are not allowed; a name that does not resolve (yet) passes,
        since every delivery checks again."""
        try:
            await self.resolve(host, port)
        except Unresolvable:
            pass
        except Refused as e:
            raise InvalidArgument(str(e)) from None


def pinned_transport(policy: Policy, timeout: float) -> httpx.AsyncBaseTransport:
    """An httpx transport that resolves and checks each request's host, then connects to that checked address
    (the URL's name stays in the Host header and the TLS server name, so certificates are verified against it)."""
    import httpx

    class PinnedTransport(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            # No kept-alive connections: a pooled connection is keyed by address, and must not carry a request
            # for another name whose TLS certificate was never checked on it.
            self.inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            host = request.url.host
            ip = await within(policy.resolve(host, request.url.port or 0), timeout)
            request.url = request.url.copy_with(host=str(ip))
            request.extensions = {**request.extensions, "sni_hostname": host}
            return await self.inner.handle_async_request(request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    return PinnedTransport()
