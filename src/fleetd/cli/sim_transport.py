"""The simulator's HTTP transport: one small pool of keep-alive HTTP/1.1 connections to one server.

httpx's own pool (httpcore) rescans every queued request against every
connection whenever a request starts or ends, which is quadratic: with
thousands of simulated devices queued on a few hundred connections it took
most of the simulator's CPU (docs/operations.md, "Simulating a fleet"). This
transport hands connections over in O(1): an idle stack (the most recently used
first, so idle ones age out), a FIFO of waiters, and an urgent FIFO in front of
it for answering an authentication challenge, which expires a minute after the
server issues it and so must never wait behind other devices' check-ins.

Only the pool is ours: h11 (the HTTP/1.1 state machine under httpcore) frames
every request and response, one ``h11.Connection`` per pooled connection, and
says when a connection may be reused. A small body is read before the
connection goes back to the pool; a large or chunked one (an artifact
download, an event stream) is streamed. A connection the server closed while it
sat idle (uvicorn's keep-alive timeout) is retried once on a fresh one.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator

import h11
import httpx

# uvicorn closes a keep-alive connection after 5 s idle; reuse only younger ones.
KEEPALIVE = 4.0
# A response body up to this size is read before the connection goes back to the pool.
EAGER_BODY = 1 << 20
# The largest response head (status line and headers) h11 accepts.
MAX_HEAD = 64 * 1024
READ_SIZE = 64 * 1024
# The URL path whose request answers a challenge: it goes before every waiting request.
URGENT_SUFFIX = "/Authenticate"

_ResponseEvent = h11.Response | h11.Data | h11.EndOfMessage


class _Stale(Exception):
    """The server closed the connection before answering anything (after an idle reused one: try a fresh one)."""


class _Conn:
    __slots__ = ("h11", "reader", "received", "used", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.used = reader, writer, time.monotonic()
        self.h11 = h11.Connection(our_role=h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.received = 0  # bytes read in this request/response cycle

    def fresh(self) -> bool:
        return time.monotonic() - self.used < KEEPALIVE and not self.reader.at_eof()

    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def close(self) -> None:
        self.writer.transport.abort()

    async def send(self, request: httpx.Request, body: bytes) -> None:
        try:
            data = self.h11.send(h11.Request(method=request.method, target=request.url.raw_path,
                                             headers=request.headers.raw))
            if body:
                data += self.h11.send(h11.Data(data=body))
            data += self.h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError as e:
            raise httpx.LocalProtocolError(f"cannot send this request: {e}") from None
        self.writer.write(data)
        await self.writer.drain()

    async def next_event(self) -> _ResponseEvent:
        """The next piece of the response: its head (after any 1xx), a piece of its body, or its end."""
        try:
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    data = await self.reader.read(READ_SIZE)
                    if not data and not self.received and self.h11.their_state is h11.SEND_RESPONSE:
                        raise _Stale()
                    self.received += len(data)
                    self.h11.receive_data(data)
                elif isinstance(event, h11.Response | h11.Data | h11.EndOfMessage):
                    return event
                elif not isinstance(event, h11.InformationalResponse):  # ConnectionClosed, PAUSED
                    raise httpx.RemoteProtocolError(f"the server broke off the answer ({event!r})")
        except h11.RemoteProtocolError as e:
            raise httpx.RemoteProtocolError(f"the server's answer is not valid HTTP/1.1: {e}") from None


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

    def _done(self, conn: _Conn) -> None:
        """The response is read: the connection goes on if both sides may go on, else it closes."""
        if conn.reusable():
            conn.h11.start_next_cycle()
            conn.received = 0
            conn.used = time.monotonic()
            self._release(conn)
        else:
            conn.close()
            self._release(None)

    async def _connect(self, timeout: float | None) -> _Conn:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None)
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
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        conn = await self._acquire(url.path.endswith(URGENT_SUFFIX))
        try:
            if conn is not None:
                try:
                    return await self._exchange(conn, request, body, True, timeouts.get("read"))
                except _Stale:  # the server closed it while it sat idle: once more on a fresh one
                    conn.close()
                    conn = None
            conn = await self._connect(timeouts.get("connect"))
            return await self._exchange(conn, request, body, False, timeouts.get("read"))
        except BaseException:
            if conn is not None:
                conn.close()
            self._release(None)
            raise

    async def _exchange(self, conn: _Conn, request: httpx.Request, body: bytes, reused: bool,
                        timeout: float | None) -> httpx.Response:
        try:
            async with asyncio.timeout(timeout):
                await conn.send(request, body)
                head = await conn.next_event()
                assert isinstance(head, h11.Response)  # h11 gives the head before any of the body
                # h11 has checked the framing: at most one Content-Length, a valid number.
                length = next((v for k, v in head.headers if k == b"content-length"), None)
                if request.method == "HEAD" or head.status_code in (204, 304) or (
                        length is not None and int(length) <= EAGER_BODY):
                    data = []
                    while not isinstance(event := await conn.next_event(), h11.EndOfMessage):
                        assert isinstance(event, h11.Data)
                        data.append(event.data)
                    self._done(conn)
                    return _response(head, httpx.ByteStream(b"".join(data)))
        except _Stale:
            if reused:
                raise
            raise httpx.RemoteProtocolError("the server closed the connection without answering") from None
        except TimeoutError:
            raise httpx.ReadTimeout("the server did not answer in time") from None
        except (ConnectionError, ssl.SSLError) as e:
            if reused and not conn.received and isinstance(e, ConnectionError):
                raise _Stale() from None
            raise httpx.ReadError(f"the connection failed: {type(e).__name__}: {e}") from None
        return _response(head, _Body(self, conn, timeout))

    async def aclose(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


def _response(head: h11.Response, body: httpx.ByteStream | _Body) -> httpx.Response:
    return httpx.Response(head.status_code, headers=head.headers.raw_items(), stream=body, extensions={
        "http_version": b"HTTP/" + head.http_version, "reason_phrase": head.reason})


class _Body(httpx.AsyncByteStream):
    """A response body streamed off its connection, which goes back to the pool once it is read or closed."""

    def __init__(self, pool: PooledTransport, conn: _Conn, timeout: float | None) -> None:
        self.pool, self.conn, self.timeout = pool, conn, timeout
        self.finished = False
        self.released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while True:
                async with asyncio.timeout(self.timeout):  # each read, never across a yield to the consumer
                    event = await self.conn.next_event()
                if isinstance(event, h11.EndOfMessage):
                    break
                assert isinstance(event, h11.Data)
                yield bytes(event.data)
        except TimeoutError:
            raise httpx.ReadTimeout("the server stopped sending") from None
        except (ConnectionError, ssl.SSLError) as e:
            raise httpx.ReadError(f"the download broke off: {type(e).__name__}: {e}") from None
        self.finished = True
        await self.aclose()

    async def aclose(self) -> None:
        if self.released:
            return
        self.released = True
        if self.finished:
            self.pool._done(self.conn)
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
