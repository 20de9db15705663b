"""A small on-disk FIFO: one file per item, so an item is on disk whole or not at all.

``put`` writes the item to a temp file, fsyncs it, renames it to the next
sequence number and fsyncs the folder: after ``put`` returns the item survives
``kill -9`` and power cuts. A crash during ``put`` leaves at most a temp file,
which the next open removes; an item file that does not parse (a filesystem
that lost data despite the fsync) is skipped and removed on read. Consumers
``peek`` the oldest items and ``ack`` them once the server has them, so items
are delivered in order, at least once.

With ``max_bytes`` the queue keeps only the newest items that fit (telemetry);
without, it grows as long as the disk lets it (reports, which are small and must
never be lost).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .config import fsync_dir

log = logging.getLogger(__name__)

_ITEM = re.compile(r"([0-9]{16})\.json")
_TMP_PREFIX = ".tmp-"


class DiskQueue:
    def __init__(self, directory: Path, max_bytes: int = 0) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.dropped = 0  # items dropped since open: over the byte bound, or unreadable
        self._lock = threading.Lock()
        self._items: dict[int, int] = {}  # seq -> size in bytes, oldest first
        self._bytes = 0
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        found = []
        for name in os.listdir(str(self.dir)):
            m = _ITEM.fullmatch(name)
            if m:
                with contextlib.suppress(FileNotFoundError):
                    found.append((int(m.group(1)), (self.dir / name).stat().st_size))
            elif name.startswith(_TMP_PREFIX):
                # A put that a crash interrupted before its rename: never acknowledged, so not an item.
                (self.dir / name).unlink(missing_ok=True)
        for seq, size in sorted(found):
            self._items[seq] = size
            self._bytes += size
        self._next = (max(self._items) + 1) if self._items else 1
        if self.max_bytes:
            with self._lock:
                self._trim()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:016d}.json"

    def put(self, item: Any) -> bool:
        """Append ``item`` (JSON-serializable) durably; False if it alone is larger than the bound."""
        data = json.dumps(item, separators=(",", ":")).encode()
        if self.max_bytes and len(data) > self.max_bytes:
            log.warning("dropped a %d-byte item: larger than the queue's %d-byte bound (%s)", len(data),
                        self.max_bytes, self.dir)
            self.dropped += 1
            return False
        with self._lock:
            seq = self._next
            self._next += 1
            tmp = self.dir / f"{_TMP_PREFIX}{seq}-{secrets.token_hex(4)}"
            fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(str(tmp), str(self._path(seq)))
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            fsync_dir(self.dir)
            self._items[seq] = len(data)
            self._bytes += len(data)
            if self.max_bytes:
                self._trim()
        return True

    def _trim(self) -> None:
        """Drop the oldest items until the queue fits its bound (called with the lock held)."""
        dropped = 0
        while self._bytes > self.max_bytes and self._items:
            self._forget(next(iter(self._items)))
            dropped += 1
        if dropped:
            self.dropped += dropped
            log.info("dropped the %d oldest item(s) of %s to stay within %d bytes", dropped, self.dir,
                     self.max_bytes)

    def _forget(self, seq: int) -> None:
        self._bytes -= self._items.pop(seq, 0)
        self._path(seq).unlink(missing_ok=True)

    def peek(self, limit: int = 1) -> list[tuple[int, Any]]:
        """Up to ``limit`` of the oldest items as ``(seq, item)``; unreadable ones are removed and skipped."""
        out: list[tuple[int, Any]] = []
        with self._lock:
            torn = []
            for seq in list(self._items):
                if len(out) >= limit:
                    break
                try:
                    out.append((seq, json.loads(self._path(seq).read_bytes())))
                except (ValueError, FileNotFoundError) as e:
                    log.warning("skipped unreadable queue item %s (%s)", self._path(seq), e)
                    torn.append(seq)
            for seq in torn:
                self._forget(seq)
                self.dropped += 1
        return out

    def settle(self) -> None:
        """Wait until a ``put`` under way on another thread has finished."""
        with self._lock:
            pass

    def ack(self, seqs: Iterable[int]) -> None:
        """The server has these items: remove them."""
        with self._lock:
            removed = False
            for seq in seqs:
                if seq in self._items:
                    self._forget(seq)
                    removed = True
            if removed:
                fsync_dir(self.dir)


def queue_stats(directory: Path) -> dict[str, int]:
    """Items and bytes in a queue folder, without opening (and so without cleaning) it."""
    items = size = 0
    try:
        names = os.listdir(str(directory))
    except FileNotFoundError:
        names = []
    for name in names:
        if _ITEM.fullmatch(name):
            try:
                size += (directory / name).stat().st_size
                items += 1
            except FileNotFoundError:
                pass
    return {"items": items, "bytes": size}


__all__ = ["DiskQueue", "queue_stats"]
