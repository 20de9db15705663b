"""The agent's footprint: idle RSS and CPU of a real `fleet-agent.pyz run` checking in with a real fleetd, in each
of its three modes side by side over the same window: plain HTTPS polling, remote access on (its WebSocket channel
open to the server) and MQTT on (connected to Debian's mosquitto with the certificate the fleet issued it).

The baseline is a bare interpreter that imports what the agent cannot do
without (httpx, zeroconf, cryptography) and sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..agent.e2e_helpers import AgentProcess
from ..e2e.server import fleetd_cmd
from .procs import REPO, cpu_seconds, rss_kib
from .servers import Service, start_fleetd

AGENT_PYZ = REPO / "dist" / "fleet-agent.pyz"
CHECKIN_ROUTE = "/fleetd.v1.DeviceService/CheckIn"
HARDWARE_ID = "bench-agent"
BASELINE_CODE = "import httpx, zeroconf, cryptography, time; time.sleep(86400)"
TARGET_RSS_MIB = 40.0  # in every mode (issues 19, 20, 21)
READY_TIMEOUT = 90.0  # s for a mode to come up (first check-in, certificate, connection)
MODE_NAMES = {"plain": "HTTPS polling", "remote": "remote access on", "mqtt": "MQTT on"}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_agent(pyz: Path = AGENT_PYZ) -> Path:
    """The zipapp `make agent` builds; built here when it is missing."""
    if not pyz.exists():
        log(f"building {pyz.relative_to(REPO)} (python agent/build_zipapp.py)")
        subprocess.run([sys.executable, str(REPO / "agent" / "build_zipapp.py")], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
        if not pyz.exists():
            raise RuntimeError(f"agent/build_zipapp.py ran but {pyz} is still missing")
    return pyz


def _env() -> dict[str, str]:
    """This interpreter's environment without FLEET_AGENT_* knobs (they would change what is measured)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_AGENT_")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


class Admin:
    """Admin RPCs and metrics against the fleetd under test, verifying its CA."""

    def __init__(self, server: Service, data_dir: Path) -> None:
        p = subprocess.run([*fleetd_cmd(), "keys", "create", "--data-dir", str(data_dir), "--name", "bench-agent",
                            "--role", "admin", "--json"], capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"fleetd keys create exited {p.returncode}: {p.stderr.strip()}")
        key = json.loads(p.stdout)["key"]
        self.http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30,
                                 verify=ssl.create_default_context(cafile=data_dir / "ca.pem"))

    def call(self, service: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.http.post(f"/fleetd.v1.{service}/{method}", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"{service}.{method}: {r.status_code} {r.text}")
        return dict(r.json())

    def checkins(self) -> int:
        """CheckIn requests the server has answered so far (any status), from /metrics."""
        r = self.http.get("/metrics")
        r.raise_for_status()
        return count_checkins(r.text)

    def close(self) -> None:
        self.http.close()


def count_checkins(metrics: str) -> int:
    total = 0
    for line in metrics.splitlines():
        if line.startswith("fleetd_http_requests_total{") and f'route="{CHECKIN_ROUTE}"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


class Proc(AgentProcess):
    """A process the benchmark started in its own session, stopped with everything left in that session."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        super().__init__(argv, log_path, _env())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.proc.args!r} exited with {self.proc.returncode}:\n{self.log()[-4000:]}")


@dataclass
class Window:
    """What was sampled from one process over the measured window."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    rss_kib: list[int] = field(default_factory=list)

    @property
    def cpu_pct(self) -> float:
        return 100.0 * self.cpu_seconds / self.seconds if self.seconds else 0.0

    @property
    def rss_mib(self) -> float:
        return statistics.median(self.rss_kib) / 1024 if self.rss_kib else 0.0

    @property
    def peak_mib(self) -> float:
        return max(self.rss_kib) / 1024 if self.rss_kib else 0.0


def sample(procs: dict[str, Proc], seconds: float, interval: float) -> dict[str, Window]:
    """VmRSS every ``interval`` s and utime+stime at both ends, for each process, over ``seconds``."""
    wins = {name: Window() for name in procs}
    cpu0 = {name: cpu_seconds(p.pid) for name, p in procs.items()}
    t0 = time.monotonic()
    end = t0 + seconds
    while True:
        for name, p in procs.items():
            p.alive()
            wins[name].rss_kib.append(rss_kib(p.pid))
        left = end - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(interval, left))
    elapsed = time.monotonic() - t0
    for name, p in procs.items():
        wins[name].seconds = elapsed
        wins[name].cpu_seconds = cpu_seconds(p.pid) - cpu0[name]
    return wins


def _last_seen(admin: Admin, device_id: str) -> str | None:
    seen = admin.call("DeviceAdminService", "GetDevice", {"id": device_id}).get("last_seen")
    return str(seen) if seen else None


@dataclass
class Mode:
    """One agent under measurement: its own fleetd (so the check-ins counted are its own), enrolled and running."""

    name: str
    admin: Admin
    device_id: str
    proc: Proc
    ready: str  # what its log says once the mode is up ("" for plain polling)


