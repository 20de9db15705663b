"""A small LAN for tests: two network namespaces joined by a veth pair.

What crosses a real network (mDNS multicast, a server seen at an address that
is not loopback) is tested between namespaces, not on loopback. Each namespace
has its own loopback (up) and one end of the veth pair with an address on
10.77.0.0/24; nothing else, so nothing leaks to or from the host's network.

Needs root and iproute2 (``ip``). Processes go into a namespace with
``ip netns exec``; the test's own Python code enters one on a worker thread
(``Netns.call``): ``setns`` changes the network namespace of the calling
thread only, and a child process forked from that thread starts in it too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
SUBNET = "10.77.0"


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to make network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (the ip command): apt install iproute2"
    return None


def _ip(*args: str) -> str:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {p.stderr.strip()}")
    return p.stdout


@dataclass(frozen=True)
class Netns:
    name: str
    address: str  # its address on the shared link

    def exec_prefix(self) -> list[str]:
        """Put in front of a command to run it in this namespace."""
        return ["ip", "netns", "exec", self.name]

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on a thread inside this namespace; its result, or its exception raised here."""
        out: dict[str, Any] = {}

        def run() -> None:
            try:
                enter(self.name)
                out["result"] = fn(*args, **kwargs)
            except BaseException as e:
                out["error"] = e

        t = threading.Thread(target=run, name=f"netns-{self.name}", daemon=True)
        t.start()
        t.join()
        if "error" in out:
            raise out["error"]
        return out["result"]  # type: ignore[no-any-return]

    def pids(self) -> list[int]:
        return [int(p) for p in _ip("netns", "pids", self.name).split()]


def enter(name: str) -> None:
    """Move the calling thread into namespace ``name`` (a thread that did so should end, not be reused)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def lan() -> Iterator[tuple[Netns, Netns]]:
    """Two namespaces, ``SUBNET.1`` and ``SUBNET.2``, on one link; removed (with anything left in them) after."""
    tag = "fd" + secrets.token_hex(3)
    a, b = Netns(f"{tag}a", f"{SUBNET}.1"), Netns(f"{tag}b", f"{SUBNET}.2")
    made: list[Netns] = []
    try:
        for ns in (a, b):
            _ip("netns", "add", ns.name)
            made.append(ns)
        # The veth ends are named after their namespaces (interface names have at most 15 characters).
        _ip("link", "add", a.name, "type", "veth", "peer", "name", b.name)
        for ns in (a, b):
            _ip("link", "set", ns.name, "netns", ns.name)
            _ip("-n", ns.name, "link", "set", "lo", "up")
            _ip("-n", ns.name, "addr", "add", f"{ns.address}/24", "dev", ns.name)
            _ip("-n", ns.name, "link", "set", ns.name, "up", "multicast", "on")
        yield a, b
    finally:
        for ns in made:
            # Whatever a test left running in there (servers, agents) would keep the namespace alive.
            with contextlib.suppress(RuntimeError):
                for pid in ns.pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", ns.name)


__all__ = ["SUBNET", "Netns", "enter", "lan", "unavailable"]
