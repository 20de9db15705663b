"""The login flood benchmark: device check-in and telemetry p99 alone and under a flood of wrong-password logins
that keeps the password hashing pool at its cap, in the same run, interleaved.

Issue 13 item 2: scrypt (~0.1 s of CPU a hash) used to run in the SQLite writer thread, so ~8 logins/s
pushed telemetry acknowledgements from 1 ms to 1.85 s. Now hashing has its own bounded pool; this case
shows what a flood at that pool's cap costs the device path.

The flood is ``password_hash_workers + password_hash_queue`` wrk connections (one login in flight each),
so the pool and its queue stay full for the whole run, every login is hashed, and none is refused. All
connections come from 127.0.0.1, so the server runs with the per-address login rate limit raised out of
the way (FLEETD_LOGIN_RATE_PER_MINUTE): what is measured is the hashing budget, not the rate limit. The
server runs on a copy of the seeded data dir, so the failed-login audit entries stay out of the others'.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import msgspec

from fleetd.accounts.passwords import default_workers
from fleetd.core.config import load_settings

from . import seed
from .cases import Config, Result, Target, checkin_requests, log, median, medians, telemetry_requests
from .ddi_poll import copy_data_dir
from .loadgen import WrkRun, check_clean, parse_wrk, run_wrk, wrk_command
from .servers import Service, start_fleetd

CHECKIN = "/fleetd.v1.DeviceService/CheckIn"
LOGIN = "/fleetd.v1.UserService/Login"
TELEMETRY = "/fleetd.v1.DeviceService/PushTelemetry"
TARGET_RATIO = 1.5
PENDING_METRIC = "fleetd_password_checks_pending "


# Per-address login limits would stop a flood from one address: raised out of the way. FLEETD_PASSWORD_HASH_*
# in the environment reach the server too (and the flood follows them).
SERVER_ENV = {"FLEETD_LOGIN_RATE_PER_MINUTE": "100000000"}


def flood_connections() -> int:
    """The pool's cap with the server's settings: this many logins in flight keep it full."""
    s = load_settings(environ={**os.environ, **SERVER_ENV})
    return (s.password_hash_workers or default_workers()) + s.password_hash_queue


def write_logins(path: Path, count: int = 64) -> Path:
    """wrk_bench.lua's requests file: wrong-password logins (Login is public; the token column is unused)."""
    with path.open("w") as f:
        for i in range(count):
            body = msgspec.json.encode({"username": "admin", "password": f"not-the-password-{i:04d}"}).decode()
            f.write(f"none\t{body}\n")
    return path


def wait_for_the_pool_to_drain(fleetd: Service, api_key: str, timeout: float = 120) -> None:
    """Logins of an ended flood still queued on the server would make the next run start at the cap."""
    deadline = time.monotonic() + timeout
    with httpx.Client(verify=False, headers={"Authorization": f"Bearer {api_key}"}) as c:
        while time.monotonic() < deadline:
            text = c.get(fleetd.url + "/metrics").raise_for_status().text
            pending = next(line for line in text.splitlines() if line.startswith(PENDING_METRIC))
            if float(pending.split()[-1]) == 0:
                return
            time.sleep(0.2)
    raise RuntimeError(f"the password pool did not drain within {timeout:g} s")