def _start_mode(name: str, work: Path, logs: Path, pyz: Path, poll_interval: int, stack: contextlib.ExitStack,
                env: dict[str, str] | None = None, conf: str = "", ready: str = "") -> Mode:
    data, state = work / f"{name}-data", work / f"{name}-state"
    server = start_fleetd(data, logs, f"fleetd-agent-{name}", env=env)
    stack.callback(server.stop)
    admin = Admin(server, data)
    stack.callback(admin.close)
    token = admin.call("EnrollmentService", "CreateToken", {"description": f"benchmark agent ({name})",
                                                            "uses": 1})["token"]
    p = subprocess.run([sys.executable, str(pyz), "enroll", "--token", token, "--server", server.url,
                        "--state-dir", str(state), "--hardware-id", HARDWARE_ID, "--json"],
                       capture_output=True, text=True, env=_env(), timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"fleet-agent enroll ({name}) exited {p.returncode}:\n{p.stdout}{p.stderr}")
    device_id = str(json.loads(p.stdout)["device_id"])
    admin.call("DeviceAdminService", "UpdateDevice", {"id": device_id, "poll_interval": poll_interval})
    if conf:
        (state / "agent.conf").write_text(conf)
    proc = Proc([sys.executable, str(pyz), "run", "--state-dir", str(state)], logs / f"agent-{name}.log")
    stack.callback(proc.stop)
    return Mode(name, admin, device_id, proc, ready)


def _mqtt_fleet(work: Path, stack: contextlib.ExitStack) -> dict[str, str]:
    """Debian's mosquitto configured by `fleetd mqtt broker-config` for a fresh fleet at ``work``/mqtt-data; the
    settings that point that fleet's fleetd at it."""
    from fleetd.core import pki

    from ..mqtt.broker import broker_for

    data = work / "mqtt-data"
    data.mkdir(parents=True)
    pki.load_or_create(data)
    broker = stack.enter_context(broker_for(data))
    return {"FLEETD_MQTT_URL": f"mqtts://localhost:{broker.port}"}


def _wait_ready(modes: list[Mode], timeout: float) -> None:
    """Until every mode's log says it is up (the channel open, the broker connected)."""
    deadline = time.monotonic() + timeout
    for m in modes:
        while m.ready and m.ready not in m.proc.log():
            m.proc.alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {m.name} agent is not up after {timeout:g} s (its log never said "
                                   f"{m.ready!r}):\n{m.proc.log()[-4000:]}")
            time.sleep(0.2)


def measure(work: Path, logs: Path, minutes: float, poll_interval: int = 30, settle: float = 60.0,
            pyz: Path | None = None) -> dict[str, Any]:
    """Enroll a real agent in each mode (MODE_NAMES) with a fresh fleetd of its own, let them settle, then sample them
    and the baseline together for ``minutes``."""
    pyz = ensure_agent(pyz or AGENT_PYZ)
    if work.exists() and any(work.iterdir()):
        raise RuntimeError(f"{work} is not empty; the agent benchmark needs a fresh directory")
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        modes = [
            _start_mode("plain", work, logs, pyz, poll_interval, stack),
            _start_mode("remote", work, logs, pyz, poll_interval, stack, env={"FLEETD_REMOTE_ACCESS": "true"},
                        conf="remote_access = true\n", ready="remote access: channel open"),
            _start_mode("mqtt", work, logs, pyz, poll_interval, stack, env=_mqtt_fleet(work, stack),
                        ready="connected to the MQTT broker"),
        ]
        baseline = Proc([sys.executable, "-c", BASELINE_CODE], logs / "agent-baseline.log")
        stack.callback(baseline.stop)
        _wait_ready(modes, READY_TIMEOUT)
        log(f"agent: {', '.join(m.name for m in modes)} up, poll interval {poll_interval} s; settling for "
            f"{settle:g} s")
        time.sleep(settle)
        for m in modes:
            m.proc.alive()
        before = {m.name: (_last_seen(m.admin, m.device_id), m.admin.checkins()) for m in modes}
        log(f"agent: sampling RSS and CPU for {minutes:g} min")
        procs = {m.name: m.proc for m in modes}
        wins = sample({**procs, "baseline": baseline}, minutes * 60, min(5.0, max(0.5, minutes * 6)))
        after = {m.name: (_last_seen(m.admin, m.device_id), m.admin.checkins()) for m in modes}
    b = wins["baseline"]
    out: dict[str, Any] = {"minutes": minutes, "poll_interval": poll_interval, "settle_seconds": settle,
                           "baseline_rss_mib": round(b.rss_mib, 1), "baseline_cpu_pct": round(b.cpu_pct, 3),
                           "target_rss_mib": TARGET_RSS_MIB, "samples": len(b.rss_kib), "modes": {}}
    for name in procs:
        a = wins[name]
        (seen0, count0), (seen1, count1) = before[name], after[name]
        out["modes"][name] = {
            "rss_mib": round(a.rss_mib, 1), "peak_rss_mib": round(a.peak_mib, 1), "cpu_pct": round(a.cpu_pct, 3),
            "cpu_seconds": round(a.cpu_seconds, 2), "checkins": count1 - count0,
            "expected_checkins": round(a.seconds / poll_interval, 1), "last_seen_before": seen0,
            "last_seen_after": seen1, "last_seen_advanced": seen1 is not None and seen1 != seen0}
    return out
