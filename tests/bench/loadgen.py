"""Runs wrk with wrk_bench.lua and measures what happened around it (server CPU and RSS, wrk CPU, steal)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .procs import RssSampler, StealMeter, cpu_seconds, find_tool, rss_kib

LUA = Path(__file__).with_name("wrk_bench.lua")
MARKER = "BENCH_JSON "


@dataclass
class WrkRun:
    requests: int  # completed ones
    bytes: int  # read, counting responses still in flight at the end
    seconds: float
    rps: float
    mb_per_s: float  # MB = 10^6 bytes, as wrk and curl count
    p50_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int
    server_cpu_pct: float  # of one core
    loadgen_cpu_pct: float
    steal_pct: float
    server_rss_kib: int
    server_peak_rss_kib: int

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def parse_wrk(stdout: str) -> dict[str, Any]:
    """The JSON line wrk_bench.lua's done() prints."""
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    raise RuntimeError(f"wrk printed no {MARKER.strip()} line; its output:\n{stdout[-2000:]}")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wrk_command(url: str, *, seconds: float, threads: int = 2, connections: int = 64,
                requests_file: Path | None = None, auth: str | None = None,
                timeout: str = "10s", gets_file: Path | None = None,
                content_type: str = "application/json") -> tuple[list[str], dict[str, str]]:
    """wrk's command line and environment for one run of wrk_bench.lua (keep-alive, --latency); ``content_type``
    is that of the POSTs of ``requests_file``."""
    wrk = find_tool("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed")
    env = dict(os.environ, BENCH_REQUESTS=str(requests_file or ""), BENCH_AUTH=auth or "",
               BENCH_GETS=str(gets_file or ""), BENCH_CONTENT_TYPE=content_type)
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
           f"--timeout={timeout}", "-s", str(LUA), url]
    return cmd, env


def run_wrk(url: str, *, seconds: float, threads: int = 2, connections: int = 64, server_pid: int,
            requests_file: Path | None = None, auth: str | None = None, timeout: str = "10s",
            sample_rss: bool = False, gets_file: Path | None = None,
            content_type: str = "application/json") -> WrkRun:
    """One wrk run against ``url``, with the server's CPU and memory measured beside it."""
    cmd, env = wrk_command(url, seconds=seconds, threads=threads, connections=connections,
                           requests_file=requests_file, auth=auth, timeout=timeout, gets_file=gets_file,
                           content_type=content_type)
    server_cpu0, wrk_cpu0 = cpu_seconds(server_pid), _children_cpu()
    with StealMeter() as steal, RssSampler(server_pid, 0.05 if sample_rss else 1.0) as rss:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 120)
    server_cpu, wrk_cpu = cpu_seconds(server_pid) - server_cpu0, _children_cpu() - wrk_cpu0
    if p.returncode != 0:
        raise RuntimeError(f"wrk exited with {p.returncode}: {p.stderr.strip() or p.stdout[-2000:]}")
    r = parse_wrk(p.stdout)
    secs = r["duration_us"] / 1e6
    return WrkRun(
        requests=r["requests"], bytes=r["bytes"], seconds=secs, rps=r["requests"] / secs,
        mb_per_s=r["bytes"] / secs / 1e6,
        p50_ms=r["p50_us"] / 1000, p99_ms=r["p99_us"] / 1000, max_ms=r["max_us"] / 1000,
        non_2xx=r["status_errors"],
        socket_errors=r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"],
        server_cpu_pct=100 * server_cpu / secs, loadgen_cpu_pct=100 * wrk_cpu / secs, steal_pct=steal.percent,
        server_rss_kib=rss_kib(server_pid), server_peak_rss_kib=rss.peak_kib)


def check_clean(run: WrkRun, what: str) -> None:
    """A run with failed requests measures the wrong thing: refuse it."""
    bad = run.non_2xx + run.socket_errors
    if run.requests == 0 or bad > 0.001 * run.requests:
        raise RuntimeError(f"{what}: {run.non_2xx} non-2xx answers and {run.socket_errors} socket errors in "
                           f"{run.requests} requests; the server log says why")
