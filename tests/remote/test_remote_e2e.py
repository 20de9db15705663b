"""Remote access end to end (docs/remote-access.md): a real `fleetd serve` with remote_access on, real agent
processes on loopback with their channels, the real CLI; sessions through the operator WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import select
import signal
import ssl
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fleet_agent import remote_config
from tests.agent.e2e_helpers import PYTHON, Admin, AgentProcess, agent_env, build_served_agent, wait_for
from tests.agent.test_e2e_install import one_liner, run_shell
from tests.e2e.server import ServerProcess, fleetd_cmd

from .helpers import ALLOWED, ME, Device, ask, enroll_and_run, wait_channel

pytestmark = pytest.mark.e2e

IDLE_SECONDS = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    build_served_agent()  # the install one-liner's agent: this tree's
    s = ServerProcess(tmp_path_factory.mktemp("remote") / "data", env={
        "FLEETD_REMOTE_ACCESS": "true", "FLEETD_REMOTE_IDLE_SECONDS": str(IDLE_SECONDS),
        "FLEETD_REMOTE_SESSIONS_PER_DEVICE": "20"}).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Admin:
    return Admin(server)


@pytest.fixture(scope="module")
def device(server: ServerProcess, admin: Admin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    d = enroll_and_run(server, admin, tmp_path_factory.mktemp("dev"), ALLOWED)
    try:
        wait_channel(server, admin, d)
        yield d
    finally:
        d.agent.stop()


def cli_env(server: ServerProcess, admin: Admin) -> dict[str, str]:
    return dict(os.environ, FLEETD_SERVER=server.url, FLEETD_API_KEY=admin.key, FLEETD_CA=server.ca)


def shell(server: ServerProcess, admin: Admin, device_id: str, *command: str, key: str | None = None,
          timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = cli_env(server, admin)
    if key:
        env["FLEETD_API_KEY"] = key
    return subprocess.run([*fleetd_cmd(), "devices", "shell", device_id, *(["--", *command] if command else [])],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=timeout)


# --- a session's WebSocket, as a browser or a script would use it -----------------------------------------------

def ws_url(server: ServerProcess, path: str) -> str:
    return server.url.replace("https://", "wss://") + path


def tls(server: ServerProcess) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=server.ca)


async def open_session(server: ServerProcess, key: str, device_id: str, command: str | None = None) -> Any:
    r = ask(server, key, device_id, command=command)
    assert r.status_code == 200, r.text
    grant = r.json()
    ws = await connect(ws_url(server, grant["path"]), ssl=tls(server))
    await ws.send(json.dumps({"token": grant["token"]}))
    return ws, json.loads(await ws.recv())


# --- the tests -------------------------------------------------------------------------------------------------

def test_a_command_runs_and_its_exit_status_comes_back(server: ServerProcess, admin: Admin, device: Device) -> None:
    t0 = time.monotonic()
    p = shell(server, admin, device.id, "echo hello-from-the-device; exit 7")
    assert p.returncode == 7, p.stderr
    assert "hello-from-the-device" in p.stdout
    assert time.monotonic() - t0 < 10
    ok = shell(server, admin, device.id, "id -un")
    assert ok.returncode == 0 and ok.stdout.strip() == ME, ok


def test_a_login_shell_without_a_terminal_ends_at_the_end_of_its_input(server: ServerProcess, admin: Admin,
                                                                       device: Device) -> None:
    """stdin's end reaches the remote shell as ^D, even when the first one came before the shell's line editor set
    up the pty (which makes an early ^D a NUL): a script piped in runs and the shell exits, not idles out (255)."""
    p = subprocess.run([*fleetd_cmd(), "devices", "shell", device.id], input="echo piped-$((6 * 7))\n",
                       capture_output=True, text=True, env=cli_env(server, admin), timeout=30)
    assert p.returncode == 0 and "piped-42" in p.stdout, p
    empty = shell(server, admin, device.id)  # stdin /dev/null: the login shell ends at once
    assert empty.returncode == 0, empty


def test_output_larger_than_the_window_arrives_whole(server: ServerProcess, admin: Admin, device: Device) -> None:
    p = shell(server, admin, device.id, "seq 1 200000")  # 1.3 MB: five times the 256 KiB window, and more
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(i) for i in range(1, 200001)]


def test_input_larger_than_the_window_arrives_whole(server: ServerProcess, admin: Admin, device: Device) -> None:
    async def run() -> None:
        ws, _ = await open_session(server, admin.key, device.id,
                                   "stty raw -echo; echo RAW; head -c 600000 | sha256sum; sleep 0.2")
        data = bytes(range(256)) * 2343 + b"x" * 192  # 600,000 bytes, more than twice the window
        seen = b""
        while b"RAW" not in seen:  # raw mode first, or the line discipline would edit the bytes
            m = await ws.recv()
            seen += m if isinstance(m, bytes) else b""
        for i in range(0, len(data), 50_000):
            await ws.send(data[i:i + 50_000])
        out = b"".join(m for m in await messages(ws) if isinstance(m, bytes))
        assert hashlib.sha256(data).hexdigest().encode() in out, out[-300:]

    asyncio.run(run())


def _pty_cli(server: ServerProcess, admin: Admin, device_id: str) -> tuple[subprocess.Popen[bytes], int]:
    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))

    def ctty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([*fleetd_cmd(), "devices", "shell", device_id], stdin=slave, stdout=slave, stderr=slave,
                            env=cli_env(server, admin), preexec_fn=ctty)
    os.close(slave)
    return proc, master


async def messages(ws: Any) -> list[Any]:
    """Every message until the server closes the socket (with any code)."""
    out = []
    try:
        while True:
            out.append(await ws.recv())
    except ConnectionClosed:
        return out


def _read_until(master: int, want: bytes, timeout: float = 15) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while want not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {want!r} within {timeout} s; the terminal showed {seen[-2000:]!r}")
        if select.select([master], [], [], left)[0]:
            try:
                seen += os.read(master, 4096)
            except OSError:
                break
    return seen


def test_an_interactive_shell_follows_the_terminal_size(server: ServerProcess, admin: Admin, device: Device) -> None:
    proc, master = _pty_cli(server, admin, device.id)
    try:
        _read_until(master, b"# " if ME == "root" else b"$ ")  # the prompt: a shell discards what was typed before
        os.write(master, b"stty size; echo MARK$((6*7))\n")
        assert b"24 80" in _read_until(master, b"MARK42")
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 132, 0, 0))  # the CLI gets SIGWINCH

        def resized() -> bool:  # the resize travels CLI → server → agent beside this command: ask until it is there
            os.write(master, b"stty size; echo MARK$((6*8))\n")
            return b"40 132" in _read_until(master, b"MARK48")

        wait_for("the remote terminal to take the new size", resized, 10, 0.1)
        os.write(master, b"exit 3\n")
        assert proc.wait(15) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_viewers_and_operators_are_refused(server: ServerProcess, admin: Admin, device: Device) -> None:
    for role in ("viewer", "operator"):
        key = admin.call("UserService", "CreateKey", {"name": f"remote-{role}", "role": role})["key"]
        r = ask(server, key, device.id)
        assert r.status_code == 403, r.text
        assert "remote sessions need the admin role" in r.json()["message"]
    p = shell(server, admin, device.id, "true", key=key)  # the CLI says so too
    assert p.returncode == 1 and "you are operator [permission_denied]" in " ".join(p.stderr.split())


def test_a_device_without_remote_access_refuses(server: ServerProcess, admin: Admin, tmp_path: Path) -> None:
    off = enroll_and_run(server, admin, tmp_path / "off", None)
    try:
        wait_for("the agent's first check-in", lambda: admin.device(off.id)["online"], 20, log=off.agent.log)
        assert "remote access is off" in wait_for("the agent's log", lambda: "remote access is off" in off.agent.log()
                                                  and off.agent.log(), 10)
        r = ask(server, admin.key, off.id)
        assert r.status_code == 400, r.text
        assert "has remote access off" in r.json()["message"]
        p = shell(server, admin, off.id, "true")
        assert p.returncode == 1 and "no remote-access channel" in " ".join(p.stderr.split())
    finally:
        off.agent.stop()


def _malloc_arenas(maps: str) -> int:
    """glibc's malloc arenas beyond the main heap in a /proc/PID/maps: each a 64 MiB-aligned reservation, its used
    part rw-p and the rest ---p."""
    rows = []
    for line in maps.splitlines():
        span, perms = line.split()[:2]
        a, b = span.split("-")
        rows.append((int(a, 16), int(b, 16), perms))
    size = 64 << 20
    return sum(1 for (a, b, p), (c, d, q) in itertools.pairwise(rows)
               if a % size == 0 and p == "rw-p" and b == c and q == "---p" and d == a + size)


def test_idle_memory_with_the_channel_open(server: ServerProcess, admin: Admin, tmp_path: Path) -> None:
    """The agent's idle RSS (target < 40 MiB, docs/performance.md) guarded with the channel open: measured as
    tests/agent/test_core_runloop.py::test_idle_rss_of_run does with remote access off; with the channel open and
    no session, the sessions' code (the pty's) is not loaded and the channel's thread has no malloc arena of its
    own."""
    d = enroll_and_run(server, admin, tmp_path, ALLOWED, poll_interval="0.25")
    try:
        wait_channel(server, admin, d)
        seen: set[float] = set()

        def checkins() -> bool:
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                seen.add(json.loads((d.state_dir / "runtime.json").read_text())["last_checkin"])
            return len(seen - {0.0}) >= 10

        wait_for("ten check-ins", checkins, 20, 0.05, d.agent.log)
        status = Path(f"/proc/{d.agent.proc.pid}/status").read_text()
        maps = Path(f"/proc/{d.agent.proc.pid}/maps").read_text()
    finally:
        d.agent.stop()
    field = {k: v.split()[0] for k, _, v in (line.partition(":") for line in status.splitlines()) if v.strip()}
    rss_kib = int(field["VmRSS"])
    print(f"\nfleet-agent run, remote access on: idle VmRSS {rss_kib} KiB ({rss_kib / 1024:.1f} MiB)")
    assert "channel open" in d.agent.log()
    # The target (< 40 MiB) is measured by `make bench` (docs/performance.md). This one sample reads ~1.3 MiB more
    # file-backed memory in a freshly installed venv (the kernel maps more of each library's cached pages around a
    # fault): 38.2 MiB here in a settled checkout, 39.5-40.0 MiB in a fresh clone's full run, the anonymous part
    # the same. So the test guards against growth and holds the causes below; the bench holds the target.
    assert rss_kib < 41.5 * 1024, f"idle RSS {rss_kib} KiB with the channel open (target < 40 MiB; guard 41.5)"
    assert field["Threads"] == "2"  # the run loop and the channel's
    assert "termios" not in maps  # remote_terminal.py loads with the first terminal
    assert _malloc_arenas(maps) == 0


def test_a_root_agent_without_remote_user_refuses_terminals(server: ServerProcess, admin: Admin,
                                                            tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the agent must run as root")
    d = enroll_and_run(server, admin, tmp_path / "nouser", "remote_access = true\n")
    try:
        wait_channel(server, admin, d)
        p = shell(server, admin, d.id, "id")
        assert p.returncode == 1
        said = " ".join(p.stderr.split())
        assert "refused the session" in said and "remote_user is not set" in said
    finally:
        d.agent.stop()


def test_a_cross_origin_websocket_is_refused(server: ServerProcess, admin: Admin, device: Device) -> None:
    grant = ask(server, admin.key, device.id, command="echo same-origin").json()

    async def run() -> None:
        with pytest.raises(InvalidStatus) as refused:
            await connect(ws_url(server, grant["path"]), ssl=tls(server), origin="https://evil.example",  # type: ignore[arg-type]
                          additional_headers={"Cookie": "fleetd_session=stolen"})
        assert refused.value.response.status_code == 403
        # the token was not spent: from the server's own origin it opens the session
        async with await connect(ws_url(server, grant["path"]), ssl=tls(server),
                                 origin=server.url) as ws:  # type: ignore[arg-type]
            await ws.send(json.dumps({"token": grant["token"]}))
            assert "opened" in json.loads(await ws.recv())
            out = b""
            async for m in ws:
                if isinstance(m, bytes):
                    out += m
            assert b"same-origin" in out

    asyncio.run(run())


def test_a_token_opens_one_session_only(server: ServerProcess, admin: Admin, device: Device) -> None:
    grant = ask(server, admin.key, device.id, command="true").json()

    async def run() -> None:
        for expect in ("opened", "error"):
            async with await connect(ws_url(server, grant["path"]), ssl=tls(server)) as ws:
                t0 = time.monotonic()
                await ws.send(json.dumps({"token": grant["token"]}))
                answer = json.loads(await ws.recv())
                assert expect in answer, answer
                assert time.monotonic() - t0 < 2  # the channel is up: the device starts the shell at once
        assert "already used" in answer["error"]

    asyncio.run(run())


def test_sessions_are_capped_per_device(server: ServerProcess, admin: Admin, device: Device) -> None:
    async def run() -> None:
        # each prints a line a second, so that none idles out while the others open
        opened = [await open_session(server, admin.key, device.id, "while :; do echo tick; sleep 1; done")
                  for _ in range(20)]
        try:
            assert all("opened" in first for _, first in opened), [f for _, f in opened]
            assert len({first["pid"] for _, first in opened}) == 20
            with server.client(admin.key) as c:
                assert "\nfleetd_remote_sessions 20" in c.get("/metrics").text
            r = ask(server, admin.key, device.id)
            assert r.status_code == 200  # a grant; the cap applies when the session opens
            ws = await connect(ws_url(server, r.json()["path"]), ssl=tls(server))
            await ws.send(json.dumps({"token": r.json()["token"]}))
            refused = json.loads(await ws.recv())
            assert refused["code"] == "resource_exhausted" and "remote_sessions_per_device" in refused["error"]
            await ws.close()
        finally:
            for ws, _ in opened:
                await ws.close()

    asyncio.run(run())


def test_an_idle_session_closes(server: ServerProcess, admin: Admin, device: Device) -> None:
    async def run() -> None:
        ws, first = await open_session(server, admin.key, device.id, "sleep 60")
        t0 = time.monotonic()
        closed = json.loads([m for m in await messages(ws) if isinstance(m, str)][-1])
        took = time.monotonic() - t0
        assert closed is not None and "idle for 4 s" in closed["closed"]
        assert IDLE_SECONDS - 0.5 <= took < IDLE_SECONDS + 5
        wait_for("the idle session's process to end", lambda: not _alive(first["pid"]), 10)

    asyncio.run(run())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not alive
        return f.read().split(") ")[1][0] != "Z"


def _process(pid: int) -> str:
    """What a test that waits for ``pid`` to end shows when it did not: its state, parent, and who holds its tty."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return f"process {pid}: gone"
    lines = [ln for ln in status.splitlines() if ln.split(":")[0] in ("Name", "State", "PPid", "SigIgn", "SigBlk")]
    return f"process {pid}: " + "; ".join(lines)


