"""The device channel's framing (docs/remote-access.md, "The channel"): one WebSocket per device carries every
session, each binary message one frame::

    u32 session id (big-endian) | u8 frame type | payload

Session 0 is the channel itself (HELLO, READY, PING). The agent keeps its own copy of these numbers
(agent/fleet_agent/remote.py); tests/remote/test_frames.py holds both to the same table.
"""

from __future__ import annotations

import enum
import struct
from typing import Any

import msgspec

from ..core.errors import InvalidArgument

HEADER = struct.Struct("!IB")
RESIZE = struct.Struct("!HH")
CREDIT = struct.Struct("!I")
EXIT = struct.Struct("!i")
# Bytes of DATA either side may send on a session before the other grants more (WINDOW frames).
WINDOW_BYTES = 256 * 1024
MAX_FRAME = WINDOW_BYTES + HEADER.size + 1024


class Frame(enum.IntEnum):
    """The frame types: the one list (the agent's copy is checked against it)."""

    HELLO = 1     # agent → server, session 0: JSON {token, version, kinds}; the first frame of a channel
    READY = 2     # server → agent, session 0: JSON {idle_seconds}; the channel is open
    OPEN = 3      # server → agent: JSON {kind, cols, rows, command}; open a session of that kind
    OPENED = 4    # agent → server: JSON {user, pid}; the session runs
    DATA = 5      # both: the session's bytes (a terminal's input or output), counted against the window
    RESIZE = 6    # server → agent: u16 cols, u16 rows
    WINDOW = 7    # both: u32 more bytes of DATA the sender of this frame is ready to take
    EXIT = 8      # agent → server: i32 exit status (negative: killed by that signal)
    CLOSE = 9     # both: UTF-8 reason; the session ends (a refused OPEN is answered with CLOSE)


class Kind(enum.StrEnum):
    """Session kinds: each uses the same frames (docs/remote-access.md). The agent's copy is checked against it."""

    TERMINAL = "terminal"   # a pty: a shell or a command
    FILE_GET = "file_get"   # a file's bytes from the device
    FILE_PUT = "file_put"   # a file's bytes to the device (an empty DATA ends them)
    FORWARD = "forward"     # one TCP connection from the device to HOST:PORT
    LOGS = "logs"           # an app's log, followed


def pack(session: int, frame: Frame, payload: bytes = b"") -> bytes:
    return HEADER.pack(session, frame) + payload


def pack_json(session: int, frame: Frame, obj: Any) -> bytes:
    return pack(session, frame, msgspec.json.encode(obj))


def unpack(message: bytes) -> tuple[int, Frame, bytes]:
    if len(message) < HEADER.size:
        raise InvalidArgument(f"a channel frame is at least {HEADER.size} bytes, got {len(message)}")
    if len(message) > MAX_FRAME:
        raise InvalidArgument(f"a channel frame is at most {MAX_FRAME} bytes, got {len(message)}")
    session, kind = HEADER.unpack_from(message)
    try:
        return session, Frame(kind), message[HEADER.size:]
    except ValueError:
        raise InvalidArgument(f"unknown channel frame type {kind}") from None


def json_payload(payload: bytes, what: str) -> dict[str, Any]:
    try:
        obj = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        raise InvalidArgument(f"the {what} frame is not JSON") from None
    if not isinstance(obj, dict):
        raise InvalidArgument(f"the {what} frame must hold a JSON object")
    return obj
