"""A fleet of simulated devices in one asyncio process, each a real protocol client.

Every device enrolls (starts are staggered, and a 429 from the server's
enrollment limit pauses all enrolling devices until its Retry-After), checks in
on its interval with jitter, pushes a few telemetry points per check-in, and
carries out its actions: installs download the artifact over HTTPS and verify
it (signature, manifest, hash and size) before they may succeed. A server that
goes away costs errors and backoff, never the process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..core.errors import InvalidArgument
from ..core.fsutil import atomic_write
from ..devices.actions import DEPLOYING, PROGRESS, ActionKind, DeviceAction
from .devclient import DeviceClient, DeviceError, VerificationError, b64, raw_private_key

DEVICE_TYPE = "sim"
STATE_FORMAT = "fleetd-sim-state-v1"
# Devices started per second; the server allows bursts within its per-minute enrollment limit.
START_RATE = 50.0
MAX_BACKOFF = 30.0
# Steps of an install that a device reports, in the order the protocol allows.
# What a simulated device reports for each kind that only runs a command ({component}: the action's).
DONE = {ActionKind.RESTART: "restarted {component}", ActionKind.REBOOT: "rebooted",
        ActionKind.CONFIG: "configuration applied", ActionKind.LOGS: "the last lines of {component}'s simulated log"}
# A simulated app's log: this many lines at most, whatever a logs action asks for.
SIM_LOG_LINES = 5
SIMULATED_FAILURE = "simulated failure"


@dataclass
class SimOptions:
    server: str
    token: str = ""
    devices: int = 10
    interval: float | None = None  # None: the interval the server asks for
    fail_rate: float = 0.0
    duration: float = 0.0  # 0: until stopped
    prefix: str = "sim"
    state_file: Path | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= 100_000:
            raise InvalidArgument(f"--devices must be 1..100000, got {self.devices}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise InvalidArgument(f"--fail-rate is a probability 0..1, got {self.fail_rate}")
        if self.interval is not None and self.interval < 0.2:
            raise InvalidArgument(f"--interval must be at least 0.2 seconds, got {self.interval}")
        if self.duration < 0:
            raise InvalidArgument("--duration must be 0 (until Ctrl-C) or positive")
        hw = f"{self.prefix}-{self.devices}"
        if not self.prefix or not self.prefix[0].isalnum() or len(hw) > 128 \
                or any(not (c.isalnum() and c.isascii()) and c not in "_.:-" for c in self.prefix):
            raise InvalidArgument(f"--prefix {self.prefix!r} must be letters, digits and _.:- starting with a "
                                  "letter or digit (hardware ids are PREFIX-N)")


@dataclass
class Stats:
    devices: int = 0
    check_ins: int = 0
    telemetry_points: int = 0
    actions_succeeded: int = 0
    actions_failed: int = 0
    errors: int = 0
    throttled: int = 0
    last_error: str = ""
    started: float = field(default_factory=time.monotonic)
    _samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    def error(self, e: BaseException) -> None:
        self.errors += 1
        self.last_error = str(e)

    def rate(self) -> float:
        """Check-ins per second over the last ~5 seconds."""
        now = time.monotonic()
        self._samples.append((now, self.check_ins))
        while len(self._samples) > 2 and now - self._samples[0][0] > 5:
            self._samples.popleft()
        t0, n0 = self._samples[0]
        return (self.check_ins - n0) / (now - t0) if now > t0 else 0.0


# --- persistent identities ---------------------------------------------------------

@dataclass
class Identity:
    key: Ed25519PrivateKey
    device_id: str = ""
    signing_public_key: bytes | None = None
    installed: dict[str, str] = field(default_factory=dict)


class SimState:
    """Keys, device ids and installed versions per hardware id; optionally kept in a JSON file (0600)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.ca_pem = ""
        self.ca_fingerprint = ""
        self.identities: dict[str, Identity] = {}
        self.dirty = False
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            if data.get("format") != STATE_FORMAT:
                raise ValueError(f"format is not {STATE_FORMAT}")
            self.ca_pem = data.get("ca_pem", "")
            self.ca_fingerprint = data.get("ca_fingerprint", "")
            for hw, d in data["devices"].items():
                self.identities[hw] = Identity(
                    key=Ed25519PrivateKey.from_private_bytes(base64.b64decode(d["key"])),
                    device_id=d.get("device_id", ""),
                    signing_public_key=base64.b64decode(d["signing_public_key"]) if d.get("signing_public_key")
                    else None,
                    installed=dict(d.get("installed", {})))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InvalidArgument(f"state file {path} is unreadable ({e}); give another --state file or "
                                  "delete this one to enroll new devices") from None

    def identity(self, hardware_id: str) -> Identity:
        ident = self.identities.get(hardware_id)
        if ident is None:
            ident = self.identities[hardware_id] = Identity(Ed25519PrivateKey.generate())
            self.dirty = True
        return ident

    def to_json(self) -> bytes:
        return json.dumps({
            "format": STATE_FORMAT, "ca_pem": self.ca_pem, "ca_fingerprint": self.ca_fingerprint,
            "devices": {hw: {"key": b64(raw_private_key(i.key)), "device_id": i.device_id,
                             "signing_public_key": b64(i.signing_public_key) if i.signing_public_key else "",
                             "installed": i.installed}
                        for hw, i in self.identities.items()},
        }, indent=1).encode()

    async def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.dirty = False
        data = self.to_json()
        path = self.path
        await asyncio.to_thread(atomic_write, path, data, 0o600)


