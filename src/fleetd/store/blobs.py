"""Content-addressed blob storage: ``blobs/<sha[:2]>/<sha256>`` plus a row in ``blobs``.

A file is streamed to ``blobs/tmp/``, hashed as it arrives (SHA-256, SHA-1 and
MD5: the last two for hawkBit clients), fsynced, renamed into place, and only
then recorded: a row exists only once its file is durable. File I/O and hashing
run on worker threads, handed ~1 MiB at a time, so the event loop never waits on
the disk.

Publishing (rename + row insert) and deleting (row delete + unlink) hold one
lock, so a garbage collection racing an upload of the same content leaves
either both or neither, never a row without its file.

This file layout is one backend; an S3 bucket is the other (store/blobs_s3.py, ``blob_store = "s3://..."``);
store/blob_backend.py has the interface both answer and picks one from the settings.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import msgspec

from ..core import disk
from ..core.errors import FleetdError, InvalidArgument, PayloadTooLarge
from ..core.fsutil import fsync_dir
from .database import Store, transaction
from .dialect import dialect_of

log = logging.getLogger(__name__)

T = TypeVar("T")
BATCH_BYTES = 1 << 20
# Per download read (docs/performance.md, Download). Large enough that the per-chunk costs (the ASGI send path,
# the read) are small next to encrypting the bytes; small enough that 50 downloads' buffers (each holds about
# two chunks in TLS and socket buffers, see WRITE_HIGH_WATER in http/limits.py) stay well under the RSS limit:
# 256 KiB measured ~53 MiB of growth, 128 KiB ~30 MiB, at the same speed within the noise.
READ_CHUNK = 128 * 1024
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)  # Linux 4.14+; elsewhere every read is on a thread
FILE_MODE = 0o400  # content-addressed files never change
TMP_DIR = "tmp"
_SHA256 = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)

REFERENCES: list[tuple[str, str]] = []
"""(table, column) pairs holding sha256 values that keep a blob alive through :meth:`BlobStore.gc`.

Modules that point at blobs append to this at import time. Tables that do not
exist (yet) are skipped.
"""


class BlobInfo(msgspec.Struct, frozen=True, kw_only=True):
    sha256: str
    size: int
    md5: str
    sha1: str


class GcReport(msgspec.Struct, kw_only=True):
    deleted: list[str] = msgspec.field(default_factory=list)
    bytes_freed: int = 0
    orphan_files: int = 0
    temp_files: int = 0


class ScrubReport(msgspec.Struct, kw_only=True):
    checked: int = 0
    bytes_checked: int = 0
    corrupt: list[str] = msgspec.field(default_factory=list)
    missing: list[str] = msgspec.field(default_factory=list)


def check_sha256(value: str) -> str:
    """The canonical (lowercase hex) form of a SHA-256, or InvalidArgument."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise InvalidArgument(f"a blob id is a SHA-256 in 64 hex digits, got {str(value)[:80]!r}")
    return value.lower()


def _too_large(cap: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the upload is larger than the limit of {cap} bytes ({disk.human(cap)}); raise it with the "
        f"max_upload_bytes setting (env FLEETD_MAX_UPLOAD_BYTES)")


def _run(fn: Callable[..., T], *args: Any) -> Any:
    # anyio's helper waits for the thread when a cancel scope fires, so a file is
    # never closed under a running read or write (native cancel: see the locks below).
    return anyio.to_thread.run_sync(fn, *args)


# --- writing -------------------------------------------------------------------

