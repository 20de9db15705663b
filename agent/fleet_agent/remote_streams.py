"""Remote-access sessions that are byte streams (docs/remote-access.md): file copy, TCP forwarding, log follow.

Loaded by remote.py with the first such session. Each moves bytes as a terminal does, within the server's window
(WINDOW frames) each way; an empty DATA frame from the server is the end of the operator's input. A session ends
with EXIT 0 when it did its work, or CLOSE with the reason (a command's error output) when it did not.

- ``file_get`` / ``file_put``: ``cat`` (and ``mv`` into place) as the terminal user (remote_terminal.session_user), only
  in the directories agent.conf's ``remote_copy_dirs`` names; a file written is complete or not there at all;
- ``forward``: one TCP connection from the device to HOST:PORT, when agent.conf says ``remote_forward = true``;
- ``logs``: ``tail`` (``-F`` to follow) of an app's log, refused where ``FLEET_AGENT_ALLOW_LOG_UPLOAD=0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from . import applogs
from .remote import CLOSE, EXIT, EXIT_F, OPENED, Refused, Send, pack, spawn
from .remote_config import RemoteConfig
from .remote_flow import Flow
from .remote_terminal import on_exit, session_user

CONNECT_TIMEOUT = 10.0
MAX_ERROR = 2000  # bytes of a command's error output kept for the CLOSE reason
# Write to a temporary name beside the target, then rename: the file is there whole, or not at all.
PUT_SCRIPT = ('umask 022; part="$1.fleetd-part.$$"; trap \'rm -f "$part"\' EXIT; trap "exit 129" HUP TERM; '
              'cat > "$part" && mv -f "$part" "$1"')


class Stream(Flow):
    """Bytes read from ``out_fd`` go to the server as its window allows; the server's DATA is written to ``in_fd``,
    and an empty DATA frame ends that input."""

    def __init__(self, sid: int, send: Send, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(sid, send, loop)
        self.input_ended = False   # the operator sent its end (an empty DATA)
        self.input_closed = False

    @property
    def output_done(self) -> bool:
        return self.out_fd is None

    def start(self, out_fd: int | None, in_fd: int | None) -> None:
        self.out_fd, self.in_fd = out_fd, in_fd
        for fd in (out_fd, in_fd):
            if fd is not None:
                os.set_blocking(fd, False)
        self._read_on()

    def write(self, data: bytes) -> None:
        if self.input_closed:
            return
        if not data:
            self.input_ended = True
        super().write(data)

    def input_drained(self) -> None:
        if self.input_ended and not self.input_closed:
            self.input_closed = True
            self.end_input()

    # --- what a kind does at its ends ------------------------------------------------------------------------
    def output_ended(self) -> None:
        raise NotImplementedError

    def end_input(self) -> None:
        raise NotImplementedError

    def finish(self, reason: str | None) -> None:
        """The session's last frame: EXIT 0 (done), or CLOSE with the reason."""
        if self.closed:
            return
        self.kill()
        last = pack(self.sid, EXIT_F, EXIT.pack(0)) if reason is None else pack(self.sid, CLOSE, reason.encode())
        spawn(self.loop, self.send(last))

    def kill(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._read_off()
        if self.in_fd is not None:
            self.loop.remove_writer(self.in_fd)
        self.release()

    def release(self) -> None:
        raise NotImplementedError


class Piped(Stream):
    """A command with pipes: its stdout to the operator, the operator's bytes to its stdin."""

    def __init__(self, sid: int, send: Send, loop: asyncio.AbstractEventLoop, argv: list[str], *,
                 switch: dict[str, Any], reads: bool, writes: bool, expect: int | None = None) -> None:
        super().__init__(sid, send, loop)
        self.expect = expect  # bytes the operator said it sends (a file put): fewer or more is an error
        self.received = 0
        self.exited = False
        self.errors = b""
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE if writes else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE if reads else subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True, close_fds=True, cwd="/", **switch)
        assert self.proc.stderr is not None
        self.err_fd = self.proc.stderr.fileno()
        os.set_blocking(self.err_fd, False)
        loop.add_reader(self.err_fd, self._stderr)
        self.start(self.proc.stdout.fileno() if self.proc.stdout else None,
                   self.proc.stdin.fileno() if self.proc.stdin else None)
        on_exit(loop, self.proc, self._exited)

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self.expect is not None and self.received > self.expect:
            self.finish(f"the operator sent more than the {self.expect} bytes it announced")
            return
        super().write(data)

    def _stderr(self) -> None:
        try:
            chunk = os.read(self.err_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.loop.remove_reader(self.err_fd)
            return
        self.errors = (self.errors + chunk)[-MAX_ERROR:]

    def end_input(self) -> None:
        if self.expect is not None and self.received != self.expect:
            self.finish(f"the operator ended after {self.received} of the {self.expect} bytes it announced")
            return
        assert self.proc.stdin is not None
        self.in_fd = None
        self.proc.stdin.close()

    def output_ended(self) -> None:
        self._maybe_done()

    def _exited(self) -> None:
        self.exited = True
        self._maybe_done()

    def _maybe_done(self) -> None:
        if not (self.exited and self.output_done) or self.closed:
            return
        with contextlib.suppress(OSError):
            self._stderr()
        code = self.proc.returncode
        text = self.errors.decode(errors="replace").strip()
        self.finish(None if code == 0 else (text or f"exit status {code}"))

    def release(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.err_fd)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            self.loop.call_later(2.0, self._kill_hard)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def _kill_hard(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)


class Forward(Stream):
    """One TCP connection from the device to HOST:PORT; it answers OPENED once connected."""

    def __init__(self, sid: int, send: Send, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        super().__init__(sid, send, loop)
        self.host, self.port = host, port
        self.sock: socket.socket | None = None
        spawn(loop, self._connect())

    async def _connect(self) -> None:
        try:
            # Resolved on this thread (a numeric or /etc/hosts name in practice): an executor thread would stay.
            family, kind, proto, _, addr = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(self.loop.sock_connect(sock, addr), CONNECT_TIMEOUT)
            except BaseException:
                sock.close()
                raise
        except (OSError, asyncio.TimeoutError) as e:
            self.finish(f"cannot connect to {self.host}:{self.port} from the device: {e or 'timed out'}")
            return
        if self.closed:  # the operator left meanwhile
            sock.close()
            return
        self.sock = sock
        self.start(sock.fileno(), sock.fileno())
        await self.send(pack(self.sid, OPENED, json.dumps({"connected": f"{self.host}:{self.port}",
                                                            "user": None, "pid": None}).encode()))

    def end_input(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)

    def output_ended(self) -> None:
        self.finish(None)

    def release(self) -> None:
        if self.sock is not None:
            self.sock.close()


def _switch(conf: RemoteConfig) -> tuple[str, dict[str, Any]]:
    """The terminal user, and the Popen arguments that run a command as that user."""
    user = session_user(conf)
    switch: dict[str, Any] = {"env": {"HOME": user.pw_dir, "USER": user.pw_name, "LANG": "C.UTF-8",
                                      "PATH": "/usr/local/bin:/usr/bin:/bin"}}
    if os.geteuid() == 0 and user.pw_uid != 0:
        groups = [g for g in os.getgrouplist(user.pw_name, user.pw_gid) if g != user.pw_gid]
        switch.update(user=user.pw_uid, group=user.pw_gid, extra_groups=groups)
    return user.pw_name, switch


def allowed_path(conf: RemoteConfig, raw: Any, top_ok: bool = False) -> str:
    """``raw`` resolved (symbolic links followed), when it is inside one of the directories agent.conf allows (or,
    with ``top_ok``, one of them)."""
    if not conf.copy_dirs:
        raise Refused(f"file copy is off on this device: remote_copy_dirs in {conf.path} names the directories it "
                      "may use (e.g. remote_copy_dirs = \"/home/pi:/var/lib/myapp\")")
    if not isinstance(raw, str) or not os.path.isabs(raw) or "\0" in raw:
        raise Refused(f"a file copy needs an absolute path on the device, got {raw!r}")
    real = os.path.realpath(raw)
    for d in conf.copy_dirs:
        top = os.path.realpath(d)
        if (top_ok and real == top) or real.startswith(top.rstrip("/") + "/"):
            return real
    raise Refused(f"{raw} is outside the directories this device allows for file copy ({':'.join(conf.copy_dirs)}, "
                  f"remote_copy_dirs in {conf.path})")


def open_stream(kind: str, sid: int, send: Send, conf: RemoteConfig, spec: dict[str, Any],
                loop: asyncio.AbstractEventLoop, apps_dir: str) -> tuple[Stream, dict[str, Any] | None]:
    """A new session of ``kind``, and what OPENED says (None: it answers OPENED itself); Refused says why not."""
    if kind == "file_get":
        path = allowed_path(conf, spec.get("path"))
        if not os.path.isfile(path):
            raise Refused(f"{spec.get('path')} is not a file on the device")
        user, switch = _switch(conf)
        p = Piped(sid, send, loop, ["cat", "--", path], switch=switch, reads=True, writes=False)
        return p, {"user": user, "pid": p.proc.pid, "path": path, "size": os.path.getsize(path)}
    if kind == "file_put":
        path = allowed_path(conf, spec.get("path"), top_ok=True)
        if os.path.isdir(path):
            name = str(spec.get("name") or "")
            if not name or "/" in name or name in (".", ".."):
                raise Refused(f"{path} is a directory: name the file to write in it")
            path = allowed_path(conf, os.path.join(path, name))
        else:
            path = allowed_path(conf, spec.get("path"))
        size = spec.get("size")
        if not isinstance(size, int) or size < 0:
            raise Refused("a file put announces its size in bytes")
        if not os.path.isdir(os.path.dirname(path)):
            raise Refused(f"{os.path.dirname(path)} is not a directory on the device")
        user, switch = _switch(conf)
        p = Piped(sid, send, loop, ["/bin/sh", "-c", PUT_SCRIPT, "sh", path], switch=switch, reads=False, writes=True,
                  expect=size)
        return p, {"user": user, "pid": p.proc.pid, "path": path, "size": size}
    if kind == "forward":
        if not conf.forward:
            raise Refused(f"port forwarding is off on this device: remote_forward = true in {conf.path} turns it on")
        host, port = spec.get("host"), spec.get("port")
        if not isinstance(host, str) or not host or not isinstance(port, int) or not 0 < port < 65536:
            raise Refused("a forward needs a host and a port 1..65535")
        return Forward(sid, send, loop, host, port), None
    if kind == "logs":
        try:
            applogs.allowed(os.environ)
        except applogs.LogsRefused as e:
            raise Refused(str(e)) from None
        app = spec.get("app")
        root = Path(apps_dir) / str(app)
        if not isinstance(app, str) or not app or "/" in app or app.startswith(".") or not root.is_dir():
            raise Refused(f"there is no app {app!r} on this device")
        lines = spec.get("lines", applogs.DEFAULT_LINES)
        if not isinstance(lines, int) or not 0 <= lines <= applogs.MAX_LINES:
            raise Refused(f"lines must be 0..{applogs.MAX_LINES}")
        argv = ["tail", "-n", str(lines), *(["-F"] if spec.get("follow") else []), str(root / "log")]
        p = Piped(sid, send, loop, argv, switch={}, reads=True, writes=False)
        return p, {"user": None, "pid": p.proc.pid, "app": app}
    raise Refused(f"unknown session kind {kind!r}")