# --- one device --------------------------------------------------------------------

class SimDevice:
    def __init__(self, sim: Simulator, n: int, ident: Identity) -> None:
        self.sim = sim
        self.ident = ident
        self.hardware_id = f"{sim.opts.prefix}-{n}"
        self.client = DeviceClient(sim.http, sim.opts.server, self.hardware_id, DEVICE_TYPE, ident.key,
                                   device_id=ident.device_id, signing_public_key=ident.signing_public_key)
        self.walk = {"cpu": random.uniform(5, 40), "mem": random.uniform(20, 60), "temp": random.uniform(35, 55)}
        self.stopped = False  # revoked, or enrollment refused: nothing more to do

    @property
    def status(self) -> str:
        return self.client.status if self.client.device_id else ""

    def inventory(self) -> dict[str, Any]:
        return {"hostname": self.hardware_id, "os": "fleetd-sim", "arch": "sim", "model": "simulated device",
                "agent_version": "sim", "addresses": ["127.0.0.1"]}

    def components(self) -> list[dict[str, Any]]:
        return [{"name": n, "version": v, "state": "running", "health": "healthy"}
                for n, v in sorted(self.ident.installed.items())]

    def points(self) -> list[dict[str, Any]]:
        bounds = {"cpu": (0.0, 100.0), "mem": (0.0, 100.0), "temp": (20.0, 95.0)}
        t = time.time()
        out = []
        for name, (lo, hi) in bounds.items():
            self.walk[name] = min(hi, max(lo, self.walk[name] + random.gauss(0, 2)))
            out.append({"name": name, "value": round(self.walk[name], 2), "ts": t})
        return out

    async def enroll(self) -> None:
        opts = self.sim.opts
        await self.sim.wait_gate()
        try:
            resp = await self.client.enroll(opts.token, inventory=self.inventory())
        except DeviceError as e:
            if e.code != "already_exists":
                raise
            hw = self.hardware_id  # another key has it (docs/protocol.md §5): this run lost its --state file
            raise DeviceError(e.code, f"hardware id {hw} is already enrolled with another key (did the simulator "
                              f"lose its --state file?). An admin runs 'fleetd devices rekey {hw}' and gives the "
                              "device the token it prints, or deletes the device; or simulate with another "
                              "--prefix.", e.http_status) from None
        self.ident.device_id = resp.device_id
        self.ident.signing_public_key = self.client.signing_public_key
        self.sim.state.dirty = True
        if not self.sim.state.ca_fingerprint:
            self.sim.state.ca_fingerprint = resp.ca_fingerprint

    async def once(self) -> float:
        """Enroll if needed, check in, push telemetry, run actions; the delay until the next round."""
        if not self.client.device_id:
            try:
                await self.enroll()
            except DeviceError as e:
                if not e.transient:
                    # A bad, expired or used-up token does not get better by asking again.
                    self.stopped = True
                raise
        if self.client.needs_auth:
            await self.sim.wait_gate()
        resp = await self.client.check_in(self.inventory(), self.components())
        self.sim.stats.check_ins += 1
        if resp.status == "active":
            accepted = await self.client.push_telemetry(self.points())
            self.sim.stats.telemetry_points += accepted  # (`+= await` would add to a stale total)
        for action in resp.actions:
            await self.execute(action)
        interval = self.sim.opts.interval or resp.next_checkin or resp.poll_interval or 60
        if resp.actions:
            return 0.1  # tell the server about the new versions at once
        return interval * random.uniform(0.9, 1.1)

    async def run(self, delay: float) -> None:
        stop = self.sim.stop
        if await _sleep(stop, delay):
            return
        failures = 0
        while not stop.is_set() and not self.stopped:
            try:
                wait = await self.once()
                failures = 0
            except DeviceError as e:
                wait = self.handle_error(e, failures)
                failures += 1
            except Exception as e:  # a bug or local trouble must not end the simulation: count it, go on
                self.sim.stats.error(e)
                failures += 1
                wait = _backoff(failures)
            if await _sleep(stop, wait):
                return

    def handle_error(self, e: DeviceError, failures: int) -> float:
        stats = self.sim.stats
        if e.code == "resource_exhausted":
            stats.throttled += 1
            wait = (e.retry_after or 5.0) + random.uniform(0, 2)
            self.sim.close_gate(wait)
            return wait
        stats.error(e)
        if e.code == "permission_denied" and "revoked" in e.message:
            self.client.status = "revoked"
            self.stopped = True
        elif e.code == "unauthenticated" and self.sim.opts.token and "enroll" in e.message:
            # The server no longer knows this device (deleted, or another data dir): enroll again.
            self.client.device_id = ""
            self.ident.installed.clear()
        return _backoff(failures + 1)

    # --- actions ---------------------------------------------------------------
    async def execute(self, a: DeviceAction) -> None:
        state = a.state
        if state == "offered":
            await self.client.report(a.id, "accepted", "accepted by the simulator")
            state = "accepted"
        if a.kind in DEPLOYING:
            await self.install(a, state)
        elif a.kind in DONE:
            result = self.log_lines(a) if a.kind == ActionKind.LOGS else None
            await self.finish(a, "succeeded", DONE[ActionKind(a.kind)].format(component=a.component), result)
        else:
            await self.finish(a, "failed", f"a simulated device cannot carry out {a.kind!r} actions")

    def log_lines(self, a: DeviceAction) -> dict[str, Any]:
        """A few synthetic lines for a logs action, as the last lines of the app's log."""
        version = self.ident.installed.get(a.component, "?")
        n = max(1, min(SIM_LOG_LINES, int(a.params.get("lines") or SIM_LOG_LINES)))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        text = "".join(f"{stamp} {self.hardware_id} {a.component} {version}: simulated log line {i} of {n}\n"
                       for i in range(1, n + 1))
        return {"text": text, "lines": n, "truncated": False}

    async def finish(self, a: DeviceAction, state: str, message: str, result: dict[str, Any] | None = None) -> None:
        await self.client.report(a.id, state, message, 100 if state == "succeeded" else 0, result)
        if state == "succeeded":
            self.sim.stats.actions_succeeded += 1
        else:
            self.sim.stats.actions_failed += 1

    async def install(self, a: DeviceAction, state: str) -> None:
        async def step(to: str, message: str = "", progress: int = 0) -> None:
            # A resumed action may already be past a step; the protocol never goes back.
            if PROGRESS.index(to) >= PROGRESS.index(state):
                await self.client.report(a.id, to, message, progress)

        ref = a.artifact
        if ref is None:
            if a.kind == "rollback":
                self.ident.installed.pop(a.component, None)
                self.sim.state.dirty = True
                await self.finish(a, "succeeded", f"no previous version of {a.component}; removed it")
            else:
                await self.finish(a, "failed", "the install action carries no artifact reference")
            return
        label = f"{ref.name}@{ref.version}"
        await step("downloading", f"downloading {label}")
        try:
            dl = await self.client.download(ref)
            await step("verifying", f"verifying {label}", 50)
            self.client.verify(ref, download=dl)
        except VerificationError as e:
            await self.finish(a, "failed", f"verification failed: {e.message}")
            return
        except DeviceError as e:
            if e.transient:
                raise  # the action stays open; the next check-in resumes it
            await self.finish(a, "failed", f"download failed: {e.message}")
            return
        await step("installing", f"installing {label}", 75)
        if random.random() < self.sim.opts.fail_rate:
            await self.finish(a, "failed", f"{SIMULATED_FAILURE} while installing {label} (--fail-rate)")
            return
        self.ident.installed[a.component or ref.name] = ref.version
        self.sim.state.dirty = True
        verb = "rolled back to" if a.kind == "rollback" else "installed"
        await self.finish(a, "succeeded", f"{verb} {label}")


