"""The blob store on both backends: the data dir's files, and an S3 bucket (SeaweedFS, the ``s3_bucket`` fixture).

Each test runs on both; :class:`FilesSide` and :class:`BucketSide` reach past the store to see or damage what it
holds. File-only behaviour (page-cache reads, fsync order, temp-file locks) is in test_blobs.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from fleetd.app import asgi_app
from fleetd.core.config import Settings
from fleetd.core.errors import InvalidArgument, PayloadTooLarge
from fleetd.fleet import Fleet
from fleetd.store import blobs as blobs_mod
from fleetd.store.blobs import BlobInfo
from fleetd.store.blobs_s3 import S3BlobStore
from fleetd.store.s3 import S3Client, S3Config
from fleetd.store.sigv4 import Credentials
from tests.conftest import make_key
from tests.support.services import Bucket

pytestmark = pytest.mark.anyio
MiB = 1 << 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FilesSide:
    """The data dir's ``blobs/`` folder, as the file backend lays it out."""

    def __init__(self, fleet: Fleet) -> None:
        self.root = fleet.data_dir / "blobs"

    def read(self, sha: str) -> bytes | None:
        path = self.root / sha[:2] / sha
        return path.read_bytes() if path.exists() else None

    def write(self, sha: str, data: bytes) -> None:
        path = self.root / sha[:2] / sha
        path.parent.mkdir(exist_ok=True)
        if path.exists():
            os.chmod(path, 0o600)
        path.write_bytes(data)

    def remove(self, sha: str) -> None:
        (self.root / sha[:2] / sha).unlink()

    def uploads(self) -> int:
        """Uploads under way or left behind."""
        return len(list((self.root / "tmp").iterdir()))

    def leave_uploads(self) -> int:
        """Leave what a process killed mid-upload leaves; how many things gc should remove."""
        (self.root / "tmp" / "dead.part").write_bytes(b"t")
        return 1


class BucketSide:
    """The bucket, under the store's prefix."""

    def __init__(self, fleet: Fleet, bucket: Bucket) -> None:
        store = fleet.blobs
        assert isinstance(store, S3BlobStore)
        self.prefix = store.prefix
        self.s3 = S3Client(S3Config(bucket.name, Credentials(bucket.access_key, bucket.secret_key),
                                    region=bucket.region, endpoint=bucket.endpoint))

    def read(self, sha: str) -> bytes | None:
        if self.s3.head_object(f"{self.prefix}blobs/{sha}") is None:
            return None
        with self.s3.get_object(f"{self.prefix}blobs/{sha}") as obj:
            return obj.read()

    def write(self, sha: str, data: bytes) -> None:
        self.s3.put_object(f"{self.prefix}blobs/{sha}", data)

    def remove(self, sha: str) -> None:
        self.s3.delete_object(f"{self.prefix}blobs/{sha}")

    def uploads(self) -> int:
        return (len(list(self.s3.list_multipart_uploads(f"{self.prefix}uploads/")))
                + len(list(self.s3.list_objects(f"{self.prefix}uploads/"))))

    def leave_uploads(self) -> int:
        self.s3.put_object(f"{self.prefix}uploads/copied-but-not-deleted", b"t")
        self.s3.create_multipart_upload(f"{self.prefix}uploads/never-completed")
        return 2


Side = FilesSide | BucketSide


