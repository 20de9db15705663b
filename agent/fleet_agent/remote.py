"""Remote access on the device (docs/remote-access.md): one outbound WebSocket to the server, sessions on it.

Imported only when agent.conf turns remote access on (remote_config.py), with the WebSocket library (Debian's
``python3-websockets``; only the API that its 10.4 and the server venv's 17 share: ``websockets.connect`` as an
async context manager, ``send``, ``recv``, ``close``, ``ConnectionClosed``). The channel runs an asyncio loop on a
thread of its own beside the run loop; nothing listens on the device. The sessions' code loads with the first
session of its kind: terminals (remote_terminal.py), file copy, forwarding and logs (remote_streams.py).

The frame numbers are the server's (src/fleetd/remote/frames.py; a test holds both to the same table).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import struct
import threading
import urllib.parse
from asyncio import sslproto
from collections.abc import Callable, Coroutine
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed, WebSocketException

from . import __version__
from .client import AgentError, ServerClient, pinned_context
from .remote_config import RemoteConfig

log = logging.getLogger(__name__)

HEADER = struct.Struct("!IB")
RESIZE = struct.Struct("!HH")
CREDIT = struct.Struct("!I")
EXIT = struct.Struct("!i")
WINDOW_BYTES = 256 * 1024
MAX_FRAME = WINDOW_BYTES + HEADER.size + 1024
READ_CHUNK = 16 * 1024
HELLO, READY, OPEN, OPENED, DATA, RESIZE_F, WINDOW, EXIT_F, CLOSE = range(1, 10)
FRAMES = {"HELLO": HELLO, "READY": READY, "OPEN": OPEN, "OPENED": OPENED, "DATA": DATA, "RESIZE": RESIZE_F,
          "WINDOW": WINDOW, "EXIT": EXIT_F, "CLOSE": CLOSE}
KINDS = ("terminal", "file_get", "file_put", "forward", "logs")
M_ARENA_MAX = -8  # mallopt's parameter (glibc malloc.h)

Send = Callable[[bytes], Coroutine[Any, Any, None]]

# asyncio's TLS transport (Python 3.11+) keeps a receive buffer of SSLProtocol.max_size bytes per connection for
# good, 256 KiB by default: 64 KiB still takes four full TLS records a read, and the channel is this process's
# only asyncio connection (the agent's idle RSS, docs/performance.md).
if getattr(sslproto.SSLProtocol, "max_size", 0) > 64 * 1024:
    sslproto.SSLProtocol.max_size = 64 * 1024  # type: ignore[attr-defined,unused-ignore]  # 3.11+ only


_tasks: set[asyncio.Task[None]] = set()


def spawn(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]) -> None:
    """A task kept referenced until it is done (the loop holds tasks only weakly)."""
    task = loop.create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def pack(session: int, frame: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(session, frame) + payload


def channel_url(base_url: str) -> str:
    scheme, rest = base_url.rstrip("/").split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/v1/remote/device"


class Refused(Exception):
    """The session cannot open here; the message goes back to the operator."""


class Channel:
    """One connected channel: the sessions on it."""

    def __init__(self, ws: Any, conf: RemoteConfig, loop: asyncio.AbstractEventLoop, apps_dir: str) -> None:
        self.ws, self.conf, self.loop, self.apps_dir = ws, conf, loop, apps_dir
        self.sessions: dict[int, Any] = {}  # Terminal, or a remote_streams.Stream
        self._lock = asyncio.Lock()

    async def send(self, message: bytes) -> None:
        async with self._lock:
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(message)

    async def serve(self) -> None:
        try:
            async for message in self.ws:
                if isinstance(message, str) or len(message) < HEADER.size:
                    continue
                sid, frame = HEADER.unpack_from(message)
                try:
                    await self.handle(sid, frame, message[HEADER.size:])
                except OSError as e:  # one session's pty, never the channel
                    log.warning("remote session %d: %s", sid, e)
        finally:
            for t in self.sessions.values():
                t.kill()
            self.sessions.clear()

    async def handle(self, sid: int, frame: int, payload: bytes) -> None:
        t = self.sessions.get(sid)
        if frame == OPEN:
            await self.open(sid, payload)
        elif t is None:
            return
        elif frame == DATA:
            t.write(payload)
        elif frame == WINDOW and len(payload) == CREDIT.size:
            t.granted(CREDIT.unpack(payload)[0])
        elif frame == RESIZE_F and len(payload) == RESIZE.size:
            cols, rows = RESIZE.unpack(payload)
            t.resize(cols, rows)
        elif frame == CLOSE:
            self.sessions.pop(sid).kill()

    async def open(self, sid: int, payload: bytes) -> None:
        self.sessions = {k: t for k, t in self.sessions.items() if not t.closed}  # those that exited
        try:
            spec = json.loads(payload)
            kind = spec.get("kind") if isinstance(spec, dict) else None
            if kind not in KINDS:
                raise Refused(f"this agent ({__version__}) opens {', '.join(KINDS)} sessions, not {kind!r}")
            t: Any
            if kind == "terminal":  # the pty code: loaded with the first terminal
                from .remote_terminal import Terminal

                t = Terminal(sid, self.send, self.conf, spec, self.loop)
                info: dict[str, Any] | None = {"user": t.user, "pid": t.proc.pid}
            else:  # file copy, forwarding, logs: loaded with the first such session
                from . import remote_streams

                t, info = remote_streams.open_stream(kind, sid, self.send, self.conf, spec, self.loop, self.apps_dir)
        except (Refused, ValueError, OSError) as e:  # OSError: no pty left, say
            log.warning("refused remote session %d: %s", sid, e)
            await self.send(pack(sid, CLOSE, str(e).encode()))
            return
        self.sessions[sid] = t
        log.info("remote %s session %d opened: %s", kind, sid, info or "connecting")
        if info is not None:  # else the session answers OPENED itself (a forward, once connected)
            await self.send(pack(sid, OPENED, json.dumps(info).encode()))


def one_malloc_arena() -> None:
    """glibc gives a thread its own malloc arena on its first allocation: the channel's thread (TLS buffers, frames)
    would hold about 0.5 MiB of idle memory there. M_ARENA_MAX = 1 keeps every thread in the main arena (this
    agent's threads allocate little, and rarely at once). A no-op where the C library is not glibc."""
    import ctypes  # 0.2 MiB, here only

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)


