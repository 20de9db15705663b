"""The benchmark's own parts: its data dir is what fleetd accepts, its requests are valid, its tools work.

Not collected by the default test run (pytest skips tests/bench); run with
``python -m pytest tests/bench -q``.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import httpx
import msgspec
import pytest

from fleetd.accounts.passwords import default_workers
from fleetd.core.config import Settings
from fleetd.devices.device_api import CheckInRequest, PushTelemetryRequest
from fleetd.fleet import Fleet
from fleetd.http.rpc import Codec
from fleetd.telemetry.intake import rows_for

from . import agent_footprint, bench_orchestrator, cases, procs, profile, report, run, seed
from .loadgen import check_clean, parse_wrk, run_wrk
from .procs import find_tool
from .servers import start_hello, start_nginx


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> seed.Fixture:
    return seed.create(tmp_path_factory.mktemp("bench") / "data", devices=40, blob_mib=1)


def test_seeded_devices_tokens_blob_and_key_are_what_fleetd_accepts(fixture: seed.Fixture) -> None:
    fleet = Fleet(Settings(data_dir=str(fixture.path), mdns=False, host="127.0.0.1"), lock=False)
    try:
        assert len(fleet.hub.runtime) == 40
        assert {rt.status for rt in fleet.hub.runtime.values()} == {"active"}
        devices = seed.sample_devices(fixture, 10)
        assert len({d[0] for d in devices}) == 10
        for (device_id, _, _), token in zip(devices, seed.mint_tokens(fixture, devices), strict=True):
            principal = fleet.hub.tokens.verify(token)
            assert principal is not None and principal.kind == "device" and principal.id == device_id
        key = asyncio.run(fleet.authenticator.authenticate("GET", f"Bearer {fixture.api_key}", None, None))
        assert key.kind == "key" and key.role == "viewer"
        assert fixture.blob_path.stat().st_size == fixture.blob_size == 1 << 20
        assert asyncio.run(fleet.blobs.info(fixture.blob_sha256)) is not None
    finally:
        fleet.close()


def test_a_seeded_dir_is_reused_only_with_the_same_sizes(fixture: seed.Fixture) -> None:
    workdir = fixture.path.parent
    assert seed.load(workdir, 40, 1) == fixture
    assert seed.load(workdir, 41, 1) is None
    assert seed.load(workdir, 40, 2) is None


def test_the_checkin_body_is_a_realistic_valid_checkin() -> None:
    body = seed.checkin_body(seed.hardware_id(7), 7)
    assert 300 <= len(body) <= 500
    req = Codec(CheckInRequest).decode(body)
    assert req.inventory is not None and req.inventory.hostname == "bench-0000007"
    assert [c.name for c in req.components] == ["fleet-agent", "sensor-app"]


def test_telemetry_rows_are_the_rows_fleetd_stores_for_the_batch() -> None:
    now = 1_800_000_000.0
    points = seed.telemetry_points(3, now)
    assert len(points) == seed.POINTS_PER_BATCH
    req = Codec(PushTelemetryRequest).decode(msgspec.json.encode({"points": points}))
    assert rows_for("dev_x", req.points, now) == seed.telemetry_rows("dev_x", points)


def test_profile_summary_splits_the_event_loop_from_threads_and_drops_idle_waits() -> None:
    loop = "main (/w/src/fleetd/cli/serve.py);run (/venv/lib/python3.11/site-packages/uvicorn/server.py)"
    thread = "Thread._bootstrap (/usr/lib/python3.11/threading.py);Thread._bootstrap_inner (threading.py);" \
             "Thread.run (threading.py);Store._write_loop (/w/src/fleetd/store/database.py)"
    collapsed = "\n".join([
        f"{loop};CheckIn (/w/src/fleetd/devices/device_api.py);verify (/w/src/fleetd/devices/devauth.py) 30",
        f"{loop};write (/usr/lib/python3.11/ssl.py) 20",
        f"{thread};write (/w/src/fleetd/devices/hub.py) 10",
        f"{thread} 40",  # blocked on the writer's queue: idle
        "garbage line",
    ])
    s = profile.summarize(collapsed, rounds=100)
    assert (s["loop_busy_pct"], s["threads_busy_pct"]) == (50.0, 10.0)
    assert s["loop_self"] == [["verify (fleetd/devices/devauth.py)", 30.0], ["write (ssl.py)", 20.0]]
    assert s["loop_inclusive_fleetd"] == [["CheckIn (fleetd/devices/device_api.py)", 30.0],
                                          ["verify (fleetd/devices/devauth.py)", 30.0]]
    assert s["loop_layers"] == [["fleetd", 30.0], ["ssl module", 20.0]]
    assert s["threads"] == [["Store._write_loop (fleetd/store/database.py) > write (fleetd/devices/hub.py)", 10.0]]


def test_wrk_output_without_the_results_line_is_refused() -> None:
    with pytest.raises(RuntimeError, match="BENCH_JSON"):
        parse_wrk("Running 1s test @ https://127.0.0.1:1/\n  connection refused\n")


@pytest.mark.skipif(find_tool("wrk") is None, reason="wrk is not installed")
def test_wrk_script_rotates_tokens_and_reports(fixture: seed.Fixture, tmp_path: Path) -> None:
    requests = seed.write_requests(tmp_path / "r", ["t1", "t2"], [b'{"a": 1}', b'{"b": 2}'])
    hello = start_hello(fixture.path, tmp_path)
    try:
        run = run_wrk(hello.url + "/x", seconds=1, threads=1, connections=2, server_pid=hello.pid,
                      requests_file=requests)
    finally:
        hello.stop()
    check_clean(run, "hello")
    assert run.requests > 10 and run.non_2xx == 0 and run.p50_ms > 0
    assert run.server_cpu_pct > 0 and run.server_rss_kib > 10_000


@pytest.mark.skipif(find_tool("nginx") is None, reason="nginx is not installed")
def test_nginx_serves_the_blob_over_https_and_http(fixture: seed.Fixture, tmp_path: Path) -> None:
    nginx, https_url, http_url = start_nginx(fixture.path, fixture.blob_path, tmp_path)
    try:
        want = fixture.blob_path.read_bytes()
        assert httpx.get(https_url, verify=ssl.create_default_context(cafile=fixture.path / "ca.pem")).content == want
        assert httpx.get(http_url).content == want
    finally:
        nginx.stop()


def test_missing_tools_stop_the_run_with_the_install_command(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(procs, "find_tool", lambda name: None)
    with pytest.raises(SystemExit) as e:
        run.check_tools(["checkin", "download"])
    assert "apt-get install wrk" in str(e.value) and "apt-get install nginx" in str(e.value)
    # Without py-spy only the profile is dropped, with a note on how to get it.
    monkeypatch.setattr(procs, "find_tool", lambda name: None if name == "py-spy" else "/bin/true")
    monkeypatch.setattr(run, "find_tool", procs.find_tool)
    assert run.check_tools(["checkin", "profile"]) == ["checkin"]
    assert "pip install py-spy" in capsys.readouterr().err


def test_checkins_are_counted_from_the_servers_request_counter() -> None:
    metrics = "\n".join([
        "# TYPE fleetd_http_requests_total counter",
        'fleetd_http_requests_total{route="/fleetd.v1.DeviceService/CheckIn",method="POST",code="200"} 7',
        'fleetd_http_requests_total{route="/fleetd.v1.DeviceService/CheckIn",method="POST",code="503"} 2',
        'fleetd_http_requests_total{route="/fleetd.v1.DeviceService/PushTelemetry",method="POST",code="200"} 5',
        'fleetd_http_request_duration_seconds_count{route="/fleetd.v1.DeviceService/CheckIn"} 9',
    ])
    assert agent_footprint.count_checkins(metrics) == 9


def test_orchestrator_and_agent_are_cases_with_their_own_options() -> None:
    a = run.parse_args(["--only", "orchestrator,agent", "--agent-minutes", "2.5"])
    assert a.only == ["orchestrator", "agent"]
    cfg = run.config_from(a)
    assert (cfg.agent_minutes, cfg.orchestrator_devices, cfg.agent_poll_interval) == (2.5, 100_000, 30)
    quick = run.config_from(run.parse_args(["--quick", "--only", "agent"]))
    assert quick.agent_minutes == 1 and quick.orchestrator_devices == 10_000
    assert run.config_from(run.parse_args(["--devices", "500"])).orchestrator_devices == 500
    with pytest.raises(SystemExit):
        run.parse_args(["--agent-minutes", "0"])


def test_the_orchestrator_case_times_a_pass_on_its_own_data_dir(tmp_path: Path) -> None:
    cfg = cases.Config(orchestrator_devices=300, orchestrator_points=3_000, runs=1)
    results, _ = run.run(cfg, ["orchestrator"], tmp_path)
    [r] = results
    assert r.name == "orchestrator" and r.data["steady_pass"]["devices"] == 300
    actions = [s["actions"] for s in r.data["stage_starts"]]  # stages at 5 %, 25 %, 100 %
    assert len(actions) == 3 and sum(actions) == 300 and min(actions) > 0
    assert r.data["health_pass"]["telemetry_points"] == 3_000
    steady, reports, stage = r.targets  # issue 16's three: steady pass, pass after reports, stage start
    assert [t.limit for t in (steady, reports, stage)] == [0.1, 0.2, 5.0]
    assert all(t.met and t.value >= 0 for t in (steady, reports, stage))
    assert r.data["reports_pass"]["reread"] > 0 and r.data["steady_pass"]["reread"] == 0
    # Neither the seeded fleet (other benchmarks' data dir) nor the orchestrator's own is left behind.
    assert not (tmp_path / "data").exists() and not (tmp_path / "orchestrator").exists()
    table = report.render(run.machine_info(), {"runs": 1, "threads": 2, "connections": 64, "seconds": 10,
                                               "warmup": 3, "devices": 300}, results, {})
    assert "## orchestrator" in table and "met    steady orchestrator pass over 300 devices, s" in table
    assert report.as_json({}, {}, results, {})["results"]["orchestrator"]["targets"][0]["met"] is True


def test_the_orchestrator_benchmark_still_runs_on_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_orchestrator.main(["--devices", "200", "--runs", "1", "--telemetry-points", "0"]) == 0
    assert "orchestrator pass over a 200-device rollout" in capsys.readouterr().out


def test_the_agent_case_samples_a_real_agent_in_each_mode_checking_in_with_a_real_server(tmp_path: Path) -> None:
    cfg = cases.Config(agent_minutes=0.15, agent_poll_interval=5, agent_settle=1)
    (tmp_path / "logs").mkdir()
    r = cases.agent(cfg, tmp_path, tmp_path / "logs")
    d = r.data
    assert 5 < d["baseline_rss_mib"] < 200 and d["samples"] >= 5
    assert list(d["modes"]) == ["plain", "remote", "mqtt"]
    for m in d["modes"].values():
        assert 10 < m["rss_mib"] <= m["peak_rss_mib"] < 200
        assert m["cpu_pct"] > 0 and m["checkins"] >= 1 and m["last_seen_advanced"]
    # The channel and the MQTT link were up: their agents run a thread each beside the run loop's.
    logs = {name: (tmp_path / "logs" / f"agent-{name}.log").read_text() for name in d["modes"]}
    assert "remote access: channel open" in logs["remote"] and "connected to the MQTT broker" in logs["mqtt"]
    assert "channel open" not in logs["plain"] and "MQTT" not in logs["plain"]
    assert [(t.what, t.value, t.limit) for t in r.targets] == [
        ("agent idle RSS, MiB", d["modes"]["plain"]["rss_mib"], 40),
        ("agent idle RSS, remote access on, MiB", d["modes"]["remote"]["rss_mib"], 40),
        ("agent idle RSS, MQTT on, MiB", d["modes"]["mqtt"]["rss_mib"], 40)]
    # Every process it started is gone.
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and " run --state-dir " in _cmdline(p)
                and str(tmp_path) in _cmdline(p)]


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def test_the_login_flood_sends_wrong_password_logins_at_the_pools_cap(tmp_path: Path) -> None:
    from fleetd.accounts.users_api import LoginRequest

    from . import login_flood
    path = login_flood.write_logins(tmp_path / "login.requests", count=5)
    codec = Codec(LoginRequest)
    for line in path.read_text().splitlines():
        _, body = line.split("\t")
        req = codec.decode(body.encode())
        assert req.username == "admin" and req.password.startswith("not-the-password")
    s = Settings()
    assert login_flood.flood_connections() == (s.password_hash_workers or default_workers()) + s.password_hash_queue
    assert "login" in run.parse_args(["--only", "login"]).only


def test_the_build_comparison_flags_only_what_got_worse_by_more_than_the_tolerance() -> None:
    from .compare import compare, worse_by
    assert worse_by("<=", 1.0, 1.2) == pytest.approx(0.2)  # a latency ratio that grew is worse
    assert worse_by(">=", 1.0, 0.8) == pytest.approx(0.2)  # a throughput ratio that fell is worse
    assert worse_by(">=", 1.0, 1.5) < 0
    runs = {"before": [{"rps": 0.50, "p99": 1.6, "old": 1.0}, {"rps": 0.54, "p99": 1.7}, {"rps": 0.52, "p99": 1.5}],
            "after": [{"rps": 0.51, "p99": 2.0}, {"rps": 0.40, "p99": 1.9}, {"rps": 0.53, "p99": 2.1}]}
    rows = {r["what"]: r for r in compare(runs, {"rps": ">=", "p99": "<=", "old": "<="}, 0.10)}
    assert set(rows) == {"rps", "p99"}  # measured by both builds in every run
    assert rows["rps"]["before"] == 0.52 and rows["rps"]["after"] == 0.51 and not rows["rps"]["flagged"]
    assert rows["p99"]["ratio"] == pytest.approx(2.0 / 1.6) and rows["p99"]["flagged"]


def test_each_run_is_kept_with_its_commit_and_the_machines_hello_world_rate(tmp_path: Path) -> None:
    from . import history
    doc = {"machine": {"nproc": 2}, "settings": {"quick": False},
           "results": {"checkin": {"baseline": {"rps": 4530.0}}},
           "targets": [{"what": "check-in rps ratio vs hello world", "value": 0.5, "target": ">= 0.4", "met": True},
                       {"what": "telemetry ratio", "value": 0.18, "target": ">= 0.3", "met": False}]}
    first = history.save(doc, tmp_path, started=1_700_000_000)
    second = history.save({**doc, "settings": {"quick": True}}, tmp_path, started=1_700_003_600)
    assert first.name.startswith("2023-11-14T221320Z-") and second.name.endswith("-quick.json")
    runs = history.load(tmp_path)
    assert [p for p, _ in runs] == [first, second]
    assert runs[0][1]["hello_world_rps"] == 4530.0 and runs[0][1]["commit"] == history.commit() != "?"
    text = history.table(runs)
    assert "check-in rps ratio vs hello world (>= 0.4)" in text and "0.18!" in text and "4,530" in text
    md = history.markdown(runs).splitlines()
    assert md[0].startswith(f"Latest run: `{second.name}`") and "4,530 rps" in md[0]
    assert "| telemetry ratio | 0.18 | >= 0.3 | **missed** |" in md
    assert "| telemetry ratio (>= 0.3) | 0.18! | 0.18! |" in md


@pytest.mark.skipif(find_tool("wrk") is None, reason="wrk is not installed")
def test_the_proto_case_loads_both_list_calls_in_both_codecs(tmp_path: Path) -> None:
    from . import proto_list
    cfg = cases.Config(runs=1, seconds=1, warmup=1, threads=1)
    r = proto_list.bench(cfg, tmp_path, tmp_path)
    assert [t.what for t in r.targets] == [
        "binary protobuf vs JSON, ListUsers of 100 users, requests/s",
        "binary protobuf vs JSON, ListDevices of 100 devices, requests/s"]
    for name in ("ListUsers", "ListDevices"):
        d = r.data[name]
        assert d["json"]["rps"] > 0 and d["proto"]["rps"] > 0 and d["ratio"] > 0
        # Every answer was a 2xx in the codec asked for (wrk's counts; check_clean refuses anything else).
        assert all(run["non_2xx"] == 0 for codec in ("json", "proto") for run in d[codec]["runs"])
        assert d["body_bytes"]["proto"] < d["body_bytes"]["json"]
    assert not (tmp_path / "proto-data").exists()
    assert "proto" in run.parse_args([]).only