@pytest.fixture(params=["files", "s3"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    base: dict[str, Any] = {"data_dir": str(tmp_path / "data"), "tls": False, "mdns": False, "host": "127.0.0.1"}
    if request.param == "s3":
        bucket: Bucket = request.getfixturevalue("s3_bucket")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", bucket.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bucket.secret_key)
        base |= {"blob_store": f"s3://{bucket.name}/fleet/a", "s3_endpoint": bucket.endpoint,
                 "s3_region": bucket.region, "s3_presigned_downloads": True}
    f = Fleet(Settings(**base))
    yield f
    f.close()


@pytest.fixture
def side(fleet: Fleet, request: pytest.FixtureRequest) -> Iterator[Side]:
    if isinstance(fleet.blobs, S3BlobStore):
        bucket_side = BucketSide(fleet, request.getfixturevalue("s3_bucket"))
        yield bucket_side
        bucket_side.s3.close()
    else:
        yield FilesSide(fleet)


def rows(fleet: Fleet) -> list[Any]:
    return fleet.store.read_sync(lambda c: [tuple(r) for r in c.execute("SELECT sha256, corrupt_at FROM blobs")])


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


# --- storing and reading -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [3 * MiB + 12345, 17 * MiB + 5], ids=["one part", "multipart"])
async def test_round_trip_hashes_match_hashlib(fleet: Fleet, side: Side, size: int) -> None:
    data = os.urandom(size)
    info = await fleet.blobs.put_stream(chunked(data, 64 * 1024))
    assert info == BlobInfo(sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                            md5=hashlib.md5(data).hexdigest(), sha1=hashlib.sha1(data).hexdigest())
    assert side.read(info.sha256) == data
    assert await fleet.blobs.info(info.sha256.upper()) == info
    assert side.uploads() == 0
    reader = await fleet.blobs.open(info.sha256)
    assert reader is not None
    assert b"".join([c async for c in reader.chunks(5, 2 * MiB)]) == data[5:2 * MiB + 1]
    reader = await fleet.blobs.open(info.sha256)
    assert reader is not None
    assert b"".join([c async for c in reader.chunks()]) == data


async def test_empty_blob(fleet: Fleet) -> None:
    info = await fleet.blobs.put_bytes(b"")
    assert (info.size, info.sha256) == (0, hashlib.sha256(b"").hexdigest())
    reader = await fleet.blobs.open(info.sha256)
    assert reader is not None
    assert [c async for c in reader.chunks()] == []


async def test_same_content_is_stored_once(fleet: Fleet, side: Side) -> None:
    data = os.urandom(9 * MiB)  # past one part: the second upload finds the object there and copies nothing
    a = await fleet.blobs.put_bytes(data)
    b = await fleet.blobs.put_stream(chunked(data, MiB))
    assert a == b
    assert len(rows(fleet)) == 1
    assert side.read(a.sha256) == data and side.uploads() == 0


async def test_cap_refuses_early_and_leaves_nothing(fleet: Fleet, side: Side) -> None:
    consumed = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal consumed
        while True:
            consumed += 1
            yield b"x" * MiB

    with pytest.raises(PayloadTooLarge) as e:
        await fleet.blobs.put_stream(endless(), max_bytes=10 * MiB)
    assert "max_upload_bytes" in e.value.message
    assert consumed == 11  # stopped at the first chunk past the cap
    assert rows(fleet) == []
    assert side.uploads() == 0


async def test_cancelled_upload_cleans_up(fleet: Fleet, side: Side) -> None:
    half_way = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        for _ in range(10):  # past one 8 MiB part: an S3 multipart upload has begun
            yield os.urandom(MiB)
        half_way.set()
        await asyncio.Event().wait()  # the client stops sending
        yield b""

    task = asyncio.create_task(fleet.blobs.put_stream(stalls()))
    await half_way.wait()
    await asyncio.sleep(0.2)
    assert side.uploads() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert side.uploads() == 0
    assert rows(fleet) == []


async def test_failing_source_cleans_up(fleet: Fleet, side: Side) -> None:
    async def breaks() -> AsyncIterator[bytes]:
        yield os.urandom(9 * MiB)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await fleet.blobs.put_stream(breaks())
    assert side.uploads() == 0
    assert rows(fleet) == []


def test_bad_blob_ids_are_refused(fleet: Fleet) -> None:
    with pytest.raises(InvalidArgument):
        asyncio.run(fleet.blobs.info("../../etc/passwd"))


# --- gc and scrub ------------------------------------------------------------------------------------------------

async def test_gc_removes_unreferenced_orphans_and_dead_uploads_past_the_grace(
        fleet: Fleet, side: Side, monkeypatch: pytest.MonkeyPatch) -> None:
    await fleet.store.write(lambda c: c.execute("CREATE TABLE things (id INTEGER PRIMARY KEY, sha256 TEXT)"))
    monkeypatch.setattr(blobs_mod, "REFERENCES", [*blobs_mod.REFERENCES, ("things", "sha256")])
    old_unref = await fleet.blobs.put_bytes(b"old and unreferenced")
    old_ref = await fleet.blobs.put_bytes(b"old but referenced")
    await fleet.store.write(lambda c: c.execute("INSERT INTO things (sha256) VALUES (?)", (old_ref.sha256,)))
    old_orphan = hashlib.sha256(b"o1").hexdigest()  # an object without its row (a crash before the insert)
    side.write(old_orphan, b"o1")
    dead = side.leave_uploads()
    time.sleep(3)  # real clocks: an S3 object's date cannot be set back (its resolution is a second)
    recent = await fleet.blobs.put_bytes(b"recent and unreferenced")
    new_orphan = hashlib.sha256(b"o2").hexdigest()
    side.write(new_orphan, b"o2")

    report = await fleet.blobs.gc(grace_seconds=2)

    assert report.deleted == [old_unref.sha256]
    assert report.bytes_freed == old_unref.size
    assert (report.orphan_files, report.temp_files) == (1, dead)
    assert side.read(old_unref.sha256) is None and await fleet.blobs.info(old_unref.sha256) is None
    for kept in (old_ref, recent):
        assert await fleet.blobs.info(kept.sha256) == kept
        assert side.read(kept.sha256) is not None
    assert side.read(old_orphan) is None and side.read(new_orphan) == b"o2"
    assert side.uploads() == 0
    # Storing the deleted content again brings back both row and bytes.
    assert await fleet.blobs.put_bytes(b"old and unreferenced") == old_unref
    assert side.read(old_unref.sha256) == b"old and unreferenced"


async def test_scrub_finds_changed_and_missing_bytes(fleet: Fleet, side: Side) -> None:
    good = await fleet.blobs.put_bytes(b"good" * 1000)
    flipped = await fleet.blobs.put_bytes(b"flipped" * 1000)
    gone = await fleet.blobs.put_bytes(b"gone" * 1000)
    side.write(flipped.sha256, b"flippeD" + b"flipped" * 999)
    side.remove(gone.sha256)

    report = await fleet.blobs.scrub()

    assert report.checked == 3
    assert (report.corrupt, report.missing) == ([flipped.sha256], [gone.sha256])
    assert await fleet.blobs.info(good.sha256) == good
    assert await fleet.blobs.info(flipped.sha256) is None and await fleet.blobs.open(flipped.sha256) is None
    assert {sha for sha, corrupt_at in rows(fleet) if corrupt_at is not None} == {flipped.sha256, gone.sha256}
    assert (await fleet.blobs.scrub()).checked == 1  # what is marked is skipped
    assert await fleet.blobs.put_bytes(b"flipped" * 1000) == flipped  # the same content heals it
    assert await fleet.blobs.info(flipped.sha256) == flipped


async def test_a_read_of_a_missing_object_marks_it_corrupt(fleet: Fleet, side: Side) -> None:
    info = await fleet.blobs.put_bytes(b"0123456789")
    side.remove(info.sha256)
    reader = await fleet.blobs.open(info.sha256)  # the file backend finds out here, the bucket's on reading
    if reader is not None:
        with pytest.raises(Exception, match=r"NotFound|NoSuchKey"):
            _ = [c async for c in reader.chunks()]
    assert await fleet.blobs.info(info.sha256) is None


# --- the download route ----------------------------------------------------------------------------------------

def test_download_route_serves_ranges_and_presigned_redirects(fleet: Fleet) -> None:
    data = os.urandom(MiB + 4)
    info = asyncio.run(fleet.blobs.put_bytes(data))
    with TestClient(app=asgi_app(fleet)) as client:
        headers = {"Authorization": f"Bearer {make_key(fleet, 'viewer')}"}
        whole = client.get(f"/v1/blobs/{info.sha256}", headers=headers, follow_redirects=False)
        part = client.get(f"/v1/blobs/{info.sha256}", headers={**headers, "Range": "bytes=100-1048675"},
                          follow_redirects=False)
        head = client.head(f"/v1/blobs/{info.sha256}", headers=headers)
        refused = client.get(f"/v1/blobs/{info.sha256}", follow_redirects=False)
    assert refused.status_code == 401
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
    if not isinstance(fleet.blobs, S3BlobStore):
        assert (whole.status_code, whole.content) == (200, data)
        assert (part.status_code, part.content) == (206, data[100:1048676])
        return
    # s3_presigned_downloads: fleetd authorizes, the bucket sends the bytes (and applies the Range).
    assert whole.status_code == 307 and whole.headers["cache-control"] == "no-store"
    location = whole.headers["location"]
    assert "X-Amz-Signature=" in location and "X-Amz-Expires=300" in location
    assert httpx.get(location).content == data
    got = httpx.get(part.headers["location"], headers={"Range": "bytes=100-1048675"})
    assert (got.status_code, got.content) == (206, data[100:1048676])
    fleet.settings.s3_presigned_downloads = False  # proxied through fleetd
    with TestClient(app=asgi_app(fleet)) as client:
        part = client.get(f"/v1/blobs/{info.sha256}", headers={**headers, "Range": "bytes=100-1048675"})
    assert (part.status_code, part.content) == (206, data[100:1048676])


# --- settings ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "says"), [
    ({"blob_store": "s3:/bucket"}, "s3://BUCKET/prefix"),
    ({"blob_store": "s3://B/x"}, "S3 bucket name"),
    ({"blob_store": "s3://bucket/a/../b"}, "s3://BUCKET/prefix"),
    ({"s3_presigned_downloads": True}, "needs an S3 blob store"),
    ({"blob_store": "s3://bucket", "download_offload": "x-accel"}, "s3_presigned_downloads instead"),
    ({"s3_endpoint": "minio:9000"}, "https://s3.example.com"),
])
def test_bad_s3_settings_say_what_to_do(given: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidArgument, match=says):
        Settings(**given)


