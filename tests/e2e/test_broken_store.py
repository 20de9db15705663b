"""Broken stores at start: a damaged or locked database stops `fleetd serve` at once with what to do (no
traceback); temp files of uploads that died with their server are removed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from .server import ServerProcess, free_port, run_cli

pytestmark = pytest.mark.e2e

# Holds the write lock of a database until its stdin closes.
LOCK_HOLDER = textwrap.dedent("""
    import sys
    from fleetd.store.database import connect
    conn = connect(sys.argv[1])
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.read()
""")


def serve(data: Path) -> tuple[int, str]:
    p = run_cli("serve", "--data-dir", str(data), "--host", "127.0.0.1", "--port", str(free_port()), "--no-mdns",
                check=False, env={"COLUMNS": "1000"}, timeout=120)
    return p.returncode, " ".join((p.stdout + p.stderr).split())


def users_list(data: Path) -> tuple[int, str]:
    p = run_cli("users", "list", "--data-dir", str(data), check=False, env={"COLUMNS": "1000"}, timeout=120)
    return p.returncode, " ".join((p.stdout + p.stderr).split())


def keys_create(data: Path) -> tuple[int, str]:
    p = run_cli("keys", "create", "--name", "ci", "--data-dir", str(data), check=False, env={"COLUMNS": "1000"},
                timeout=120)
    return p.returncode, " ".join((p.stdout + p.stderr).split())


# `fleetd serve` and offline commands on the data dir (fleet.open_offline) open the store the same way.
COMMANDS = pytest.mark.parametrize("command", [serve, users_list, keys_create], ids=lambda c: c.__name__)


@contextlib.contextmanager
def holding_the_lock(db: Path) -> Iterator[int]:
    """Another process holding the database's write lock while the block runs; yields its pid."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield holder.pid
    finally:
        holder.communicate("")


@COMMANDS
def test_a_damaged_database_stops_the_command_with_the_way_to_restore(
        tmp_path: Path, command: Callable[[Path], tuple[int, str]]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "fleetd.db").write_bytes(os.urandom(8192))
    code, out = command(data)
    assert code == 1
    assert f"the database {data / 'fleetd.db'} is damaged" in out
    assert "fleetd restore --check BACKUP.tar" in out and "fleetd restore BACKUP.tar --data-dir NEW" in out
    assert "Traceback" not in out


@COMMANDS
def test_a_database_locked_by_another_process_names_it(
        tmp_path: Path, command: Callable[[Path], tuple[int, str]]) -> None:
    data = tmp_path / "data"
    run_cli("users", "create", "alice", "--role", "admin", "--generate",
            "--data-dir", str(data))
    with holding_the_lock(data / "fleetd.db") as pid:
        code, out = command(data)
    assert code == 1
    assert f"another process (pid {pid} " in out
    assert f"is using the database {data / 'fleetd.db'} and holds its lock" in out
    assert "Traceback" not in out
    # The lock released, the same command works.
    if command is serve:
        ServerProcess(data).start().stop()
    else:
        assert command(data)[0] == 0


def test_the_temp_file_of_an_upload_killed_with_its_server_is_removed_at_the_next_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data).start()
    key = server.create_key("operator")
    ticket = server.rpc("ArtifactService", "CreateUpload", {
        "name": "app", "version": "1.0.0", "device_types": ["sim"], "file_name": "app.bin", "size": 4 << 20},
        api_key=key).json()
    release = threading.Event()

    def body() -> Iterator[bytes]:
        yield b"x" * (1 << 20)
        release.wait(120)

    def upload() -> None:
        with server.client(key) as c, contextlib.suppress(httpx.HTTPError):
            c.put(urlparse(ticket["upload_url"]).path, content=body())

    uploader = threading.Thread(target=upload)
    uploader.start()
    temps = data / "blobs" / "tmp"
    try:
        while not list(temps.iterdir()):
            time.sleep(0.05)
        server.kill9()
    finally:
        release.set()
        uploader.join()
    assert list(temps.iterdir())
    ServerProcess(data).start().stop()
    assert not list(temps.iterdir())
