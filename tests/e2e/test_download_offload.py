"""download_offload = "x-accel": Debian's nginx in front of a real fleetd, with the nginx block of docs/operations.md.

fleetd authorizes every download and answers X-Accel-Redirect without a body; nginx sends the file. What a
client gets must be what it gets from fleetd alone: the right bytes (whole, a range, an If-Range resume), 401
without credentials, 404 for an unknown blob, and never the file through the internal location itself.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fleetd.fleet import open_offline
from fleetd.store.blobs import put_sync

from .server import ServerProcess, free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
SIZE = 3 * (1 << 20) + 12345


def documented_block() -> str:
    """The ```nginx block of docs/operations.md's "Downloads through nginx" section."""
    doc = (ROOT / "docs" / "operations.md").read_text()
    section = doc.split("## Downloads through nginx", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```nginx\n(.*?)```", section, re.S)
    assert m, "docs/operations.md: the Downloads through nginx section has no ```nginx block"
    return m.group(1)


def nginx_conf(prefix: Path, data_dir: Path, fleetd_port: int, port: int) -> str:
    block = documented_block()
    for old, new in (("server 127.0.0.1:8420;", f"server 127.0.0.1:{fleetd_port};"),
                     ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
                     ("/etc/nginx/fleet.pem", str(data_dir / "server.pem")),
                     ("/etc/nginx/fleet.key", str(data_dir / "server.key")),
                     ("/var/lib/fleetd/", f"{data_dir}/")):
        assert old in block, f"the documented nginx block no longer has {old!r}: update this test"
        block = block.replace(old, new)
    temp = "\n".join(f"    {name}_temp_path {prefix}/tmp/{name};"
                     for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # As root, nginx's workers would run as "nobody"; the docs have them run as fleetd's user, here that is root.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (f"{user}worker_processes 1;\ndaemon off;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
            f"events {{ worker_connections 64; }}\nhttp {{\n    access_log off;\n{temp}\n{block}}}\n")


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, str, bytes]]:
    """(fleetd behind nginx, nginx's URL, the blob's SHA-256, its bytes)."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    tmp = tmp_path_factory.mktemp("offload")
    server = ServerProcess(tmp / "data", tls=False, extra_args=["--trusted-proxy", "127.0.0.1"],
                           env={"FLEETD_DOWNLOAD_OFFLOAD": "x-accel"}).start()
    prefix = tmp / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    port = free_port()
    (prefix / "nginx.conf").write_text(nginx_conf(prefix, server.data_dir, server.port, port))
    with (prefix / "out.log").open("wb") as log:
        proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                 "-e", str(prefix / "error.log")], stdout=log, stderr=subprocess.STDOUT)
    try:
        data = random.Random(7).randbytes(SIZE)
        conn = open_offline(server.data_dir)
        try:
            sha = put_sync(server.data_dir / "blobs", conn, iter([data])).sha256
        finally:
            conn.close()
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/healthz", verify=False, timeout=2)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"nginx did not start:\n{(prefix / 'out.log').read_text()}"
                                         f"{(prefix / 'error.log').read_text()}") from None
                time.sleep(0.1)
        yield server, url, sha, data
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        server.stop()


def client(front: tuple[ServerProcess, str, str, bytes], key: str | None) -> httpx.Client:
    server, url, _, _ = front
    return httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=server.ca), timeout=30,
                        headers={"Authorization": f"Bearer {key}"} if key else {})


@pytest.fixture(scope="module")
def key(front: tuple[ServerProcess, str, str, bytes]) -> str:
    return front[0].create_key("viewer", "offload-viewer")


def test_fleetd_itself_answers_with_the_redirect_and_no_body(front: tuple[ServerProcess, str, str, bytes],
                                                             key: str) -> None:
    server, _, sha, _ = front
    with server.client(key) as c:
        r = c.get(f"/v1/blobs/{sha}")
    assert r.status_code == 200
    assert r.headers["x-accel-redirect"] == f"/_fleetd_blobs/{sha[:2]}/{sha}"
    assert r.content == b""


def test_nginx_sends_the_whole_blob_with_fleetds_headers(front: tuple[ServerProcess, str, str, bytes],
                                                          key: str) -> None:
    sha = front[2]
    with client(front, key) as c:
        r = c.get(f"/v1/blobs/{sha}")
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == sha and len(r.content) == SIZE
    assert r.headers["etag"] == f'"{sha}"'
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "x-accel-redirect" not in r.headers


def test_a_range_and_an_if_range_resume(front: tuple[ServerProcess, str, str, bytes], key: str) -> None:
    _, _, sha, data = front
    with client(front, key) as c:
        part = c.get(f"/v1/blobs/{sha}", headers={"Range": "bytes=1000-1999"})
        resume = c.get(f"/v1/blobs/{sha}", headers={"Range": f"bytes={SIZE - 5000}-", "If-Range": f'"{sha}"'})
        stale = c.get(f"/v1/blobs/{sha}", headers={"Range": "bytes=0-9", "If-Range": '"not-this-one"'})
    assert (part.status_code, part.headers["content-range"]) == (206, f"bytes 1000-1999/{SIZE}")
    assert part.content == data[1000:2000]
    assert (resume.status_code, resume.content) == (206, data[SIZE - 5000:])  # what the agent sends to resume
    assert (stale.status_code, len(stale.content)) == (200, SIZE)


def test_if_none_match_is_answered_by_fleetd(front: tuple[ServerProcess, str, str, bytes], key: str) -> None:
    sha = front[2]
    with client(front, key) as c:
        r = c.get(f"/v1/blobs/{sha}", headers={"If-None-Match": f'"{sha}"'})
    assert (r.status_code, r.content) == (304, b"")


def test_no_credentials_no_bytes(front: tuple[ServerProcess, str, str, bytes]) -> None:
    _, _, sha, data = front
    with client(front, None) as c:
        r = c.get(f"/v1/blobs/{sha}")
        bad = c.get(f"/v1/blobs/{sha}", headers={"Authorization": "Bearer fk_wrong"})
    for answer in (r, bad):
        assert answer.status_code == 401
        assert answer.json()["code"] == "unauthenticated"
        assert data[:64] not in answer.content


def test_an_unknown_blob_is_404(front: tuple[ServerProcess, str, str, bytes], key: str) -> None:
    with client(front, key) as c:
        r = c.get(f"/v1/blobs/{'0' * 64}")
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"


def test_the_internal_location_is_not_reachable_from_outside(front: tuple[ServerProcess, str, str, bytes],
                                                              key: str) -> None:
    _, _, sha, data = front
    with client(front, key) as c:
        r = c.get(f"/_fleetd_blobs/{sha[:2]}/{sha}")
    assert r.status_code == 404
    assert data[:64] not in r.content
