"""The MQTT benchmarks of issue 19, against Debian's mosquitto run with what `fleetd mqtt broker-config` prints:

1. telemetry through the broker into the store (devices with fleet certificates publishing 100-point batches with
   QoS 1; points/s from the first publish to the last point stored), against the HTTPS path (wrk on PushTelemetry,
   as the telemetry benchmark) and against raw SQLite executemany, interleaved on one `fleetd serve --mqtt`;
2. deploy-to-device latency: `fleetd simulate --mqtt` with N devices on the default 60 s poll, one Deploy to all of
   them, and the time from the deploy to each device having its action (the simulator times each action from its
   creation, the time in its id; the Deploy call's own time before the actions were made is added on top).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import queue
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetd.core import clock, pki
from fleetd.devices import certificates
from fleetd.fleet import DB_NAME

from ..e2e.server import fleetd_cmd
from ..support.services import Mosquitto
from . import seed
from .cases import Config, Result, Target, log, median, sqlite_baseline, telemetry_requests
from .loadgen import WrkRun, check_clean, run_wrk
from .procs import cpu_seconds
from .servers import Service, start_fleetd

# Batches published but not yet stored: well under the broker's queue for fleetd's session (max_queued_messages
# 10,000 in the generated configuration), so that none is dropped.
OUTSTANDING = 2_000
STALL = 30.0  # seconds without a point stored: the run failed
DEPLOY_TIMEOUT = 120.0
SETUP_TIMEOUT = 600.0


def broker(data_dir: Path) -> Mosquitto:
    """A mosquitto (a context manager) configured by `fleetd mqtt broker-config` for ``data_dir``'s fleet."""
    def config(where: Path, port: int) -> str:
        out = subprocess.run([*fleetd_cmd(), "mqtt", "broker-config", "--data-dir", str(data_dir), "--dir",
                              str(where / "fleetd"), "--listen", f"127.0.0.1:{port}", "--name", "localhost",
                              "--user", getpass.getuser()], capture_output=True, text=True, check=True)
        return out.stdout
    return Mosquitto(config=config)


def _settled(db: Path) -> int:
    """The store's count once it stops growing: what wrk's last requests (answered after its window) add goes
    before an MQTT run's count starts, not in it."""
    last = _stored(db)
    while True:
        time.sleep(0.3)
        if (now := _stored(db)) == last:
            return now
        last = now