def test_a_killed_agent_ends_the_session_on_both_sides(server: ServerProcess, admin: Admin, tmp_path: Path) -> None:
    # The agent starts with SIGHUP ignored, as under nohup: its shells must still hang up with it.
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        d = enroll_and_run(server, admin, tmp_path / "killed", ALLOWED)
    finally:
        signal.signal(signal.SIGHUP, previous)
    try:
        wait_channel(server, admin, d)

        async def run() -> None:
            ws, first = await open_session(server, admin.key, d.id, "sleep 300")
            assert _alive(first["pid"])
            d.agent.proc.send_signal(signal.SIGKILL)
            msgs = [json.loads(m) for m in await messages(ws) if isinstance(m, str)]
            assert msgs and "the agent stopped or lost its connection" in msgs[-1]["closed"], msgs
            wait_for("the shell to end with its agent", lambda: not _alive(first["pid"]), 30,
                     log=lambda: f"{_process(first['pid'])}\n{d.agent.log()}")

        asyncio.run(run())
    finally:
        d.agent.stop()


def test_revoking_a_device_ends_its_channel_and_sessions(server: ServerProcess, admin: Admin,
                                                         tmp_path: Path) -> None:
    d = enroll_and_run(server, admin, tmp_path / "revoked", ALLOWED)
    try:
        wait_channel(server, admin, d)

        async def run() -> None:
            ws, first = await open_session(server, admin.key, d.id, "sleep 300")
            admin.call("DeviceAdminService", "RevokeDevice", {"id": d.id})
            msgs = [json.loads(m) for m in await messages(ws) if isinstance(m, str)]
            assert "the device was revoked, deleted or re-keyed" in msgs[-1]["closed"], msgs
            wait_for("the shell to be hung up", lambda: not _alive(first["pid"]), 10)

        asyncio.run(run())
        r = ask(server, admin.key, d.id)
        assert r.status_code == 400 and "no remote-access channel" in r.json()["message"]
    finally:
        d.agent.stop()


