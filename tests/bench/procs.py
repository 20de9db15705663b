"""Processes and the machine: required tools, RSS and CPU of a pid, CPU steal, machine facts."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import ssl
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")

# tool -> (what needs it, how to get it)
TOOLS: dict[str, tuple[str, str]] = {
    "wrk": ("the load generator of every HTTP benchmark", "sudo apt-get install wrk"),
    "nginx": ("the download baseline", "sudo apt-get install nginx-light   (any Debian nginx package works)"),
    "py-spy": ("profiling the check-in path", f"{sys.executable} -m pip install py-spy"),
    "haproxy": ("the PostgreSQL benchmark's replicas behind a load balancer", "sudo apt-get install haproxy"),
    "mosquitto_pub": ("the MQTT benchmark's publishing devices", "sudo apt-get install mosquitto-clients"),
}


def find_tool(name: str) -> str | None:
    """A tool on PATH, or beside this interpreter (py-spy installed into the venv)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def missing_tools(names: list[str]) -> list[str]:
    """One line per missing tool: what it is for and how to install it."""
    return [f"  {n}: needed for {TOOLS[n][0]}; install it with: {TOOLS[n][1]}" for n in names if not find_tool(n)]


# --- one process -----------------------------------------------------------

def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (or VmHWM, the peak) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def tree_rss_kib(pid: int, field: str = "VmRSS") -> int:
    """rss_kib of a process and its children, e.g. the one-file binary's bootloader and the server it runs (a
    peak: the sum of each one's, an upper bound)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        children = []
    return rss_kib(pid, field) + sum(tree_rss_kib(c, field) for c in children)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15 of stat)


class RssSampler:
    """Samples a process's VmRSS in a thread while a measurement runs; ``peak_kib`` is the highest seen."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kib = max(self.peak_kib, rss_kib(self.pid))
            except (OSError, RuntimeError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the machine -----------------------------------------------------------

def _cpu_times() -> tuple[int, int]:
    """(steal, total) jiffies over all CPUs."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    total = sum(parts[:8])  # guest time is already counted in user
    return parts[7] if len(parts) > 7 else 0, total


class StealMeter:
    """The share of CPU time the hypervisor took away while the block ran: a noise indicator."""

    def __enter__(self) -> StealMeter:
        self._start = _cpu_times()
        self.percent = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        steal, total = _cpu_times()
        d_total = total - self._start[1]
        self.percent = 100.0 * (steal - self._start[0]) / d_total if d_total else 0.0


def _first_line(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    out = (p.stdout or p.stderr).strip().splitlines()
    return out[0] if out else "?"


def machine_info() -> dict[str, str | int]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if model == "?":
        model = platform.processor() or "?"
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    info: dict[str, str | int] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count() or 0,
        "cpu_model": model,
        "memory_gib": round(mem_kib / (1 << 20)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "litestar": version("litestar"),
        "uvicorn": version("uvicorn"),
        "msgspec": version("msgspec"),
        "openssl": ssl.OPENSSL_VERSION,
    }
    wrk = find_tool("wrk")
    if wrk:
        info["wrk"] = _first_line([wrk, "--version"]).split(" [")[0]
    nginx = find_tool("nginx")
    if nginx:
        info["nginx"] = _first_line([nginx, "-v"]).rpartition(":")[2].strip()
    return info
