"""The benchmarks and the hot paths' profiles. Each measures its baseline in the same run, interleaved.

Every measured quantity is the median of ``runs`` runs; ratios are taken
between medians. Baseline and fleetd runs alternate, so that a burst of CPU
steal on this kind of VM hits both rather than one.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgspec

from fleetd.fleet import DB_NAME
from fleetd.store.database import connect, migrate, transaction

from . import agent_footprint, bench_orchestrator, seed
from . import profile as prof
from .loadgen import WrkRun, check_clean, run_wrk, wrk_command
from .procs import cpu_seconds, rss_kib, tree_rss_kib
from .servers import Service, start_fleetd, start_nginx

MiB = 1 << 20


@dataclass
class Config:
    devices: int = 100_000
    tokens: int = 10_000
    telemetry_devices: int = 1_000
    runs: int = 3
    seconds: float = 10.0
    warmup: float = 3.0
    threads: int = 2
    connections: int = 64
    blob_mib: int = 100
    clients: int = 50
    download_seconds: float = 8.0
    baseline_rows: int = 1_000_000
    txn_rows: int = 10_000
    profile_seconds: float = 10.0
    orchestrator_devices: int = 100_000
    orchestrator_points: int = 1_000_000  # raw telemetry points under the pass with a health condition
    agent_minutes: float = 10.0
    agent_poll_interval: int = 30
    agent_settle: float = 60.0
    mqtt_devices: int = 1_000  # simulated MQTT devices a deploy goes to


@dataclass
class Target:
    what: str
    value: float
    op: str  # ">=", "<=" or "<"
    limit: float
    unit: str = ""

    @property
    def met(self) -> bool:
        return {">=": self.value >= self.limit, "<=": self.value <= self.limit, "<": self.value < self.limit}[self.op]

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "value": round(self.value, 3), "target": f"{self.op} {self.limit:g}{self.unit}",
                "met": self.met, "margin": round(self.value / self.limit, 3) if self.limit else None}


@dataclass
class Result:
    name: str
    baseline: str  # what the baseline column measured
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)  # metric, fleetd, baseline, ratio
    targets: list[Target] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**self.data, "targets": [t.to_json() for t in self.targets]}


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def medians(runs: list[WrkRun]) -> dict[str, Any]:
    keys = ("rps", "mb_per_s", "p50_ms", "p99_ms", "server_cpu_pct", "loadgen_cpu_pct", "steal_pct")
    return {**{k: round(median([getattr(r, k) for r in runs]), 3) for k in keys},
            "runs": [r.to_json() for r in runs]}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- 4. footprint --------------------------------------------------------------------

def footprint(fleetd: Service, hello: Service | None, settle: float = 3.0) -> Result:
    """Idle RSS right after startup (the hub holds every device in memory)."""
    time.sleep(settle)
    # The process tree: with FLEETD_BIN, fleetd.pid is the one-file binary's bootloader, the server its child.
    rss, hwm = tree_rss_kib(fleetd.pid) / 1024, tree_rss_kib(fleetd.pid, "VmHWM") / 1024
    anon, file = tree_rss_kib(fleetd.pid, "RssAnon") / 1024, tree_rss_kib(fleetd.pid, "RssFile") / 1024
    base = rss_kib(hello.pid) / 1024 if hello else None
    r = Result("footprint", "Litestar hello world on uvicorn")
    r.rows.append(("idle RSS, MiB", f"{rss:.1f}", f"{base:.1f}" if base else "-", "-"))
    r.rows.append(("  of which anonymous / file-backed, MiB", f"{anon:.1f} / {file:.1f}", "-", "-"))
    r.rows.append(("startup peak RSS (VmHWM), MiB", f"{hwm:.1f}", "-", "-"))
    r.targets += [Target("fleetd idle RSS, MiB", rss, "<", 80, " MiB"),
                  Target("fleetd startup peak RSS (VmHWM), MiB", hwm, "<", 100, " MiB")]
    r.data = {"fleetd_idle_rss_mib": round(rss, 1), "fleetd_startup_peak_mib": round(hwm, 1),
              "fleetd_rss_anon_mib": round(anon, 1), "fleetd_rss_file_mib": round(file, 1),
              "hello_idle_rss_mib": round(base, 1) if base else None}
    return r


# --- 1. check-in ---------------------------------------------------------------------

def checkin_requests(cfg: Config, fx: seed.Fixture, work: Path) -> Path:
    devices = seed.sample_devices(fx, cfg.tokens)
    tokens = seed.mint_tokens(fx, devices)
    bodies = [seed.checkin_body(hw, i) for i, (_, hw, _) in enumerate(devices)]
    return seed.write_requests(work / "checkin.requests", tokens, bodies)


def checkin(cfg: Config, fx: seed.Fixture, fleetd: Service, hello: Service, requests: Path) -> Result:
    path = "/fleetd.v1.DeviceService/CheckIn"
    started = time.time()

    def wrk(svc: Service, seconds: float) -> WrkRun:
        return run_wrk(svc.url + path, seconds=seconds, threads=cfg.threads, connections=cfg.connections,
                       server_pid=svc.pid, requests_file=requests)

    for svc in (hello, fleetd):
        log(f"check-in: {cfg.warmup:g} s warm-up on {svc.name}")
        wrk(svc, cfg.warmup)
    runs: dict[str, list[WrkRun]] = {"hello": [], "fleetd": []}
    for i in range(cfg.runs):
        for svc in (hello, fleetd) if i % 2 == 0 else (fleetd, hello):
            run = wrk(svc, cfg.seconds)
            check_clean(run, f"check-in on {svc.name}")
            runs[svc.name].append(run)
            log(f"check-in run {i + 1}/{cfg.runs} {svc.name}: {run.rps:,.0f} rps, p99 {run.p99_ms:.1f} ms")
    # The hub flushes last-seen once a second: give it two.
    time.sleep(2.5)
    conn = connect(fx.path / DB_NAME, readonly=True)
    try:
        seen = conn.execute("SELECT COUNT(*) FROM devices WHERE last_seen >= ?", (started,)).fetchone()[0]
        components = conn.execute("SELECT COUNT(*) FROM device_components WHERE updated_at >= ?",
                                  (started,)).fetchone()[0]
    finally:
        conn.close()
    f, b = medians(runs["fleetd"]), medians(runs["hello"])
    rps_ratio, p99_ratio = f["rps"] / b["rps"], f["p99_ms"] / b["p99_ms"]
    r = Result("checkin", "Litestar hello world on uvicorn, same TLS and uvicorn options")
    r.rows += [
        ("check-in rps", f"{f['rps']:,.0f}", f"{b['rps']:,.0f}", f"{rps_ratio:.2f}"),
        ("check-in p50, ms", f"{f['p50_ms']:.1f}", f"{b['p50_ms']:.1f}", f"{f['p50_ms'] / b['p50_ms']:.2f}"),
        ("check-in p99, ms", f"{f['p99_ms']:.1f}", f"{b['p99_ms']:.1f}", f"{p99_ratio:.2f}"),
        ("server CPU, % of a core", f"{f['server_cpu_pct']:.0f}", f"{b['server_cpu_pct']:.0f}", "-"),
        ("wrk CPU, % of a core", f"{f['loadgen_cpu_pct']:.0f}", f"{b['loadgen_cpu_pct']:.0f}", "-"),
        ("implied fleet at a 60 s poll (server flat out)", f"{f['rps'] * 60:,.0f}", "-", "-"),
    ]
    r.targets += [Target("check-in rps ratio vs hello world", rps_ratio, ">=", 0.6),
                  Target("check-in p99 ratio vs hello world", p99_ratio, "<=", 1.5)]
    r.data = {"fleetd": f, "baseline": b, "rps_ratio": round(rps_ratio, 3), "p99_ratio": round(p99_ratio, 3),
              "implied_fleet_at_60s": round(f["rps"] * 60), "devices_seen": seen,
              "component_rows_written": components, "tokens": cfg.tokens,
              "body_bytes": len(seed.checkin_body(seed.hardware_id(0), 0))}
    return r


def profile_load(cfg: Config, fleetd: Service, what: str, path: str, work: Path, *, requests: Path | None = None,
                 auth: str | None = None, connections: int | None = None) -> dict[str, Any]:
    """py-spy on the server while wrk drives ``path`` (not a measured run: sampling slows the server)."""
    log(f"profiling {what} for {cfg.profile_seconds:g} s (py-spy)")
    out = work / f"{what}.pyspy.txt"
    cmd, env = wrk_command(fleetd.url + path, seconds=cfg.profile_seconds + 3, threads=cfg.threads,
                           connections=connections or cfg.connections, requests_file=requests, auth=auth,
                           timeout="120s")
    load = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        rounds = prof.record(fleetd.pid, cfg.profile_seconds, out)
    finally:
        load.wait(cfg.profile_seconds + 60)
    summary = prof.summarize(out.read_text(), rounds)
    summary["file"] = str(out)
    summary["seconds"] = cfg.profile_seconds
    return summary


# --- 2. telemetry --------------------------------------------------------------------

def telemetry_requests(cfg: Config, fx: seed.Fixture, work: Path) -> tuple[Path, list[tuple[object, ...]]]:
    """wrk's requests (one 100-point batch per device) and the rows fleetd will store for them."""
    devices = seed.sample_devices(fx, cfg.telemetry_devices, seed=2)
    tokens = seed.mint_tokens(fx, devices)
    now = time.time()
    bodies, rows = [], []
    for i, (did, _, _) in enumerate(devices):
        points = seed.telemetry_points(i, now)
        bodies.append(msgspec.json.encode({"points": points}))
        rows += seed.telemetry_rows(did, points)
    return seed.write_requests(work / "telemetry.requests", tokens, bodies), rows


