"""Smoke test of the one-file binary: no Python on the box, HTTPS, a fleet that takes an update, numbers.

Runs only when $FLEETD_BIN names a built binary: `make smoke` (after `make binary`);
tests/e2e/conftest.py leaves this file out of a plain `pytest` run otherwise.
Every fleetd process here is the binary, started with an `env -i`-style
environment whose PATH holds no python (and no git: the commit must be baked in).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from fleetd import __version__

from .server import ServerProcess, free_port, run_cli
from .test_proto_e2e import assert_answers_binary_protobuf

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
TERMINAL = ("succeeded", "failed", "rolled_back", "cancelled", "rejected")
LAUNCHES = 5
GIT = shutil.which("git")  # looked up before bare_env empties PATH

pytestmark = pytest.mark.e2e


# --- the bare environment ---------------------------------------------------------------

@pytest.fixture(scope="module")
def binary() -> Path:
    given = os.environ.get("FLEETD_BIN", "")
    if not given:
        pytest.fail("FLEETD_BIN is not set: build the binary with `make binary`, then run `make smoke`")
    path = Path(given).resolve()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"FLEETD_BIN={given} is not an executable file; build it with `make binary`")
    return path


@pytest.fixture
def bare_env(binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Replace this process's environment (which ServerProcess and run_cli pass on) with a bare one.

    PATH is an empty folder: no python, no git, nothing. TMPDIR is our own, so that
    we can see what the one-file bootloader unpacks there and that it cleans up.
    """
    bindir, home, tmp = tmp_path / "bin", tmp_path / "home", tmp_path / "tmp"
    for d in (bindir, home, tmp):
        d.mkdir()
    env = {"PATH": str(bindir), "HOME": str(home), "TMPDIR": str(tmp), "FLEETD_BIN": str(binary)}
    for name in ("python3", "python", "git"):
        assert shutil.which(name, path=env["PATH"]) is None, f"{name} is on the bare PATH"
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


