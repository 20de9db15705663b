"""System telemetry read from /proc and /sys (every reader takes the root, so tests can hand it a fake tree).

Metric names (PushTelemetry points): ``cpu.percent`` (all CPUs, since the last
sample), ``cpu.load1``/``cpu.load5``/``cpu.load15``, ``mem.total``/``mem.used``/
``mem.available`` (bytes), ``disk.used_percent`` (the state dir's file system),
``cpu.temp`` (°C, where the kernel has a thermal zone), ``uptime`` (seconds).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROOT = Path("/")
# The server refuses timestamps before 2000-01-01; a board without a real-time clock may think it is 1970.
EARLIEST_TS = 946684800.0
_CPU_ZONE_HINTS = ("cpu", "soc", "x86_pkg", "core", "package")


def read_cpu_times(root: Path = ROOT) -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    try:
        with open(root / "proc/stat") as f:
            first = f.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    try:
        values = [int(v) for v in first[1:]]
    except ValueError:
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is already in user.
    values = values[:8]
    idle = sum(values[3:5])
    total = sum(values)
    return total - idle, total


def cpu_percent(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None:
        return None
    busy, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return None
    return round(100.0 * max(0, busy) / total, 2)


def read_loadavg(root: Path = ROOT) -> tuple[float, float, float] | None:
    try:
        parts = (root / "proc/loadavg").read_text().split()
        return float(parts[0]), float(parts[1]), float(parts[2])
    except (OSError, ValueError, IndexError):
        return None


def read_meminfo(root: Path = ROOT) -> dict[str, int]:
    """MemTotal, MemAvailable, … in bytes."""
    out: dict[str, int] = {}
    try:
        text = (root / "proc/meminfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if not fields:
            continue
        try:
            value = int(fields[0])
        except ValueError:
            continue
        out[key.strip()] = value * 1024 if len(fields) > 1 and fields[1].lower() == "kb" else value
    return out


def read_uptime(root: Path = ROOT) -> float | None:
    try:
        return float((root / "proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_cpu_temp(root: Path = ROOT) -> float | None:
    """°C: the hottest CPU-ish thermal zone, or the hottest zone when none is named like a CPU."""
    cpu: list[float] = []
    other: list[float] = []
    base = root / "sys/class/thermal"
    try:
        zones = sorted(p for p in base.iterdir() if p.name.startswith("thermal_zone"))
    except OSError:
        return None
    for zone in zones:
        try:
            milli = float((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue  # some zones answer EIO or ENODATA when their sensor sleeps
        celsius = milli / 1000.0
        if not -60.0 <= celsius <= 200.0:
            continue
        try:
            kind = (zone / "type").read_text().strip().lower()
        except OSError:
            kind = ""
        (cpu if any(h in kind for h in _CPU_ZONE_HINTS) else other).append(celsius)
    readings = cpu or other
    return round(max(readings), 2) if readings else None


def disk_used_percent(path: Path) -> float | None:
    """Used space of the file system holding ``path``, as df counts it (used / (used + available))."""
    try:
        st = os.statvfs(str(path))
    except OSError:
        return None
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    if used + avail <= 0:
        return None
    return round(100.0 * used / (used + avail), 2)


class Sampler:
    """One sample per call; cpu.percent is over the time since the previous sample (or since construction)."""

    def __init__(self, disk_path: Path, root: Path = ROOT) -> None:
        self.root = root
        self.disk_path = disk_path
        self._cpu = read_cpu_times(root)

    def sample(self, now: float | None = None) -> list[dict[str, Any]]:
        ts = time.time() if now is None else now
        if ts < EARLIEST_TS:
            ts = 0.0  # "when the server received it"
        values: dict[str, float | None] = {}
        cpu = read_cpu_times(self.root)
        values["cpu.percent"] = cpu_percent(self._cpu, cpu)
        if cpu is not None:
            self._cpu = cpu
        load = read_loadavg(self.root)
        if load is not None:
            values["cpu.load1"], values["cpu.load5"], values["cpu.load15"] = load
        mem = read_meminfo(self.root)
        if "MemTotal" in mem:
            total = mem["MemTotal"]
            available = mem.get("MemAvailable", mem.get("MemFree", 0) + mem.get("Buffers", 0) + mem.get("Cached", 0))
            values["mem.total"] = float(total)
            values["mem.available"] = float(available)
            values["mem.used"] = float(max(0, total - available))
        values["disk.used_percent"] = disk_used_percent(self.disk_path)
        values["cpu.temp"] = read_cpu_temp(self.root)
        values["uptime"] = read_uptime(self.root)
        return [{"name": k, "value": v, "ts": ts} for k, v in values.items() if v is not None]


__all__ = ["Sampler", "cpu_percent", "disk_used_percent", "read_cpu_temp", "read_cpu_times", "read_loadavg",
           "read_meminfo", "read_uptime"]
