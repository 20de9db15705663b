"""The agent's own process supervisor, for boards without systemd (or with ``FLEET_AGENT_SUPERVISOR=builtin``).

One thread watches every child: it copies their output to ``apps/<name>/log``
(rotated to ``log.1`` at 1 MiB) and restarts them by policy (``always``,
``on-failure``, ``never``) with exponential backoff. Each child runs in its own
process group, which ``stop`` signals as a whole (TERM, then KILL). A pid file
(pid and kernel start time) lets a restarted agent kill children that a crashed
agent left behind, without ever hitting a recycled pid.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from .durable import atomic_write

LOG_LIMIT = 1 << 20
STOP_TIMEOUT = 10.0
# A child that ran this long before exiting restarts without backoff.
STABLE_SECONDS = 10.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
POLICIES = ("always", "on-failure", "never")


@dataclass
class ProcessSpec:
    name: str
    argv: list[str]
    cwd: str
    # The app's own variables; the built-in supervisor adds them to the agent's environment
    # (minus FLEET_AGENT_*), a systemd unit gets only these.
    env: dict[str, str]
    log: Path
    pidfile: Path
    restart: str = "on-failure"
    description: str = ""


@dataclass
class ProcessStatus:
    state: str                    # running | stopped | failed
    pid: int | None = None
    restarts: int = 0             # automatic restarts since start()
    exits: int = 0                # times it ended since start(), restarted or not
    last_exit: int | None = None  # exit code; negative: killed by that signal
    error: str = ""


@dataclass
class _Child:
    spec: ProcessSpec
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    exits: int = 0
    quick_failures: int = 0
    last_exit: int | None = None
    next_start: float | None = None
    stopping: bool = False
    done_state: str = "stopped"
    error: str = ""
    log: IO[bytes] | None = None
    forgotten: bool = False


class ProcessManager(Protocol):
    """What the Executor needs from a supervisor: this module's, or systemd.SystemdSupervisor."""

    kind: str
    keeps_running: bool  # apps outlive the agent

    def start(self, spec: ProcessSpec) -> None: ...
    def resume(self, spec: ProcessSpec) -> None: ...
    def restart(self, name: str) -> None: ...
    def stop(self, name: str, timeout: float = STOP_TIMEOUT) -> None: ...
    def forget(self, name: str) -> None: ...
    def status(self, name: str) -> ProcessStatus: ...
    def close(self) -> None: ...


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22, counted after the command name (which may hold spaces) in parentheses.
    return stat.rsplit(")", 1)[1].split()[19]


def kill_stale(pidfile: Path) -> None:
    """Kill the process group a previous agent recorded in ``pidfile``, if that very process still runs."""
    try:
        pid_text, start = pidfile.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return
    if pid > 1 and _proc_start_time(pid) == start:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        for _ in range(50):
            if _proc_start_time(pid) != start:
                break
            time.sleep(0.02)
    pidfile.unlink(missing_ok=True)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, sig)


