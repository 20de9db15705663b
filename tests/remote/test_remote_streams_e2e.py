"""Remote access's byte-stream sessions end to end (docs/remote-access.md): `fleetd devices cp` both ways,
`fleetd devices forward` to an HTTP server beside the agent, `fleetd devices logs --follow`; a real server, a real
agent with its channel, the real CLI."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent.e2e_helpers import Admin
from tests.e2e.server import ServerProcess, fleetd_cmd

from .helpers import ALLOWED, Device, enroll_and_run, wait_channel

pytestmark = pytest.mark.e2e

MAX_MIB = 60  # remote_copy_max_mib here: a 50 MiB file passes, a 61 MiB one does not
BIG = 50 << 20
IDLE_SECONDS = 5  # a followed log that stays quiet this long is closed


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("streams") / "data", env={
        "FLEETD_REMOTE_ACCESS": "true", "FLEETD_REMOTE_COPY_MAX_MIB": str(MAX_MIB),
        "FLEETD_REMOTE_RECORD_TERMINALS": "true", "FLEETD_REMOTE_IDLE_SECONDS": str(IDLE_SECONDS)}).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Admin:
    return Admin(server)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one directory the device allows for file copy."""
    return tmp_path_factory.mktemp("allowed")


@pytest.fixture(scope="module")
def device(server: ServerProcess, admin: Admin, shared: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    conf = ALLOWED + f'remote_copy_dirs = "{shared}"\nremote_forward = true\n'
    d = enroll_and_run(server, admin, tmp_path_factory.mktemp("dev"), conf)
    try:
        wait_channel(server, admin, d)
        yield d
    finally:
        d.agent.stop()


def cli(server: ServerProcess, admin: Admin, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FLEETD_SERVER=server.url, FLEETD_API_KEY=admin.key, FLEETD_CA=server.ca, COLUMNS="400")
    return subprocess.run([*fleetd_cmd(), "devices", *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def popen(server: ServerProcess, admin: Admin, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, FLEETD_SERVER=server.url, FLEETD_API_KEY=admin.key, FLEETD_CA=server.ca, COLUMNS="400")
    # ^C stops it as a user's would: SIGINT handled by default even when this test run was started in the
    # background, which ignores SIGINT in everything it starts.
    return subprocess.Popen([*fleetd_cmd(), "devices", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, stdin=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def session_ends(admin: Admin, device: Device, kind: str) -> list[dict[str, object]]:
    entries = admin.call("AuditService", "List", {"action": "device.remote_session", "target": device.id,
                                                  "limit": 500})["entries"]
    return [e["details"] for e in entries if e["action"] == "device.remote_session" and e["outcome"] == "ok"
            and e["details"].get("kind") == kind]


def test_a_50_mib_file_goes_to_the_device_and_back_whole(server: ServerProcess, admin: Admin, device: Device,
                                                         shared: Path, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(BIG))
    want = sha256(local)
    p = cli(server, admin, "cp", str(local), f"{device.id}:{shared}/", "--progress")
    assert p.returncode == 0, p.stderr
    assert f"copied {BIG} bytes" in p.stdout and want in p.stdout
    assert "100%" in p.stderr and "50.0/50.0 MiB" in p.stderr  # the progress bar's last state
    on_device = shared / "big.bin"
    assert sha256(on_device) == want
    assert not list(shared.glob("*fleetd-part*"))  # written under a temporary name, then renamed

    back = tmp_path / "back"
    back.mkdir()
    p = cli(server, admin, "cp", f"{device.id}:{on_device}", str(back), "--no-progress")
    assert p.returncode == 0, p.stderr
    assert sha256(back / "big.bin") == want and want in p.stdout
    assert p.stderr == ""

    get = next(d for d in session_ends(admin, device, "file_get") if d["path"] == str(on_device))
    put = next(d for d in session_ends(admin, device, "file_put") if d["size"] == BIG)
    assert get["bytes_out"] == BIG and get["end"] == "exit", get
    assert put["bytes_in"] == BIG and put["path"] == str(shared) + "/" and put["end"] == "exit", put


def test_paths_outside_the_allowed_directories_are_refused(server: ServerProcess, admin: Admin, device: Device,
                                                           shared: Path, tmp_path: Path) -> None:
    p = cli(server, admin, "cp", f"{device.id}:/etc/hostname", str(tmp_path / "h"))
    assert p.returncode != 0 and "outside the directories this device allows" in p.stderr, p.stderr
    assert not (tmp_path / "h").exists()
    (shared / "escape").symlink_to("/etc/hostname")  # a link inside that leads outside counts as outside
    p = cli(server, admin, "cp", f"{device.id}:{shared}/escape", str(tmp_path / "h"))
    assert p.returncode != 0 and "outside the directories" in p.stderr, p.stderr
    local = tmp_path / "x.txt"
    local.write_text("x")
    p = cli(server, admin, "cp", str(local), f"{device.id}:/tmp/x.txt")
    assert p.returncode != 0 and "outside the directories" in p.stderr, p.stderr
    assert not Path("/tmp/x.txt").exists() or Path("/tmp/x.txt").read_text() != "x"


def test_files_larger_than_the_limit_are_refused(server: ServerProcess, admin: Admin, device: Device,
                                                 shared: Path, tmp_path: Path) -> None:
    huge = shared / "huge.bin"
    with open(huge, "wb") as f:
        f.truncate((MAX_MIB + 1) << 20)  # sparse: no disk needed
    p = cli(server, admin, "cp", f"{device.id}:{huge}", str(tmp_path / "huge.bin"))
    assert p.returncode != 0 and "remote_copy_max_mib" in p.stderr, p.stderr
    local = tmp_path / "huge-local.bin"
    with open(local, "wb") as f:
        f.truncate((MAX_MIB + 1) << 20)
    p = cli(server, admin, "cp", str(local), f"{device.id}:{shared}/huge2.bin")
    assert p.returncode != 0 and "remote_copy_max_mib" in p.stderr, p.stderr
    assert not (shared / "huge2.bin").exists()


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from beside the agent: {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_port_forward_reaches_an_http_server_beside_the_agent(server: ServerProcess, admin: Admin,
                                                               device: Device) -> None:
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    fwd = popen(server, admin, "forward", device.id, f"0:127.0.0.1:{web.server_address[1]}")
    try:
        assert fwd.stdout is not None
        line = fwd.stdout.readline()
        m = re.search(r"forwarding 127\.0\.0\.1:(\d+) to", line)
        assert m, line + (fwd.stderr.read() if fwd.poll() is not None and fwd.stderr else "")
        port = int(m.group(1))
        for path in ("/one", "/two"):  # each connection a session of its own
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15) as c:
                r = c.get(path)
            assert r.status_code == 200 and r.text == f"hello from beside the agent: {path}"
    finally:
        fwd.send_signal(signal.SIGINT)
        fwd.wait(15)
        web.shutdown()
    ends = session_ends(admin, device, "forward")
    assert len(ends) >= 2 and all(d["port"] == web.server_address[1] and d["bytes_out"] > 0 for d in ends), ends


def test_logs_follow_streams_an_apps_log_as_it_grows(server: ServerProcess, admin: Admin, device: Device) -> None:
    app = device.state_dir / "apps" / "myapp"
    app.mkdir(parents=True)
    log = app / "log"
    log.write_text("".join(f"line {i}\n" for i in range(1, 11)))
    follow = popen(server, admin, "logs", device.id, "--app", "myapp", "--follow", "-n", "3")
    try:
        assert follow.stdout is not None
        got = [follow.stdout.readline() for _ in range(3)]
        assert got == ["line 8\n", "line 9\n", "line 10\n"]
        with open(log, "a") as f:
            f.write("a line written later\n")
        assert follow.stdout.readline() == "a line written later\n"  # tail -F notices within a second
    finally:
        follow.send_signal(signal.SIGINT)
        follow.wait(15)
    assert follow.returncode == 0, follow.stderr.read() if follow.stderr else ""
    # A log that stays quiet is an idle session as any other: closed after remote_idle_seconds, and audited so.
    t0 = time.monotonic()
    p = cli(server, admin, "logs", device.id, "--app", "myapp", "--follow", "-n", "1", timeout=30)
    assert p.returncode == 255 and f"idle for {IDLE_SECONDS} s" in p.stderr, p.stderr
    assert IDLE_SECONDS <= time.monotonic() - t0 < IDLE_SECONDS + 10
    assert any(str(d["end"]).startswith("idle") for d in session_ends(admin, device, "logs"))
    p = cli(server, admin, "logs", device.id, "--app", "nosuchapp", "--follow")
    assert p.returncode != 0 and "there is no app 'nosuchapp' on this device" in p.stderr, p.stderr


def test_a_recorded_terminal_session_replays_its_exact_bytes(server: ServerProcess, admin: Admin,
                                                            device: Device) -> None:
    env = dict(os.environ, FLEETD_SERVER=server.url, FLEETD_API_KEY=admin.key, FLEETD_CA=server.ca)
    # Bytes that are not text (NUL, 0xff, an escape sequence) and more than one window's worth, to the byte.
    command = r"printf 'a\000b\377\033[31mred\033[0m\n'; head -c 300000 /dev/zero | tr '\0' x; echo done"
    shown = subprocess.run([*fleetd_cmd(), "devices", "shell", device.id, "--", command], capture_output=True,
                           env=env, stdin=subprocess.DEVNULL, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(b"a\0b\xff\x1b[31mred") and len(shown.stdout) > 300000
    det = next(d for d in session_ends(admin, device, "terminal") if d["command"] == command)
    assert det["recording"] == f"{det['session']}.rec" and det["recording_bytes"] > 300000, det
    replay = subprocess.run([*fleetd_cmd(), "devices", "replay", str(det["session"])], capture_output=True, env=env,
                            timeout=60)
    assert replay.returncode == 0, replay.stderr
    assert replay.stdout == shown.stdout
    recorded = server.data_dir / "recordings" / str(det["recording"])
    assert hashlib.sha256(recorded.read_bytes()).hexdigest() == det["recording_sha256"]
    # Only an admin replays, and each replay is audited.
    p = subprocess.run([*fleetd_cmd(), "devices", "replay", str(det["session"])], capture_output=True, timeout=60,
                       env=dict(env, FLEETD_API_KEY=server.create_key("operator", "replay-op"), COLUMNS="400"))
    assert p.returncode != 0 and b"needs the admin role" in p.stderr, p.stderr
    replays = admin.call("AuditService", "List", {"action": "device.remote_replay", "target": device.id})["entries"]
    assert [e["details"]["session"] for e in replays] == [det["session"]]