def _backoff(failures: int) -> float:
    return min(MAX_BACKOFF, 2.0 ** min(failures, 10)) * random.uniform(0.5, 1.0)


async def _sleep(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, waking early when stopped; True when stopped."""
    if seconds <= 0:
        return stop.is_set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


# --- the simulator ----------------------------------------------------------------------

class Simulator:
    def __init__(self, opts: SimOptions, http: httpx.AsyncClient, state: SimState) -> None:
        self.opts = opts
        self.http = http
        self.state = state
        self.stats = Stats(devices=opts.devices)
        self.stop = asyncio.Event()
        self._gate = 0.0
        self.devices = [SimDevice(self, n, state.identity(f"{opts.prefix}-{n}"))
                        for n in range(1, opts.devices + 1)]

    def close_gate(self, seconds: float) -> None:
        """After a 429, no device enrolls or authenticates until the server's Retry-After has passed."""
        self._gate = max(self._gate, time.monotonic() + seconds)

    async def wait_gate(self) -> None:
        while (left := self._gate - time.monotonic()) > 0 and not self.stop.is_set():
            await _sleep(self.stop, left + random.uniform(0, 1))

    def counts(self) -> dict[str, int]:
        statuses = [d.status for d in self.devices]
        return {"enrolled": sum(1 for d in self.devices if d.client.device_id), "active": statuses.count("active"),
                "pending": statuses.count("pending"), "revoked": statuses.count("revoked")}

    def summary(self) -> dict[str, Any]:
        s = self.stats
        seconds = time.monotonic() - s.started
        return {"devices": s.devices, **self.counts(), "check_ins": s.check_ins,
                "check_ins_per_second": round(s.check_ins / seconds, 2) if seconds > 0 else 0.0,
                "telemetry_points": s.telemetry_points, "actions_succeeded": s.actions_succeeded,
                "actions_failed": s.actions_failed, "errors": s.errors, "throttled": s.throttled,
                "last_error": s.last_error, "seconds": round(seconds, 1)}

    async def _saver(self) -> None:
        while not self.stop.is_set():
            await _sleep(self.stop, 2.0)
            try:
                await self.state.save()
            except OSError as e:
                self.state.dirty = True
                self.stats.error(e)

    async def run(self, on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
        tasks = [asyncio.create_task(d.run(i / START_RATE), name=d.hardware_id)
                 for i, d in enumerate(self.devices)]
        saver = asyncio.create_task(self._saver())
        deadline = time.monotonic() + self.opts.duration if self.opts.duration else None
        try:
            while not self.stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if all(d.stopped for d in self.devices):
                    break
                if on_tick:
                    on_tick()
                await _sleep(self.stop, 0.5)
        finally:
            self.stop.set()
            # Let devices finish the call in flight, then give up on stragglers.
            _, pending = await asyncio.wait([*tasks, saver], timeout=5)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await self.state.save()
        return self.summary()


def make_http_client(ca_pem: str | None, devices: int) -> httpx.AsyncClient:
    """One pool for all devices, trusting only the fleet CA."""
    import ssl
    verify: Any = True
    if ca_pem:
        verify = ssl.create_default_context(cadata=ca_pem)
    size = max(10, min(devices, 200))
    return httpx.AsyncClient(verify=verify, timeout=httpx.Timeout(30.0, connect=10.0),
                             limits=httpx.Limits(max_connections=size, max_keepalive_connections=size))


__all__ = ["SIMULATED_FAILURE", "SimOptions", "SimState", "Simulator", "Stats", "make_http_client"]
