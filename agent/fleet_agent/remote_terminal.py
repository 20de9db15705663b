"""Remote-access terminals on the device (docs/remote-access.md, "The terminal"): a pty running the configured
user's shell (or a command), its output sent as far as the server's window allows.

Loaded by remote.py with the first terminal session (and by remote_streams.py, which runs its commands as the same
user), so that an agent with its channel open and no session loads none of this (the agent's idle RSS,
docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pwd
import signal
import struct
import subprocess
import termios
import threading
from collections.abc import Callable
from typing import Any

from .remote import DATA, EXIT, EXIT_F, READ_CHUNK, WINDOW_BYTES, Refused, Send, pack, spawn
from .remote_config import RemoteConfig
from .remote_flow import Flow

NOLOGIN = ("nologin", "false")


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


class Terminal(Flow):
    """A shell (or a command) on a pty, for one session: the pty's output to the operator, the operator's keys to
    it."""

    def __init__(self, sid: int, send: Send, conf: RemoteConfig, spec: dict[str, Any],
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(sid, send, loop)
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
        self.out_fd = self.in_fd = self.master
        self._read_on()
        self._watch_exit()

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


__all__ = ["Terminal", "on_exit", "session_user"]
