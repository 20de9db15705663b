"""The inventory a device reports (docs/protocol.md §7): host, OS, kernel, board, addresses, agent version."""

from __future__ import annotations

import ipaddress
import json
import logging
import platform
import shlex
import socket
import subprocess
from pathlib import Path
from typing import Any

from . import __version__, modules

log = logging.getLogger(__name__)

ROOT = Path("/")


def read_os_release(root: Path = ROOT) -> dict[str, str]:
    """/etc/os-release (or /usr/lib/os-release) as a dict, quotes removed."""
    for rel in ("etc/os-release", "usr/lib/os-release"):
        try:
            text = (root / rel).read_text()
        except OSError:
            continue
        out: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.strip().partition("=")
            if not sep or key.startswith("#"):
                continue
            try:
                words = shlex.split(value)
            except ValueError:
                words = [value.strip("\"'")]
            out[key] = " ".join(words)
        return out
    return {}


def read_model(root: Path = ROOT) -> str:
    """The board (device tree) or, on PCs, the DMI product name."""
    for rel in ("proc/device-tree/model", "sys/firmware/devicetree/base/model", "sys/class/dmi/id/product_name"):
        try:
            model = (root / rel).read_bytes().replace(b"\x00", b"").decode("utf-8", "replace").strip()
        except OSError:
            continue
        if model:
            return model
    return ""


def _usable(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr.split("%")[0])
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified or ip.is_multicast)


def parse_ip_json(text: str) -> list[str]:
    """Non-loopback addresses from ``ip -j addr`` output, in interface order."""
    try:
        links = json.loads(text)
    except ValueError:
        return []
    out: list[str] = []
    for link in links if isinstance(links, list) else []:
        if not isinstance(link, dict) or "LOOPBACK" in (link.get("flags") or []):
            continue
        for a in link.get("addr_info") or []:
            addr = str(a.get("local", "")) if isinstance(a, dict) else ""
            if addr and a.get("scope") != "host" and _usable(addr) and addr not in out:
                out.append(addr)
    return out


def _addresses_from_ip() -> list[str] | None:
    try:
        p = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if p.returncode != 0 or not p.stdout.strip():
        return None
    return parse_ip_json(p.stdout)


def _addresses_from_sockets() -> list[str]:
    """Without iproute2: the source address the kernel would use for the internet, plus the host name's."""
    out: list[str] = []
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))  # UDP connect sends nothing; it only picks a route
                out.append(str(s.getsockname()[0]))
        except OSError:
            pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, proto=socket.IPPROTO_TCP):
            out.append(str(info[4][0]))
    except OSError:
        pass
    seen: list[str] = []
    for a in out:
        if _usable(a) and a not in seen:
            seen.append(a)
    return seen


def addresses() -> list[str]:
    found = _addresses_from_ip()
    return found if found is not None else _addresses_from_sockets()


# Within the server's limits (docs/protocol.md §13: 128 addresses, 256 characters a field), which refuse the
# whole check-in: a host with a container per veth has hundreds of link-local addresses; the first are its own.
MAX_ADDRESSES = 64
MAX_TEXT = 256
MAX_EXTRA_VALUE = 1024


def _listed(names: list[str]) -> str:
    """Comma-separated, whole names only, within the server's limit for an extra value."""
    out = ""
    for n in names:
        if len(out) + len(n) + 1 > MAX_EXTRA_VALUE:
            log.warning("too many update modules to report; %s and those after it are left out", n)
            break
        out = f"{out},{n}" if out else n
    return out


def collect(root: Path = ROOT) -> dict[str, Any]:
    """The whole inventory; fields that cannot be read are left out."""
    osr = read_os_release(root)
    uname = platform.uname()
    inv: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "os": osr.get("PRETTY_NAME") or osr.get("NAME") or uname.system,
        "os_version": osr.get("VERSION_ID", ""),
        "kernel": uname.release,
        "arch": uname.machine,
        "model": read_model(root),
        "addresses": [a for a in addresses() if len(a) <= MAX_TEXT][:MAX_ADDRESSES],
        "agent_version": __version__,
        # The update modules this agent installs with (the server refuses a deploy whose module a device lacks).
        "extra": {"update_modules": _listed(modules.available())},
    }
    return {k: v[:MAX_TEXT] if isinstance(v, str) else v for k, v in inv.items() if v}


__all__ = ["addresses", "collect", "parse_ip_json", "read_model", "read_os_release"]
