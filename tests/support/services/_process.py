"""What the service helpers share: free loopback ports, temp dirs a service user can own, start, wait, stop."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Self


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all held open together while choosing, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


OWNER_FILE = "owner.json"
_live: set[Service] = set()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans(tmp: Path | None = None) -> int:
    """Kill the services whose test process died without stopping them (``kill -9``, a timeout's SIGTERM) and
    remove their dirs; how many were reaped. Each service dir names its owner in ``owner.json``."""
    reaped = 0
    for owner_file in Path(tmp or tempfile.gettempdir()).glob(f"fleetd-*/{OWNER_FILE}"):
        try:
            owner = json.loads(owner_file.read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner["owner"]):
            continue
        with contextlib.suppress(ProcessLookupError):  # the service leads its own session: its children go too
            os.killpg(owner["pgid"], signal.SIGKILL)
        shutil.rmtree(owner_file.parent, ignore_errors=True)
        reaped += 1
    return reaped


@atexit.register
def _stop_live() -> None:
    for service in list(_live):
        service.stop()


class ServiceError(RuntimeError):
    """A service could not start or answer; the message says why (with the end of its log, when it has one)."""


class Service:
    """One child process with its own temp dir and log; a context manager that always stops it and removes the dir.

    Subclasses fill in ``_start`` (which calls ``_spawn`` and ``_wait``) and may override ``_stop_signal``.
    ``run_as`` names a user to run the process as when the tests run as root (PostgreSQL refuses root).
    """

    name = "service"
    stop_timeout = 10.0

    def __init__(self, run_as: str | None = None) -> None:
        self.run_as = run_as if run_as and os.geteuid() == 0 else None
        if self.run_as:
            try:
                pwd.getpwnam(self.run_as)
            except KeyError:
                raise ServiceError(f"{self.name} runs as the user {self.run_as!r} when the tests run as root, and "
                                   "there is none: install the Debian package that creates it, or run the tests "
                                   "as another user") from None
        self._dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def dir(self) -> Path:
        """The service's own temp dir, from ``__enter__`` until it stops."""
        if self._dir is None:
            raise ServiceError(f"{self.name} is not started: use it as a context manager (with ...:)")
        return self._dir

    @property
    def log_path(self) -> Path:
        return self.dir / f"{self.name}.log"

    def __enter__(self) -> Self:
        reap_orphans()
        self._dir = Path(tempfile.mkdtemp(prefix=f"fleetd-{self.name}-"))
        _live.add(self)
        if self.run_as:
            shutil.chown(self._dir, self.run_as, pwd.getpwnam(self.run_as).pw_gid)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        raise NotImplementedError

    def _user(self) -> dict[str, Any]:
        if not self.run_as:
            return {}
        entry = pwd.getpwnam(self.run_as)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
                "env": {**os.environ, "HOME": entry.pw_dir, "USER": self.run_as}}

    def _run(self, argv: Sequence[str], what: str) -> None:
        """A setup command run to completion (as ``run_as``); a failure raises with its output."""
        done = subprocess.run(list(argv), cwd=self.dir, capture_output=True, text=True, timeout=120, **self._user())
        if done.returncode != 0:
            raise ServiceError(f"{what} failed ({done.returncode}): {' '.join(argv)}\n{done.stdout}{done.stderr}")

    def _spawn(self, argv: Sequence[str]) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(list(argv), cwd=self.dir, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True, **self._user())
        (self.dir / OWNER_FILE).write_text(json.dumps({"owner": os.getpid(), "pgid": self.proc.pid}))

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited {self.proc.returncode} before {what}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.name} not {what} after {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, ServiceError):
            return "(no log)"
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(text.splitlines()[-lines:])

    _stop_signal = signal.SIGTERM

    def _stop_process(self) -> None:
        """Signal the process, wait ``stop_timeout``, then kill it."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(self._stop_signal)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        """Stop the process, close the log and remove the temp dir."""
        _live.discard(self)
        self._stop_process()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
