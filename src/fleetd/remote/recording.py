"""Recordings of terminal sessions (docs/remote-access.md, "Recordings"): what the operator's terminal was sent,
byte for byte, with when, so that an admin can replay it (``fleetd devices replay SESSION``).

Written by the server process that holds the session, when ``remote_record_terminals`` is on, to
``DATA_DIR/recordings/<session id>.rec``::

    fleetd-recording 1\\n
    {"session", "device", "user", "cols", "rows", "started", "command"}\\n   (one JSON line)
    records: f64 seconds since the start | u8 type | u32 length | payload

Types: ``o`` the bytes the operator was sent, ``r`` a resize (u16 cols, u16 rows). A recording stops growing at
:data:`MAX_BYTES` (the session goes on; its audit entry says ``recording_truncated``). No HTTP here: api.py serves
the files, and the CLI reads them with :func:`parse`.

Retention (``remote_recording_days``): :func:`expire`, run by each server process's own maintenance on its own
data dir (maintenance.py). A recorder holds a shared ``flock`` on its file while the session writes it, so that a
long session's recording is never deleted under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from ..core.errors import InvalidArgument
from . import storage

MAGIC = b"fleetd-recording 1\n"
RECORD = struct.Struct("!dBI")
OUTPUT, RESIZE = ord("o"), ord("r")
MAX_BYTES = 256 << 20
SESSION_ID = re.compile(r"rs_[0-9a-f]{12}", re.ASCII)


def path_of(directory: Path, session_id: str) -> Path:
    if not SESSION_ID.fullmatch(session_id):
        raise InvalidArgument(f"a session id looks like rs_0123456789ab, got {session_id!r}")
    return directory / f"{session_id}.rec"


class Recorder:
    """One session's recording, written as it goes (buffered: a terminal's output comes in small pieces)."""

    def __init__(self, directory: Path, session_id: str, meta: dict[str, Any]) -> None:
        directory.mkdir(mode=0o700, exist_ok=True)
        self.path = path_of(directory, session_id)
        self._f: BinaryIO | None = open(self.path, "xb")  # noqa: SIM115 - open for the session's life
        fcntl.flock(self._f, fcntl.LOCK_SH)  # in use: retention leaves it alone (expire)
        self._sha = hashlib.sha256()
        self._start = time.monotonic()
        self.size = 0
        self.truncated = False
        self._put(MAGIC + msgspec.json.encode(meta) + b"\n")

    def _put(self, data: bytes) -> None:
        if self._f is None:
            return
        if self.size + len(data) > MAX_BYTES:
            self.truncated = True
            self.close()
            return
        self._f.write(data)
        self._sha.update(data)
        self.size += len(data)

    def record(self, kind: int, payload: bytes) -> None:
        self._put(RECORD.pack(time.monotonic() - self._start, kind, len(payload)) + payload)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def summary(self) -> dict[str, Any]:
        """What the session's audit entry says of its recording."""
        return {"recording": self.path.name, "recording_bytes": self.size, "recording_sha256": self._sha.hexdigest(),
                "recording_truncated": self.truncated or None}


def parse(data: bytes) -> tuple[dict[str, Any], Iterator[tuple[float, int, bytes]]]:
    """A recording's metadata, and its records (seconds since the start, type, payload)."""
    if not data.startswith(MAGIC):
        raise InvalidArgument("this is not a fleetd session recording")
    end = data.index(b"\n", len(MAGIC))
    meta = msgspec.json.decode(data[len(MAGIC):end])

    def records() -> Iterator[tuple[float, int, bytes]]:
        at = end + 1
        while at + RECORD.size <= len(data):
            t, kind, n = RECORD.unpack_from(data, at)
            at += RECORD.size
            yield t, kind, data[at:at + n]
            at += n

    return meta, records()


def _in_use(path: str) -> bool:
    """A session still writes this recording (its recorder holds a lock on it, in this process or another)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True  # gone already: nothing to delete
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def stale(directory: Path, before: float) -> list[str]:
    """The sessions whose recordings in ``directory`` were last written before ``before`` (seconds since the
    epoch) and are no longer being written, oldest first."""
    found = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for e in entries:
        session_id = e.name.removesuffix(".rec")
        if e.name == session_id or not SESSION_ID.fullmatch(session_id):
            continue
        with contextlib.suppress(FileNotFoundError):
            mtime = e.stat().st_mtime
            if mtime < before and not _in_use(e.path):
                found.append((mtime, session_id))
    return [s for _, s in sorted(found)]


async def expire(store: Any, directory: Path, days: float, now: float | None = None) -> str:
    """Delete the recordings last written more than ``days`` ago. Each one's audit entry (``device.remote_session``)
    first gets ``recording_expired`` (when), then the file goes: a crash between the two leaves a file that the
    next run deletes, never an entry that names a recording that is gone without saying so."""
    at = time.time() if now is None else now
    sessions = await asyncio.to_thread(stale, directory, at - days * 86400)
    if not sessions:
        return "0 deleted"
    when = dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    marked = 0
    for i in range(0, len(sessions), 500):
        batch = sessions[i:i + 500]
        marked += await store.write(lambda c, b=batch: storage.mark_recordings_expired(c, b, when))
    for session_id in sessions:
        with contextlib.suppress(FileNotFoundError):
            (directory / f"{session_id}.rec").unlink()
    return f"{len(sessions)} deleted ({marked} audit entries marked)"
