"""`make bench` / `python -m tests.bench`: run the benchmark suite and print the results.

Progress goes to stderr; the table (or, with ``--json``, the JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from . import binary, cases, ddi_poll, history, login_flood, proto_list, report, seed
from .procs import find_tool, machine_info, missing_tools
from .servers import Service, start_fleetd, start_hello

BENCHES = ("footprint", "checkin", "profile", "telemetry", "download", "ddi", "login", "orchestrator", "agent",
           "binary", "proto", "postgres", "mqtt")
# The benchmarks that need the seeded 100,000-device data dir; the others bring their own.
SEEDED = {"footprint", "checkin", "profile", "telemetry", "download", "ddi", "login", "postgres", "mqtt"}
QUICK = cases.Config(devices=10_000, tokens=2_000, telemetry_devices=500, seconds=3, warmup=1, download_seconds=3,
                     baseline_rows=200_000, profile_seconds=3, orchestrator_devices=10_000,
                     orchestrator_points=100_000, agent_minutes=1.0, mqtt_devices=300)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description="fleetd's benchmark suite (see "
                                "docs/performance.md). A full run takes about 20 minutes (11 of them the agent's "
                                "footprint); --quick about 5.")
    p.add_argument("--quick", action="store_true",
                   help="10,000 devices, 3 s runs, 1 agent minute: a smoke run whose numbers are only "
                        "indicative")
    p.add_argument("--only", default=",".join(BENCHES),
                   help=f"comma-separated subset of {','.join(BENCHES)} (default: all)")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles of the hot paths")
    p.add_argument("--runs", type=int, help="measured runs per benchmark, the median is reported (default 3)")
    p.add_argument("--seconds", type=float, help="length of one measured wrk run (default 10)")
    p.add_argument("--devices", type=int, help="enrolled devices in the data dir and in the orchestrator's rollout "
                        "(default 100,000)")
    p.add_argument("--connections", type=int, help="wrk connections for check-in and telemetry (default 64)")
    p.add_argument("--agent-minutes", type=float,
                   help="how long the agent's RSS and CPU are sampled, after a 60 s settle (default 10; --quick 1)")
    p.add_argument("--workdir", type=Path,
                   help="keep the seeded data dir, logs and profile here and reuse them next time "
                        "(default: a temporary directory, removed afterwards)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="write the results as JSON to FILE (or to stdout instead of the table)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when a target is missed")
    p.add_argument("--no-save", action="store_true",
                   help="do not keep this run's JSON in docs/bench/ (python -m tests.bench.history shows the trend)")
    a = p.parse_args(argv)
    only = [b.strip() for b in a.only.split(",") if b.strip()]
    unknown = set(only) - set(BENCHES)
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(BENCHES)}")
    if a.no_profile and "profile" in only:
        only.remove("profile")
    a.only = only
    for name in ("runs", "devices", "connections"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1")
    if a.seconds is not None and a.seconds < 1:
        p.error("--seconds must be at least 1")
    if a.agent_minutes is not None and a.agent_minutes <= 0:
        p.error("--agent-minutes must be more than 0")
    return a


def config_from(a: argparse.Namespace) -> cases.Config:
    cfg = cases.Config(**asdict(QUICK)) if a.quick else cases.Config()
    if a.runs:
        cfg.runs = a.runs
    if a.seconds:
        cfg.seconds = a.seconds
        cfg.download_seconds = max(2.0, a.seconds * 0.8)
        cfg.profile_seconds = a.seconds
    if a.devices:
        cfg.devices = a.devices
        cfg.orchestrator_devices = a.devices
    if a.agent_minutes:
        cfg.agent_minutes = a.agent_minutes
    if a.connections:
        cfg.connections = a.connections
    cfg.tokens = min(cfg.tokens, cfg.devices)
    cfg.telemetry_devices = min(cfg.telemetry_devices, cfg.devices)
    return cfg


def check_tools(only: list[str]) -> list[str]:
    """Refuse to start without what the chosen benchmarks need; drop the profile if only py-spy is missing."""
    needed = []
    if {"checkin", "telemetry", "download", "profile", "ddi", "login", "proto", "postgres", "mqtt"} & set(only):
        needed.append("wrk")
    if "postgres" in only:
        needed.append("haproxy")  # and Debian's postgresql server: the harness says how if it is missing
    if "download" in only:
        needed.append("nginx")
    if "mqtt" in only:
        needed.append("mosquitto_pub")
    missing = missing_tools(needed)
    if missing:
        sys.exit("The benchmarks need tools that are not installed:\n" + "\n".join(missing) +
                 "\nInstall them, or choose other benchmarks with --only.")
    if "profile" in only and not find_tool("py-spy"):
        print("py-spy is not installed, so the profiles are skipped:\n" + "\n".join(missing_tools(["py-spy"])),
              file=sys.stderr)
        only = [b for b in only if b != "profile"]
    return only


def prepare(cfg: cases.Config, workdir: Path) -> seed.Fixture:
    fx = seed.load(workdir, cfg.devices, cfg.blob_mib)
    if fx is not None:
        cases.log(f"reusing the data dir in {fx.path} ({cfg.devices:,} devices)")
        return fx
    data = workdir / "data"
    if data.exists():
        shutil.rmtree(data)
    cases.log(f"seeding {cfg.devices:,} devices and a {cfg.blob_mib} MiB blob into {data}")
    t = time.monotonic()
    fx = seed.create(data, cfg.devices, cfg.blob_mib)
    cases.log(f"seeded in {time.monotonic() - t:.1f} s")
    return fx


def run(cfg: cases.Config, only: list[str], workdir: Path) -> tuple[list[cases.Result], dict[str, Any]]:
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    results: list[cases.Result] = []
    profiles = run_seeded(cfg, only, workdir, logs, results) if SEEDED & set(only) else {}
    if "orchestrator" in only:
        results.append(cases.orchestrator(cfg, workdir))
    if "agent" in only:
        results.append(cases.agent(cfg, workdir, logs))
    if "binary" in only:
        results.append(binary.bench(cfg, workdir, logs))
    if "proto" in only:
        results.append(proto_list.bench(cfg, workdir, logs))
    return results, profiles


def profile_hot_paths(cfg: cases.Config, fx: seed.Fixture, fleetd: Service, requests: Path,
                      workdir: Path) -> dict[str, Any]:
    """py-spy profiles of the three hot paths: check-in, telemetry ingest, a 50-client download."""
    telemetry, _ = cases.telemetry_requests(cfg, fx, workdir)
    loads: dict[str, dict[str, Any]] = {
        "check-in": dict(path="/fleetd.v1.DeviceService/CheckIn", requests=requests),
        "telemetry": dict(path="/fleetd.v1.DeviceService/PushTelemetry", requests=telemetry),
        "download": dict(path=f"/v1/blobs/{fx.blob_sha256}", auth=f"Bearer {fx.api_key}", connections=cfg.clients),
    }
    profiles: dict[str, Any] = {}
    for what, load in loads.items():
        try:
            profiles[what] = cases.profile_load(cfg, fleetd, what, work=workdir, **load)
        except RuntimeError as e:
            cases.log(f"the {what} profile failed, going on without it: {e}")
    return profiles


def run_seeded(cfg: cases.Config, only: list[str], workdir: Path, logs: Path,
               results: list[cases.Result]) -> dict[str, Any]:
    """The benchmarks on the seeded data dir; their results are appended to ``results``; returns the profiles."""
    fx = prepare(cfg, workdir)
    profiles: dict[str, Any] = {}
    if {"footprint", "checkin", "profile", "telemetry"} & set(only):
        fleetd = start_fleetd(fx.path, logs)
        hello = start_hello(fx.path, logs) if {"footprint", "checkin"} & set(only) else None
        try:
            if "footprint" in only:
                results.append(cases.footprint(fleetd, hello))
            if {"checkin", "profile"} & set(only):
                requests = cases.checkin_requests(cfg, fx, workdir)
                if "checkin" in only:
                    assert hello is not None
                    results.append(cases.checkin(cfg, fx, fleetd, hello, requests))
                if "profile" in only:
                    profiles = profile_hot_paths(cfg, fx, fleetd, requests, workdir)
            if hello:
                hello.stop()
                hello = None
            if "telemetry" in only:
                results.append(cases.telemetry(cfg, fx, fleetd, workdir))
        finally:
            fleetd.stop()
            if hello:
                hello.stop()
    if "download" in only:
        results.append(cases.download(cfg, fx, logs))
    if "ddi" in only:
        results.append(ddi_poll.bench(cfg, fx, workdir, logs))
    if "login" in only:
        results.append(login_flood.bench(cfg, fx, workdir, logs))
    if "postgres" in only:
        from . import postgres  # psycopg and the service harness: only for this benchmark
        results.append(postgres.bench(cfg, fx, workdir, logs))
    if "mqtt" in only:
        from . import mqtt  # mosquitto and aiomqtt: only for this benchmark
        results.append(mqtt.bench(cfg, fx, workdir, logs))
    return profiles


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    only = check_tools(a.only)
    cfg = config_from(a)
    workdir = a.workdir.resolve() if a.workdir else Path(tempfile.mkdtemp(prefix="fleetd-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    settings = {f.name: getattr(cfg, f.name) for f in fields(cfg)} | {"quick": a.quick, "benchmarks": only}
    started, started_at = time.monotonic(), time.time()
    try:
        results, profiles = run(cfg, only, workdir)
    finally:
        if not a.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    settings["wall_seconds"] = round(time.monotonic() - started)
    if not a.workdir:
        for profile in profiles.values():
            profile["file"] = "(removed with the temporary directory; keep it with --workdir)"
    doc = report.as_json(machine, settings, results, profiles)
    if not a.no_save:
        print(f"saved in {history.save(doc, started=started_at).relative_to(history.ROOT)}", file=sys.stderr)
    if a.json and a.json != "-":
        Path(a.json).write_text(json.dumps(doc, indent=2) + "\n")
    if a.json == "-":
        print(json.dumps(doc, indent=2))
    else:
        print(report.render(machine, settings, results, profiles))
    missed = [t for r in results for t in r.targets if not t.met]
    return 1 if a.strict and missed else 0
