"""Limits on connections that have not sent a complete request head yet (slowloris).

uvicorn waits for a request head without a time limit and holds any number of such connections, so a
client that opens many and never finishes them locks everyone else out. :class:`HeadGuard` tracks every
connection from the moment it opens, or from the first byte of its next request on a keep-alive
connection, until its request head is parsed:

- each gets ``request_head_timeout`` seconds, then is closed;
- at most ``max_unfinished_requests`` wait at once; one more closes the *oldest* waiting one, so a new
  client always gets its turn (refusing the newest would let an attacker who refills the slots keep
  them) and an attacker's connections are the ones most likely to be old;
- a head larger than :data:`MAX_HEAD_BYTES` is answered 431 and the connection closed.

Not counted: a keep-alive connection idle between requests (uvicorn's ``timeout_keep_alive`` closes it)
and a request whose head is complete, however long it lasts (a download, a /v1/events stream).
TLS handshakes happen before a connection reaches the protocol; asyncio bounds them at 60 s.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

# A connection's write buffer above which its response pauses (ASGI send waits for the drain). uvloop's TLS
# transport defaults to 512 KiB (plain TCP: 64 KiB), and OpenSSL's memory BIO keeps the largest size it ever
# held: under 50 downloads of 128 KiB chunks the default peaked at 48 MiB of RSS growth, 64 KiB at 36. It costs
# no throughput: the kernel's socket buffer, not this one, keeps the wire busy (docs/performance.md, Download).
WRITE_HIGH_WATER = 64 * 1024

# A request head (request line and headers) bigger than this is refused. Browsers send a few KiB.
MAX_HEAD_BYTES = 64 * 1024
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
              b"content-length: 28\r\nconnection: close\r\n\r\nrequest head is too large.\r\n")


class HeadGuard:
    """The connections waiting for their request head, oldest first, each with its deadline.

    One timer serves them all: it fires at the oldest deadline and re-arms for the next, so a request
    costs a dict insert and a dict pop, never a timer of its own.
    """

    def __init__(self, timeout: float, cap: int) -> None:
        self.timeout = timeout
        self.cap = cap
        self._waiting: dict[_Guarded, float] = {}  # insertion order = deadline order (one timeout for all)
        self._timer: asyncio.TimerHandle | None = None
        self.closed_slow = 0
        self.closed_over_cap = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, conn: object) -> bool:
        return conn in self._waiting

    def start(self, conn: _Guarded) -> None:
        if conn in self._waiting:
            return
        if len(self._waiting) >= self.cap:
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            self.closed_over_cap += 1
            if self.closed_over_cap == 1 or self.closed_over_cap % 1000 == 0:
                log.warning("%d connections are waiting for their request head (max_unfinished_requests); "
                            "closing the oldest (%d so far)", self.cap, self.closed_over_cap)
            oldest.close_unfinished()
        deadline = conn.loop.time() + self.timeout
        self._waiting[conn] = deadline
        if self._timer is None:
            self._timer = conn.loop.call_at(deadline, self._expire, conn.loop)

    def done(self, conn: _Guarded) -> None:
        self._waiting.pop(conn, None)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        while self._waiting:
            conn, deadline = next(iter(self._waiting.items()))
            if deadline > now:
                self._timer = loop.call_at(deadline, self._expire, loop)
                return
            del self._waiting[conn]
            self.closed_slow += 1
            conn.close_unfinished()


class _Guarded(HttpToolsProtocol):
    """uvicorn's httptools protocol, reporting to a :class:`HeadGuard` (set on the subclass)."""

    guard: HeadGuard
    _head_bytes = 0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.guard.start(self)

    def on_message_begin(self) -> None:  # the first byte of a request, also on a keep-alive connection
        super().on_message_begin()
        self.guard.start(self)

    def on_headers_complete(self) -> None:
        self.guard.done(self)
        self._head_bytes = 0
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self in self.guard:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.guard.done(self)
                if not self.transport.is_closing():
                    self.transport.write(_TOO_LARGE)
                self.close_unfinished()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.done(self)
        super().connection_lost(exc)

    def close_unfinished(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(timeout: float, cap: int) -> tuple[type[HttpToolsProtocol], HeadGuard]:
    """uvicorn's HTTP protocol class (``uvicorn.Config(http=...)``) reporting to a fresh guard, and the guard."""
    guard = HeadGuard(timeout, cap)
    return type("GuardedHttpToolsProtocol", (_Guarded,), {"guard": guard}), guard


__all__ = ["MAX_HEAD_BYTES", "WRITE_HIGH_WATER", "HeadGuard", "guarded_protocol"]
