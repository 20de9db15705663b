"""The hawkBit DDI poll benchmark: devices polling their controller base resource under load, measured in the
same run, interleaved, against fleetd's own CheckIn and the bare Litestar hello world.

The DDI devices live in a copy of the seeded data dir (its blobs left out), so that
the other benchmarks' fleet stays as it was: ``tokens`` of them, made offline
through fleetd's own code (a DDI device and its target token, as
``fleetd devices ddi-token`` makes them), each polling
``GET /DEFAULT/controller/v1/<controller id>`` with ``Authorization: TargetToken``.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

from fleetd.accounts.audit import SYSTEM
from fleetd.ddi import state as ddi
from fleetd.ddi import tokens as ddi_tokens
from fleetd.fleet import DB_NAME, open_offline
from fleetd.store.database import connect, transaction

from . import seed
from .cases import Config, Result, Target, checkin_requests, log, medians
from .loadgen import WrkRun, check_clean, run_wrk
from .servers import Service, start_fleetd, start_hello

TENANT = "DEFAULT"
CHECKIN = "/fleetd.v1.DeviceService/CheckIn"


def controller_id(i: int) -> str:
    return f"ddi-bench-{i:07d}"


def copy_data_dir(src: Path, dst: Path) -> None:
    """The seeded data dir without its blobs; the database through SQLite's backup API (consistent)."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(mode=0o700, parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith(DB_NAME):
            shutil.copy2(f, dst / f.name)
    s, d = connect(src / DB_NAME, readonly=True), sqlite3.connect(dst / DB_NAME)
    try:
        s.backup(d)
    finally:
        s.close()
        d.close()


def make_ddi_devices(data_dir: Path, count: int, batch: int = 2_000) -> list[tuple[str, str]]:
    """``count`` DDI devices with a fresh target token each → (controller id, token)."""
    conn = open_offline(data_dir)
    out: list[tuple[str, str]] = []
    try:
        for start in range(0, count, batch):
            with transaction(conn):
                for i in range(start, min(count, start + batch)):
                    dev = ddi.ensure_device(conn, SYSTEM, controller_id(i), seed.DEVICE_TYPE)
                    _, secret = ddi_tokens.replace_target(conn, SYSTEM, dev.device_id)
                    out.append((controller_id(i), secret))
    finally:
        conn.close()
    return out


def write_gets(path: Path, devices: list[tuple[str, str]]) -> Path:
    """The file wrk_bench.lua's BENCH_GETS mode reads: ``authorization<TAB>path`` per line."""
    with path.open("w") as f:
        for cid, token in devices:
            f.write(f"TargetToken {token}\t/{TENANT}/controller/v1/{cid}\n")
    return path


def prepare(cfg: Config, fx: seed.Fixture, work: Path) -> tuple[Path, Path, Path]:
    """(the copied data dir, the DDI poll requests, the CheckIn requests)."""
    data = work / "ddi-data"
    t = time.monotonic()
    copy_data_dir(fx.path, data)
    devices = make_ddi_devices(data, cfg.tokens)
    log(f"ddi: {len(devices):,} DDI devices with target tokens in a copy of the data dir "
        f"({time.monotonic() - t:.1f} s)")
    # CheckIn tokens are minted with the copy's token.key, which is the seeded one.
    return data, write_gets(work / "ddi.requests", devices), checkin_requests(cfg, fx, work)


def _seen_since(data: Path, started: float) -> int:
    conn = connect(data / DB_NAME, readonly=True)
    try:
        return int(conn.execute(
            "SELECT COUNT(*) FROM devices d JOIN ddi_devices x ON x.device_id = d.id WHERE d.last_seen >= ?",
            (started,)).fetchone()[0])
    finally:
        conn.close()