class RemoteAccess:
    """Keeps the channel open while the agent runs: connect, HELLO with the device's bearer token, serve; on
    any failure, again after a backoff (1 s doubling to ``max_backoff``, jittered)."""

    def __init__(self, client: ServerClient, ca_pem: str, conf: RemoteConfig, max_backoff: float = 60.0,
                 apps_dir: str = "") -> None:
        self.client, self.conf, self.apps_dir = client, conf, apps_dir
        self.url = channel_url(client.base_url)
        # A TLS context of its own, not the check-ins': httpcore sets ALPN on that one at every new connection
        # (SSL_CTX_set_alpn_protos), which may race SSL_new on this thread (run without the GIL).
        self.ssl = pinned_context(ca_pem) if self.url.startswith("wss:") else None
        self.max_backoff = max_backoff
        self.loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="remote-access", daemon=True)
        self.connected = threading.Event()

    def start(self) -> None:
        one_malloc_arena()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(lambda: self._stop.set() if self._stop else None)
            self._thread.join(timeout)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._run())
        finally:
            self.loop.close()

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        stopping = asyncio.ensure_future(self._stop.wait())
        delay = 1.0
        while not self._stop.is_set():
            connect = asyncio.ensure_future(self._connect_once())
            await asyncio.wait({connect, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not connect.done():
                connect.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await connect
                return
            ok = connect.exception() is None and connect.result()
            if ok:
                delay = 1.0
            wait = delay * random.uniform(0.8, 1.2)
            log.info("remote access: reconnecting in %.1f s", wait)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(stopping), wait)
            delay = min(delay * 2, self.max_backoff)

    def _tcp(self) -> socket.socket:
        u = urllib.parse.urlsplit(self.url)
        sock = socket.create_connection((u.hostname or "", u.port or (443 if u.scheme == "wss" else 80)), timeout=15)
        sock.setblocking(False)
        return sock

    async def _connect_once(self) -> bool:
        """One channel, until it drops. True when it got as far as READY."""
        self.connected.clear()
        try:
            # Blocking, on this loop's thread: no session runs while the channel is down, and no executor thread
            # (nor its malloc arena) stays behind for this one call (the agent's idle RSS, docs/remote-access.md).
            token = self.client.auth_headers()["Authorization"][len("Bearer "):]
            # No permessage-deflate: terminal bytes are small, and two zlib streams per channel cost idle memory.
            kwargs: dict[str, Any] = {"max_size": MAX_FRAME, "ping_interval": 20, "ping_timeout": 20,
                                      "open_timeout": 15, "close_timeout": 5, "compression": None}
            if self.ssl is not None:
                kwargs["ssl"] = self.ssl
            # The TCP connection made here, blocking: asyncio would resolve a host name on an executor thread that
            # then stays for good (and, as the first socket, this works alike with websockets 10 and 17).
            kwargs["sock"] = self._tcp()
            async with websockets.connect(self.url, **kwargs) as ws:
                await ws.send(pack(0, HELLO, json.dumps({"token": token, "version": __version__,
                                                        "kinds": list(KINDS)}).encode()))
                first = await asyncio.wait_for(ws.recv(), 15)
                if isinstance(first, str) or HEADER.unpack_from(first) != (0, READY):
                    log.warning("remote access: the server refused the channel: %s", first[:300])
                    self.client.forget_token(token)  # perhaps expired early, or the server's key changed
                    return False
                log.info("remote access: channel open to %s", self.url)
                self.connected.set()
                await Channel(ws, self.conf, self.loop, self.apps_dir).serve()
                return True
        except ConnectionClosed as e:
            log.warning("remote access: the channel closed: %s", e)
        except (OSError, AgentError, RuntimeError, asyncio.TimeoutError, WebSocketException) as e:
            log.warning("remote access: cannot open the channel to %s: %s", self.url, e)
        finally:
            self.connected.clear()
        return False


def start(client: ServerClient, ca_pem: str, conf: RemoteConfig, max_backoff: float,
          apps_dir: str = "") -> RemoteAccess:
    r = RemoteAccess(client, ca_pem, conf, max_backoff, apps_dir)
    r.start()
    return r


__all__ = ["FRAMES", "KINDS", "RemoteAccess", "channel_url", "start"]
