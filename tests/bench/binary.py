"""The one-file binary (`make binary`, fleetd.spec): its size and how soon a start answers.

Uses $FLEETD_BIN, else dist/fleetd, else builds it with `make binary` (a few
minutes). A start is timed from the launch of the process to the first 200 from
/healthz over HTTPS, on a fresh data dir (the first start makes the CA, the keys
and the first admin) and, when the run has one, on the seeded data dir; each the
median of ``STARTS`` starts. No baseline: the targets are absolute.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import time
from pathlib import Path

import httpx

from ..e2e.server import free_port
from . import seed
from .cases import Config, Result, Target, log
from .procs import REPO

MiB = 1 << 20
STARTS = 3
TARGET_SIZE_MIB = 35
TARGET_FIRST_ANSWER_S = 1.0


def find_or_build(logs: Path) -> Path:
    given = os.environ.get("FLEETD_BIN")
    if given:
        path = Path(given).resolve()
        if not path.is_file():
            raise RuntimeError(f"FLEETD_BIN={given} is not a file; build the binary with `make binary`")
        return path
    path = REPO / "dist" / "fleetd"
    if path.is_file():
        age = (time.time() - path.stat().st_mtime) / 60
        log(f"reusing {path} (built {age:.0f} min ago; `make binary` or delete it to rebuild)")
        return path
    log("building the binary with `make binary` (a few minutes)")
    with (logs / "binary-build.log").open("wb") as out:
        done = subprocess.run(["make", "binary"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0 or not path.is_file():
        raise RuntimeError(f"`make binary` failed; see {logs / 'binary-build.log'}")
    return path


def first_answer(binary: Path, data_dir: Path, log_file: Path, timeout: float = 60) -> float:
    """Seconds from launching `fleetd serve` to its first 200 from /healthz over HTTPS; the server is stopped."""
    port = free_port()
    cmd = [str(binary), "serve", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port),
           "--no-mdns", "--log-level", "warning"]
    url = f"https://127.0.0.1:{port}/healthz"
    with log_file.open("ab") as out, httpx.Client(verify=False, timeout=2) as client:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{binary} exited with {proc.returncode}; see {log_file}")
                try:
                    if client.get(url).status_code == 200:
                        return time.monotonic() - t0
                except httpx.TransportError:
                    pass
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError(f"{binary}: no /healthz within {timeout:.0f} s; see {log_file}")
                time.sleep(0.005)
        finally:
            proc.send_signal(signal.SIGTERM)  # the bootloader passes it on to the server
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def bench(cfg: Config, workdir: Path, logs: Path) -> Result:
    binary = find_or_build(logs)
    size = binary.stat().st_size / MiB
    fresh_root = workdir / "binary-fresh"
    fresh = []
    for i in range(STARTS):
        shutil.rmtree(fresh_root, ignore_errors=True)
        fresh.append(first_answer(binary, fresh_root / f"data{i}", logs / "binary.log"))
    shutil.rmtree(fresh_root, ignore_errors=True)
    r = Result("binary", "none (absolute targets)")
    r.rows.append(("binary size, MiB", f"{size:.1f}", "-", "-"))
    r.rows.append((f"launch -> first /healthz, fresh data dir, median of {STARTS}, s",
                   f"{statistics.median(fresh):.2f}", "-", "-"))
    r.targets += [Target("binary size, MiB", size, "<", TARGET_SIZE_MIB, " MiB"),
                  Target("binary: first /healthz on a fresh data dir, s", statistics.median(fresh), "<",
                         TARGET_FIRST_ANSWER_S, " s")]
    r.data = {"binary": str(binary), "size_mib": round(size, 2), "first_answer_fresh_s": [round(t, 3) for t in fresh]}
    fx = seed.load(workdir, cfg.devices, cfg.blob_mib)  # the seeded data dir, if this run has one
    if fx is not None:
        seeded = [first_answer(binary, fx.path, logs / "binary.log") for _ in range(STARTS)]
        r.rows.append((f"launch -> first /healthz, {fx.devices:,} devices, median of {STARTS}, s",
                       f"{statistics.median(seeded):.2f}", "-", "-"))
        r.targets.append(Target(f"binary: first /healthz with {fx.devices:,} devices, s", statistics.median(seeded),
                                "<", TARGET_FIRST_ANSWER_S, " s"))
        r.data["first_answer_seeded_s"] = [round(t, 3) for t in seeded]
    return r