# --- processes ------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (the one-file bootloader has exactly one: the Python process)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def tree_rss_mib(pid: int) -> float:
    return (rss_kib(pid) + sum(rss_kib(c) for c in children(pid))) / 1024


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(fn: Callable[[], T | None], timeout: float, what: str, every: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


# --- (a) version ----------------------------------------------------------------------------

def test_version_prints_the_baked_in_commit_without_python_or_git(bare_env: dict[str, str]) -> None:
    out = run_cli("version").stdout.strip()
    m = re.fullmatch(r"fleetd (\S+) \(commit ([0-9a-f]{7,40})\)", out)
    assert m, f"unexpected `fleetd version` output: {out!r}"
    assert m.group(1) == __version__
    if GIT and (REPO / ".git").exists():
        # A commit of this repository, not just any hex (git runs here, in the test, never in the binary).
        kind = subprocess.run([GIT, "-C", str(REPO), "cat-file", "-t", m.group(2)], capture_output=True, text=True)
        assert kind.stdout.strip() == "commit", f"{m.group(2)} is not a commit here: {kind.stderr}"


# --- (b) serve ------------------------------------------------------------------------------

def _unpacked(tmpdir: Path) -> Path:
    found = list(tmpdir.glob("_MEI*"))
    assert len(found) == 1, f"expected one unpacked bundle in {tmpdir}, found {found}"
    return found[0]


def test_serve_answers_over_https_with_bundled_data(bare_env: dict[str, str], tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        with server.client() as c:  # trusts the data dir's CA and nothing else
            r = c.get("/healthz")
            assert r.status_code == 200 and r.json() == {"status": "ok", "version": __version__}
            assert c.get("/v1/ca.pem").text == (server.data_dir / "ca.pem").read_text()
            page = c.get("/")
            assert page.status_code == 200 and page.text == (REPO / "web" / "index.html").read_text()
            assert c.get("/app.js").content == (REPO / "web" / "app.js").read_bytes()
            # The agent and its installer travel inside the binary too.
            for name in ("fleet-agent.pyz", "fleet-agent-launcher.py"):
                assert c.get(f"/agent/{name}").content == (REPO / "dist" / name).read_bytes()
            assert c.get("/agent/install.sh").content == (REPO / "agent" / "install.sh").read_bytes()
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"), \
                httpx.Client(verify=ssl.create_default_context()) as public:
            public.get(f"{server.url}/healthz")  # the server cert is the fleet CA's, not a public one

        # The data the server found is the bundle's, laid out where core/resources.py looks.
        bundle = _unpacked(Path(bare_env["TMPDIR"]))
        assert sorted(p.relative_to(bundle / "fleetd/_data/migrations").as_posix()
                      for p in (bundle / "fleetd/_data/migrations").rglob("*") if p.is_file()) == \
            sorted(p.relative_to(REPO / "migrations").as_posix() for p in (REPO / "migrations").rglob("*.sql"))
        assert sorted(p.relative_to(bundle / "fleetd/proto").as_posix()
                      for p in (bundle / "fleetd/proto").rglob("*.proto")) == \
            sorted(p.relative_to(REPO / "src/fleetd/proto").as_posix()
                   for p in (REPO / "src/fleetd/proto").rglob("*.proto"))
        conn = sqlite3.connect(f"file:{server.data_dir / 'fleetd.db'}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
        assert {"devices", "api_keys"} <= tables, tables

        # Python itself comes from the bundle, not from the machine.
        assert server.proc is not None
        (child,) = children(server.proc.pid)
        maps = Path(f"/proc/{child}/maps").read_text()
        libpython = {line.split()[-1] for line in maps.splitlines() if "libpython3" in line}
        assert libpython and all(p.startswith(str(bundle)) for p in libpython), libpython
    finally:
        assert server.stop() in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    assert not list(Path(bare_env["TMPDIR"]).glob("_MEI*")), "the bootloader left its unpacked bundle behind"


def test_kill9_of_the_binary_takes_the_server_down(bare_env: dict[str, str], tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    assert server.proc is not None
    (child,) = children(server.proc.pid)
    server.kill9()
    wait_for(lambda: not alive(child), 5, "the Python process to die with its bootloader", every=0.05)
    # Its port and its data dir lock are free again: the same data dir serves at once.
    again = ServerProcess(server.data_dir)
    again.port = server.port
    again.start()
    again.stop()


# --- (c) a fleet takes an update -------------------------------------------------------------

def test_simulated_fleet_enrolls_and_installs_an_update(bare_env: dict[str, str], tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    sim: subprocess.Popen[str] | None = None
    try:
        key = server.create_key("admin", "smoke")  # `fleetd keys create --data-dir`, offline, through the binary
        remote = ["--server", server.url, "--api-key", key, "--ca", server.ca]
        # Binary protobuf: the generated modules and protobuf's upb backend are fleetd.spec's hidden imports.
        assert_answers_binary_protobuf(server, key)

        def rpc(service: str, method: str, body: dict[str, Any]) -> Any:
            r = server.rpc(service, method, body, api_key=key)
            assert r.status_code == 200, f"{service}.{method}: {r.status_code} {r.text}"
            return r.json()

        token = json.loads(run_cli("tokens", "create", "--uses", "5", "--tag", "site=smoke", "--json",
                                   *remote).stdout)
        assert token["token"] and token["max_uses"] == 5
        payload = tmp_path / "smoke-app.bin"
        payload.write_bytes(os.urandom(256 * 1024))
        art = json.loads(run_cli("artifacts", "push", str(payload), "--name", "smoke-app", "--version", "1.0.0",
                                 "--device-type", "sim", "--json", *remote).stdout)
        assert art["size"] == 256 * 1024

        # No --ca: the simulator fetches the CA and pins it by the join token's fingerprint.
        sim = subprocess.Popen([str(bare_env["FLEETD_BIN"]), "simulate", "--server", server.url,
                                "--token", token["token"], "--devices", "5", "--interval", "0.5",
                                "--duration", "120", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def checked_in() -> list[dict[str, Any]] | None:
            ds = rpc("DeviceAdminService", "ListDevices", {"tags": {"site": "smoke"}})["devices"]
            return ds if len(ds) == 5 and all(d["status"] == "active" and d["last_seen"] for d in ds) else None

        devices = wait_for(checked_in, 30, "5 simulated devices to enroll and check in")
        assert sorted(d["hardware_id"] for d in devices) == [f"sim-{n}" for n in range(1, 6)]

        created = json.loads(run_cli("devices", "deploy", "--tag", "site=smoke", "smoke-app@1.0.0", "--json",
                                     *remote).stdout)
        assert len(created["action_ids"]) == 5

        def ended() -> list[dict[str, Any]] | None:
            acts = [a for d in devices for a in rpc("DeviceAdminService", "ListActions",
                                                     {"device_id": d["id"]})["actions"]]
            return acts if len(acts) == 5 and all(a["state"] in TERMINAL for a in acts) else None

        actions = wait_for(ended, 30, "the 5 installs to end")
        assert [a["state"] for a in actions] == ["succeeded"] * 5, actions
        assert sorted(a["id"] for a in actions) == sorted(created["action_ids"])
        wait_for(lambda: all(
            [(c["name"], c["version"]) for c in rpc("DeviceAdminService", "GetDevice", {"id": d["id"]})["components"]]
            == [("smoke-app", "1.0.0")] for d in devices), 10, "every device to report smoke-app 1.0.0")
    finally:
        summary: dict[str, Any] = {}
        if sim is not None:
            sim.send_signal(signal.SIGINT)  # to the bootloader, which passes it on
            out, err = sim.communicate(timeout=30)
            assert sim.returncode == 0, f"simulate exited {sim.returncode}\nstdout:{out}\nstderr:{err}"
            summary = json.loads(out)
        server.stop()
    assert summary["active"] == 5 and summary["actions_succeeded"] == 5, summary
    assert summary["actions_failed"] == 0 and summary["errors"] == 0, summary


# --- (d) numbers ------------------------------------------------------------------------------

def _launch(cmd: list[str], data_dir: Path, tls: bool, settle: float) -> tuple[float, float]:
    """Start a server; (seconds from launch to the first 200 from /healthz, idle RSS in MiB of its processes)."""
    port = free_port()
    args = [*cmd, "serve", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port), "--no-mdns"]
    if not tls:
        args.append("--no-tls")
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/healthz"
    client: httpx.Client | None = None
    with open(data_dir.parent / "launch.log", "a") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                assert proc.poll() is None, f"{args} exited {proc.returncode}"
                assert time.monotonic() - t0 < 60, f"{args}: no /healthz within 60 s"
                if client is None and (not tls or (data_dir / "ca.pem").exists()):  # a first start makes the CA
                    verify: Any = ssl.create_default_context(cafile=str(data_dir / "ca.pem")) if tls else False
                    client = httpx.Client(verify=verify, timeout=5)
                try:
                    if client is not None and client.get(url).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.005)
            took = time.monotonic() - t0
            time.sleep(settle)
            rss = tree_rss_mib(proc.pid)
        finally:
            if client is not None:
                client.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return took, rss


def _median_launch(cmd: list[str], data_dir: Path) -> tuple[float, float]:
    _launch(cmd, data_dir, tls=True, settle=0)  # the first start makes the CA and keys: not what we time
    runs = [_launch(cmd, data_dir, tls=True, settle=1.0) for _ in range(LAUNCHES)]
    return statistics.median(t for t, _ in runs), statistics.median(r for _, r in runs)


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[str], None]]:
    lines: list[str] = []
    yield lines.append
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_measure_size_start_time_and_memory(bare_env: dict[str, str], tmp_path: Path,
                                            report: Callable[[str], None]) -> None:
    binary = bare_env["FLEETD_BIN"]
    size = Path(binary).stat().st_size
    bin_start, bin_rss = _median_launch([binary], tmp_path / "bin-data")
    # The baseline in the same run (this VM's speed varies): the same server from the venv's Python.
    venv_start, venv_rss = _median_launch([sys.executable, "-m", "fleetd"], tmp_path / "venv-data")
    plain_start, _ = _launch([binary], tmp_path / "bin-data", tls=False, settle=0)

    report(f"fleetd binary: {size / 2**20:.1f} MiB ({binary})")
    report(f"launch -> first /healthz, median of {LAUNCHES}: binary {bin_start:.2f} s, venv python "
           f"{venv_start:.2f} s (x{bin_start / venv_start:.2f}); binary with --no-tls once: {plain_start:.2f} s")
    report(f"idle RSS 1 s after start, bootloader + server: binary {bin_rss:.1f} MiB, venv python {venv_rss:.1f} MiB")
    assert size > 0 and bin_start > 0 and bin_rss > 0
