"""Blob downloads from a real `fleetd serve` over HTTPS: exact bytes per range, flat memory, no leaks."""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fleetd.fleet import open_offline
from fleetd.store.blobs import put_sync

from .server import ServerProcess

pytestmark = pytest.mark.e2e
MiB = 1 << 20
SIZE = 20 * MiB


def _chunks(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), MiB):
        yield data[i:i + MiB]


@pytest.fixture(scope="module")
def big_blob(server: ServerProcess) -> tuple[str, bytes]:
    """A 20 MiB blob stored into the running server's data dir by the offline path."""
    data = random.Random(20).randbytes(SIZE)
    conn = open_offline(server.data_dir)
    try:
        info = put_sync(server.data_dir / "blobs", conn, _chunks(data))
    finally:
        conn.close()
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    return info.sha256, data


def _pids(root: int) -> list[int]:
    """The server process and its descendants (a PyInstaller one-file binary runs as a child)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def _rss_bytes(root: int) -> int:
    total = 0
    for pid in _pids(root):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def _bytes_read(root: int) -> int:
    """Bytes the server's processes read with read-like calls so far (/proc/PID/io rchar: page cache included)."""
    total = 0
    for pid in _pids(root):
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("rchar:"):
                total += int(line.split()[1])
    return total


def _open_files(root: int) -> list[str]:
    """What the server's processes have open, but the database: the store opens a reader connection (the
    database, its WAL and shared memory) on a reader thread's first read, which another test's work on the shared
    server may bring about at any time."""
    out = []
    for pid in _pids(root):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = str(fd.readlink())
            except OSError:  # closed meanwhile
                continue
            if not Path(target).name.startswith("fleetd.db"):
                out.append(target)
    return out


def test_ranges_over_https(server: ServerProcess, admin_key: str, big_blob: tuple[str, bytes]) -> None:
    sha, data = big_blob
    with server.client(admin_key, timeout=60) as c:
        r = c.get(f"/v1/blobs/{sha}")
        assert r.status_code == 200 and r.content == data
        etag = r.headers["etag"]
        assert etag == f'"{sha}"'
        for start, end in [(0, 0), (1, MiB), (SIZE - 4096, SIZE - 1), (7 * MiB + 3, 13 * MiB + 5)]:
            r = c.get(f"/v1/blobs/{sha}", headers={"Range": f"bytes={start}-{end}"})
            assert r.status_code == 206
            assert r.headers["content-range"] == f"bytes {start}-{end}/{SIZE}"
            assert r.content == data[start:end + 1]
        # Resuming a download: the tail after what we have, guarded by If-Range.
        r = c.get(f"/v1/blobs/{sha}", headers={"Range": f"bytes={SIZE - 100}-", "If-Range": etag})
        assert r.status_code == 206 and r.content == data[-100:]
        r = c.head(f"/v1/blobs/{sha}")
        assert r.status_code == 200 and r.headers["content-length"] == str(SIZE) and r.content == b""
        assert c.get(f"/v1/blobs/{sha}", headers={"If-None-Match": etag}).status_code == 304
        r = c.get(f"/v1/blobs/{sha}", headers={"Range": f"bytes={SIZE}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{SIZE}"
    with server.client() as anonymous:
        assert anonymous.get(f"/v1/blobs/{sha}").status_code == 401


def _download_sha(server: ServerProcess, key: str, sha: str) -> str:
    h = hashlib.sha256()
    with server.client(key, timeout=120) as c, c.stream("GET", f"/v1/blobs/{sha}") as r:
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            h.update(chunk)
    return h.hexdigest()


def test_memory_stays_flat_under_parallel_downloads(server: ServerProcess, admin_key: str,
                                                    big_blob: tuple[str, bytes]) -> None:
    sha, _ = big_blob
    assert server.proc is not None
    pid = server.proc.pid
    assert _download_sha(server, admin_key, sha) == sha  # warm up: worker threads, TLS, caches
    baseline = _rss_bytes(pid)
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss_bytes(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda _: _download_sha(server, admin_key, sha), range(20)))
    finally:
        stop.set()
        sampler.join()
    assert results == [sha] * 20
    growth = peak - baseline
    # Loading whole files would need 20 x 20 MiB; streaming needs a few chunks per download.
    assert growth < 60 * MiB, f"server RSS grew by {growth / MiB:.1f} MiB during 20 parallel downloads"


def test_cut_off_downloads_release_their_files(server: ServerProcess, admin_key: str,
                                               big_blob: tuple[str, bytes]) -> None:
    sha, _ = big_blob
    assert server.proc is not None
    pid = server.proc.pid
    before, read_before = _open_files(pid), _bytes_read(pid)
    for _ in range(10):
        with server.client(admin_key, timeout=30) as c, c.stream("GET", f"/v1/blobs/{sha}") as r:
            assert r.status_code == 200
            next(r.iter_raw(64 * 1024))  # read a little, then hang up
    deadline = time.monotonic() + 10
    while len(_open_files(pid)) > len(before) and time.monotonic() < deadline:
        time.sleep(0.1)
    after = _open_files(pid)
    assert len(after) <= len(before), f"aborted downloads left files open: {sorted(set(after) - set(before))}"
    # A send after the client left is dropped silently: the download must notice the disconnect and stop reading
    # (the socket buffers hold a few MiB of what it read before); reading on would be 10 x 20 MiB.
    read = _bytes_read(pid) - read_before
    assert read < 10 * SIZE / 2, f"10 downloads cut off after 64 KiB read {read / MiB:.0f} MiB of the blob"
    blob_file = str(server.data_dir / "blobs" / sha[:2] / sha)
    open_paths = [str(p.readlink()) for p in Path(f"/proc/{pid}/fd").iterdir() if p.is_symlink()]
    assert blob_file not in open_paths