class _TempBlob:
    """A temp file being filled and hashed. Thread-safe: cleanup may race a write.

    It holds an flock until it is published or discarded: a temp file nobody holds belongs to a dead
    upload (a server or CLI killed mid-write), which :func:`_remove_if_dead` may delete at any time.
    """

    def __init__(self, tmp_dir: Path) -> None:
        while True:
            self.path = tmp_dir / f"{secrets.token_hex(8)}.part"
            self._file = open(self.path, "xb", opener=lambda p, flags: os.open(p, flags, 0o600))  # noqa: SIM115
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
            if os.fstat(self._file.fileno()).st_nlink:
                break
            self._file.close()  # removed as dead between its creation and our lock: take another name
        self._lock = threading.Lock()
        self.size = 0
        self._sha256, self._sha1, self._md5 = hashlib.sha256(), hashlib.sha1(), hashlib.md5()

    def write(self, data: bytes | bytearray) -> None:
        with self._lock:
            if self._file.closed:
                raise FleetdError("the upload was abandoned")
            self._file.write(data)
            self._sha256.update(data)
            self._sha1.update(data)
            self._md5.update(data)
            self.size += len(data)

    def finish(self) -> BlobInfo:
        """Flush and fsync; the file stays open (and locked) until :meth:`close` or :meth:`discard`."""
        with self._lock:
            self._file.flush()
            os.fsync(self._file.fileno())
            os.chmod(self.path, FILE_MODE)
            return BlobInfo(sha256=self._sha256.hexdigest(), size=self.size, md5=self._md5.hexdigest(),
                            sha1=self._sha1.hexdigest())

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def discard(self) -> None:
        with self._lock:
            self._file.close()
            self.path.unlink(missing_ok=True)


def _remove_if_dead(path: Path) -> bool:
    """Delete a temp file that no live upload holds (see :class:`_TempBlob`); whether it was deleted."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def _upsert(conn: sqlite3.Connection, info: BlobInfo) -> None:
    # Re-storing content refreshes created_at (gc's grace counts from the last put)
    # and heals a blob that scrub had marked corrupt: the new file was just verified.
    conn.execute(
        "INSERT INTO blobs (sha256, size, md5, sha1, created_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (sha256) DO UPDATE SET created_at = excluded.created_at, corrupt_at = NULL",
        (info.sha256, info.size, info.md5, info.sha1, time.time()))


def _has_row(conn: sqlite3.Connection, sha256: str) -> bool:
    return conn.execute("SELECT 1 FROM blobs WHERE sha256 = ?", (sha256,)).fetchone() is not None


def is_intact(conn: sqlite3.Connection, sha256: str) -> bool:
    """A blob with this hash is stored and not marked corrupt."""
    return conn.execute("SELECT 1 FROM blobs WHERE sha256 = ? AND corrupt_at IS NULL", (sha256,)).fetchone() \
        is not None


def stored_bytes(conn: sqlite3.Connection) -> int:
    """The size of every stored blob, summed."""
    return int(conn.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0])


def delete_unreferenced(conn: sqlite3.Connection, cutoff: float) -> list[tuple[str, int]]:
    """Delete the rows of blobs nothing refers to, stored before ``cutoff``; their (sha256, size)."""
    rows = conn.execute("DELETE FROM blobs WHERE created_at < ?" + _unreferenced_clause(conn)
                        + " RETURNING sha256, size", (cutoff,)).fetchall()
    return [(r[0], r[1]) for r in rows]


def mark_corrupt(conn: sqlite3.Connection, sha256: str) -> bool:
    """Mark a blob corrupt (not served until stored again); whether it was intact until now."""
    return bool(conn.execute("UPDATE blobs SET corrupt_at = ? WHERE sha256 = ? AND corrupt_at IS NULL",
                             (time.time(), sha256)).rowcount)


def intact_blobs(conn: sqlite3.Connection) -> list[tuple[str, int]]:
    """(sha256, size) of every blob not marked corrupt, in sha256 order (what scrub checks)."""
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT sha256, size FROM blobs WHERE corrupt_at IS NULL ORDER BY sha256")]


def _row(r: sqlite3.Row) -> BlobInfo:
    return BlobInfo(sha256=r["sha256"], size=r["size"], md5=r["md5"], sha1=r["sha1"])


def _existing_references(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    found = []
    for table, column in REFERENCES:
        if not (_IDENT.fullmatch(table) and _IDENT.fullmatch(column)):
            raise FleetdError(f"blob reference {table}.{column} is not a plain SQL name")
        if conn.execute(dialect_of(conn).table_exists(), (table,)).fetchone():
            found.append((table, column))
    return found


def _unreferenced_clause(conn: sqlite3.Connection) -> str:
    return "".join(f' AND sha256 NOT IN (SELECT "{c}" FROM "{t}" WHERE "{c}" IS NOT NULL)'
                   for t, c in _existing_references(conn))


class _Layout:
    """Where files live under the root, and the lock that pairs file and row changes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / TMP_DIR
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(exist_ok=True)
        self.lock = threading.Lock()

    def path(self, sha256: str) -> Path:
        return self.root / relative_path(check_sha256(sha256))

    def write_all(self, chunks: Iterable[bytes], cap: int) -> tuple[_TempBlob, BlobInfo]:
        temp = _TempBlob(self.tmp)
        try:
            for chunk in chunks:
                if temp.size + len(chunk) > cap:
                    raise _too_large(cap)
                temp.write(chunk)
            return temp, temp.finish()
        except BaseException:
            temp.discard()
            raise

    def publish(self, temp: _TempBlob, info: BlobInfo,
                write: Callable[[Callable[[sqlite3.Connection], None]], None]) -> None:
        final = self.path(info.sha256)
        with self.lock:
            shard = final.parent
            if not shard.is_dir():
                shard.mkdir(exist_ok=True)
                fsync_dir(self.root)
            # Replacing an existing copy is harmless (same bytes) and restores a lost file.
            os.replace(temp.path, final)
            temp.close()
            fsync_dir(shard)
            write(lambda conn: _upsert(conn, info))