class Supervisor:
    """Starts, watches, restarts and stops app processes; the same interface as systemd.SystemdSupervisor."""

    kind = "builtin"
    # On agent exit the children go too (systemd-managed apps keep running instead).
    keeps_running = False

    def __init__(self, log_limit: int = LOG_LIMIT) -> None:
        self.log_limit = log_limit
        self._children: dict[str, _Child] = {}
        # Output pipes being read, by fd; each closes at its EOF (a stopped child's pipe included).
        self._pipes: dict[int, tuple[_Child, IO[bytes]]] = {}
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._closed = False

    # --- the interface -------------------------------------------------------
    def start(self, spec: ProcessSpec) -> None:
        """Run ``spec`` (stopping what ran under that name first); counters start from zero."""
        if spec.restart not in POLICIES:
            raise ValueError(f"restart policy must be one of {', '.join(POLICIES)}, got {spec.restart!r}")
        self.stop(spec.name)
        kill_stale(spec.pidfile)
        child = _Child(spec=spec)
        with self._lock:
            self._ensure_thread()
            self._children[spec.name] = child
            self._spawn(child)
        self._wake()

    def resume(self, spec: ProcessSpec) -> None:
        """At agent start: bring ``spec`` up (our children never outlive the agent, so this is a start), unless
        this very spec already runs (the recovery of an install started it)."""
        with self._lock:
            child = self._children.get(spec.name)
            if child is not None and child.spec == spec and child.proc is not None and child.proc.poll() is None:
                return
        self.start(spec)

    def restart(self, name: str) -> None:
        with self._lock:
            child = self._children.get(name)
        if child is None:
            raise KeyError(name)
        self._terminate(child)
        with self._lock:
            child.stopping = False
            self._spawn(child)
        self._wake()

    def stop(self, name: str, timeout: float = STOP_TIMEOUT) -> None:
        with self._lock:
            child = self._children.get(name)
        if child is not None:
            self._terminate(child, timeout)

    def forget(self, name: str) -> None:
        """Stop it and drop it (the app is being removed)."""
        self.stop(name)
        with self._lock:
            child = self._children.pop(name, None)
            if child is not None:
                child.forgotten = True  # its folder may go away: nothing more is written there
                if child.log is not None:
                    child.log.close()

    def status(self, name: str) -> ProcessStatus:
        with self._lock:
            c = self._children.get(name)
            if c is None:
                return ProcessStatus(state="stopped")
            self._check(c)
            if c.proc is not None and c.proc.poll() is None:
                state = "running"
            elif c.next_start is not None:
                state = "failed"  # crashed, waiting to be restarted
            else:
                state = c.done_state
            return ProcessStatus(state=state, pid=c.proc.pid if c.proc else None, restarts=c.restarts,
                                 exits=c.exits, last_exit=c.last_exit, error=c.error)

    def close(self) -> None:
        with self._lock:
            names = list(self._children)
        threads = [threading.Thread(target=self.forget, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with self._lock:
            self._closed = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for _, pipe in self._pipes.values():
                pipe.close()
            self._pipes.clear()

    # --- inside ----------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._closed = False
            if self._wake_r < 0:
                self._wake_r, self._wake_w = os.pipe()
                os.set_blocking(self._wake_w, False)
            self._thread = threading.Thread(target=self._watch, name="fleet-supervisor", daemon=True)
            self._thread.start()

    def _wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def _note(self, child: _Child, text: str) -> None:
        self._write_log(child, f"[fleet-agent {time.strftime('%Y-%m-%d %H:%M:%S')}] {text}\n".encode())

    def _write_log(self, child: _Child, data: bytes) -> None:
        log = child.spec.log
        try:
            if child.log is None or child.log.closed:
                log.parent.mkdir(parents=True, exist_ok=True)
                child.log = open(log, "ab")  # noqa: SIM115 (kept open while the child runs)
            if child.log.tell() + len(data) > self.log_limit and child.log.tell() > 0:
                child.log.close()
                os.replace(log, log.with_name(log.name + ".1"))
                child.log = open(log, "ab")  # noqa: SIM115
            child.log.write(data)
            child.log.flush()
        except OSError:
            pass  # a full disk must not take the app down with it

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        child.next_start = None
        child.started = time.monotonic()
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_AGENT_")}
            env.update(spec.env)
            proc = subprocess.Popen(spec.argv, cwd=spec.cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                    close_fds=True)
        except OSError as e:
            child.proc = None
            child.error = f"cannot run {spec.argv[0]!r}: {e.strerror or e}"
            self._note(child, child.error)
            self._ended(child, 127)
            return
        child.proc, child.error = proc, ""
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        self._pipes[proc.stdout.fileno()] = (child, proc.stdout)
        start = _proc_start_time(proc.pid)
        with contextlib.suppress(OSError):
            atomic_write(spec.pidfile, f"{proc.pid} {start}\n".encode())
        self._note(child, f"started {spec.description or spec.name} (pid {proc.pid}): {' '.join(spec.argv)}")

    def _ended(self, child: _Child, code: int) -> None:
        """The child ended on its own: restart it by policy, or leave it ended."""
        self._drain(child)
        child.proc = None
        child.exits += 1
        child.last_exit = code
        policy = child.spec.restart
        if policy == "always" or (policy == "on-failure" and code != 0):
            ran = time.monotonic() - child.started
            child.quick_failures = 0 if ran >= STABLE_SECONDS else child.quick_failures + 1
            delay = min(BACKOFF_FIRST * 2 ** max(child.quick_failures - 1, 0), BACKOFF_MAX)
            child.next_start = time.monotonic() + delay
            self._note(child, f"exited with {_describe(code)}; restarting in {delay:.1f} s")
        else:
            child.done_state = "stopped" if code == 0 else "failed"
            self._note(child, f"exited with {_describe(code)}; restart policy {policy}: not restarting")

    def _terminate(self, child: _Child, timeout: float = STOP_TIMEOUT) -> None:
        with self._lock:
            child.stopping = True
            child.next_start = None
            proc = child.proc
        if proc is not None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            # Whatever else is left in its group.
            _signal_group(proc, signal.SIGKILL)
        with self._lock:
            if child.proc is proc and proc is not None:
                child.proc = None
                self._note(child, f"stopped (pid {proc.pid})")
            child.done_state = "stopped"
        child.spec.pidfile.unlink(missing_ok=True)

    def _watch(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                pipes = list(self._pipes)
            try:
                ready, _, _ = select.select([self._wake_r, *pipes], [], [], 0.2)
            except (OSError, ValueError):
                ready = []
            for fd in ready:
                if fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(fd, 4096)
                    continue
                with self._lock:
                    self._read(fd)
            self._reap()

    def _read(self, fd: int) -> int:
        """Copy what a pipe holds to its child's log (lock held): bytes read, 0 for none now, -1 at its end."""
        entry = self._pipes.get(fd)
        if entry is None:
            return -1
        child, pipe = entry
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return 0
        except OSError:
            data = b""
        if not data:
            del self._pipes[fd]
            pipe.close()
            return -1
        if not child.forgotten:
            self._write_log(child, data)
        return len(data)

    def _drain(self, child: _Child) -> None:
        """What an ended child wrote last goes to the log before the note saying it ended (lock held)."""
        for fd, (owner, _) in list(self._pipes.items()):
            if owner is child:
                for _ in range(64):
                    if self._read(fd) <= 0:
                        break

    def _check(self, child: _Child) -> None:
        """Notice that a child ended (called with the lock held)."""
        proc = child.proc
        if proc is not None and not child.stopping:
            code = proc.poll()
            if code is not None:
                child.spec.pidfile.unlink(missing_ok=True)
                self._ended(child, code)

    def _reap(self) -> None:
        now = time.monotonic()
        with self._lock:
            for child in self._children.values():
                self._check(child)
                if child.proc is None and child.next_start is not None and now >= child.next_start \
                        and not child.stopping:
                    child.restarts += 1
                    self._spawn(child)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"
