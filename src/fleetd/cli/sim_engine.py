"""One worker process's share of a simulated fleet: each device a real protocol client, on one connection pool.

Every device enrolls and authenticates (both paced to the server's per-address
limits, sim_pacing.py), checks in at its own slot of the poll interval (spread()
places the slots so check-ins spread evenly), pushes a few telemetry points
per check-in, and carries out its actions: installs download the artifact over
HTTPS and verify it (signature, manifest, hash and size) before they may
succeed. A server that goes away costs errors and backoff, never the process.
sim_workers.py runs one :class:`Engine` per worker process and adds up their
reports.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..core.errors import InvalidArgument
from ..core.fsutil import atomic_write
from ..devices.actions import DEPLOYING, PROGRESS, ActionKind, DeviceAction
from .devclient import DeviceClient, DeviceError, VerificationError, b64, raw_private_key
from .sim_pacing import Pacer
from .sim_transport import client_on, make_transport

if TYPE_CHECKING:
    from ..devices.device_api import CheckInResponse

DEVICE_TYPE = "sim"
STATE_FORMAT = "fleetd-sim-state-v1"
MAX_BACKOFF = 30.0
# Enrollments (and authentications) a worker has in flight at once: enough to keep up with a server that
# allows many, few enough that at its first 429 only these few were already sent.
PACED_AT_ONCE = 8
# Connections to the server per worker: a device holds one only while a call of its own is in flight.
MAX_CONNECTIONS = 32
# A check-in that starts this much after its slot is late (the simulator could not keep up).
LATE = 1.0
# Distinct error messages the summary lists (more are counted under "other").
MAX_REASONS = 20
# What a simulated device reports for each kind that only runs a command ({component}: the action's).
DONE = {ActionKind.RESTART: "restarted {component}", ActionKind.REBOOT: "rebooted",
        ActionKind.CONFIG: "configuration applied", ActionKind.LOGS: "the last lines of {component}'s simulated log"}
# Delivery times a worker keeps between two reports to the parent (more are not sampled).
MAX_DELIVERY_SAMPLES = 100_000
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
    workers: int = 0  # 0: from the CPU count (sim_workers.default_workers)
    mqtt: bool = False  # devices on the server's MQTT broker once it names one (sim_mqtt.py)

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= 100_000:
            raise InvalidArgument(f"--devices must be 1..100000, got {self.devices}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise InvalidArgument(f"--fail-rate is a probability 0..1, got {self.fail_rate}")
        if self.interval is not None and self.interval < 0.2:
            raise InvalidArgument(f"--interval must be at least 0.2 seconds, got {self.interval}")
        if self.duration < 0:
            raise InvalidArgument("--duration must be 0 (until Ctrl-C) or positive")
        if not 0 <= self.workers <= 256:
            raise InvalidArgument(f"--workers must be 1..256 (or 0 for one per CPU core), got {self.workers}")
        hw = f"{self.prefix}-{self.devices}"
        if not self.prefix or not self.prefix[0].isalnum() or len(hw) > 128 \
                or any(not (c.isalnum() and c.isascii()) and c not in "_.:-" for c in self.prefix):
            raise InvalidArgument(f"--prefix {self.prefix!r} must be letters, digits and _.:- starting with a "
                                  "letter or digit (hardware ids are PREFIX-N)")


@dataclass
class Stats:
    """One worker's counters; the parent adds up every worker's (COUNTERS) and keeps the largest MAXIMA."""

    check_ins: int = 0
    telemetry_points: int = 0
    actions_succeeded: int = 0
    actions_failed: int = 0
    errors: int = 0
    throttled: int = 0  # 429 answers: the server's limit, paced to, not an error
    late_check_ins: int = 0  # started LATE seconds or more after their slot
    check_in_seconds: float = 0.0  # summed round-trip time of check-ins
    max_lateness: float = 0.0
    actions_over_mqtt: int = 0  # actions that first reached their device on its MQTT actions topic
    mqtt_connects: int = 0  # connections made to the broker (a reconnect counts again)
    last_error: str = ""
    reasons: Counter[str] = field(default_factory=Counter)
    # ms from each action's creation (its id's time) to its device first having it; sent to the parent, then cleared
    delivery_ms: list[float] = field(default_factory=list)

    def error(self, e: BaseException) -> None:
        self.errors += 1
        self.last_error = str(e)
        reason = self.last_error[:160]
        if reason in self.reasons or len(self.reasons) < MAX_REASONS:
            self.reasons[reason] += 1
        else:
            self.reasons["other"] += 1


COUNTERS = ("check_ins", "telemetry_points", "actions_succeeded", "actions_failed", "errors", "throttled",
            "late_check_ins", "check_in_seconds", "actions_over_mqtt", "mqtt_connects")
MAXIMA = ("max_lateness",)


# --- persistent identities ---------------------------------------------------------

@dataclass
class Identity:
    key: Ed25519PrivateKey
    device_id: str = ""
    signing_public_key: bytes | None = None
    installed: dict[str, str] = field(default_factory=dict)
    certificate: str = ""  # the client certificate (PEM) for the broker, with --mqtt
    certificate_renew_after: float = 0.0  # seconds since the epoch

    def to_dict(self) -> dict[str, Any]:
        return {"key": b64(raw_private_key(self.key)), "device_id": self.device_id,
                "signing_public_key": b64(self.signing_public_key) if self.signing_public_key else "",
                "installed": self.installed, "certificate": self.certificate,
                "certificate_renew_after": self.certificate_renew_after}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Identity:
        return cls(key=Ed25519PrivateKey.from_private_bytes(base64.b64decode(d["key"])),
                   device_id=d.get("device_id", ""),
                   signing_public_key=base64.b64decode(d["signing_public_key"]) if d.get("signing_public_key")
                   else None,
                   installed=dict(d.get("installed", {})), certificate=d.get("certificate", ""),
                   certificate_renew_after=float(d.get("certificate_renew_after", 0.0)))


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
                self.identities[hw] = Identity.from_dict(d)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InvalidArgument(f"state file {path} is unreadable ({e}); give another --state file or "
                                  "delete this one to enroll new devices") from None

    def identity(self, hardware_id: str) -> Identity:
        ident = self.identities.get(hardware_id)
        if ident is None:
            ident = self.identities[hardware_id] = Identity(Ed25519PrivateKey.generate())
            self.dirty = True
        return ident

    def update(self, changed: dict[str, dict[str, Any]], ca_fingerprint: str) -> None:
        """Take what a worker reports changed."""
        for hw, d in changed.items():
            self.identities[hw] = Identity.from_dict(d)
        if ca_fingerprint and not self.ca_fingerprint:
            self.ca_fingerprint = ca_fingerprint
        self.dirty = self.dirty or bool(changed)

    def to_json(self) -> bytes:
        return json.dumps({
            "format": STATE_FORMAT, "ca_pem": self.ca_pem, "ca_fingerprint": self.ca_fingerprint,
            "devices": {hw: i.to_dict() for hw, i in self.identities.items()},
        }, indent=1).encode()

    async def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.dirty = False
        data = self.to_json()
        path = self.path
        await asyncio.to_thread(atomic_write, path, data, 0o600)


# --- one device --------------------------------------------------------------------

class _Stopped(Exception):
    """The simulation ended while a device waited for its turn."""


class SimDevice:
    def __init__(self, eng: Engine, n: int, ident: Identity) -> None:
        self.eng = eng
        self.ident = ident
        self.hardware_id = f"{eng.opts.prefix}-{n}"
        self.phase = spread(n - 1)
        self.client = DeviceClient(eng.http, eng.opts.server, self.hardware_id, DEVICE_TYPE, ident.key,
                                   device_id=ident.device_id, signing_public_key=ident.signing_public_key)
        self.walk = {"cpu": random.uniform(5, 40), "mem": random.uniform(20, 60), "temp": random.uniform(35, 55)}
        self.interval = 0.0  # the period it checks in at, once it has checked in
        self.busy = False  # a call in flight: stopping lets it finish
        self.on_mqtt = self.was_on_mqtt = False  # connected to the broker now, ever (MqttSimDevice)
        self.stopped = False  # revoked, or enrollment refused: nothing more to do

    @property
    def status(self) -> str:
        return self.client.status if self.client.device_id else ""

    def changed(self) -> None:
        self.eng.changed.add(self.hardware_id)

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

    async def _paced(self, pacer: Pacer, call: Any) -> Any:
        """Make a call the server limits per address at the pace it allows; its 429s are waited out, not errors."""
        eng = self.eng
        while True:
            async with eng.paced_at_once[pacer.what]:
                if not await pacer.wait(eng.stop):
                    raise _Stopped()
                sent = time.monotonic()
                try:
                    result = await call()
                except DeviceError as e:
                    if e.code != "resource_exhausted":
                        if e.http_status:
                            pacer.accepted(sent)
                        raise
                    eng.stats.throttled += 1
                    pacer.throttled(e.retry_after)
                    continue
                pacer.accepted(sent)
                return result

    async def enroll(self) -> None:
        opts = self.eng.opts
        try:
            resp = await self._paced(self.eng.enroll_pacer,
                                     lambda: self.client.enroll(opts.token, inventory=self.inventory()))
        except DeviceError as e:
            if not e.transient:
                self.stopped = True  # a bad, expired or used-up token does not get better by asking again
            if e.code != "already_exists":
                raise
            hw = self.hardware_id  # another key has it (docs/protocol.md §5): this run lost its --state file
            raise DeviceError(e.code, f"hardware id {hw} is already enrolled with another key (did the simulator "
                              f"lose its --state file?). An admin runs 'fleetd devices rekey {hw}' and gives the "
                              "device the token it prints, or deletes the device; or simulate with another "
                              "--prefix.", e.http_status) from None
        self.ident.device_id = resp.device_id
        self.ident.signing_public_key = self.client.signing_public_key
        self.eng.ca_fingerprint = self.eng.ca_fingerprint or resp.ca_fingerprint
        self.changed()

    def next_slot(self, period: float, now: float) -> float:
        """This device's next slot of the fleet's schedule, at least half a period from now."""
        t0 = self.eng.t0
        m = math.ceil((now + period / 2 - t0) / period - self.phase)
        return t0 + (m + self.phase) * period

    async def once(self) -> float:
        """Enroll and authenticate if needed, check in, push telemetry, run actions; when to come again."""
        eng, stats = self.eng, self.eng.stats
        if not self.client.device_id:
            await self.enroll()
        if self.client.needs_auth:
            # Answered at once: the transport sends Authenticate before any waiting request.
            await self._paced(eng.auth_pacer, self.client.authenticate)
        started = time.monotonic()
        resp = await self.check_in()
        now = time.monotonic()
        stats.check_ins += 1
        stats.check_in_seconds += now - started
        if resp.status == "active":
            accepted = await self.push_telemetry(self.points())
            stats.telemetry_points += accepted  # (`+= await` would add to a stale total)
        for action in resp.actions:
            self.received(action, "check-in")
            await self.execute(action)
        period = float(eng.opts.interval or resp.poll_interval or resp.next_checkin or 60)
        self.interval = period
        if resp.actions:
            return time.monotonic() + 0.1  # tell the server about the new versions at once
        if not eng.opts.interval and 0 < resp.next_checkin < period:
            return now + resp.next_checkin  # the server wants it back sooner while an action is open
        return self.next_slot(period, now)

    async def run(self) -> None:
        failures = 0
        due = time.monotonic()
        while not self.stopped:
            lateness = time.monotonic() - due
            if self.interval and failures == 0:
                self.eng.stats.late_check_ins += lateness >= LATE
                self.eng.stats.max_lateness = max(self.eng.stats.max_lateness, lateness)
            self.busy = True
            try:
                due = await self.once()
                failures = 0
            except _Stopped:
                return
            except DeviceError as e:
                due = time.monotonic() + self.handle_error(e, failures)
                failures += 1
            except Exception as e:  # a bug or local trouble must not end the simulation: count it, go on
                self.eng.stats.error(e)
                failures += 1
                due = time.monotonic() + _backoff(failures)
            finally:
                self.busy = False
            if self.eng.stop.is_set():
                return
            await self.wait_until(due)

    # --- the transport (HTTPS here; sim_mqtt.py's MqttSimDevice sends over the broker once connected) ---------
    async def check_in(self) -> CheckInResponse:
        return await self.client.check_in(self.inventory(), self.components())

    async def push_telemetry(self, points: list[dict[str, Any]]) -> int:
        return await self.client.push_telemetry(points)

    async def report(self, action_id: str, state: str, message: str = "", progress: int = 0,
                     result: dict[str, Any] | None = None) -> None:
        await self.client.report(action_id, state, message, progress, result)

    async def wait_until(self, due: float) -> None:
        await asyncio.sleep(max(0.0, due - time.monotonic()))

    def received(self, a: DeviceAction, how: str) -> None:
        """With --mqtt, note how long the action took to reach the device, from its creation (the time in its id)."""
        if not self.eng.opts.mqtt:
            return
        made = created_at(a.id)
        if made is not None and len(self.eng.stats.delivery_ms) < MAX_DELIVERY_SAMPLES:
            self.eng.stats.delivery_ms.append(max(0.0, 1000 * (time.time() - made)))
        if how == "mqtt":
            self.eng.stats.actions_over_mqtt += 1

    def handle_error(self, e: DeviceError, failures: int) -> float:
        stats = self.eng.stats
        if e.code == "resource_exhausted":  # a challenge asked for inside a call (after a 401): paced too
            stats.throttled += 1
            self.eng.auth_pacer.throttled(e.retry_after)
            return 1.0  # then the pacer holds it until the Retry-After has passed
        stats.error(e)
        if e.code == "permission_denied" and "revoked" in e.message:
            self.client.status = "revoked"
            self.stopped = True
        elif e.code == "unauthenticated" and self.eng.opts.token and "enroll" in e.message:
            # The server no longer knows this device (deleted, or another data dir): enroll again.
            self.client.device_id = ""
            self.ident.installed.clear()
            self.changed()
        return _backoff(failures + 1)

    # --- actions ---------------------------------------------------------------
    async def execute(self, a: DeviceAction) -> None:
        state = a.state
        if state == "offered":
            await self.report(a.id, "accepted", "accepted by the simulator")
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
        await self.report(a.id, state, message, 100 if state == "succeeded" else 0, result)
        if state == "succeeded":
            self.eng.stats.actions_succeeded += 1
        else:
            self.eng.stats.actions_failed += 1

    async def install(self, a: DeviceAction, state: str) -> None:
        async def step(to: str, message: str = "", progress: int = 0) -> None:
            # A resumed action may already be past a step; the protocol never goes back.
            if PROGRESS.index(to) >= PROGRESS.index(state):
                await self.report(a.id, to, message, progress)

        ref = a.artifact
        if ref is None:
            if a.kind == "rollback":
                self.ident.installed.pop(a.component, None)
                self.changed()
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
        if random.random() < self.eng.opts.fail_rate:
            await self.finish(a, "failed", f"{SIMULATED_FAILURE} while installing {label} (--fail-rate)")
            return
        self.ident.installed[a.component or ref.name] = ref.version
        self.changed()
        verb = "rolled back to" if a.kind == "rollback" else "installed"
        await self.finish(a, "succeeded", f"{verb} {label}")


def spread(i: int) -> float:
    """Where in the interval device i+1 checks in: the i-th point of the van der Corput sequence (0, 1/2,
    1/4, 3/4, 1/8, …), so the whole fleet, and any first part of it (the devices enrolled so far), spreads
    evenly over the interval."""
    phase, half = 0.0, 0.5
    while i:
        phase += (i & 1) * half
        i, half = i >> 1, half / 2
    return phase


def created_at(action_id: str) -> float | None:
    """When an action was made, from its id (core/clock.new_ordered_id: act_ and 11 hex digits of ms), else None."""
    _, _, rest = action_id.partition("_")
    try:
        return int(rest[:11], 16) / 1000 if len(rest) > 11 else None
    except ValueError:
        return None


def _backoff(failures: int) -> float:
    return min(MAX_BACKOFF, 2.0 ** min(failures, 10)) * random.uniform(0.5, 1.0)


# --- one worker's devices -----------------------------------------------------------------

class Engine:
    """The devices of one worker process (device numbers ``numbers``), on one connection pool.

    ``t0`` is the fleet's schedule origin (time.monotonic, the same clock in every process).
    """

    def __init__(self, opts: SimOptions, ca_pem: str | None, identities: dict[int, Identity],
                 enroll_pacer: Pacer, auth_pacer: Pacer, t0: float) -> None:
        self.opts = opts
        self.ca_pem = ca_pem
        self.pool = make_transport(opts.server, ca_pem, min(MAX_CONNECTIONS, len(identities)))
        self.http = client_on(self.pool)
        self.enroll_pacer, self.auth_pacer = enroll_pacer, auth_pacer
        self.paced_at_once = {p.what: asyncio.Semaphore(PACED_AT_ONCE) for p in (enroll_pacer, auth_pacer)}
        self.t0 = t0
        self.stats = Stats()
        self.stop = asyncio.Event()
        self.changed: set[str] = set()  # hardware ids whose identity changed since the last report
        self.ca_fingerprint = ""
        device: type[SimDevice] = SimDevice
        if opts.mqtt:
            from .sim_mqtt import MqttSimDevice  # aiomqtt and paho only with --mqtt
            device = MqttSimDevice
        self.devices = [device(self, n, ident) for n, ident in identities.items()]

    def counts(self) -> dict[str, int]:
        statuses = [d.status for d in self.devices]
        return {"enrolled": sum(1 for d in self.devices if d.client.device_id), "active": statuses.count("active"),
                "pending": statuses.count("pending"), "revoked": statuses.count("revoked"),
                "checking_in": sum(1 for d in self.devices if d.interval and not d.stopped),
                "on_mqtt": sum(1 for d in self.devices if d.on_mqtt),
                "was_on_mqtt": sum(1 for d in self.devices if d.was_on_mqtt),
                "stopped": sum(1 for d in self.devices if d.stopped)}

    def report(self) -> dict[str, Any]:
        """What the parent adds up: counters, counts, the rate asked of this worker, and changed identities."""
        s = self.stats
        by_hw = {d.hardware_id: d for d in self.devices} if self.changed and self.opts.state_file else {}
        changed = {hw: by_hw[hw].ident.to_dict() for hw in self.changed if hw in by_hw}
        self.changed.clear()
        delivery, s.delivery_ms = s.delivery_ms, []
        return {"stats": {k: getattr(s, k) for k in (*COUNTERS, *MAXIMA)}, "last_error": s.last_error,
                "reasons": dict(s.reasons), "counts": self.counts(), "delivery_ms": delivery,
                "asked": sum(1 / d.interval for d in self.devices if d.interval and not d.stopped),
                "cpu": time.process_time(), "connections": self.pool.opened,
                "identities": changed, "ca_fingerprint": self.ca_fingerprint}

    async def run(self) -> None:
        """Run every device until stop is set (or all have stopped), then let calls in flight finish."""
        tasks = {asyncio.create_task(d.run(), name=d.hardware_id): d for d in self.devices}
        try:
            done = asyncio.ensure_future(asyncio.wait(tasks))
            stopping = asyncio.ensure_future(self.stop.wait())
            await asyncio.wait([done, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            self.stop.set()
            for t, d in tasks.items():
                if not d.busy:
                    t.cancel()
            # Let devices finish the call in flight, then give up on stragglers.
            _, pending = await asyncio.wait(tasks, timeout=5)
            for t in pending:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            done.cancel()
        finally:
            await self.http.aclose()


__all__ = ["SIMULATED_FAILURE", "Engine", "SimOptions", "SimState", "Stats"]