def _stored(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM telemetry").fetchone()[0])
    finally:
        conn.close()


# --- 1. telemetry through the broker ---------------------------------------------------------------------------

class Publishers:
    """Devices with fleet certificates publishing telemetry batches (QoS 1), each through a Debian
    ``mosquitto_pub -l`` process of its own (C, as wrk is on the HTTPS side: one message per stdin line, its own
    connection kept over all runs); the benchmark feeds them pre-encoded lines, at most OUTSTANDING batches
    ahead of the store."""

    def __init__(self, fx: seed.Fixture, devices: list[tuple[str, str, int]], mq: Mosquitto, work: Path) -> None:
        self.devices = devices
        ca = pki.load_or_create(fx.path)
        work.mkdir(exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        for did, _, _ in devices:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = certificates.issue(ca.ca_cert, ca.ca_key, did, key.public_key(), days=1, at=clock.now())
            (work / f"{did}.crt").write_bytes(certificates.pem(cert).encode())
            (work / f"{did}.key").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            self.procs.append(subprocess.Popen(
                ["mosquitto_pub", "-h", "localhost", "-p", str(mq.port), "-V", "mqttv5", "-q", "1",
                 "-i", f"bench-{did}", "--cafile", str(fx.path / "ca.pem"), "--cert", str(work / f"{did}.crt"),
                 "--key", str(work / f"{did}.key"), "-t", f"fleetd/v1/devices/{did}/telemetry", "-l"],
                stdin=subprocess.PIPE, stderr=subprocess.PIPE))
        now = time.time()
        self.bodies = [msgspec.json.encode(seed.telemetry_points(i, now)) for i in range(len(devices))]

    def cpu_seconds(self) -> float:
        """CPU seconds so far of the mosquitto_pub processes and of this process (its feeder threads)."""
        return sum(cpu_seconds(p.pid) for p in self.procs) + time.process_time()

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(OSError):
                p.stdin.close()  # type: ignore[union-attr]  # end of input: mosquitto_pub sends what it has, exits
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def run(self, batches: int, tag: str, db: Path) -> tuple[float, int]:
        """Publish ``batches`` batches over all devices; (seconds from the first publish to the last point stored,
        points stored, which must be exactly the points published)."""
        n = len(self.procs)
        lines = [[b'{"batch_id":"%s-%d-%d","points":%s}\n' % (tag.encode(), i, k, self.bodies[i])
                  for k in range(batches // n + (i < batches % n))] for i in range(n)]
        before = _settled(db)
        queues: list[queue.SimpleQueue[bytes | None]] = [queue.SimpleQueue() for _ in range(n)]
        failed: list[BaseException] = []

        def feed(i: int) -> None:  # a pipe write blocks while mosquitto_pub is behind: a thread per process
            stdin = self.procs[i].stdin
            assert stdin is not None
            try:
                while (chunk := queues[i].get()) is not None:
                    stdin.write(chunk)
                    stdin.flush()
            except OSError as e:
                failed.append(e)

        feeders = [threading.Thread(target=feed, args=(i,), daemon=True) for i in range(n)]
        for t in feeders:
            t.start()
        pos = [0] * n  # lines of each device handed to its feeder
        sent, stored, progress = 0, before, time.monotonic()
        t0 = time.perf_counter()
        try:
            want = before + batches * seed.POINTS_PER_BATCH
            while stored < want:
                allowance = OUTSTANDING - (sent - (stored - before) // seed.POINTS_PER_BATCH)
                if sent < batches and allowance >= n:
                    for i in range(n):
                        take = lines[i][pos[i]:pos[i] + allowance // n]
                        if take:
                            queues[i].put(b"".join(take))
                            pos[i] += len(take)
                            sent += len(take)
                    continue
                dead = [p for p in self.procs if p.poll() is not None]
                if failed or dead:
                    why = dead[0].stderr.read().decode(errors="replace") if dead and dead[0].stderr else failed
                    raise RuntimeError(f"mqtt: a mosquitto_pub ended: {why}")
                time.sleep(0.05)
                now = _stored(db)
                if now > stored:
                    stored, progress = now, time.monotonic()
                elif time.monotonic() - progress > STALL:
                    raise RuntimeError(f"mqtt: {want - stored} of {batches * seed.POINTS_PER_BATCH} points published "
                                       f"through the broker were not stored ({STALL:g} s without progress; the "
                                       "fleetd log says why)")
            seconds = time.perf_counter() - t0
        finally:
            for q in queues:
                q.put(None)
            for t in feeders:
                t.join()
        time.sleep(0.5)  # no more than published: each batch stored once
        if (stored := _stored(db)) != want:
            raise RuntimeError(f"mqtt: {stored - before} points stored of the {want - before} published")
        return seconds, stored - before


def telemetry(cfg: Config, fx: seed.Fixture, fleetd: Service, mq: Mosquitto, work: Path) -> dict[str, Any]:
    requests, rows = telemetry_requests(cfg, fx, work)
    # As many devices as wrk has connections (of the HTTPS path's devices): a mosquitto_pub process each.
    devices = seed.sample_devices(fx, cfg.telemetry_devices, seed=2)[:cfg.connections]
    pubs = Publishers(fx, devices, mq, work / "mqtt-certs")
    try:
        return _telemetry(cfg, fleetd, mq, work, requests, rows, pubs, fx.path / DB_NAME)
    finally:
        pubs.close()


def _telemetry(cfg: Config, fleetd: Service, mq: Mosquitto, work: Path, requests: Path, rows: Any,
               pubs: Publishers, db: Path) -> dict[str, Any]:
    devices = pubs.devices
    url = fleetd.url + "/fleetd.v1.DeviceService/PushTelemetry"

    def wrk(seconds: float) -> WrkRun:
        return run_wrk(url, seconds=seconds, threads=cfg.threads, connections=cfg.connections,
                       server_pid=fleetd.pid, requests_file=requests)

    log(f"mqtt telemetry: {cfg.warmup:g} s warm-up over HTTPS, a batch from each device over MQTT")
    wrk(cfg.warmup)
    pubs.run(len(devices), f"warm-{time.time_ns()}", db)  # every mosquitto_pub connected
    https_pps: list[float] = []
    mqtt_pps: list[float] = []
    base_pps: list[float] = []
    mqtt_cpu: list[list[float]] = []  # fleetd, mosquitto, the publishers: % of a core
    for i in range(cfg.runs):
        base_pps.append(sqlite_baseline(rows, cfg.baseline_rows, cfg.txn_rows, work / "baseline.db"))
        run = wrk(cfg.seconds)
        check_clean(run, "telemetry over HTTPS")
        https_pps.append(run.rps * seed.POINTS_PER_BATCH)
        # As many batches as HTTPS took in its run: about as long a run over MQTT.
        batches = max(len(devices), int(run.rps * cfg.seconds))
        assert mq.proc is not None
        cpu0 = (cpu_seconds(fleetd.pid), cpu_seconds(mq.proc.pid), pubs.cpu_seconds())
        # Batch ids unique to this run: the data dir remembers those of earlier runs for a day.
        seconds, points = pubs.run(batches, f"{time.time_ns()}", db)
        cpu = [100 * (b - a) / seconds for a, b in zip(cpu0, (cpu_seconds(fleetd.pid), cpu_seconds(mq.proc.pid),
                                                               pubs.cpu_seconds()), strict=True)]
        mqtt_cpu.append(cpu)
        mqtt_pps.append(points / seconds)
        log(f"mqtt telemetry run {i + 1}/{cfg.runs}: MQTT {mqtt_pps[-1]:,.0f} points/s ({batches:,} batches in "
            f"{seconds:.1f} s; CPU % of a core: fleetd {cpu[0]:.0f}, mosquitto {cpu[1]:.0f}, publishers "
            f"{cpu[2]:.0f}), HTTPS {https_pps[-1]:,.0f} points/s (fleetd {run.server_cpu_pct:.0f} %, wrk "
            f"{run.loadgen_cpu_pct:.0f} %), SQLite {base_pps[-1]:,.0f} rows/s")
    m, h, b = median(mqtt_pps), median(https_pps), median(base_pps)
    return {"mqtt_points_per_s": round(m), "https_points_per_s": round(h), "sqlite_rows_per_s": round(b),
            "mqtt_ratio": round(m / b, 3), "https_ratio": round(h / b, 3), "publishers": len(devices),
            "mqtt_cpu_percent": {k: round(median([c[j] for c in mqtt_cpu])) for j, k in
                                 enumerate(("fleetd", "mosquitto", "publishers"))},
            "runs": {"mqtt": [round(x) for x in mqtt_pps], "https": [round(x) for x in https_pps],
                     "sqlite": [round(x) for x in base_pps]}}


# --- 2. deploy-to-device latency ---------------------------------------------------------------------------------

def _metric(fleetd: Service, key: str, name: str) -> float:
    with httpx.Client(verify=False, headers={"Authorization": f"Bearer {key}"}) as c:
        text = c.get(fleetd.url + "/metrics").raise_for_status().text
    return sum(float(v) for k, _, v in (line.rpartition(" ") for line in text.splitlines()) if k == name)


def _rpc(fleetd: Service, key: str, method: str, body: dict[str, Any]) -> Any:
    with httpx.Client(verify=False, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
        r = c.post(f"{fleetd.url}/fleetd.v1.{method}", json=body)
        r.raise_for_status()
        return r.json()


def _cli(*args: str) -> str:
    return subprocess.run([*fleetd_cmd(), *args], capture_output=True, text=True, check=True).stdout


def deploy_latency(cfg: Config, work: Path, logs: Path) -> dict[str, Any]:
    n = cfg.mqtt_devices
    data = work / "mqtt-deploy"
    if data.exists():
        import shutil
        shutil.rmtree(data)
    data.mkdir(parents=True)
    pki.load_or_create(data)
    with broker(data) as mq:
        # No enrolment limit to speak of: N devices enroll from this one address.
        fleetd = start_fleetd(data, logs, "fleetd-mqtt-deploy", env={
            "FLEETD_MQTT_URL": f"mqtts://localhost:{mq.port}", "FLEETD_ENROLL_RATE_PER_MINUTE": "1000000"})
        sim: subprocess.Popen[str] | None = None
        try:
            key = json.loads(_cli("keys", "create", "--data-dir", str(data), "--name", "bench", "--role", "admin",
                                  "--json"))["key"]
            ca = str(data / "ca.pem")
            blob = work / "mqtt-app.bin"
            blob.write_bytes(b"benchmark app\n" * 4096)
            _cli("artifacts", "push", str(blob), "--name", "benchapp", "--version", "1.0.0", "--device-type", "sim",
                 "--server", fleetd.url, "--api-key", key, "--ca", ca, "--json")
            token = _rpc(fleetd, key, "EnrollmentService/CreateToken", {"uses": 0, "expires_in": 7200})["token"]
            log(f"mqtt deploy: fleetd simulate --mqtt with {n:,} devices (60 s poll)")
            t = time.monotonic()
            sim = subprocess.Popen([*fleetd_cmd(), "simulate", "--server", fleetd.url, "--ca", ca, "--token", token,
                                    "--devices", str(n), "--prefix", "mqb", "--mqtt", "--json"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            # Each device checks in over MQTT as soon as it is connected.
            while _metric(fleetd, key, 'fleetd_mqtt_messages_total{topic="checkin"}') < n:
                if sim.poll() is not None or time.monotonic() - t > SETUP_TIMEOUT:
                    why = sim.communicate(timeout=5)[1][-2000:] if sim.poll() is not None else "(still trying)"
                    raise RuntimeError(f"mqtt deploy: the {n:,} simulated devices were not all on the broker within "
                                       f"{SETUP_TIMEOUT:g} s: {why}")
                time.sleep(0.5)
            setup = time.monotonic() - t
            log(f"mqtt deploy: {n:,} devices on the broker after {setup:.0f} s; deploying")
            time.sleep(3)  # the check-in burst over
            conn = sqlite3.connect(f"file:{data / DB_NAME}?mode=ro", uri=True)
            ids = [r[0] for r in conn.execute("SELECT id FROM devices WHERE hardware_id LIKE 'mqb-%'")]
            called = time.time()
            actions = _rpc(fleetd, key, "DeviceAdminService/Deploy",
                           {"device_ids": ids, "artifact": "benchapp@1.0.0"})["action_ids"]
            call_s = time.time() - called
            # The actions' creation (their ids' times) may trail the call's start: added to every device's time.
            made_after = max(int(a.partition("_")[2][:11], 16) / 1000 for a in actions) - called
            deadline = time.monotonic() + DEPLOY_TIMEOUT
            marks = ",".join("?" * len(actions))
            while conn.execute(f"SELECT COUNT(*) FROM actions WHERE id IN ({marks}) AND state = 'succeeded'",
                               actions).fetchone()[0] < len(actions):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mqtt deploy: not every action succeeded within {DEPLOY_TIMEOUT:g} s")
                time.sleep(0.5)
            conn.close()
        finally:
            summary: dict[str, Any] = {}
            if sim is not None:
                sim.send_signal(signal.SIGINT)
                out, err = sim.communicate(timeout=60)
                if sim.returncode != 0:
                    raise RuntimeError(f"mqtt deploy: fleetd simulate exited {sim.returncode}: {err[-2000:]}")
                summary = json.loads(out)
            fleetd.stop()
    m = summary["mqtt"]
    if m["actions_received"] < n or m["devices_connected"] < n:
        raise RuntimeError(f"mqtt deploy: {m['devices_connected']} devices connected and {m['actions_received']} "
                           f"actions received, of {n}: {summary['last_error']}")
    extra = max(0.0, made_after) * 1000
    return {"devices": n, "setup_seconds": round(setup, 1), "deploy_call_ms": round(call_s * 1000, 1),
            "actions_made_after_call_ms": round(extra, 1),
            "median_ms": round(m["delivery_median_ms"] + extra, 1), "p99_ms": round(m["delivery_p99_ms"] + extra, 1),
            "max_ms": round(m["delivery_max_ms"] + extra, 1), "actions_over_mqtt": m["actions_over_mqtt"],
            "simulator_errors": summary["errors"], "simulator_cpu_percent": summary["simulator_cpu_percent"]}


# --- the benchmark ---------------------------------------------------------------------------------------------

def bench(cfg: Config, fx: seed.Fixture, work: Path, logs: Path) -> Result:
    with broker(fx.path) as mq:
        fleetd = start_fleetd(fx.path, logs, "fleetd-mqtt", env={"FLEETD_MQTT_URL": f"mqtts://localhost:{mq.port}"})
        try:
            tel = telemetry(cfg, fx, fleetd, mq, work)
        finally:
            fleetd.stop()
    dep = deploy_latency(cfg, work, logs)
    r = Result("mqtt", f"HTTPS PushTelemetry (wrk) and raw SQLite executemany, {cfg.txn_rows:,} rows a transaction")
    r.rows += [
        (f"telemetry points/s through mosquitto ({tel['publishers']} devices, QoS 1)",
         f"{tel['mqtt_points_per_s']:,}", f"{tel['sqlite_rows_per_s']:,}", f"{tel['mqtt_ratio']:.2f}"),
        ("telemetry points/s over HTTPS", f"{tel['https_points_per_s']:,}", f"{tel['sqlite_rows_per_s']:,}",
         f"{tel['https_ratio']:.2f}"),
        (f"deploy to {dep['devices']:,} MQTT devices (60 s poll): median / p99 / max, ms",
         f"{dep['median_ms']:,.0f} / {dep['p99_ms']:,.0f} / {dep['max_ms']:,.0f}", "60,000 (the poll)", "-"),
        ("  the Deploy call, ms", f"{dep['deploy_call_ms']:,.0f}", "-", "-"),
    ]
    r.targets += [
        Target("MQTT telemetry ratio vs raw SQLite, over the HTTPS path's", tel["mqtt_ratio"] / tel["https_ratio"],
               ">=", 1.0),
        Target(f"deploy to {dep['devices']:,} MQTT devices, median ms", dep["median_ms"], "<", 1000, " ms"),
        Target(f"deploy to {dep['devices']:,} MQTT devices, p99 ms", dep["p99_ms"], "<", 2000, " ms"),
    ]
    r.data = {"telemetry": tel, "deploy": dep}
    return r


__all__ = ["bench", "broker"]