def sqlite_baseline(rows: list[tuple[object, ...]], total: int, txn_rows: int, path: Path) -> float:
    """Rows/s of plain executemany into the same table (fleetd's migrations) with fleetd's pragmas."""
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    conn = connect(path)
    try:
        migrate(conn)
        sql = "INSERT INTO telemetry (device_id, name, ts, value, tags) VALUES (?,?,?,?,?)"
        done = 0
        t0 = time.perf_counter()
        while done < total:
            for i in range(0, len(rows), txn_rows):
                with transaction(conn):
                    conn.executemany(sql, rows[i:i + txn_rows])
            done += len(rows)
        return done / (time.perf_counter() - t0)
    finally:
        conn.close()


def _max_rowid(fx: seed.Fixture) -> int:
    conn = connect(fx.path / DB_NAME, readonly=True)
    try:
        return int(conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM telemetry").fetchone()[0])
    finally:
        conn.close()


def telemetry(cfg: Config, fx: seed.Fixture, fleetd: Service, work: Path) -> Result:
    requests, rows = telemetry_requests(cfg, fx, work)
    url = fleetd.url + "/fleetd.v1.DeviceService/PushTelemetry"

    def wrk(seconds: float) -> WrkRun:
        return run_wrk(url, seconds=seconds, threads=cfg.threads, connections=cfg.connections,
                       server_pid=fleetd.pid, requests_file=requests)

    def cpu_seconds_when_rolled_up(timeout: float = 60) -> tuple[float, float, float, float]:
        """CPU seconds so far of the rollup job, of the intake's per-minute sums, of the inserts (from /metrics) and
        of the whole server, once every stored point is in the rollups."""
        deadline = time.monotonic() + timeout
        with httpx.Client(verify=False, headers={"Authorization": f"Bearer {fx.api_key}"}) as c:
            while True:
                text = c.get(fleetd.url + "/metrics").raise_for_status().text
                m = {k: float(v) for k, _, v in (line.partition(" ") for line in text.splitlines())
                     if k.startswith("fleetd_telemetry_")}
                if m["fleetd_telemetry_rollup_lag_points"] == 0:
                    return (m["fleetd_telemetry_rollup_cpu_seconds_total"],
                            m["fleetd_telemetry_sums_cpu_seconds_total"],
                            m["fleetd_telemetry_insert_cpu_seconds_total"], cpu_seconds(fleetd.pid))
                if time.monotonic() > deadline:
                    raise RuntimeError(f"telemetry: the rollups did not catch up within {timeout:g} s")
                time.sleep(0.5)

    rollup0, sums0, insert0, server0 = cpu_seconds_when_rolled_up()
    log(f"telemetry: {cfg.warmup:g} s warm-up")
    wrk(cfg.warmup)
    fleetd_pps: list[float] = []
    base_pps: list[float] = []
    runs: list[WrkRun] = []
    stored = sent = 0
    for i in range(cfg.runs):
        base_pps.append(sqlite_baseline(rows, cfg.baseline_rows, cfg.txn_rows, work / "baseline.db"))
        before = _max_rowid(fx)
        run = wrk(cfg.seconds)
        check_clean(run, "telemetry on fleetd")
        stored += _max_rowid(fx) - before
        sent += run.requests * seed.POINTS_PER_BATCH
        runs.append(run)
        fleetd_pps.append(run.rps * seed.POINTS_PER_BATCH)
        log(f"telemetry run {i + 1}/{cfg.runs}: fleetd {fleetd_pps[-1]:,.0f} points/s "
             f"(server CPU {run.server_cpu_pct:.0f} %, wrk {run.loadgen_cpu_pct:.0f} %), "
             f"SQLite {base_pps[-1]:,.0f} rows/s")
    if stored < sent:
        raise RuntimeError(f"telemetry: wrk saw {sent} points accepted but only {stored} rows were stored")
    log("telemetry: waiting for the rollups to catch up")
    rollup1, sums1, insert1, server1 = cpu_seconds_when_rolled_up()
    # Every point of the warm-up and the runs, rolled up: the rollup job's CPU time against the rest of the
    # server's (the intake: HTTP, checks, inserts, and the per-minute sums it keeps for the job), and against the
    # inserts alone; the sums' share of the intake beside it.
    rollup_s, sums_s, insert_s = rollup1 - rollup0, sums1 - sums0, insert1 - insert0
    intake_s = server1 - server0 - rollup_s
    rollup_pct = 100 * rollup_s / intake_s
    f, b = median(fleetd_pps), median(base_pps)
    m = medians(runs)
    r = Result("telemetry", f"raw SQLite executemany, {cfg.txn_rows:,} rows a transaction")
    r.rows += [
        ("telemetry points/s (100-point batches)", f"{f:,.0f}", f"{b:,.0f}", f"{f / b:.2f}"),
        ("telemetry p99 per batch, ms", f"{m['p99_ms']:.1f}", "-", "-"),
        ("server CPU / wrk CPU, % of a core", f"{m['server_cpu_pct']:.0f} / {m['loadgen_cpu_pct']:.0f}", "-", "-"),
        ("rollup job CPU, % of the intake's / of the inserts'",
         f"{rollup_pct:.1f} / {100 * rollup_s / insert_s:.1f}", "-", "-"),
        ("per-minute sums kept by the intake, % of the intake's CPU", f"{100 * sums_s / intake_s:.1f}", "-", "-"),
    ]
    r.targets += [Target("telemetry ratio vs raw SQLite executemany", f / b, ">=", 0.5),
                  Target("telemetry points/s (stretch)", f, ">=", 100_000),
                  Target("rollup job cost, % of intake", rollup_pct, "<", 5)]
    r.data = {"fleetd_points_per_s": round(f), "sqlite_rows_per_s": round(b), "ratio": round(f / b, 3),
              "fleetd": m, "sqlite_runs": [round(x) for x in base_pps], "rows_stored": stored,
              "points_acknowledged": sent, "baseline_rows_per_run": cfg.baseline_rows,
              "baseline_rows_per_transaction": cfg.txn_rows,
              "body_bytes": requests.stat().st_size // cfg.telemetry_devices,
              "rollup_cpu_s": round(rollup_s, 3), "sums_cpu_s": round(sums_s, 3), "insert_cpu_s": round(insert_s, 3),
              "sums_pct_of_intake": round(100 * sums_s / intake_s, 2),
              "intake_cpu_s": round(intake_s, 3), "rollup_pct_of_intake": round(rollup_pct, 2)}
    return r


# --- 3. download ---------------------------------------------------------------------

def _worker_pid(pid: int) -> int:
    """nginx's worker (the one child of its master), which does the serving."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return int(children[0]) if children else pid


def download(cfg: Config, fx: seed.Fixture, logs: Path) -> Result:
    fleetd = start_fleetd(fx.path, logs, "fleetd-download")
    nginx: Service | None = None
    try:
        nginx, https_url, http_url = start_nginx(fx.path, fx.blob_path, logs)
        time.sleep(2.0)
        idle_kib = rss_kib(fleetd.pid)
        targets: list[tuple[str, str, int, str | None]] = [
            ("fleetd", f"{fleetd.url}/v1/blobs/{fx.blob_sha256}", fleetd.pid, f"Bearer {fx.api_key}"),
            ("nginx_https", https_url, _worker_pid(nginx.pid), None),
            ("nginx_http", http_url, _worker_pid(nginx.pid), None),
        ]
        one: dict[str, list[WrkRun]] = {name: [] for name, *_ in targets}
        many: dict[str, list[WrkRun]] = {name: [] for name, *_ in targets}
        for i in range(cfg.runs):
            for name, url, pid, auth in targets:
                dl = partial(run_wrk, url, server_pid=pid, auth=auth, timeout="120s")
                a = dl(seconds=cfg.download_seconds / 2, threads=1, connections=1)
                b = dl(seconds=cfg.download_seconds, threads=min(cfg.threads, cfg.clients),
                       connections=cfg.clients, sample_rss=True)
                for run, what in ((a, "1 client"), (b, f"{cfg.clients} clients")):
                    # Big responses rarely complete within a run; the bytes read are what counts.
                    if run.non_2xx or run.socket_errors or run.bytes < MiB:
                        raise RuntimeError(f"download from {name} ({what}): {run.non_2xx} non-2xx answers, "
                                           f"{run.socket_errors} socket errors, {run.bytes} bytes read")
                one[name].append(a)
                many[name].append(b)
                log(f"download run {i + 1}/{cfg.runs} {name}: 1 client {a.mb_per_s:,.0f} MB/s, "
                     f"{cfg.clients} clients {b.mb_per_s:,.0f} MB/s")
    finally:
        fleetd.stop()
        if nginx:
            nginx.stop()
    growth = [(r.server_peak_rss_kib - idle_kib) / 1024 for r in many["fleetd"]]
    mb1 = {k: median([r.mb_per_s for r in v]) for k, v in one.items()}
    mbn = {k: median([r.mb_per_s for r in v]) for k, v in many.items()}
    # Bytes per CPU second of the server: what a busy machine's scheduling moves least (a ratio of these is
    # what the throughput ratio approaches once the server, not the client, is the bottleneck).
    per_cpu = {k: median([r.mb_per_s / max(r.server_cpu_pct / 100, 0.01) for r in v]) for k, v in many.items()}
    ratio1 = mb1["fleetd"] / mb1["nginx_https"]
    ratio = mbn["fleetd"] / mbn["nginx_https"]
    res = Result("download", "Debian nginx over HTTPS, same certificate and key")
    res.rows += [
        ("download 1 client, MB/s", f"{mb1['fleetd']:,.0f}", f"{mb1['nginx_https']:,.0f}", f"{ratio1:.2f}"),
        (f"download {cfg.clients} clients, MB/s", f"{mbn['fleetd']:,.0f}", f"{mbn['nginx_https']:,.0f}",
         f"{ratio:.2f}"),
        (f"  MB per server CPU second, {cfg.clients} clients", f"{per_cpu['fleetd']:,.0f}",
         f"{per_cpu['nginx_https']:,.0f}", f"{per_cpu['fleetd'] / per_cpu['nginx_https']:.2f}"),
        ("  nginx plain HTTP + sendfile, 1 / 50 clients", "-", f"{mb1['nginx_http']:,.0f} / {mbn['nginx_http']:,.0f}",
         "-"),
        (f"RSS growth over idle, {cfg.clients} clients, MiB", f"{max(growth):.1f}", "-", "-"),
    ]
    res.targets += [Target("download ratio vs nginx HTTPS, 1 client", ratio1, ">=", 0.6),
                    Target(f"download ratio vs nginx HTTPS, {cfg.clients} clients", ratio, ">=", 0.6),
                    Target(f"fleetd RSS growth under {cfg.clients} downloads, MiB", max(growth), "<", 48, " MiB")]
    res.data = {
        "blob_bytes": fx.blob_size, "clients": cfg.clients, "idle_rss_mib": round(idle_kib / 1024, 1),
        "rss_growth_mib_runs": [round(g, 1) for g in growth], "one_client_mb_per_s": mb1,
        "many_clients_mb_per_s": mbn, "ratio_vs_nginx_https": round(ratio, 3),
        "ratio_vs_nginx_https_one_client": round(ratio1, 3), "mb_per_cpu_second": per_cpu,
        "runs": {k: {"one": [r.to_json() for r in one[k]], "many": [r.to_json() for r in many[k]]} for k in one},
    }
    return res


# --- 5. rollout orchestrator -----------------------------------------------------------

def orchestrator(cfg: Config, work: Path) -> Result:
    """One orchestrator pass over a big rollout (tests/bench/bench_orchestrator.py), on its own data dir."""
    n = cfg.orchestrator_devices
    data = work / "orchestrator"
    if data.exists():  # the benchmark leaves a rollout behind: never reuse it
        shutil.rmtree(data)
    log(f"orchestrator: enrolling {n:,} devices into {data}")
    t = time.monotonic()
    bench_orchestrator.seed(data, n)
    log(f"orchestrator: enrolled in {time.monotonic() - t:.1f} s")
    try:
        out = bench_orchestrator.bench(data, n, cfg.runs, cfg.orchestrator_points)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    s, rp, st = out["steady_pass"], out["reports_pass"], out["stage_starts"][-1]
    r = Result("orchestrator", "none: absolute targets (issue 16)")
    r.rows.append((f"steady pass over {n:,} devices (nothing changed), s", f"{s['seconds']:.3f}", "-", "-"))
    r.rows.append((f"pass after {rp['reports']:,} reports, s", f"{rp['seconds']:.3f}", "-", "-"))
    r.rows.append(("first pass after a stage start (tracker from a full snapshot), s",
                   f"{out['first_pass']['seconds']:.3f}", "-", "-"))
    for x in out["stage_starts"]:
        r.rows.append((f"stage {x['stage']} start: {x['actions']:,} install actions, s", f"{x['seconds']:.2f}",
                       "-", "-"))
    if "health_pass" in out:
        h = out["health_pass"]
        r.rows.append((f"steady pass, health condition over {h['telemetry_points']:,} points, s",
                       f"{h['seconds']:.3f}", "-", "-"))
    r.targets.append(Target(f"steady orchestrator pass over {n:,} devices, s", s["seconds"], "<",
                            bench_orchestrator.STEADY_TARGET, " s"))
    r.targets.append(Target(f"orchestrator pass after {rp['reports']:,} reports, s", rp["seconds"], "<",
                            bench_orchestrator.REPORTS_TARGET, " s"))
    # Named by the fleet, not the stage's exact size (which varies from run to run), so the history lines up.
    r.targets.append(Target(f"start of the last stage (~75 % of {n:,} devices), s", st["seconds"], "<",
                            bench_orchestrator.STAGE_TARGET, " s"))
    r.data = out
    return r


# --- 6. agent footprint -----------------------------------------------------------------

def agent(cfg: Config, work: Path, logs: Path) -> Result:
    """The agent's idle RSS and CPU at its check-in interval in each mode (plain polling, remote access on, MQTT
    on), side by side, against a bare interpreter with its imports."""
    if (work / "agent").exists():  # enrolled state dirs and data dirs from a previous run
        shutil.rmtree(work / "agent")
    d = agent_footprint.measure(work / "agent", logs, cfg.agent_minutes, cfg.agent_poll_interval, cfg.agent_settle)
    r = Result("agent", "python3 importing httpx, zeroconf and cryptography, then sleeping")
    base = d["baseline_rss_mib"]
    for name, what in agent_footprint.MODE_NAMES.items():
        m = d["modes"][name]
        r.rows += [
            (f"{what}: idle RSS (median over {d['minutes']:g} min), MiB", f"{m['rss_mib']:.1f}", f"{base:.1f}",
             f"{m['rss_mib'] / base:.2f}"),
            (f"{what}: peak RSS over the window, MiB", f"{m['peak_rss_mib']:.1f}", "-", "-"),
            (f"{what}: CPU, % of one core", f"{m['cpu_pct']:.2f}", f"{d['baseline_cpu_pct']:.2f}", "-"),
            (f"{what}: check-ins seen by its server (poll {d['poll_interval']} s)", f"{m['checkins']}",
             f"~{m['expected_checkins']:g} expected", "-"),
        ]
        # The plain mode keeps its name of before (the history lines up); the others say theirs.
        label = "agent idle RSS, MiB" if name == "plain" else f"agent idle RSS, {what}, MiB"
        r.targets.append(Target(label, m["rss_mib"], "<", agent_footprint.TARGET_RSS_MIB, " MiB"))
    r.data = d
    return r