def test_the_install_one_liner_turns_remote_access_on(server: ServerProcess, admin: Admin, tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    dirs = f"{tmp_path}/share:/srv/my-app_1.0"
    p = run_shell(one_liner(admin.token(description="remote install")["install_command"], prefix)
                  + f" --remote-access --remote-user {ME} --remote-copy-dirs {dirs} --remote-forward")
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    state = prefix / "var" / "lib" / "fleet-agent"
    assert ALLOWED in (state / "agent.conf").read_text()
    conf = remote_config.load(state / "agent.conf")  # as the agent reads it
    assert (conf.remote_access, conf.remote_user, conf.copy_dirs, conf.forward) == (
        True, ME, (f"{tmp_path}/share", "/srv/my-app_1.0"), True)
    device_id = json.loads((state / "state.json").read_text())["device_id"]
    agent = AgentProcess([PYTHON, str(prefix / "opt" / "fleet-agent" / "fleet-agent.pyz"), "run", "--state-dir",
                          str(state)], tmp_path / "agent.log", agent_env(FLEET_AGENT_POLL_INTERVAL="5"))
    try:
        wait_channel(server, admin, Device(device_id, agent, state))
        out = shell(server, admin, device_id, "echo installed-with-remote-access")
        assert out.returncode == 0 and "installed-with-remote-access" in out.stdout, out
    finally:
        agent.stop()


def test_the_audit_log_has_every_session(server: ServerProcess, admin: Admin, device: Device) -> None:
    p = shell(server, admin, device.id, "printf 12345")
    assert p.returncode == 0
    entries = admin.call("AuditService", "List", {"action": "device.remote_session", "target": device.id,
                                                          "limit": 500})["entries"]
    ends = [e for e in entries if e["action"] == "device.remote_session" and e["outcome"] == "ok"]
    last = next(e for e in ends if e["details"]["command"] == "printf 12345")
    assert last["actor_name"] == "agent-e2e" and last["actor_kind"] == "key"
    det = last["details"]
    assert det["kind"] == "terminal" and det["end"] == "exit" and det["exit_status"] == 0
    assert det["bytes_out"] >= 5 and det["ended"] >= det["started"]
    opens = [e for e in entries if e["action"] == "device.remote_session_open"
             and e["details"]["session"] == det["session"]]
    assert len(opens) == 1 and opens[0]["details"]["user"] == ME
    denied = [e["details"]["reason"] for e in entries if e["outcome"] == "denied"]
    assert any("remote_sessions_per_device" in reason for reason in denied), denied
    assert any("need the admin role" in reason for reason in denied), denied


def test_the_agent_reconnects_after_the_server_restarts(server: ServerProcess, admin: Admin, device: Device) -> None:
    """Last in this module: it restarts the module's server (same data dir and port)."""
    server.stop()
    server.start()
    wait_channel(server, admin, device)  # the agent's backoff is at most 1 s here (FLEET_AGENT_MAX_BACKOFF)
    p = shell(server, admin, device.id, "echo back-again")
    assert p.returncode == 0 and "back-again" in p.stdout, p
