"""Blobs in an S3-compatible bucket (``blob_store = "s3://bucket/prefix"``), recorded in the ``blobs`` table as with
the file backend (store/blobs.py), through the small client of store/s3.py. Imported only when configured.

Keys: ``<prefix>blobs/<sha256>`` for blobs, ``<prefix>uploads/<random>`` for uploads under way.

Storing: the bytes are hashed (SHA-256, SHA-1, MD5) as they arrive. S3 cannot rename, and the SHA-256 that names the
object is known only at the end, so:

- an upload that fits in one part (8 MiB) is held in memory, hashed, and PUT straight at its final key;
- a bigger one is sent as a multipart upload to ``uploads/<random>``, a part at a time as it arrives (memory stays at
  one part), then copied server-side (CopyObject, no bytes through fleetd; skipped when ``blobs/<sha256>`` already
  holds that many bytes) and the temporary object deleted.

The row is written only after the final object exists, so a row never points at nothing. A crash mid-way leaves an
unfinished multipart upload or a temporary object under ``uploads/``, or an object under ``blobs/`` without its row:
:meth:`S3BlobStore.gc` removes each once it is older than the grace period. One CopyObject copies up to 5 GiB, so
``max_upload_bytes`` may not exceed that with this backend.

Within one process a lock pairs "object + row" changes (publish, gc's deletes, scrub's marks) as the file backend's
does. Reads stream the asked range from S3 (one ranged GET), a chunk per worker-thread hop.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterable
from functools import partial
from typing import TYPE_CHECKING

import anyio

from ..core.config import split_s3_url
from ..core.errors import InvalidArgument
from .blobs import (
    _SHA256,
    READ_CHUNK,
    BlobInfo,
    GcReport,
    Records,
    ScrubReport,
    _has_row,
    _run,
    _too_large,
    _upsert,
    check_sha256,
    delete_unreferenced,
    intact_blobs,
    mark_corrupt,
)
from .s3 import DEFAULT_PART, MAX_COPY, S3Client, S3Config, S3Error

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from ..core.config import Settings
    from .database import Store

log = logging.getLogger(__name__)

PRESIGNED_SECONDS = 300  # how long a redirect's pre-signed URL works: long enough to start, short enough to not leak


class _Hashes:
    def __init__(self) -> None:
        self.size = 0
        self._all = (hashlib.sha256(), hashlib.sha1(), hashlib.md5())

    def update(self, data: bytes) -> None:
        self.size += len(data)
        for h in self._all:
            h.update(data)

    def info(self) -> BlobInfo:
        sha256, sha1, md5 = (h.hexdigest() for h in self._all)
        return BlobInfo(sha256=sha256, size=self.size, md5=md5, sha1=sha1)


class _Multipart:
    """An upload under ``uploads/``: its parts are hashed and sent in order from a worker thread."""

    def __init__(self, client: S3Client, key: str) -> None:
        self.client, self.key = client, key
        self.upload_id = client.create_multipart_upload(key)
        self.hashes = _Hashes()
        self.etags: list[str] = []
        self.complete = False

    def send(self, part: bytes) -> None:
        self.hashes.update(part)
        self.etags.append(self.client.upload_part(self.key, self.upload_id, len(self.etags) + 1, part))

    def finish(self) -> BlobInfo:
        self.client.complete_multipart_upload(self.key, self.upload_id, self.etags)
        self.complete = True
        return self.hashes.info()

    def discard(self) -> None:
        try:
            if self.complete:
                self.client.delete_object(self.key)
            else:
                self.client.abort_multipart_upload(self.key, self.upload_id)
        except S3Error as e:  # gc removes what is left
            log.warning("could not remove the abandoned upload %s: %s", self.key, e)


class S3BlobReader:
    """One blob in the bucket; :meth:`chunks` streams a byte range of it (one ranged GET)."""

    def __init__(self, owner: S3BlobStore, info: BlobInfo) -> None:
        self.info = info
        self._owner = owner

    def close(self) -> None:
        """Nothing to close before :meth:`chunks` runs: the GET is made there."""

    async def chunks(self, start: int = 0, end: int | None = None,
                     chunk_size: int = READ_CHUNK) -> AsyncGenerator[bytes | bytearray, None]:
        last = self.info.size - 1 if end is None else end
        if last < start:
            return
        owner, sha = self._owner, self.info.sha256
        try:
            stream = await _run(partial(owner.client.get_object, owner.key(sha), start=start, end=last))
        except S3Error as e:
            if e.status == 404:
                await owner.mark_corrupt(sha, "its object is missing from the bucket")
            raise
        try:
            it = iter(stream)
            while (chunk := await _run(next, it, None)) is not None:
                yield chunk
        finally:
            stream.close()


class S3BlobStore(Records):
    """Blobs in one bucket under one prefix, recorded in ``store``."""

    def __init__(self, client: S3Client, prefix: str, store: Store, max_bytes: int) -> None:
        super().__init__(store, max_bytes)
        if max_bytes > MAX_COPY:
            raise InvalidArgument(f"max_upload_bytes is {max_bytes}, but an S3 blob store takes uploads of at most "
                                  f"{MAX_COPY} bytes (5 GiB, what one S3 CopyObject copies): lower it")
        self.client = client
        self.prefix = prefix
        self.url = f"s3://{client.config.bucket}/{prefix}"
        self._lock = threading.Lock()
        self._live: set[str] = set()  # this process's uploads under way: gc leaves them be
        # Fail at the start, with S3's own words, rather than at the first upload.
        next(iter(client.list_objects(self.prefix + "blobs/", page_size=1)), None)

    @classmethod
    def from_settings(cls, settings: Settings, store: Store, env: Mapping[str, str] | None = None) -> S3BlobStore:
        bucket, prefix = split_s3_url(settings.blob_store)
        config = S3Config.from_env(bucket, env, endpoint=settings.s3_endpoint or None,
                                   region=settings.s3_region or None, ca_bundle=settings.s3_ca_bundle or None)
        client = S3Client(config)
        try:
            return cls(client, prefix, store, settings.max_upload_bytes)
        except BaseException:
            client.close()
            raise

    def close(self) -> None:
        self.client.close()

    def key(self, sha256: str) -> str:
        return f"{self.prefix}blobs/{sha256}"

    def presigned_url(self, sha256: str, seconds: int = PRESIGNED_SECONDS) -> str:
        """A URL that GETs the blob from the bucket without credentials for ``seconds``."""
        return self.client.presigned_get_url(self.key(check_sha256(sha256)), seconds)

    # --- storing ----------------------------------------------------------------------------------------------------

    async def put_stream(self, chunks: AsyncIterable[bytes], max_bytes: int | None = None) -> BlobInfo:
        """Store the bytes of ``chunks`` (see the module's docstring); on any error or cancellation what was sent is
        removed and nothing is recorded."""
        cap = self.max_bytes if max_bytes is None else max_bytes
        buf = bytearray()
        total = 0
        upload: _Multipart | None = None
        temp = f"{self.prefix}uploads/{secrets.token_hex(16)}"
        self._live.add(temp)
        try:
            async for chunk in chunks:
                total += len(chunk)
                if total > cap:
                    raise _too_large(cap)
                buf += chunk
                while len(buf) >= DEFAULT_PART:
                    if upload is None:
                        upload = await _run(_Multipart, self.client, temp)
                    part, buf = bytes(buf[:DEFAULT_PART]), buf[DEFAULT_PART:]
                    await _run(upload.send, part)
            if upload is None:
                return await _run(self._put_whole, bytes(buf))
            if buf:
                await _run(upload.send, bytes(buf))
            info: BlobInfo = await _run(upload.finish)
            await _run(self._publish, info, temp)
            return info
        except BaseException:
            if upload is not None:
                with anyio.CancelScope(shield=True):
                    await _run(upload.discard)
            raise
        finally:
            self._live.discard(temp)

    def _put_whole(self, data: bytes) -> BlobInfo:
        hashes = _Hashes()
        hashes.update(data)
        info = hashes.info()
        with self._lock:
            self.client.put_object(self.key(info.sha256), data)
            self.store.write_sync(lambda conn: _upsert(conn, info))
        return info

    def _publish(self, info: BlobInfo, temp: str) -> None:
        key = self.key(info.sha256)
        with self._lock:
            there = self.client.head_object(key)
            if there is None or there.size != info.size:
                self.client.copy_object(temp, key)
            self.store.write_sync(lambda conn: _upsert(conn, info))
        try:
            self.client.delete_object(temp)
        except S3Error as e:  # the blob is stored; gc removes the copy left behind
            log.warning("could not delete the temporary object %s: %s", temp, e)

    # --- reading ----------------------------------------------------------------------------------------------------

    async def open(self, sha256: str) -> S3BlobReader | None:
        """A reader, or None when the blob is unknown or corrupt. No request is made here: a missing object is
        found (and marked corrupt) by the read itself or by scrub."""
        info = await self.info(sha256)
        return S3BlobReader(self, info) if info is not None else None

    async def mark_corrupt(self, sha: str, reason: str, seen_etag: str | None = None) -> None:
        """Mark ``sha`` corrupt, unless its object changed since it was looked at (``seen_etag``; None: it was
        missing): a put may have restored it."""
        def mark() -> bool:
            with self._lock:
                there = self.client.head_object(self.key(sha))
                if (there.etag if there else None) != seen_etag:
                    return False
                return self.store.write_sync(partial(mark_corrupt, sha256=sha))

        if await _run(mark):
            log.error("blob %s is corrupt: %s; it will not be served until the same content is uploaded again",
                      sha, reason)

    # --- housekeeping -----------------------------------------------------------------------------------------------

    async def gc(self, grace_seconds: float = 3600) -> GcReport:
        """Delete unreferenced blobs, objects without a row, and uploads left behind, older than the grace period."""
        cutoff = time.time() - grace_seconds
        report = GcReport()

        def delete_rows() -> list[tuple[str, int]]:
            with self._lock:
                rows = self.store.write_sync(partial(delete_unreferenced, cutoff=cutoff))
                for sha, _ in rows:
                    self.client.delete_object(self.key(sha))
                return rows

        for sha, size in await _run(delete_rows):
            report.deleted.append(sha)
            report.bytes_freed += size
        report.orphan_files = await _run(self._delete_orphans, cutoff)
        report.temp_files = await _run(self._delete_stale_uploads, cutoff)
        if report.deleted or report.orphan_files or report.temp_files:
            log.info("blob gc in %s: %d blobs (%d bytes), %d objects without a row, %d abandoned uploads removed",
                     self.url, len(report.deleted), report.bytes_freed, report.orphan_files, report.temp_files)
        return report

    def _delete_orphans(self, cutoff: float) -> int:
        removed = 0
        start = len(self.prefix + "blobs/")
        for obj in self.client.list_objects(self.prefix + "blobs/"):
            name = obj.key[start:]
            if not _SHA256.fullmatch(name) or name != name.lower() or _newer(obj.last_modified, cutoff):
                continue
            with self._lock:
                if not self.store.read_sync(partial(_has_row, sha256=name)):
                    self.client.delete_object(obj.key)
                    removed += 1
        return removed

    def _delete_stale_uploads(self, cutoff: float) -> int:
        removed = 0
        for upload in self.client.list_multipart_uploads(self.prefix + "uploads/"):
            if upload.key not in self._live and not _newer(upload.initiated, cutoff):
                self.client.abort_multipart_upload(upload.key, upload.upload_id)
                removed += 1
        for obj in self.client.list_objects(self.prefix + "uploads/"):
            if obj.key not in self._live and not _newer(obj.last_modified, cutoff):
                self.client.delete_object(obj.key)
                removed += 1
        return removed

    async def scrub(self) -> ScrubReport:
        """Re-hash every blob's object as it streams; mark those missing or changed as corrupt."""
        report = ScrubReport()
        for sha, size in await self.store.read(intact_blobs):
            digest, actual, etag = await _run(self._hash_object, sha)
            report.checked += 1
            report.bytes_checked += actual
            if digest is None:
                report.missing.append(sha)
                await self.mark_corrupt(sha, "its object is missing from the bucket")
            elif digest != sha or actual != size:
                report.corrupt.append(sha)
                await self.mark_corrupt(sha, f"its object hashes to {digest} ({actual} bytes, expected {size})",
                                        seen_etag=etag)
        return report

    def _hash_object(self, sha: str) -> tuple[str | None, int, str | None]:
        """(sha256 hex, size, ETag) of a blob's object, or (None, 0, None) when there is none."""
        h = hashlib.sha256()
        size = 0
        try:
            with self.client.get_object(self.key(sha)) as obj:
                for chunk in obj:
                    h.update(chunk)
                    size += len(chunk)
        except S3Error as e:
            if e.status == 404:
                return None, 0, None
            raise
        return h.hexdigest(), size, obj.etag


def _newer(when: datetime | None, cutoff: float) -> bool:
    """Whether a listing's date is after ``cutoff`` (an entry without a date counts as new: it is left alone)."""
    return when is None or when.timestamp() >= cutoff


__all__ = ["PRESIGNED_SECONDS", "S3BlobReader", "S3BlobStore"]
