"""Artifacts against a real `fleetd serve` over HTTPS: CLI push, ranged download with curl, cut-off uploads."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console

from fleetd.cli.artifacts import load_signing_key, progress_bar, put_file
from fleetd.cli.client import Client
from fleetd.store.database import connect

from .server import ServerProcess, fleetd_cmd, run_cli

pytestmark = pytest.mark.e2e
MiB = 1 << 20

# Runs a command and writes its peak RSS (KiB) to $RSS_OUT.
_MEASURE = ("import os, resource, subprocess, sys\n"
            "rc = subprocess.call(sys.argv[1:])\n"
            "open(os.environ['RSS_OUT'], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
            "sys.exit(rc)\n")


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def remote_args(server: ServerProcess, key: str) -> list[str]:
    return ["--server", server.url, "--api-key", key, "--ca", server.ca]


def measured_cli(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    out = tmp_path / f"rss-{secrets.token_hex(3)}"
    p = subprocess.run([sys.executable, "-c", _MEASURE, *fleetd_cmd(), *args], capture_output=True, text=True,
                       env={**os.environ, "RSS_OUT": str(out)}, timeout=120)
    assert p.returncode == 0, f"stdout:{p.stdout}\nstderr:{p.stderr}"
    return p, int(out.read_text()) * 1024


def said(p: subprocess.CompletedProcess[str]) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(p.stderr.split())


def blob_rows(server: ServerProcess) -> set[str]:
    conn = connect(server.data_dir / "fleetd.db", readonly=True)
    try:
        return {r[0] for r in conn.execute("SELECT sha256 FROM blobs")}
    finally:
        conn.close()


def tmp_files(server: ServerProcess) -> list[Path]:
    return list((server.data_dir / "blobs" / "tmp").iterdir())


def wait_for(condition: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_push_50_mib_with_the_cli_then_curl_a_range(server: ServerProcess, admin_key: str, tmp_path: Path) -> None:
    data = os.urandom(50 * MiB)
    path = tmp_path / "sensor.bin"
    path.write_bytes(data)
    name = unique("e2e-big")
    _, baseline = measured_cli(tmp_path, "artifacts", "list", "--json", *remote_args(server, admin_key))
    p, pushed_rss = measured_cli(
        tmp_path, "artifacts", "push", str(path), "--name", name, "--version", "1.0.0", "--device-type", "sim",
        "--device-type", "linux-aarch64", "--run", "./sensor.bin --port 8080 --label 'front door'",
        "--env", "MODE=fast", "--restart", "always", "--health-grace", "15",
        "--health-http", "http://127.0.0.1:8080/healthz", "--json", *remote_args(server, admin_key))
    a = json.loads(p.stdout)
    assert (a["sha256"], a["sha1"], a["md5"], a["size"]) == (
        hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest(), hashlib.md5(data).hexdigest(), len(data))
    assert a["file_name"] == "sensor.bin" and a["device_types"] == ["linux-aarch64", "sim"]
    assert a["install_spec"] == {"command": ["./sensor.bin", "--port", "8080", "--label", "front door"],
                                 "env": {"MODE": "fast"}, "restart": "always",
                                 "health": {"grace_seconds": 15, "http_url": "http://127.0.0.1:8080/healthz"}}
    # The file was streamed, not read into memory: the push peaks well under the file's size above a list.
    assert pushed_rss - baseline < 25 * MiB, (pushed_rss, baseline)

    out = tmp_path / "range.bin"
    status = subprocess.run(
        ["curl", "-sS", "--range", "1000-1999", "--cacert", server.ca, "-H", f"Authorization: Bearer {admin_key}",
         "-o", str(out), "-w", "%{http_code}", f"{server.url}/v1/blobs/{a['sha256']}"],
        capture_output=True, text=True, timeout=60, check=True).stdout
    assert status == "206"
    assert out.read_bytes() == data[1000:2000]

    shown = json.loads(run_cli("artifacts", "show", f"{name}@1.0.0", "--json",
                               *remote_args(server, admin_key)).stdout)
    assert shown["id"] == a["id"] and shown["deployment"]["installed_count"] == 0
    human = run_cli("artifacts", "show", f"{name}@1.0.0", *remote_args(server, admin_key),
                    env={"COLUMNS": "200"}).stdout
    assert a["sha256"] in human and "50.0 MiB" in human
    listed = json.loads(run_cli("artifacts", "list", "--name", name, "--json", *remote_args(server, admin_key)).stdout)
    assert [x["id"] for x in listed] == [a["id"]]


def test_cli_errors_say_what_to_do(server: ServerProcess, admin_key: str, tmp_path: Path) -> None:
    path = tmp_path / "app.bin"
    path.write_bytes(b"#!/bin/sh\necho hi\n")
    name = unique("e2e-err")
    base = ["artifacts", "push", str(path), "--name", name, "--device-type", "sim", *remote_args(server, admin_key)]
    p = run_cli(*base, "--version", "1.0", check=False)
    assert p.returncode == 1 and "not a semantic version" in said(p)
    run_cli(*base, "--version", "1.0.0")
    p = run_cli(*base, "--version", "1.0.0", check=False)
    assert p.returncode == 1 and "already exists" in said(p) and "higher --version" in said(p)
    p = run_cli(*base, "--version", "1.0.1", "--restart", "sometimes", check=False)
    assert p.returncode == 1 and "--restart must be one of always, on-failure, never" in said(p)
    p = run_cli("artifacts", "push", str(tmp_path / "missing.bin"), "--name", name, "--version", "2.0.0",
                "--device-type", "sim", *remote_args(server, admin_key), check=False)
    assert p.returncode == 1 and "missing.bin is not a readable file" in said(p)
    viewer = server.create_key("viewer", unique("e2e-viewer"))
    p = run_cli(*base[:-6], *remote_args(server, viewer), "--version", "3.0.0", check=False)
    assert p.returncode == 1 and "permission_denied" in said(p) and "stronger role" in said(p)

    deleted = json.loads(run_cli("artifacts", "delete", f"{name}@1.0.0", "--json",
                                 *remote_args(server, admin_key)).stdout)
    assert deleted["version"] == "1.0.0"
    p = run_cli("artifacts", "show", f"{name}@1.0.0", *remote_args(server, admin_key), check=False)
    assert p.returncode == 1 and "no artifact" in said(p)


def test_push_for_a_device_type_pattern(server: ServerProcess, admin_key: str, tmp_path: Path) -> None:
    path = tmp_path / "beat.sh"
    path.write_bytes(b"#!/bin/sh\nwhile :; do date; sleep 10; done\n")
    name = unique("e2e-beat")
    base = ["artifacts", "push", str(path), "--name", name, *remote_args(server, admin_key)]
    a = json.loads(run_cli(*base, "--version", "1.0.0", "--device-type", "linux-*", "--json").stdout)
    assert a["device_types"] == ["linux-*"] and json.loads(a["manifest"])["device_types"] == ["linux-*"]
    p = run_cli(*base, "--version", "1.0.1", "--device-type", "linux-?", check=False)
    assert p.returncode == 1 and "device type 'linux-?' must be a device type" in said(p) and "linux-*" in said(p)


def test_keygen_and_sign_offline(server: ServerProcess, admin_key: str, tmp_path: Path) -> None:
    path = tmp_path / "fw.bin"
    path.write_bytes(os.urandom(4096))
    name = unique("e2e-signed")
    run_cli("artifacts", "push", str(path), "--name", name, "--version", "1.0.0", "--device-type", "sim",
            "--kind", "firmware", *remote_args(server, admin_key))
    key = tmp_path / "offline.pem"
    pub = json.loads(run_cli("artifacts", "keygen", "--out", str(key), "--json").stdout)["public_key"]

    other = tmp_path / "other.bin"
    other.write_bytes(b"not the same file")
    p = run_cli("artifacts", "sign", f"{name}@1.0.0", "--key", str(key), "--file", str(other),
                *remote_args(server, admin_key), check=False)
    assert p.returncode == 1 and "refusing to sign" in said(p)

    signed = json.loads(run_cli("artifacts", "sign", f"{name}@1.0.0", "--key", str(key), "--file", str(path),
                                "--json", *remote_args(server, admin_key)).stdout)
    (sig,) = signed["offline_signatures"]
    assert sig["public_key"] == pub
    # Anyone holding only the offline public key can check it over the manifest the server serves.
    Ed25519PublicKey.from_public_bytes(base64.b64decode(pub)).verify(
        base64.b64decode(sig["signature"]), signed["manifest"].encode())
    # The private key never went to the server.
    secret = load_signing_key(key).private_bytes_raw()
    stored = b"".join(f.read_bytes() for f in server.data_dir.glob("fleetd.db*"))
    assert len(stored) > 0 and secret not in stored and key.read_bytes() not in stored


def test_progress_bar_counts_every_byte(server: ServerProcess, admin_key: str, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 5)
    path = tmp_path / "p.bin"
    path.write_bytes(data)
    progress = progress_bar(Console(file=io.StringIO(), force_terminal=True, width=100))
    with Client(server.url, admin_key, server.ca) as client:
        ticket = client.call("ArtifactService", "CreateUpload", {
            "name": unique("e2e-progress"), "version": "1.0.0", "device_types": ["sim"], "file_name": "p.bin",
            "size": len(data)})
        a = put_file(client, f"/v1/uploads/{ticket['upload_id']}", path, len(data), progress)
    assert a["sha256"] == hashlib.sha256(data).hexdigest()
    (task,) = progress.tasks
    assert task.completed == task.total == len(data)


# --- uploads cut off half-way --------------------------------------------------------------

def _cut_with_raw_socket(server: ServerProcess, key: str, upload_id: str, total: int) -> None:
    ctx = ssl.create_default_context(cafile=server.ca)
    with socket.create_connection(("127.0.0.1", server.port)) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall((f"PUT /v1/uploads/{upload_id} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                   f"Authorization: Bearer {key}\r\nContent-Type: application/octet-stream\r\n"
                   f"Content-Length: {total}\r\n\r\n").encode())
        s.sendall(b"z" * (total // 2))
        # The server is storing it: a temp file is filling up.
        assert wait_for(lambda: any(f.stat().st_size >= MiB for f in tmp_files(server))), tmp_files(server)
    # Leaving the with-block closes the connection half-way through the announced body.


def _cut_with_failing_generator(server: ServerProcess, key: str, upload_id: str, total: int) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(total // 2 // (256 * 1024)):
            yield b"z" * (256 * 1024)
        assert wait_for(lambda: any(f.stat().st_size >= MiB for f in tmp_files(server))), tmp_files(server)
        raise RuntimeError("the client gave up")

    with server.client(key) as c, pytest.raises(RuntimeError, match="gave up"):
        c.put(f"/v1/uploads/{upload_id}", content=body(), headers={"Content-Length": str(total)})


@pytest.mark.parametrize("cut", [_cut_with_raw_socket, _cut_with_failing_generator])
def test_an_upload_cut_off_half_way_leaves_nothing(server: ServerProcess, admin_key: str, cut: object) -> None:
    total = 8 * MiB
    name = unique("e2e-cut")
    assert tmp_files(server) == []
    blobs_before = blob_rows(server)
    r = server.rpc("ArtifactService", "CreateUpload", {"name": name, "version": "1.0.0", "device_types": ["sim"],
                                                       "file_name": "cut.bin", "size": total}, admin_key)
    assert r.status_code == 200, r.text
    upload_id = r.json()["upload_id"]

    cut(server, admin_key, upload_id, total)  # type: ignore[operator]

    assert wait_for(lambda: tmp_files(server) == []), tmp_files(server)
    assert blob_rows(server) == blobs_before
    assert hashlib.sha256(b"z" * (total // 2)).hexdigest() not in blob_rows(server)
    r = server.rpc("ArtifactService", "GetArtifact", {"id": f"{name}@1.0.0"}, admin_key)
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    # The session was used up; the server is fine and takes the next upload.
    with server.client(admin_key) as c:
        r = c.put(f"/v1/uploads/{upload_id}", content=b"z" * total)
    assert r.status_code == 404 and "already used" in r.json()["message"]
    assert wait_for(lambda: f"upload {upload_id} ({name}@1.0.0) failed after" in server.log())
    r = server.rpc("ArtifactService", "CreateUpload", {"name": name, "version": "1.0.0", "device_types": ["sim"],
                                                       "file_name": "cut.bin", "size": 3}, admin_key)
    with server.client(admin_key) as c:
        assert c.put(f"/v1/uploads/{r.json()['upload_id']}", content=b"abc").status_code == 201