def put_sync(root: Path, conn: sqlite3.Connection, chunks: Iterable[bytes],
             max_bytes: int = 1 << 62) -> BlobInfo:
    """Store a blob without a running server (offline CLI, tests) through a direct connection.

    Safe beside a live server on the same data dir: the row appears only after
    the file is durable, as with :meth:`BlobStore.put_stream`.
    """
    layout = _Layout(root)
    temp, info = layout.write_all(chunks, max_bytes)

    def write(fn: Callable[[sqlite3.Connection], None]) -> None:
        with transaction(conn):
            fn(conn)

    try:
        layout.publish(temp, info, write)
    finally:
        temp.discard()  # after publishing: only closes (the file has its final name)
    return info


def relative_path(sha256: str) -> str:
    """Where a blob lives below the blob directory: ``<sha[:2]>/<sha256>`` (backups and the nginx offload too)."""
    return f"{sha256[:2]}/{sha256}"


# --- reading -------------------------------------------------------------------

class BlobReader:
    """An open blob file. :meth:`chunks` streams a byte range and closes the file at its end.

    Reads run on the event loop when the page cache holds the bytes (``preadv`` with ``RWF_NOWAIT``
    never waits on the disk: it says EAGAIN instead), and on a worker thread only when it does not.
    A download of a cached blob costs no thread hop per chunk; one of a cold blob never stalls the loop.
    """

    def __init__(self, info: BlobInfo, file: Any) -> None:
        self.info = info
        self._file = file
        self._lock = threading.Lock()
        self._nowait = _RWF_NOWAIT

    def _pread(self, n: int, offset: int) -> bytes:
        with self._lock:
            if self._file.closed:
                return b""
            return os.pread(self._file.fileno(), n, offset)

    def _read_cached(self, n: int, offset: int) -> bytearray | None:
        """Up to ``n`` bytes at ``offset`` that the page cache already holds; None if it holds none (or this
        system cannot tell) and the read must go to a worker thread."""
        if self._nowait is None or self._file.closed:
            return None
        buf = bytearray(n)
        try:
            got = os.preadv(self._file.fileno(), [buf], offset, self._nowait)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            self._nowait = None  # a file system without RWF_NOWAIT: every read goes to a thread
            return None
        if got < n:
            del buf[got:]
        return buf or None

    def close(self) -> None:
        with self._lock:
            self._file.close()

    async def chunks(self, start: int = 0, end: int | None = None,
                     chunk_size: int = READ_CHUNK) -> AsyncGenerator[bytes | bytearray, None]:
        """Bytes ``start`` through ``end`` (inclusive; default: to the end of the file).

        Each chunk is a new object, never reused: a transport may keep it queued after the send returns.
        """
        last = self.info.size - 1 if end is None else end
        pos = start
        try:
            while pos <= last:
                n = min(chunk_size, last + 1 - pos)
                data: bytes | bytearray | None = self._read_cached(n, pos)
                if data is None:
                    data = await _run(self._pread, n, pos)
                else:
                    # A send into a transport with room does not suspend: yield here, so that a download
                    # of cached bytes takes turns with every other request on the loop.
                    await asyncio.sleep(0)
                if not data:
                    raise FleetdError(f"blob {self.info.sha256} ended early at byte {pos}")
                pos += len(data)
                yield data
        finally:
            self.close()


