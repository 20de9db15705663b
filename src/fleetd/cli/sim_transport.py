"""The simulator's HTTP transport: one small pool of keep-alive HTTP/1.1 connections to one server.

httpx's own pool (httpcore) rescans every queued request against every
connection whenever a request starts or ends, which is quadratic: with
thousands of simulated devices queued on a few hundred connections it took
most of the simulator's CPU (docs/operations.md, "Simulating a fleet"). This
transport hands connections over in O(1): an idle stack (the most recently used
first, so idle ones age out), a FIFO of waiters, and an urgent FIFO in front of
it for answering an authentication challenge, which expires a minute after the
server issues it and so must never wait behind other devices' check-ins.

It speaks just what the device protocol needs: a request with a body read into
memory, a response with Content-Length, chunked or close-delimited body. A
connection the server closed while it sat idle (uvicorn's keep-alive timeout)
is retried once on a fresh one.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httpx

# uvicorn closes a keep-alive connection after 5 s idle; reuse only younger ones.
KEEPALIVE = 4.0
# A response body up to this size is read before the connection goes back to the pool.
EAGER_BODY = 1 << 20
MAX_HEAD = 64 * 1024
# The URL path whose request answers a challenge: it goes before every waiting request.
URGENT_SUFFIX = "/Authenticate"


class _Conn:
    __slots__ = ("reader", "used", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.used = reader, writer, time.monotonic()

    def fresh(self) -> bool:
        return time.monotonic() - self.used < KEEPALIVE and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.transport.abort()


class _Stale(Exception):
    """A reused connection turned out closed before the server answered anything."""


class PooledTransport(httpx.AsyncBaseTransport):
    """At most ``size`` connections to one origin; requests beyond that wait their turn."""

    def __init__(self, origin: str, ssl_context: ssl.SSLContext | None, size: int) -> None:
        url = httpx.URL(origin)
        self.scheme, self.host = url.scheme, url.host
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl = ssl_context if url.scheme == "https" else None
        self.size = size
        self.opened = 0  # connections made, for the summary
        self._slots = 0  # connections open or being opened
        self._idle: list[_Conn] = []
        self._waiting: deque[asyncio.Future[_Conn | None]] = deque()
        self._urgent: deque[asyncio.Future[_Conn | None]] = deque()

    # --- the pool ---------------------------------------------------------------
    async def _acquire(self, urgent: bool) -> _Conn | None:
        """An idle connection, or None: a slot of the pool to open a new connection in."""
        while self._idle:
            conn = self._idle.pop()
            if conn.fresh():
                return conn
            conn.close()
            self._slots -= 1
        if self._slots < self.size:
            self._slots += 1
            return None
        fut: asyncio.Future[_Conn | None] = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._waiting).append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release(fut.result())  # handed over just as we were cancelled: pass it on
            raise

    def _release(self, conn: _Conn | None) -> None:
        """Give a connection (or, with None, its slot) to the next waiter, else back to the pool."""
        if conn is not None and not conn.fresh():
            conn.close()
            conn = None
        for queue in (self._urgent, self._waiting):
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_result(conn)
                    return
        if conn is None:
            self._slots -= 1
        else:
            self._idle.append(conn)

    async def _connect(self, timeout: float | None) -> _Conn:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None,
                    limit=MAX_HEAD)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {self.host}:{self.port} timed out") from None
        except (OSError, ssl.SSLError) as e:
            raise httpx.ConnectError(f"cannot connect to {self.host}:{self.port}: {e}") from None
        self.opened += 1
        return _Conn(reader, writer)

    # --- one request ---------------------------------------------------------------
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if (url.scheme, url.host, url.port or self.port) != (self.scheme, self.host, self.port):
            raise httpx.UnsupportedProtocol(f"the simulator talks only to {self.scheme}://{self.host}:{self.port}, "
                                            f"not {url}")
        body = await request.aread()
        head = [f"{request.method} {url.raw_path.decode('ascii')} HTTP/1.1\r\n".encode()]
        head += [k + b": " + v + b"\r\n" for k, v in request.headers.raw]
        payload = b"".join(head) + b"\r\n" + body
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        conn = await self._acquire(url.raw_path.split(b"?")[0].decode().endswith(URGENT_SUFFIX))
        try:
            for reused in (conn is not None, False):
                if conn is None:
                    conn = await self._connect(timeouts.get("connect"))
                try:
                    return await self._exchange(conn, request.method, payload, reused, timeouts.get("read"))
                except _Stale:
                    conn.close()
                    conn = None
            raise httpx.RemoteProtocolError("the server closed the connection without answering")
        except BaseException:
            if conn is not None:
                conn.close()
            self._release(None)
            raise

    async def _exchange(self, conn: _Conn, method: str, payload: bytes, reused: bool,
                        timeout: float | None) -> httpx.Response:
        try:
            async with asyncio.timeout(timeout):
                conn.writer.write(payload)
                await conn.writer.drain()
                try:
                    raw = await conn.reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as e:
                    if reused and not e.partial:
                        raise _Stale() from None
                    raise httpx.RemoteProtocolError("the server closed the connection mid-answer") from None
                status, headers, length, chunked, close = _parse_head(raw)
                if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                    length = 0
                if length is not None and length <= EAGER_BODY:
                    data = await conn.reader.readexactly(length) if length else b""
                    self._done(conn, close)
                    return httpx.Response(status, headers=headers, stream=httpx.ByteStream(data))
        except TimeoutError:
            raise httpx.ReadTimeout("the server did not answer in time") from None
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            if reused and isinstance(e, ConnectionError):
                raise _Stale() from None
            raise httpx.ReadError(f"the connection failed: {type(e).__name__}: {e}") from None
        return httpx.Response(status, headers=headers, stream=_Body(self, conn, length, chunked, close, timeout))

    def _done(self, conn: _Conn, close: bool) -> None:
        if close:
            conn.close()
            self._release(None)
        else:
            conn.used = time.monotonic()
            self._release(conn)

    async def aclose(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


def _parse_head(raw: bytes) -> tuple[int, list[tuple[bytes, bytes]], int | None, bool, bool]:
    lines = raw[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise httpx.RemoteProtocolError(f"not an HTTP/1.1 answer: {lines[0][:80]!r}")
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = close = parts[0] == b"HTTP/1.0"
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        k, v = k.strip(), v.strip()
        headers.append((k, v))
        lk = k.lower()
        if lk == b"content-length":
            length = int(v)
        elif lk == b"transfer-encoding":
            chunked = b"chunked" in v.lower()
        elif lk == b"connection":
            close = b"close" in v.lower()
    if chunked:
        length = None
    elif length is None:
        close = True  # the body runs to the end of the connection
    return int(parts[1]), headers, length, chunked, close


class _Body(httpx.AsyncByteStream):
    """A response body streamed off its connection, which goes back to the pool once it is read or closed."""

    def __init__(self, pool: PooledTransport, conn: _Conn, length: int | None, chunked: bool, close: bool,
                 timeout: float | None) -> None:
        self.pool, self.conn, self.length, self.chunked, self.close = pool, conn, length, chunked, close
        self.timeout = timeout
        self.finished = False
        self.released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._chunks():
                yield chunk
        except TimeoutError:
            raise httpx.ReadTimeout("the server stopped sending") from None
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as e:
            raise httpx.ReadError(f"the download broke off: {type(e).__name__}: {e}") from None
        self.finished = True
        await self.aclose()

    async def _read(self, how: str, arg: Any) -> bytes:
        """One read off the connection, within the read timeout (never across a yield to the consumer)."""
        async with asyncio.timeout(self.timeout):
            data: bytes = await getattr(self.conn.reader, how)(arg)
            return data

    async def _chunks(self) -> AsyncIterator[bytes]:
        if self.chunked:
            while True:
                size = int((await self._read("readuntil", b"\r\n")).split(b";")[0].strip(), 16)
                if size == 0:
                    while await self._read("readuntil", b"\r\n") != b"\r\n":  # trailers
                        pass
                    return
                yield await self._read("readexactly", size)
                await self._read("readexactly", 2)
        elif self.length is not None:
            left = self.length
            while left:
                chunk = await self._read("read", min(left, 1 << 16))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(chunk)
                yield chunk
        else:
            while chunk := await self._read("read", 1 << 16):
                yield chunk

    async def aclose(self) -> None:
        if self.released:
            return
        self.released = True
        if self.finished:
            self.pool._done(self.conn, self.close)
        else:  # abandoned halfway: the rest of the body is still on the wire
            self.conn.close()
            self.pool._release(None)


def make_transport(server: str, ca_pem: str | None, connections: int) -> PooledTransport:
    """A pool of ``connections`` to ``server``, trusting only the fleet CA (``ca_pem``) when given one."""
    context: ssl.SSLContext | None = None
    if server.startswith("https://"):
        context = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    return PooledTransport(server, context, max(1, connections))


def client_on(transport: PooledTransport) -> httpx.AsyncClient:
    # identity: no compression to spend CPU on at either end of a load test.
    return httpx.AsyncClient(transport=transport, headers={"Accept-Encoding": "identity"},
                             timeout=httpx.Timeout(30.0, connect=10.0))


def make_http_client(server: str, ca_pem: str | None, connections: int) -> httpx.AsyncClient:
    """An httpx client on a pool of ``connections`` to ``server``, trusting only the fleet CA."""
    return client_on(make_transport(server, ca_pem, connections))


__all__ = ["PooledTransport", "client_on", "make_http_client", "make_transport"]