def bench(cfg: Config, fx: seed.Fixture, work: Path, logs: Path) -> Result:
    data = work / "login-data"
    copy_data_dir(fx.path, data)
    # What devices do: check-ins (answered from memory) and telemetry pushes (acknowledged after the writer
    # commits them: what the old writer-thread scrypt stalled).
    kinds = {"checkin": (CHECKIN, checkin_requests(cfg, fx, work)),
             "telemetry": (TELEMETRY, telemetry_requests(cfg, fx, work)[0])}
    logins = write_logins(work / "login.requests")
    flood_c = flood_connections()
    fleetd = start_fleetd(data, logs, "fleetd-login", env=SERVER_ENV)
    floods: list[dict[str, float]] = []
    try:
        def device_load(kind: str, seconds: float) -> WrkRun:
            path, requests = kinds[kind]
            return run_wrk(fleetd.url + path, seconds=seconds, threads=cfg.threads, connections=cfg.connections,
                           server_pid=fleetd.pid, requests_file=requests)

        def flooded(kind: str, seconds: float) -> WrkRun:
            # The flood starts first and ends after the measured run, so it covers all of it.
            cmd, env = wrk_command(fleetd.url + LOGIN, seconds=seconds + 2, threads=1, connections=flood_c,
                                   requests_file=logins, timeout="30s")
            flood = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                time.sleep(1.0)
                run = device_load(kind, seconds)
            finally:
                out, err = flood.communicate(timeout=seconds + 120)
            wait_for_the_pool_to_drain(fleetd, fx.api_key)
            if flood.returncode != 0:
                raise RuntimeError(f"the login flood's wrk exited with {flood.returncode}: {err.strip()}")
            f = parse_wrk(out)
            secs = f["duration_us"] / 1e6
            # Every answer is a 401: the flood keeps exactly the pool's capacity in flight, so none is over the cap.
            floods.append({"logins_per_s": f["requests"] / secs, "p50_ms": f["p50_us"] / 1000,
                           "p99_ms": f["p99_us"] / 1000, "socket_errors": f["connect_errors"] + f["read_errors"]
                           + f["write_errors"] + f["timeouts"]})
            return run

        for kind in kinds:
            log(f"login flood: {cfg.warmup:g} s warm-up of {kind}")
            device_load(kind, cfg.warmup)
        runs: dict[tuple[str, str], list[WrkRun]] = {(k, c): [] for k in kinds for c in ("quiet", "flood")}
        for i in range(cfg.runs):
            for kind in kinds:
                for cond in ("quiet", "flood") if i % 2 == 0 else ("flood", "quiet"):
                    one = device_load(kind, cfg.seconds) if cond == "quiet" else flooded(kind, cfg.seconds)
                    check_clean(one, f"{kind} ({cond}) in the login flood benchmark")
                    runs[kind, cond].append(one)
                    extra = f", {floods[-1]['logins_per_s']:.1f} logins/s refused" if cond == "flood" else ""
                    log(f"login flood run {i + 1}/{cfg.runs} {kind} {cond}: {one.rps:,.0f} rps, "
                        f"p99 {one.p99_ms:.1f} ms{extra}")
    finally:
        fleetd.stop()
        shutil.rmtree(data, ignore_errors=True)
    m = {key: medians(v) for key, v in runs.items()}
    ratios = {k: m[k, "flood"]["p99_ms"] / m[k, "quiet"]["p99_ms"] for k in kinds}
    logins_per_s = median([x["logins_per_s"] for x in floods])
    r = Result("login", "the same server without the flood, same run, interleaved")
    for kind, what in (("checkin", "check-in"), ("telemetry", "telemetry push (100 points)")):
        q, f = m[kind, "quiet"], m[kind, "flood"]
        r.rows += [
            (f"{what} p99 under the login flood, ms", f"{f['p99_ms']:.1f}", f"{q['p99_ms']:.1f}",
             f"{ratios[kind]:.2f}"),
            (f"  {what} p50, ms", f"{f['p50_ms']:.1f}", f"{q['p50_ms']:.1f}", f"{f['p50_ms'] / q['p50_ms']:.2f}"),
            (f"  {what} rps", f"{f['rps']:,.0f}", f"{q['rps']:,.0f}", f"{f['rps'] / q['rps']:.2f}"),
        ]
    r.rows += [
        (f"wrong-password logins answered/s ({flood_c} in flight = the pool's cap)", f"{logins_per_s:.1f}", "-",
         "-"),
        ("  login answer p50, ms", f"{median([x['p50_ms'] for x in floods]):.0f}", "-", "-"),
    ]
    r.targets += [Target("check-in p99 under a login flood at the cap vs without", ratios["checkin"], "<=",
                         TARGET_RATIO),
                  Target("telemetry p99 under a login flood at the cap vs without", ratios["telemetry"], "<=",
                         TARGET_RATIO)]
    r.data = {"runs": {f"{k}_{c}": v for (k, c), v in m.items()},
              "p99_ratios": {k: round(v, 3) for k, v in ratios.items()},
              "flood_connections": flood_c, "logins_per_s": round(logins_per_s, 2), "floods": floods}
    return r