# --- the store -------------------------------------------------------------------

class Records(ABC):
    """The part of a blob store that is only the ``blobs`` table."""

    def __init__(self, store: Store, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.disk_full = False  # whether the last upload failed on a full disk (/healthz reports it)

    @abstractmethod
    async def put_stream(self, chunks: AsyncIterable[bytes], max_bytes: int | None = None) -> BlobInfo:
        """Store the bytes of ``chunks``; refuse with PayloadTooLarge once they pass the cap (default: max_bytes)."""

    async def put_bytes(self, data: bytes) -> BlobInfo:
        async def one() -> AsyncIterator[bytes]:
            yield data
        return await self.put_stream(one())

    async def info(self, sha256: str) -> BlobInfo | None:
        """The blob's record, or None when it is unknown or corrupt."""
        sha = check_sha256(sha256)
        row = await self.store.read(lambda c: c.execute(
            "SELECT * FROM blobs WHERE sha256 = ? AND corrupt_at IS NULL", (sha,)).fetchone())
        return _row(row) if row else None


class BlobStore(Records):
    """Blobs under ``root`` (the data dir's ``blobs/`` folder), recorded in ``store``."""

    def __init__(self, root: Path, store: Store, max_bytes: int) -> None:
        super().__init__(store, max_bytes)
        self._layout = _Layout(root)
        self.root = root
        removed = sum(_remove_if_dead(f) for f in self._layout.tmp.iterdir())
        if removed:
            log.info("removed %d temp files of uploads that died with their process", removed)

    def path(self, sha256: str) -> Path:
        return self._layout.path(sha256)

    def close(self) -> None:
        """Nothing to free: each reader holds its own file."""

    async def put_stream(self, chunks: AsyncIterable[bytes], max_bytes: int | None = None) -> BlobInfo:
        """Store the bytes of ``chunks``; refuse with PayloadTooLarge once they pass the cap.

        On any error or cancellation the temp file is removed and nothing is recorded.
        """
        cap = self.max_bytes if max_bytes is None else max_bytes
        temp: _TempBlob = await _run(_TempBlob, self._layout.tmp)
        try:
            buf = bytearray()
            total = 0
            async for chunk in chunks:
                total += len(chunk)
                if total > cap:
                    raise _too_large(cap)
                if not buf and len(chunk) >= BATCH_BYTES:
                    await _run(temp.write, chunk)  # already a batch: no copy
                    continue
                buf += chunk
                if len(buf) >= BATCH_BYTES:
                    batch, buf = buf, bytearray()
                    await _run(temp.write, batch)
            if buf:
                await _run(temp.write, buf)
            info: BlobInfo = await _run(temp.finish)
            await _run(self._layout.publish, temp, info, self.store.write_sync)
        except BaseException as e:
            self.disk_full = disk.is_full(e)
            with anyio.CancelScope(shield=True):
                await _run(temp.discard)
            raise
        self.disk_full = False
        return info

    async def open(self, sha256: str) -> BlobReader | None:
        """An open reader, or None when the blob is unknown, corrupt, or its file is gone.

        A missing or wrong-sized file marks the blob corrupt on the spot.
        """
        info = await self.info(sha256)
        if info is None:
            return None
        path = self.path(info.sha256)

        def open_file() -> tuple[Any, str | None, int | None]:
            try:
                f = open(path, "rb", buffering=0)  # noqa: SIM115 (the reader owns it)
            except FileNotFoundError:
                return None, "its file is missing", None
            st = os.fstat(f.fileno())
            if st.st_size != info.size:
                f.close()
                return None, f"its file has {st.st_size} bytes instead of {info.size}", st.st_ino
            return f, None, None

        f, problem, ino = await _run(open_file)
        if problem:
            await self._mark_corrupt(info.sha256, problem, seen_ino=ino)
            return None
        return BlobReader(info, f)

    async def _mark_corrupt(self, sha: str, reason: str, seen_ino: int | None = None) -> None:
        path = self.path(sha)

        def mark() -> bool:
            with self._layout.lock:
                # A put may have restored the file since we looked: then leave it be.
                try:
                    ino = path.stat().st_ino
                except FileNotFoundError:
                    ino = None
                if ino is not None and ino != seen_ino:
                    return False
                return self.store.write_sync(partial(mark_corrupt, sha256=sha))

        if await _run(mark):
            log.error("blob %s is corrupt: %s; it will not be served until the same content is "
                      "uploaded again", sha, reason)

    async def gc(self, grace_seconds: float = 3600) -> GcReport:
        """Delete unreferenced blobs, orphan files and stale temp files older than the grace period."""
        cutoff = time.time() - grace_seconds
        report = GcReport()

        def delete_rows() -> list[tuple[str, int]]:
            with self._layout.lock:
                rows = self.store.write_sync(partial(delete_unreferenced, cutoff=cutoff))
                for sha, _ in rows:
                    self.path(sha).unlink(missing_ok=True)
                return rows

        for sha, size in await _run(delete_rows):
            report.deleted.append(sha)
            report.bytes_freed += size
        report.orphan_files = await _run(self._delete_orphans, cutoff)
        report.temp_files = await _run(self._delete_stale_temps, cutoff)
        if report.deleted or report.orphan_files or report.temp_files:
            log.info("blob gc: %d blobs (%s), %d orphan files, %d temp files removed", len(report.deleted),
                     disk.human(report.bytes_freed), report.orphan_files, report.temp_files)
        return report

    def _delete_orphans(self, cutoff: float) -> int:
        """Files with no row (a crash between rename and insert), once older than the cutoff."""
        removed = 0
        for shard in self.root.iterdir():
            if shard.name == TMP_DIR or not shard.is_dir():
                continue
            for f in shard.iterdir():
                if not _SHA256.fullmatch(f.name) or f.name != f.name.lower():
                    continue
                try:
                    if f.stat().st_mtime >= cutoff:
                        continue
                except FileNotFoundError:
                    continue
                with self._layout.lock:
                    if not self.store.read_sync(partial(_has_row, sha256=f.name)):
                        f.unlink(missing_ok=True)
                        removed += 1
        return removed

    def _delete_stale_temps(self, cutoff: float) -> int:
        removed = 0
        for f in self._layout.tmp.iterdir():
            try:
                if f.stat().st_mtime < cutoff and _remove_if_dead(f):
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    async def scrub(self) -> ScrubReport:
        """Re-hash every blob; mark those whose file is missing or whose bytes changed as corrupt."""
        report = ScrubReport()
        for sha, size in await self.store.read(intact_blobs):
            digest, actual, ino = await _run(_hash_file, self.path(sha))
            report.checked += 1
            report.bytes_checked += actual or 0
            if digest is None:
                report.missing.append(sha)
                await self._mark_corrupt(sha, "its file is missing")
            elif digest != sha or actual != size:
                report.corrupt.append(sha)
                problem = f"its file hashes to {digest} ({actual} bytes, expected {size})"
                await self._mark_corrupt(sha, problem, seen_ino=ino)
        return report


def _hash_file(path: Path) -> tuple[str | None, int | None, int | None]:
    """(sha256 hex, size, inode) of a file, or Nones when it does not exist."""
    h = hashlib.sha256()
    try:
        with open(path, "rb", buffering=0) as f:
            ino = os.fstat(f.fileno()).st_ino
            size = 0
            while chunk := f.read(BATCH_BYTES):
                h.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return None, None, None
    return h.hexdigest(), size, ino


__all__ = ["REFERENCES", "BlobInfo", "BlobReader", "BlobStore", "GcReport", "Records", "ScrubReport", "check_sha256",
           "put_sync"]
