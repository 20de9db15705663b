"""Finding the server on the LAN by mDNS (``_fleetd._tcp.local.``).

mDNS says only *where* a server is, never *whom* to trust. With a join token,
servers whose TXT ``ca`` names another fingerprint are refused outright, and
the rest are tried in order (matching TXT first); the caller still fetches each
one's CA and accepts it only if its SHA-256 is the token's (enroll.py).
zeroconf is imported here only, so an agent that knows its server
never loads it.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

SERVICE_TYPE = "_fleetd._tcp.local."


@dataclass(frozen=True)
class Candidate:
    """One server that answered: its instance name, base URL and TXT record."""

    name: str
    url: str
    txt: dict[str, str] = field(default_factory=dict)

    @property
    def ca(self) -> str:
        return self.txt.get("ca", "").lower()


def _host(addresses: list[str]) -> str:
    """The address to reach a server by: IPv4 first, then global IPv6 (link-local needs a zone, skip it)."""
    v4 = [a for a in addresses if ":" not in a]
    if v4:
        return v4[0]
    for a in addresses:
        try:
            ip = ipaddress.ip_address(a.split("%")[0])
        except ValueError:
            continue
        if not ip.is_link_local:
            return f"[{ip}]"
    return ""


def _text(v: bytes | str | None) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v or ""


def candidate_from(name: str, addresses: list[str], port: int, txt: dict[str, str]) -> Candidate | None:
    host = _host(addresses)
    if not host or not port:
        return None
    scheme = txt.get("scheme", "https") or "https"
    path = (txt.get("path") or "/").rstrip("/")
    return Candidate(name=name, url=f"{scheme}://{host}:{port}{path}", txt=txt)


def browse(timeout: float = 3.0, interfaces: list[str] | None = None) -> list[Candidate]:
    """Every fleetd server that answers within ``timeout`` seconds, by name."""
    try:
        from zeroconf import (
            DNSQuestionType,
            InterfaceChoice,
            ServiceBrowser,
            ServiceInfo,
            ServiceStateChange,
            Zeroconf,
        )
    except ModuleNotFoundError:
        from .needs import install_hint

        log.error("cannot look for a server by mDNS: %s; or give the server's URL with --server",
                  install_hint(["zeroconf"]))
        return []
    try:
        zc = Zeroconf(interfaces=interfaces or InterfaceChoice.All)
    except Exception as e:
        log.warning("cannot browse mDNS on this host (%s); give the server's URL with --server", e)
        return []
    found: dict[str, Candidate] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + timeout

    def resolve(name: str) -> None:
        info = ServiceInfo(SERVICE_TYPE, name)
        if not info.load_from_cache(zc):
            left = max(0.2, deadline - time.monotonic())
            info.request(zc, left * 1000, question_type=DNSQuestionType.QM)
        txt = {_text(k): _text(v) for k, v in (info.properties or {}).items()}
        c = candidate_from(name[: -len(SERVICE_TYPE) - 1], info.parsed_scoped_addresses(), int(info.port or 0), txt)
        if c is not None:
            with lock:
                found[name] = c

    def on_change(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        if state_change is ServiceStateChange.Removed:
            with lock:
                found.pop(name, None)
        else:
            resolve(name)  # runs on the browser's own thread, which may block

    # QM questions (multicast answers): a unicast answer reaches only one of the sockets sharing port 5353.
    browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change], question_type=DNSQuestionType.QM)
    try:
        time.sleep(max(0.0, deadline - time.monotonic()))
        with lock:
            return [found[n] for n in sorted(found)]
    finally:
        browser.cancel()
        zc.close()


def order(candidates: list[Candidate], fingerprint: str | None) -> list[Candidate]:
    """Which servers to try, best first. With a pinned fingerprint, a TXT naming another CA is refused."""
    if not fingerprint:
        return list(candidates)
    fp = fingerprint.lower()
    matching, unsure = [], []
    for c in candidates:
        if c.ca == fp:
            matching.append(c)
        elif not c.ca:
            unsure.append(c)
        else:
            log.warning("refusing %r at %s: its mDNS record names CA %s, not the pinned %s", c.name, c.url, c.ca, fp)
    return matching + unsure


__all__ = ["SERVICE_TYPE", "Candidate", "browse", "candidate_from", "order"]
