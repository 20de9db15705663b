"""Remote access on the device (docs/remote-access.md): one outbound WebSocket to the server, sessions on it.

Imported only when agent.conf turns remote access on (remote_config.py), with the WebSocket library (Debian's
``python3-websockets``; only the API that its 10.4 and the server venv's 17 share: ``websockets.connect`` as an
async context manager, ``send``, ``recv``, ``close``, ``ConnectionClosed``). The channel runs an asyncio loop on a
thread of its own beside the run loop; nothing listens on the device. A terminal session is a pty running the
configured user's shell (or a command), its output sent as far as the server's window allows.

The frame numbers are the server's (src/fleetd/remote/frames.py; a test holds both to the same table).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import pwd
import random
import signal
import socket
import struct
import subprocess
import termios
import threading
import urllib.parse
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
NOLOGIN = ("nologin", "false")

Send = Callable[[bytes], Coroutine[Any, Any, None]]


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


def session_user(conf: RemoteConfig) -> pwd.struct_passwd:
    """The user terminals run as: agent.conf's remote_user (root only when written so); else the agent's own
    user, unless the agent is root."""
    me = os.geteuid()
    if not conf.remote_user:
        if me == 0:
            raise Refused(f"remote_user is not set in {conf.path}: this agent runs as root, and its terminals run as "
                          "root only when the device's config says remote_user = \"root\"")
        return pwd.getpwuid(me)
    try:
        user = pwd.getpwnam(conf.remote_user)
    except KeyError:
        raise Refused(f"remote_user {conf.remote_user!r} in {conf.path} is not a user on this device") from None
    if me != 0 and user.pw_uid != me:
        raise Refused(f"the agent runs as uid {me} and cannot start a terminal as {conf.remote_user!r}; run it as "
                      "root or set remote_user to its own user")
    return user


class Terminal:
    """A shell (or a command) on a pty, for one session."""

    def __init__(self, sid: int, send: Send, conf: RemoteConfig, spec: dict[str, Any],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.sid, self.send, self.loop = sid, send, loop
        user = session_user(conf)
        shell = conf.remote_shell or user.pw_shell or "/bin/sh"
        if os.path.basename(shell) in NOLOGIN:
            raise Refused(f"{user.pw_name}'s shell is {shell}: set remote_shell in {conf.path}, or another "
                          "remote_user")
        command = spec.get("command")
        argv = [shell, "-c", str(command)] if command else [shell, "-l"]
        env = {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name, "SHELL": shell,
               "TERM": "xterm-256color", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG": os.environ.get("LANG", "C.UTF-8")}
        self.master, slave = os.openpty()
        self.closed = False
        self.resize(int(spec.get("cols") or 80), int(spec.get("rows") or 24))
        switch: dict[str, Any] = {}
        if os.geteuid() == 0 and user.pw_uid != 0:
            groups = [g for g in os.getgrouplist(user.pw_name, user.pw_gid) if g != user.pw_gid]
            switch = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": groups}
        try:
            self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                         cwd=user.pw_dir if os.path.isdir(user.pw_dir) else "/",
                                         preexec_fn=_controlling_tty, close_fds=True, **switch)
        except OSError as e:
            os.close(self.master)
            raise Refused(f"cannot start {shell}: {e.strerror}") from None
        finally:
            os.close(slave)
        self.user = user.pw_name
        os.set_blocking(self.master, False)
        self.credit = WINDOW_BYTES
        self.pending = b""  # input the pty did not take yet
        self.reading = False
        self._read_on()
        self._watch_exit()

    # --- output --------------------------------------------------------------------------------------------
    def _read_on(self) -> None:
        if not self.reading and not self.closed and self.credit > 0:
            self.loop.add_reader(self.master, self._readable)
            self.reading = True

    def _read_off(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.master)
            self.reading = False

    def _readable(self) -> None:
        try:
            data = os.read(self.master, min(READ_CHUNK, self.credit))
        except BlockingIOError:
            return
        except OSError:  # EIO: every writer of the pty is gone
            data = b""
        if not data:
            self._read_off()
            return
        self.credit -= len(data)
        if self.credit <= 0:
            self._read_off()
        spawn(self.loop, self.send(pack(self.sid, DATA, data)))

    def granted(self, n: int) -> None:
        self.credit += n
        self._read_on()

    # --- input ---------------------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.closed:
            return
        had = bool(self.pending)
        self.pending += data
        if not had:
            self._writable()

    def _writable(self) -> None:
        try:
            n = os.write(self.master, self.pending)
        except BlockingIOError:
            n = 0
        except OSError:
            n, self.pending = len(self.pending), b""
        if n:
            self.pending = self.pending[n:]
            spawn(self.loop, self.send(pack(self.sid, WINDOW, CREDIT.pack(n))))
        if self.pending:
            self.loop.add_writer(self.master, self._writable)
        else:
            self.loop.remove_writer(self.master)

    def resize(self, cols: int, rows: int) -> None:
        if self.closed:
            return
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    # --- the end -------------------------------------------------------------------------------------------
    def _watch_exit(self) -> None:
        on_exit(self.loop, self.proc, self._exited)

    def _exited(self) -> None:
        if self.closed:
            return
        tail: list[bytes] = []  # what the process wrote last and nobody read yet (a pty holds a few KiB)
        with contextlib.suppress(OSError):
            while len(tail) * READ_CHUNK < WINDOW_BYTES:
                chunk = os.read(self.master, READ_CHUNK)
                if not chunk:
                    break
                tail.append(chunk)
        code = self.proc.returncode
        self._close()

        async def last() -> None:
            for chunk in tail:
                await self.send(pack(self.sid, DATA, chunk))
            await self.send(pack(self.sid, EXIT_F, EXIT.pack(code)))

        spawn(self.loop, last())

    def kill(self) -> None:
        """The server or the channel ended the session: hang up its process group, then kill what stays."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGHUP)
            self.loop.call_later(2.0, self._kill_hard)
        self._close()

    def _kill_hard(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def _close(self) -> None:
        if not self.closed:
            self._read_off()
            self.loop.remove_writer(self.master)
            self.closed = True
            os.close(self.master)


def on_exit(loop: asyncio.AbstractEventLoop, proc: subprocess.Popen[bytes], then: Callable[[], None]) -> None:
    """Call ``then`` on the loop once ``proc`` exited (and was reaped)."""
    try:
        fd = os.pidfd_open(proc.pid)  # Linux 5.3+: no thread per session
    except (AttributeError, OSError):
        threading.Thread(target=lambda: (proc.wait(), loop.call_soon_threadsafe(then)), daemon=True).start()
        return

    def ready() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        proc.wait()
        then()

    loop.add_reader(fd, ready)


def _controlling_tty() -> None:
    """In the child: a session of its own, with the pty as its controlling terminal (job control, ^C), and the
    signals a terminal sends handled by default: an agent started under nohup (or by anything else that ignores
    SIGHUP) would otherwise pass the ignore on, and its shells would outlive a hang-up."""
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGTSTP, signal.SIGTTIN,
                signal.SIGTTOU):
        signal.signal(sig, signal.SIG_DFL)
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


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
            if kind == "terminal":
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


class RemoteAccess:
    """Keeps the channel open while the agent runs: connect, HELLO with the device's bearer token, serve; on
    any failure, again after a backoff (1 s doubling to ``max_backoff``, jittered)."""

    def __init__(self, client: ServerClient, ca_pem: str, conf: RemoteConfig, max_backoff: float = 60.0,
                 apps_dir: str = "") -> None:
        self.client, self.conf, self.apps_dir = client, conf, apps_dir
        self.url = channel_url(client.base_url)
        self.ssl = pinned_context(ca_pem) if self.url.startswith("wss:") else None
        self.max_backoff = max_backoff
        self.loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="remote-access", daemon=True)
        self.connected = threading.Event()

    def start(self) -> None:
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
