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
"""

from __future__ import annotations

import hashlib
import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from ..core.errors import InvalidArgument

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