def bench(cfg: Config, fx: seed.Fixture, work: Path, logs: Path) -> Result:
    data, ddi_requests, checkin_reqs = prepare(cfg, fx, work)
    fleetd = start_fleetd(data, logs, "fleetd-ddi")
    hello: Service | None = None
    try:
        hello = start_hello(data, logs)
        poll = f"/{TENANT}/controller/v1/{controller_id(0)}"  # wrk's URL; BENCH_GETS gives each request's path
        # What each kind hits: (server, URL, wrk_bench.lua's requests file as (BENCH_GETS, BENCH_REQUESTS)).
        kinds: dict[str, tuple[Service, str, Path | None, Path | None]] = {
            "hello": (hello, hello.url + poll, ddi_requests, None),
            "checkin": (fleetd, fleetd.url + CHECKIN, None, checkin_reqs),
            "ddi": (fleetd, fleetd.url + poll, ddi_requests, None),
        }

        def wrk(name: str, seconds: float) -> WrkRun:
            svc, url, gets, posts = kinds[name]
            return run_wrk(url, seconds=seconds, threads=cfg.threads, connections=cfg.connections,
                           server_pid=svc.pid, gets_file=gets, requests_file=posts)

        for name in kinds:
            log(f"ddi: {cfg.warmup:g} s warm-up of {name}")
            wrk(name, cfg.warmup)
        started = time.time()
        runs: dict[str, list[WrkRun]] = {name: [] for name in kinds}
        order = list(kinds)
        for i in range(cfg.runs):
            for name in order[i % 3:] + order[:i % 3]:  # rotated, so that no kind always runs first
                one = wrk(name, cfg.seconds)
                check_clean(one, f"{name} in the DDI benchmark")
                runs[name].append(one)
                log(f"ddi run {i + 1}/{cfg.runs} {name}: {one.rps:,.0f} rps, p99 {one.p99_ms:.1f} ms")
    finally:
        fleetd.stop()
        if hello:
            hello.stop()
    try:
        # Polls keep last-seen in memory (written at most once a minute per device, and at shutdown).
        seen = _seen_since(data, started)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    d, c, h = medians(runs["ddi"]), medians(runs["checkin"]), medians(runs["hello"])
    rps_ratio, p99_ratio = d["rps"] / h["rps"], d["p99_ms"] / h["p99_ms"]
    r = Result("ddi", "Litestar hello world on uvicorn (GET, same paths and headers); fleetd CheckIn in the same run")
    r.rows += [
        ("DDI poll rps", f"{d['rps']:,.0f}", f"{h['rps']:,.0f}", f"{rps_ratio:.2f}"),
        ("  CheckIn rps, same run", f"{c['rps']:,.0f}", f"{h['rps']:,.0f}", f"{c['rps'] / h['rps']:.2f}"),
        ("  DDI poll rps / CheckIn rps", f"{d['rps'] / c['rps']:.2f}", "-", "-"),
        ("DDI poll p50, ms", f"{d['p50_ms']:.1f}", f"{h['p50_ms']:.1f}", f"{d['p50_ms'] / h['p50_ms']:.2f}"),
        ("DDI poll p99, ms", f"{d['p99_ms']:.1f}", f"{h['p99_ms']:.1f}", f"{p99_ratio:.2f}"),
        ("  CheckIn p99, ms, same run", f"{c['p99_ms']:.1f}", f"{h['p99_ms']:.1f}", f"{c['p99_ms'] / h['p99_ms']:.2f}"),
        ("server CPU, % of a core (DDI / CheckIn)", f"{d['server_cpu_pct']:.0f} / {c['server_cpu_pct']:.0f}",
         f"{h['server_cpu_pct']:.0f}", "-"),
        (f"DDI devices whose last-seen moved (of {cfg.tokens:,} polling)", f"{seen:,}", "-", "-"),
    ]
    r.targets += [Target("DDI poll rps ratio vs hello world", rps_ratio, ">=", 0.4),
                  Target("DDI poll p99 ratio vs hello world", p99_ratio, "<=", 2.0)]
    r.data = {"ddi": d, "checkin": c, "baseline": h, "rps_ratio": round(rps_ratio, 3),
              "p99_ratio": round(p99_ratio, 3), "ddi_vs_checkin_rps": round(d["rps"] / c["rps"], 3),
              "ddi_devices": cfg.tokens, "ddi_devices_seen": seen}
    return r
