"""The simulator's processes: worker processes each run a slice of the devices, the parent adds up their reports.

One Python process tops out near a core; a load test wants the server to be
the bottleneck, not the simulator. So the parent forks ``--workers`` processes
(by default one per CPU core, fewer for a small fleet). Worker w runs devices
w+1, w+1+W, w+1+2W, …, so every worker has devices all over the poll interval
and they share the load evenly. Every REPORT_EVERY seconds each worker sends
its counters, counts, the check-in rate its devices ask for and, with a
--state file, the identities that changed; the parent sums them for the live
display and the summary, keeps the state file, and tells the workers to stop.
The enrollment and challenge limits are paced across all workers through
shared memory (sim_pacing.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import signal
import time
from collections import Counter, deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .sim_engine import MAXIMA, Engine, Identity, SimOptions, SimState
from .sim_pacing import Pacer

REPORT_EVERY = 0.5
# One worker keeps up with this many check-ins per second using well under a core.
CHECK_INS_PER_WORKER = 100.0
# The live rate is measured over this many seconds.
RATE_WINDOW = 10.0
# Workers get this long to finish their calls in flight and send their last report.
STOP_GRACE = 10.0


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(opts: SimOptions) -> int:
    """One per core, but no more than the expected check-in rate needs (a small fleet gets one)."""
    rate = opts.devices / (opts.interval or 60.0)
    return max(1, min(cores(), opts.devices, math.ceil(rate / CHECK_INS_PER_WORKER)))


# --- in a worker process -----------------------------------------------------------------

def _worker_main(opts: SimOptions, ca_pem: str | None, identities: dict[int, Identity], pacers: tuple[Pacer, Pacer],
                 t0: float, conn: Connection) -> None:
    # Ctrl-C reaches the whole process group: the parent decides when workers stop, and says so.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    asyncio.run(_worker(opts, ca_pem, identities, pacers, t0, conn))


async def _worker(opts: SimOptions, ca_pem: str | None, identities: dict[int, Identity],
                  pacers: tuple[Pacer, Pacer], t0: float, conn: Connection) -> None:
    eng = Engine(opts, ca_pem, identities, *pacers, t0)
    loop = asyncio.get_running_loop()

    def from_parent() -> None:
        with contextlib.suppress(EOFError, OSError):  # EOF: the parent is gone
            conn.recv()  # "stop" is the only message
        eng.stop.set()
        loop.remove_reader(conn.fileno())

    async def reporting() -> None:
        while not eng.stop.is_set():
            await asyncio.sleep(REPORT_EVERY)
            conn.send(eng.report())

    loop.add_reader(conn.fileno(), from_parent)
    reporter = asyncio.create_task(reporting())
    try:
        await eng.run()
    finally:
        reporter.cancel()
        with contextlib.suppress(OSError):
            conn.send({**eng.report(), "final": True})


# --- in the parent --------------------------------------------------------------------------

class Totals:
    """Every worker's last report, added up, and the rates and CPU derived from them over time."""

    def __init__(self, opts: SimOptions, workers: int, pacers: tuple[Pacer, Pacer]) -> None:
        self.opts, self.workers, self.pacers = opts, workers, pacers
        self.reports: dict[int, dict[str, Any]] = {}
        self.started = time.monotonic()
        self.ended: float | None = None  # when the devices were told to stop
        self.cpu_started = time.process_time()
        self._samples: deque[tuple[float, int, float]] = deque()  # (time, check-ins, cpu seconds)
        # The steady state: one poll interval after every device first checked in, all are on their slots.
        self.steady_from: float | None = None
        self.steady_start: tuple[float, int] | None = None  # (when, check-ins by then)
        self.worker_errors: list[str] = []
        self.delivery_ms: list[float] = []  # every worker's, as they come

    def take(self, w: int, report: dict[str, Any]) -> None:
        self.delivery_ms += report.pop("delivery_ms")
        self.reports[w] = report

    def total(self, name: str) -> Any:
        if name in MAXIMA:
            return max((r["stats"][name] for r in self.reports.values()), default=0)
        return sum(r["stats"][name] for r in self.reports.values())

    def counts(self) -> dict[str, int]:
        c: Counter[str] = Counter()
        for r in self.reports.values():
            c.update(r["counts"])
        return {k: c[k] for k in ("enrolled", "active", "pending", "revoked", "checking_in", "stopped", "on_mqtt",
                                  "was_on_mqtt")}

    def asked(self) -> float:
        return sum(r["asked"] for r in self.reports.values())

    def cpu(self) -> float:
        """CPU seconds used by the workers and the parent."""
        return sum(r["cpu"] for r in self.reports.values()) + time.process_time() - self.cpu_started

    @property
    def errors(self) -> int:
        return int(self.total("errors")) + len(self.worker_errors)

    @property
    def last_error(self) -> str:
        return self.worker_errors[-1] if self.worker_errors else \
            next((r["last_error"] for r in self.reports.values() if r["last_error"]), "")

    def sample(self) -> None:
        """Note the check-ins and CPU so far (every tick); see when the whole fleet first checked in."""
        now, n = time.monotonic(), int(self.total("check_ins"))
        self._samples.append((now, n, self.cpu()))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW:
            self._samples.popleft()
        if self.steady_from is None:
            c = self.counts()
            asked = self.asked()
            if c["checking_in"] and asked and c["checking_in"] + c["stopped"] >= self.opts.devices:
                self.steady_from = now + c["checking_in"] / asked  # their mean interval
        elif self.steady_start is None and now >= self.steady_from:
            self.steady_start = (now, n)

    def rate(self) -> float:
        """Check-ins per second over the last RATE_WINDOW seconds."""
        if len(self._samples) < 2:
            return 0.0
        (t0, n0, _), (t1, n1, _) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def cpu_percent(self) -> float:
        """The simulator's CPU over the last RATE_WINDOW seconds, in % of one core."""
        if len(self._samples) < 2:
            return 0.0
        (t0, _, c0), (t1, _, c1) = self._samples[0], self._samples[-1]
        return 100 * (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0

    def steady(self) -> tuple[float, float] | None:
        """Check-ins per second in the steady state, and for how many seconds."""
        if self.steady_start is None:
            return None
        t, n = self.steady_start
        seconds = (self.ended or time.monotonic()) - t
        return ((self.total("check_ins") - n) / seconds if seconds > 0 else 0.0), seconds

    def pacing(self) -> dict[str, dict[str, Any]]:
        return {p.what: p.snapshot() for p in self.pacers}

    def mqtt(self) -> dict[str, Any]:
        """With --mqtt: devices on the broker, and how long actions took to reach their devices."""
        ms = sorted(self.delivery_ms)

        def pct(p: float) -> float | None:
            return round(ms[min(len(ms) - 1, math.ceil(p * len(ms)) - 1)], 1) if ms else None
        c = self.counts()
        return {"devices_connected": c["was_on_mqtt"],
                "connections": int(self.total("mqtt_connects")),
                "actions_over_mqtt": int(self.total("actions_over_mqtt")),
                "actions_received": len(ms), "delivery_median_ms": pct(0.5), "delivery_p99_ms": pct(0.99),
                "delivery_max_ms": round(ms[-1], 1) if ms else None}

    def summary(self) -> dict[str, Any]:
        seconds = (self.ended or time.monotonic()) - self.started
        c = self.counts()
        asked = self.asked()
        steady = self.steady()
        steady_rate = round(steady[0], 2) if steady else None
        checks = int(self.total("check_ins"))
        reasons: Counter[str] = Counter()
        for r in self.reports.values():
            reasons.update(r["reasons"])
        reasons.update(self.worker_errors)
        return {
            "devices": self.opts.devices, **{k: c[k] for k in ("enrolled", "active", "pending", "revoked")},
            "check_ins": checks, "check_ins_per_second": round(checks / seconds, 2) if seconds > 0 else 0.0,
            # The rate the devices ask of the server, and the rate reached in the steady state: from one
            # interval after every device had checked in (each on its slot by then) to the end.
            "asked_check_ins_per_second": round(asked, 2),
            "steady_check_ins_per_second": steady_rate,
            "steady_seconds": round(steady[1], 1) if steady else None,
            "steady_percent_of_asked": round(100 * steady[0] / asked, 1) if steady and asked else None,
            "late_check_ins": int(self.total("late_check_ins")),
            "max_lateness_seconds": round(float(self.total("max_lateness")), 2),
            "mean_check_in_ms": round(1000 * self.total("check_in_seconds") / checks, 1) if checks else None,
            "telemetry_points": int(self.total("telemetry_points")),
            "actions_succeeded": int(self.total("actions_succeeded")),
            "actions_failed": int(self.total("actions_failed")),
            "errors": self.errors, "errors_by_reason": dict(reasons.most_common()),
            "throttled": int(self.total("throttled")), "pacing": self.pacing(),
            "mqtt": self.mqtt() if self.opts.mqtt else None,
            "last_error": self.last_error,
            "workers": self.workers, "connections": sum(r["connections"] for r in self.reports.values()),
            "simulator_cpu_percent": round(100 * self.cpu() / seconds, 1) if seconds > 0 else 0.0,
            "cores": cores(), "seconds": round(seconds, 1),
        }


class Supervisor:
    """Forks the workers, takes their reports, keeps the state file, stops them."""

    def __init__(self, opts: SimOptions, state: SimState, ca_pem: str | None) -> None:
        self.opts, self.state, self.ca_pem = opts, state, ca_pem
        self.ctx = multiprocessing.get_context("fork")  # the devices' keys are inherited, never pickled
        self.pacers = (Pacer("enrollment", self.ctx), Pacer("authentication", self.ctx))
        self.nworkers = min(opts.workers or default_workers(opts), opts.devices)
        self.totals = Totals(opts, self.nworkers, self.pacers)
        self.stop = asyncio.Event()
        self.procs: dict[int, multiprocessing.process.BaseProcess] = {}
        self.conns: dict[int, Connection] = {}
        self.finished: set[int] = set()

    def start(self) -> None:
        t0 = time.monotonic()
        numbers = range(1, self.opts.devices + 1)
        for w in range(self.nworkers):
            mine = {n: self.state.identity(f"{self.opts.prefix}-{n}") for n in numbers[w::self.nworkers]}
            parent_end, child_end = self.ctx.Pipe()
            p = self.ctx.Process(target=_worker_main, name=f"fleetd-simulate-{w + 1}", daemon=True,
                                 args=(self.opts, self.ca_pem, mine, self.pacers, t0, child_end))
            p.start()
            child_end.close()
            self.procs[w], self.conns[w] = p, parent_end

    def _receive(self, w: int) -> None:
        conn = self.conns[w]
        try:
            while conn.poll():
                report = conn.recv()
                self.state.update(report.pop("identities"), report["ca_fingerprint"])
                self.totals.take(w, report)
                if report.get("final"):
                    self._finished(w)
                    return
        except (EOFError, OSError):
            code = self.procs[w].exitcode
            self.totals.worker_errors.append(f"worker {w + 1} ended without its last report (exit code {code})")
            self._finished(w)

    def _finished(self, w: int) -> None:
        self.finished.add(w)
        asyncio.get_running_loop().remove_reader(self.conns[w].fileno())

    async def _save(self) -> None:
        try:
            await self.state.save()
        except OSError as e:
            self.state.dirty = True
            self.totals.worker_errors.append(f"cannot save the state file {self.state.path}: {e}")

    async def run(self, on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self.start()
        for w, conn in self.conns.items():
            loop.add_reader(conn.fileno(), self._receive, w)
        deadline = self.totals.started + self.opts.duration if self.opts.duration else None
        saved = time.monotonic()
        try:
            while not self.stop.is_set() and len(self.finished) < self.nworkers:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if self.totals.counts()["stopped"] >= self.opts.devices:
                    break  # every device revoked or refused for good
                self.totals.sample()
                if on_tick:
                    on_tick()
                if time.monotonic() - saved >= 2.0:
                    await self._save()
                    saved = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), REPORT_EVERY)
        finally:
            self.totals.ended = time.monotonic()
            await self._shutdown()
        return self.totals.summary()

    async def _shutdown(self) -> None:
        for w, conn in self.conns.items():
            if w not in self.finished:
                with contextlib.suppress(OSError):
                    conn.send("stop")
        end = time.monotonic() + STOP_GRACE
        while len(self.finished) < self.nworkers and time.monotonic() < end:
            await asyncio.sleep(0.05)
        for w, p in self.procs.items():
            if w not in self.finished:
                self._finished(w)
                self.totals.worker_errors.append(f"worker {w + 1} did not stop within {STOP_GRACE:.0f} s")
            p.join(timeout=1)
            if p.is_alive():
                p.kill()
                p.join()
            self.conns[w].close()
        await self._save()


__all__ = ["Supervisor", "Totals", "default_workers"]