def test_a_wrong_bucket_or_key_stops_the_start(tmp_path: Path, s3_bucket: Bucket,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_bucket.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    settings = Settings(data_dir=str(tmp_path / "d"), blob_store=f"s3://{s3_bucket.name}",
                        s3_endpoint=s3_bucket.endpoint, s3_region=s3_bucket.region)
    with pytest.raises(Exception, match=r"SignatureDoesNotMatch|AccessDenied|secret key"):
        Fleet(settings, lock=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(InvalidArgument, match="AWS_SECRET_ACCESS_KEY"):
        Fleet(settings, lock=False)


async def test_gc_leaves_an_upload_under_way_alone(fleet: Fleet, side: Side) -> None:
    half_way = asyncio.Event()
    data = os.urandom(10 * MiB)

    async def stalls() -> AsyncIterator[bytes]:
        yield data  # past one part: an S3 multipart upload has begun
        half_way.set()
        await go_on.wait()

    go_on = asyncio.Event()
    task = asyncio.create_task(fleet.blobs.put_stream(stalls()))
    await half_way.wait()
    await asyncio.sleep(0.2)
    assert (await fleet.blobs.gc(grace_seconds=0)).temp_files == 0
    assert side.uploads() == 1
    go_on.set()
    info = await task
    assert side.read(info.sha256) == data and side.uploads() == 0
