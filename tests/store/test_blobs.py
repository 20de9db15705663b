"""The file backend of the blob store (real files, real SQLite) and the /v1/blobs download route (in-process app).

What both backends do alike is tested on both in test_blobs_backends.py."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleetd.accounts.users import Principal
from fleetd.core.errors import InvalidArgument, PayloadTooLarge, PermissionDenied
from fleetd.fleet import Fleet, open_offline
from fleetd.http.blobs import CACHE_CONTROL, may_download
from fleetd.http.rpc import authorize
from fleetd.store import blobs as blobs_mod
from fleetd.store.blobs import BlobInfo, BlobStore, check_sha256, put_sync

pytestmark = pytest.mark.anyio
MiB = 1 << 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(fleet: Fleet) -> BlobStore:
    return fleet.blobs


def rows(fleet: Fleet) -> list[Any]:
    return fleet.store.read_sync(lambda c: [tuple(r) for r in c.execute("SELECT sha256, corrupt_at FROM blobs")])


def tmp_files(store: BlobStore) -> list[Path]:
    return list((store.root / "tmp").iterdir())


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


# --- storing -------------------------------------------------------------------

async def test_round_trip_hashes_match_hashlib(store: BlobStore, fleet: Fleet) -> None:
    data = os.urandom(3 * MiB + 12345)  # several batches plus a tail
    info = await store.put_stream(chunked(data, 64 * 1024))
    assert info == BlobInfo(sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                            md5=hashlib.md5(data).hexdigest(), sha1=hashlib.sha1(data).hexdigest())
    path = store.path(info.sha256)
    assert path == store.root / info.sha256[:2] / info.sha256
    assert path.read_bytes() == data
    assert await store.info(info.sha256) == info
    assert await store.info(info.sha256.upper()) == info
    assert tmp_files(store) == []
    reader = await store.open(info.sha256)
    assert reader is not None
    got = b"".join([c async for c in reader.chunks(5, 2 * MiB)])
    assert got == data[5:2 * MiB + 1]


async def test_reads_go_to_a_thread_when_the_page_cache_cannot_answer(store: BlobStore,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(MiB + 777)
    info = await store.put_bytes(data)
    loop_thread = threading.get_ident()
    readers: set[int] = set()
    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        readers.add(threading.get_ident())
        return real_pread(fd, n, offset)

    monkeypatch.setattr(blobs_mod.os, "pread", pread)
    cached = await store.open(info.sha256)
    assert cached is not None
    assert b"".join([c async for c in cached.chunks(3)]) == data[3:]
    if blobs_mod._RWF_NOWAIT is not None:
        assert readers == set(), "cached bytes were read on a worker thread"
    # Every preadv says EAGAIN (what RWF_NOWAIT says when the bytes are not cached): all reads on a thread.
    monkeypatch.setattr(blobs_mod.os, "preadv", lambda *a: (_ for _ in ()).throw(BlockingIOError(11, "EAGAIN")))
    cold = await store.open(info.sha256)
    assert cold is not None
    assert b"".join([c async for c in cold.chunks(10, MiB)]) == data[10:MiB + 1]
    assert readers and loop_thread not in readers


async def test_store_wide_cap_applies_by_default(tmp_path: Path, fleet: Fleet) -> None:
    small = BlobStore(tmp_path / "other-blobs", fleet.store, max_bytes=10)
    assert (await small.put_bytes(b"x" * 10)).size == 10
    with pytest.raises(PayloadTooLarge):
        await small.put_bytes(b"x" * 11)


async def test_big_chunks_do_not_block_the_event_loop(store: BlobStore) -> None:
    data = os.urandom(64 * MiB)
    # What a stall would be if the chunk were hashed on the loop, measured here: the bound
    # scales with the machine, and the GC is off so a collection of the test session's heap
    # (CI once saw a 0.38 s pause) is not taken for the store's doing.
    started = time.perf_counter()
    for h in (hashlib.sha256(), hashlib.sha1(), hashlib.md5()):
        h.update(data)
    inline = time.perf_counter() - started
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def one_chunk() -> AsyncIterator[bytes]:
        yield data

    gc.collect()
    gc.disable()
    try:
        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.02)
        info = await store.put_stream(one_chunk())
        done = True
        await tick
    finally:
        gc.enable()
    assert info.size == len(data)
    assert max(gaps) < inline / 2, f"the event loop stalled for {max(gaps):.3f}s (hashing inline: {inline:.3f}s)"


def test_bad_blob_ids_are_refused(store: BlobStore) -> None:
    for bad in ["", "abc", "../" + "a" * 61, "g" * 64, "a" * 65, "a" * 63 + "\n"]:
        with pytest.raises(InvalidArgument, match="64 hex digits"):
            store.path(bad)
    assert check_sha256("AB" * 32) == "ab" * 32


def test_put_sync_offline_is_visible_to_the_store(store: BlobStore, fleet: Fleet) -> None:
    conn = open_offline(fleet.data_dir)
    try:
        info = put_sync(fleet.data_dir / "blobs", conn, [b"off", b"line"])
    finally:
        conn.close()
    assert info.sha256 == hashlib.sha256(b"offline").hexdigest()
    assert asyncio.run(store.info(info.sha256)) == info
    assert store.path(info.sha256).read_bytes() == b"offline"


# --- gc -----------------------------------------------------------------------

def _age(fleet: Fleet, store: BlobStore, sha: str, seconds: float) -> None:
    old = time.time() - seconds
    fleet.store.write_sync(lambda c: c.execute("UPDATE blobs SET created_at = ? WHERE sha256 = ?", (old, sha)))
    os.utime(store.path(sha), (old, old))


async def test_re_put_restarts_the_grace_period(store: BlobStore, fleet: Fleet) -> None:
    info = await store.put_bytes(b"uploaded again before an artifact points at it")
    _age(fleet, store, info.sha256, 7200)
    await store.put_bytes(b"uploaded again before an artifact points at it")
    assert (await store.gc(grace_seconds=3600)).deleted == []


async def test_gc_during_a_publish_never_leaves_a_row_without_its_file(
        store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(1024)
    sha = hashlib.sha256(data).hexdigest()
    await store.put_bytes(data)
    real_fsync_dir = blobs_mod.fsync_dir
    renamed = threading.Event()

    def slow_fsync_dir(path: Path) -> None:
        # Hold the upload between "file renamed into place" and "row written".
        real_fsync_dir(path)
        if path.name == sha[:2]:
            renamed.set()
            time.sleep(0.3)

    monkeypatch.setattr(blobs_mod, "fsync_dir", slow_fsync_dir)
    put = asyncio.create_task(store.put_bytes(data))
    assert await asyncio.to_thread(renamed.wait, 5)
    await store.gc(grace_seconds=0)
    await put
    row = await store.info(sha)
    assert (row is not None) == store.path(sha).exists()
    if row is not None:
        assert store.path(sha).read_bytes() == data


# --- scrub ----------------------------------------------------------------------

def _flip_byte(path: Path, offset: int) -> None:
    os.chmod(path, 0o600)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


async def test_open_marks_a_truncated_file_corrupt(store: BlobStore) -> None:
    info = await store.put_bytes(b"0123456789")
    os.chmod(store.path(info.sha256), 0o600)
    os.truncate(store.path(info.sha256), 4)
    assert await store.open(info.sha256) is None
    assert await store.info(info.sha256) is None


# --- the download route -----------------------------------------------------------

DATA = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4: spans several read chunks


@pytest.fixture
def blob(fleet: Fleet) -> BlobInfo:
    return asyncio.run(fleet.blobs.put_bytes(DATA))


def _get(client: Any, sha: str, key: str | None, method: str = "GET", **headers: str) -> Any:
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return client.request(method, f"/v1/blobs/{sha}", headers=headers)


def test_download_whole(client: Any, viewer_key: str, blob: BlobInfo) -> None:
    r = _get(client, blob.sha256, viewer_key)
    assert r.status_code == 200
    assert r.content == DATA
    assert r.headers["content-length"] == str(len(DATA))
    assert r.headers["etag"] == f'"{blob.sha256}"'
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["cache-control"] == CACHE_CONTROL
    assert r.headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize(("header", "start", "end"), [
    ("bytes=0-0", 0, 0),
    ("bytes=10-19", 10, 19),
    ("bytes=262140-262150", 262140, 262150),  # across a read-chunk boundary
    ("bytes=1000000-", 1000000, len(DATA) - 1),
    ("bytes=-4", len(DATA) - 4, len(DATA) - 1),
    ("bytes=5-99999999", 5, len(DATA) - 1),
])
def test_download_range(client: Any, viewer_key: str, blob: BlobInfo, header: str, start: int, end: int) -> None:
    r = _get(client, blob.sha256, viewer_key, Range=header)
    assert r.status_code == 206
    assert r.content == DATA[start:end + 1]
    assert r.headers["content-range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert r.headers["content-length"] == str(end - start + 1)


def test_empty_blob_download(client: Any, viewer_key: str, fleet: Fleet) -> None:
    info = asyncio.run(fleet.blobs.put_bytes(b""))
    r = _get(client, info.sha256, viewer_key, Range="bytes=0-")
    assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == "0"


def test_multiple_ranges_get_the_whole_file(client: Any, viewer_key: str, blob: BlobInfo) -> None:
    r = _get(client, blob.sha256, viewer_key, Range="bytes=0-1,5-6")
    assert r.status_code == 200 and r.content == DATA


def test_unsatisfiable_range(client: Any, viewer_key: str, blob: BlobInfo) -> None:
    r = _get(client, blob.sha256, viewer_key, Range=f"bytes={len(DATA)}-")
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(DATA)}"
    assert r.json()["code"] == "out_of_range"


def test_if_range_mismatch_sends_everything(client: Any, viewer_key: str, blob: BlobInfo) -> None:
    r = _get(client, blob.sha256, viewer_key, Range="bytes=0-9", **{"If-Range": '"old"'})
    assert r.status_code == 200 and r.content == DATA
    r = _get(client, blob.sha256, viewer_key, Range="bytes=0-9", **{"If-Range": f'"{blob.sha256}"'})
    assert r.status_code == 206 and r.content == DATA[:10]


def test_not_modified(client: Any, viewer_key: str, blob: BlobInfo) -> None:
    r = _get(client, blob.sha256, viewer_key, **{"If-None-Match": f'"x", W/"{blob.sha256}"'})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == f'"{blob.sha256}"'
    assert _get(client, blob.sha256, viewer_key, **{"If-None-Match": '"other"'}).status_code == 200


def test_head(client: Any, viewer_key: str, blob: BlobInfo) -> None:
    r = _get(client, blob.sha256, viewer_key, "HEAD", Range="bytes=0-9")
    assert r.status_code == 200  # Range is for GET only
    assert r.content == b""
    assert r.headers["content-length"] == str(len(DATA))
    assert r.headers["etag"] == f'"{blob.sha256}"'
    assert r.headers["accept-ranges"] == "bytes"
    assert _get(client, "ab" * 32, viewer_key, "HEAD").status_code == 404


def test_unknown_and_malformed(client: Any, viewer_key: str) -> None:
    r = _get(client, "ab" * 32, viewer_key)
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = _get(client, "not-a-sha", viewer_key)
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
    assert "64 hex digits" in r.json()["message"]


def test_corrupt_blob_is_not_served(client: Any, viewer_key: str, fleet: Fleet, blob: BlobInfo) -> None:
    _flip_byte(fleet.blobs.path(blob.sha256), 7)
    assert asyncio.run(fleet.blobs.scrub()).corrupt == [blob.sha256]
    r = _get(client, blob.sha256, viewer_key)
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_auth(client: Any, viewer_key: str, admin_key: str, blob: BlobInfo) -> None:
    assert _get(client, blob.sha256, admin_key).status_code == 200
    r = _get(client, blob.sha256, None)
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    assert _get(client, blob.sha256, "fk_nope_nope").status_code == 401


class _OneDevice:
    """Stands in for device tokens (not built yet): accepts one token as device dev_1."""

    def verify(self, token: str) -> Principal | None:
        return Principal("device", "dev_1", "dev1") if token == "device-token" else None


def test_devices_reach_may_download_which_refuses_them_for_now(
        client: Any, fleet: Fleet, blob: BlobInfo) -> None:
    fleet.authenticator.device_tokens = _OneDevice()
    r = _get(client, blob.sha256, "device-token")
    assert r.status_code == 403 and r.json()["code"] == "permission_denied"
    assert "may not download" in r.json()["message"]


async def test_may_download_policy(fleet: Fleet) -> None:
    sha = "ab" * 32
    assert await may_download(fleet, Principal("key", "k", "k", "viewer"), sha)
    assert await may_download(fleet, Principal("user", "u", "u", "admin"), sha)
    assert not await may_download(fleet, Principal("device", "d", "d"), sha)
    assert not await may_download(fleet, Principal("anonymous"), sha)


def test_device_or_viewer_policy() -> None:
    authorize("device_or_viewer", Principal("device", "d", "d"))
    authorize("device_or_viewer", Principal("key", "k", "k", "viewer"))
    with pytest.raises(PermissionDenied):
        authorize("device", Principal("key", "k", "k", "admin"))
    with pytest.raises(PermissionDenied):
        authorize("viewer", Principal("device", "d", "d"))


def test_openapi_lists_the_route(client: Any) -> None:
    doc = client.get("/schema/openapi.json").json()
    assert set(doc["paths"]["/v1/blobs/{sha256}"]) == {"get", "head"}
