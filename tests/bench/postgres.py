"""fleetd on PostgreSQL (issue 18), measured against fleetd on SQLite and against raw PostgreSQL in the same run.

- check-in on one replica on PostgreSQL against the same on the seeded SQLite data dir (interleaved runs);
- telemetry intake on PostgreSQL against a raw ``COPY`` of the same rows into the same table, and against the
  intake on SQLite;
- check-in through haproxy with one and with two replicas on one database.

The PostgreSQL server runs with its default durability (fsync and synchronous_commit on; shared_buffers 128 MB),
as an operator would run it, in a temp dir on the same disk as the SQLite data dir. Its own CPU is reported
beside fleetd's.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import time
from pathlib import Path

import httpx
import msgspec

from fleetd.core import pki
from fleetd.devices.devauth import DeviceTokens
from fleetd.store import postgres, transfer
from fleetd.store.database import migrate
from tests.support.services import HAProxy, PostgresServer

from . import bench_orchestrator, seed
from .cases import Config, Result, Target, log, median, medians, telemetry_requests
from .loadgen import WrkRun, check_clean, run_wrk
from .procs import cpu_seconds
from .servers import Service, start_fleetd

CHECKIN = "/fleetd.v1.DeviceService/CheckIn"
TELEMETRY = "/fleetd.v1.DeviceService/PushTelemetry"
# Durability on, as in production; a bigger cache than the test servers' 16 MB.
SERVER_SETTINGS = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on", "shared_buffers": "128MB",
                   "max_connections": "200"}


def _postgres_cpu(server: PostgresServer) -> float:
    """CPU seconds of the PostgreSQL server and all its backends so far."""
    assert server.proc is not None
    total = cpu_seconds(server.proc.pid)
    for child in Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split():
        with contextlib.suppress(OSError, ValueError):  # a backend that ended meanwhile
            total += cpu_seconds(int(child))
    return total


class PgFleet:
    """A data dir whose database is on PostgreSQL: keys in the dir (imported into the database on first start),
    ``devices`` enrolled the way the SQLite fixture's were."""

    def __init__(self, server: PostgresServer, work: Path, devices: int) -> None:
        self.dsn = server.dsn(server.create_database())
        self.path = work / "pg-data"
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        self.spare: tuple[str, str] = ("", "")
        pki.load_or_create(self.path, ["127.0.0.1"])
        conn = postgres.connect(self.dsn)
        try:
            migrate(conn)
            seed.enroll_devices(conn, devices)  # type: ignore[arg-type]
        finally:
            conn.close()
        self.env = {"FLEETD_DATABASE": self.dsn,
                    "FLEETD_KEY_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode()}
        # The keys into the database, as `fleetd store migrate` puts them: every replica (a data dir of its own)
        # reads them there, and the tokens minted from this dir's token key are good on all.
        os.environ["FLEETD_KEY_ENCRYPTION_KEY"] = self.env["FLEETD_KEY_ENCRYPTION_KEY"]
        transfer.copy_keys(self.path, self.dsn)

    def sample(self, count: int, seed_: int) -> list[tuple[str, str, int]]:
        conn = postgres.connect(self.dsn, readonly=True)
        try:
            rows = conn.execute("SELECT id, hardware_id, auth_epoch FROM devices WHERE status = 'active' "
                                "ORDER BY hardware_id").fetchall()
        finally:
            conn.close()
        return [(r[0], r[1], r[2]) for r in random.Random(seed_).sample(rows, count)]

    def requests(self, cfg: Config, work: Path, what: str) -> tuple[Path, list[tuple[object, ...]]]:
        """wrk's requests for this fleet's devices: check-ins, or 100-point telemetry batches (and their rows)."""
        tokens = DeviceTokens((self.path / "token.key").read_bytes())
        if what == "checkin":
            devices = self.sample(cfg.tokens, 1)
            self.spare = (devices[-1][0], tokens.issue(devices[-1][0], devices[-1][2]))  # revoked at the end
            bodies = [seed.checkin_body(hw, i) for i, (_, hw, _) in enumerate(devices)]
            rows: list[tuple[object, ...]] = []
        else:
            devices = self.sample(cfg.telemetry_devices, 2)
            now, bodies, rows = time.time(), [], []
            for i, (did, _, _) in enumerate(devices):
                points = seed.telemetry_points(i, now)
                bodies.append(msgspec.json.encode({"points": points}))
                rows += seed.telemetry_rows(did, points)
        return seed.write_requests(work / f"pg-{what}.requests",
                                   [tokens.issue(did, epoch) for did, _, epoch in devices], bodies), rows

    def start(self, logs: Path, name: str) -> Service:
        """A replica on a data dir of its own (``name``)."""
        data = self.path.parent / "pg-replicas" / name
        data.mkdir(parents=True, exist_ok=True)
        return start_fleetd(data, logs, log_name=name, env=self.env)

    def telemetry_rows(self) -> int:
        conn = postgres.connect(self.dsn, readonly=True)
        try:
            return int(conn.execute("SELECT count(*) FROM telemetry").fetchone()[0])
        finally:
            conn.close()


def copy_baseline(dsn: str, rows: list[tuple[object, ...]], total: int, txn_rows: int) -> float:
    """Rows/s of a plain COPY of ``rows`` into the telemetry table, ``txn_rows`` a transaction (psycopg, text)."""
    import psycopg
    with psycopg.connect(dsn) as conn:
        conn.execute("TRUNCATE telemetry")
        conn.commit()
        done, t0 = 0, time.perf_counter()
        while done < total:
            for i in range(0, len(rows), txn_rows):
                with conn.cursor() as cur, \
                        cur.copy("COPY telemetry (device_id, name, ts, value, tags) FROM STDIN") as copy:
                    for row in rows[i:i + txn_rows]:
                        copy.write_row(row)
                conn.commit()
            done += len(rows)
        seconds = time.perf_counter() - t0
        conn.execute("TRUNCATE telemetry")
        conn.commit()
    return done / seconds


def _wrk(svc_url: str, pid: int, cfg: Config, requests: Path, seconds: float) -> WrkRun:
    return run_wrk(svc_url, seconds=seconds, threads=cfg.threads, connections=cfg.connections, server_pid=pid,
                   requests_file=requests)


def bench(cfg: Config, fx: seed.Fixture, work: Path, logs: Path) -> Result:
    r = Result("postgres", "fleetd on the seeded SQLite data dir; raw PostgreSQL COPY of the same rows")
    with PostgresServer(settings=SERVER_SETTINGS) as server:
        log(f"postgres: enrolling {cfg.devices:,} devices into PostgreSQL")
        t = time.monotonic()
        fleet = PgFleet(server, work, cfg.devices)
        log(f"postgres: enrolled in {time.monotonic() - t:.1f} s")
        sqlite_checkins = seed.write_requests(
            work / "sqlite-checkin.requests", seed.mint_tokens(fx, devs := seed.sample_devices(fx, cfg.tokens)),
            [seed.checkin_body(hw, i) for i, (_, hw, _) in enumerate(devs)])
        pg_checkins, _ = fleet.requests(cfg, work, "checkin")
        _checkin_vs_sqlite(cfg, fx, fleet, server, logs, sqlite_checkins, pg_checkins, r)
        _telemetry_vs_copy(cfg, fx, fleet, server, work, logs, r)
        _through_haproxy(cfg, fleet, logs, pg_checkins, r)
        _orchestrator(cfg, server, work, r)
    return r


def _checkin_vs_sqlite(cfg: Config, fx: seed.Fixture, fleet: PgFleet, server: PostgresServer, logs: Path,
                       sqlite_requests: Path, pg_requests: Path, r: Result) -> None:
    on_sqlite = start_fleetd(fx.path, logs, log_name="fleetd-sqlite")
    on_pg = fleet.start(logs, "fleetd-pg")
    try:
        both = {"sqlite": (on_sqlite, sqlite_requests), "postgresql": (on_pg, pg_requests)}
        for svc, requests in both.values():
            _wrk(svc.url + CHECKIN, svc.pid, cfg, requests, cfg.warmup)
        runs: dict[str, list[WrkRun]] = {"sqlite": [], "postgresql": []}
        pg_cpu: list[float] = []
        for i in range(cfg.runs):
            for name in ("sqlite", "postgresql") if i % 2 == 0 else ("postgresql", "sqlite"):
                svc, requests = both[name]
                cpu0 = _postgres_cpu(server)
                run = _wrk(svc.url + CHECKIN, svc.pid, cfg, requests, cfg.seconds)
                if name == "postgresql":
                    pg_cpu.append(100 * (_postgres_cpu(server) - cpu0) / run.seconds)
                check_clean(run, f"check-in on {name}")
                runs[name].append(run)
                log(f"postgres: check-in run {i + 1}/{cfg.runs} on {name}: {run.rps:,.0f} rps, "
                    f"p99 {run.p99_ms:.1f} ms")
    finally:
        on_sqlite.stop()
        on_pg.stop()
    s, p = medians(runs["sqlite"]), medians(runs["postgresql"])
    ratio = p["rps"] / s["rps"]
    r.rows += [("check-in rps, one replica on PostgreSQL / on SQLite", f"{p['rps']:,.0f}", f"{s['rps']:,.0f}",
                f"{ratio:.2f}"),
               ("check-in p99 ms, PostgreSQL / SQLite", f"{p['p99_ms']:.1f}", f"{s['p99_ms']:.1f}",
                f"{p['p99_ms'] / s['p99_ms']:.2f}"),
               ("PostgreSQL server CPU during the check-ins, % of a core", f"{median(pg_cpu):.0f}", "-", "-")]
    r.targets.append(Target("check-in on PostgreSQL vs on SQLite, rps", ratio, ">=", 0.8))
    r.data["checkin"] = {"postgresql": p, "sqlite": s, "ratio": round(ratio, 3),
                         "postgres_cpu_pct": round(median(pg_cpu))}


def _telemetry_vs_copy(cfg: Config, fx: seed.Fixture, fleet: PgFleet, server: PostgresServer, work: Path,
                       logs: Path, r: Result) -> None:
    pg_requests, rows = fleet.requests(cfg, work, "telemetry")
    sqlite_requests, _ = telemetry_requests(cfg, fx, work)
    baseline_dsn = server.dsn(server.create_database())
    conn = postgres.connect(baseline_dsn)
    try:
        migrate(conn)
    finally:
        conn.close()
    on_pg = fleet.start(logs, "fleetd-pg-telemetry")
    on_sqlite = start_fleetd(fx.path, logs, log_name="fleetd-sqlite-telemetry")
    pg_pps: list[float] = []
    sqlite_pps: list[float] = []
    copy_rps: list[float] = []
    pg_cpu: list[float] = []
    try:
        _wrk(on_pg.url + TELEMETRY, on_pg.pid, cfg, pg_requests, cfg.warmup)
        _wrk(on_sqlite.url + TELEMETRY, on_sqlite.pid, cfg, sqlite_requests, cfg.warmup)
        for i in range(cfg.runs):
            copy_rps.append(copy_baseline(baseline_dsn, rows, cfg.baseline_rows, cfg.txn_rows))
            before, cpu0 = fleet.telemetry_rows(), _postgres_cpu(server)
            run = _wrk(on_pg.url + TELEMETRY, on_pg.pid, cfg, pg_requests, cfg.seconds)
            check_clean(run, "telemetry on PostgreSQL")
            pg_cpu.append(100 * (_postgres_cpu(server) - cpu0) / run.seconds)
            stored, sent = fleet.telemetry_rows() - before, run.requests * seed.POINTS_PER_BATCH
            if stored < sent:
                raise RuntimeError(f"postgres: wrk saw {sent} points accepted but only {stored} rows were stored")
            pg_pps.append(run.rps * seed.POINTS_PER_BATCH)
            run = _wrk(on_sqlite.url + TELEMETRY, on_sqlite.pid, cfg, sqlite_requests, cfg.seconds)
            check_clean(run, "telemetry on SQLite")
            sqlite_pps.append(run.rps * seed.POINTS_PER_BATCH)
            log(f"postgres: telemetry run {i + 1}/{cfg.runs}: on PostgreSQL {pg_pps[-1]:,.0f} points/s "
                f"(PostgreSQL CPU {pg_cpu[-1]:.0f} %), on SQLite {sqlite_pps[-1]:,.0f}, COPY {copy_rps[-1]:,.0f} "
                "rows/s")
    finally:
        on_pg.stop()
        on_sqlite.stop()
    p, s, c = median(pg_pps), median(sqlite_pps), median(copy_rps)
    r.rows += [("telemetry points/s on PostgreSQL / raw COPY", f"{p:,.0f}", f"{c:,.0f}", f"{p / c:.2f}"),
               ("telemetry points/s on PostgreSQL / on SQLite", f"{p:,.0f}", f"{s:,.0f}", f"{p / s:.2f}"),
               ("PostgreSQL server CPU during the intake, % of a core", f"{median(pg_cpu):.0f}", "-", "-")]
    r.targets.append(Target("telemetry on PostgreSQL vs raw COPY", p / c, ">=", 0.5))
    r.data["telemetry"] = {"postgresql_points_per_s": round(p), "sqlite_points_per_s": round(s),
                           "copy_rows_per_s": round(c), "ratio_vs_copy": round(p / c, 3),
                           "postgres_cpu_pct": round(median(pg_cpu))}


def _through_haproxy(cfg: Config, fleet: PgFleet, logs: Path, requests: Path, r: Result) -> None:
    replicas = [fleet.start(logs, f"fleetd-replica-{i}") for i in (1, 2)]
    rps: dict[int, list[float]] = {1: [], 2: []}
    try:
        with HAProxy([s.url.removeprefix("https://") for s in replicas[:1]], check_tls=True) as one, \
                HAProxy([s.url.removeprefix("https://") for s in replicas], check_tls=True) as two:
            lbs = {1: one, 2: two}
            for lb in lbs.values():
                _wrk(f"https://{lb.address}{CHECKIN}", replicas[0].pid, cfg, requests, cfg.warmup)
            for i in range(cfg.runs):
                for n in (1, 2) if i % 2 == 0 else (2, 1):
                    run = _wrk(f"https://{lbs[n].address}{CHECKIN}", replicas[0].pid, cfg, requests, cfg.seconds)
                    check_clean(run, f"check-in through haproxy, {n} replica(s)")
                    rps[n].append(run.rps)
                    log(f"postgres: check-in through haproxy, {n} replica(s): {run.rps:,.0f} rps")
        key = _admin_key(fleet)
        coherence = _revoke_seen_by_the_other(fleet, replicas, key)
        failover = _lease_failover(replicas, key)
    finally:
        for s in replicas:
            s.stop()
    one_rps, two_rps = median(rps[1]), median(rps[2])
    r.rows += [("check-in rps through haproxy, 2 replicas / 1 (same 2 cores)", f"{two_rps:,.0f}",
                f"{one_rps:,.0f}", f"{two_rps / one_rps:.2f}"),
               ("a revoke through replica 1 refused by replica 2 after, s", f"{coherence:.3f}", "-", "-"),
               ("fleet lease failover after kill -9 of its holder, s", f"{failover:.2f}", "-", "-")]
    r.targets += [Target("cache coherence across replicas (revoke), s", coherence, "<=", 1.0, " s"),
                  Target("fleet lease failover after kill -9, s", failover, "<=", 10.0, " s")]
    r.data["replicas"] = {"one_replica_rps": round(one_rps), "two_replicas_rps": round(two_rps),
                          "revoke_seen_after_s": round(coherence, 4), "lease_failover_s": round(failover, 2)}


def _admin_key(fleet: PgFleet) -> str:
    """An admin API key, made offline (`fleetd keys create`) on the fleet's database."""
    from tests.e2e.server import run_cli
    data = fleet.path.parent / "pg-replicas" / "admin"
    data.mkdir(parents=True, exist_ok=True)
    p = run_cli("keys", "create", "--data-dir", str(data), "--name", f"bench-{os.urandom(3).hex()}", "--role",
                "admin", "--json", env=fleet.env)
    return str(json.loads(p.stdout)["key"])


def _revoke_seen_by_the_other(fleet: PgFleet, replicas: list[Service], key: str) -> float:
    """Seconds from a RevokeDevice answered by replica 1 to replica 2 refusing that device's token (401)."""
    device_id, token = fleet.spare
    with httpx.Client(verify=False, timeout=10) as c:
        def check_in() -> int:
            return c.post(replicas[1].url + CHECKIN, content=b"{}", headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/json"}).status_code
        assert check_in() == 200, "the spare device's token is refused before the revoke"
        c.post(replicas[0].url + "/fleetd.v1.DeviceAdminService/RevokeDevice", content=json.dumps({"id": device_id}),
               headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}).raise_for_status()
        t0 = time.perf_counter()
        while check_in() != 401:
            if time.perf_counter() - t0 > 30:
                raise RuntimeError("postgres: replica 2 still takes a device revoked through replica 1 after 30 s")
        seen = time.perf_counter() - t0
    log(f"postgres: a revoke through replica 1 was refused by replica 2 {seen * 1000:.1f} ms later")
    return seen


def _lease_held(replica: Service, key: str) -> bool:
    with httpx.Client(verify=False, timeout=5) as c:
        text = c.get(replica.url + "/metrics", headers={"Authorization": f"Bearer {key}"}).text
    return "\nfleetd_fleet_lease_held 1" in "\n" + text


def _lease_failover(replicas: list[Service], key: str) -> float:
    """Seconds from kill -9 of the replica holding the fleet lease to the other one running the fleet's parts."""
    deadline = time.monotonic() + 30
    while not any(_lease_held(s, key) for s in replicas):
        if time.monotonic() > deadline:
            raise RuntimeError("postgres: no replica holds the fleet lease after 30 s")
        time.sleep(0.2)
    holder = next(s for s in replicas if _lease_held(s, key))
    other = next(s for s in replicas if s is not holder)
    holder.proc.kill()
    holder.proc.wait()
    t0 = time.monotonic()
    while not _lease_held(other, key):
        if time.monotonic() - t0 > 60:
            raise RuntimeError("postgres: the fleet lease did not move within 60 s of its holder's kill -9")
        time.sleep(0.05)
    took = time.monotonic() - t0
    log(f"postgres: the fleet lease moved {took:.2f} s after kill -9 of its holder")
    return took


def _orchestrator(cfg: Config, server: PostgresServer, work: Path, r: Result) -> None:
    """The orchestrator benchmark (tests/bench/bench_orchestrator.py) on a PostgreSQL fleet of its own; its targets
    (issue 16's) within 2x (issue 18)."""
    n = cfg.orchestrator_devices
    data = work / "pg-orchestrator"
    if data.exists():
        shutil.rmtree(data)
    dsn = server.dsn(server.create_database())
    log(f"postgres: orchestrator: enrolling {n:,} devices into PostgreSQL")
    bench_orchestrator.seed(data, n, dsn)
    try:
        out = bench_orchestrator.bench(data, n, cfg.runs, 0, dsn)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    s, rp, st = out["steady_pass"], out["reports_pass"], out["stage_starts"][-1]
    r.rows += [(f"orchestrator on PostgreSQL: steady pass over {n:,} devices, s", f"{s['seconds']:.3f}", "-", "-"),
               (f"orchestrator on PostgreSQL: pass after {rp['reports']:,} reports, s", f"{rp['seconds']:.3f}", "-",
                "-"),
               (f"orchestrator on PostgreSQL: last stage start, {st['actions']:,} actions, s", f"{st['seconds']:.2f}",
                "-", "-")]
    r.targets += [
        Target(f"PostgreSQL: steady orchestrator pass over {n:,} devices, s", s["seconds"], "<",
               2 * bench_orchestrator.STEADY_TARGET, " s"),
        Target(f"PostgreSQL: orchestrator pass after {rp['reports']:,} reports, s", rp["seconds"], "<",
               2 * bench_orchestrator.REPORTS_TARGET, " s"),
        Target(f"PostgreSQL: start of the last stage (~75 % of {n:,} devices), s", st["seconds"], "<",
               2 * bench_orchestrator.STAGE_TARGET, " s")]
    r.data["orchestrator"] = out
