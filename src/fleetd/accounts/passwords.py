"""The password hashing budget: scrypt runs on a small bounded pool, never on the writer or the event loop.

One scrypt (N=2^15, r=8) costs ~0.1 s of CPU. Run inside the SQLite writer
thread, a flood of login attempts stalled every write; run on the event loop,
it would stall every request. ``hashlib.scrypt`` releases the GIL, so a
thread pool spends the CPU without holding anyone else up, and a cap on the
jobs running plus waiting turns a flood into quick ``resource_exhausted``
answers instead of an ever-growing queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

from ..core.errors import ResourceExhausted

T = TypeVar("T")
THREAD_PREFIX = "fleetd-password"
# Seconds a refused caller is told to wait: a queue at the cap drains in about this long.
RETRY_AFTER = 1.0


def _lower_priority() -> None:
    # Linux schedules threads one by one, so this runs on the pool's own threads only. SCHED_IDLE: a hash runs
    # on a core nothing else wants, and a device request that wakes up preempts it at once (at nice 10 the
    # woken event loop could still wait out a hash's time slice, which is what check-in's p99 showed).
    # Where SCHED_IDLE is refused, nice 10; elsewhere the calls would reach the whole process: skip them.
    if sys.platform != "linux":
        return
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def default_workers() -> int:
    """One hashing thread per two cores, at most two: on a small machine a second hash at once would take the
    core the event loop needs."""
    return max(1, min(2, (os.cpu_count() or 1) // 2))


class PasswordHasher:
    """At most ``workers`` hashes at once and ``queue`` more waiting; beyond that, ResourceExhausted."""

    def __init__(self, workers: int, queue: int) -> None:
        self.capacity = workers + queue
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=THREAD_PREFIX, initializer=_lower_priority)
        self._lock = threading.Lock()
        self._pending = 0
        self.refused = 0

    @property
    def pending(self) -> int:
        """Jobs running or waiting."""
        return self._pending

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1

    def _job(self, fn: Callable[..., T], args: tuple[object, ...]) -> T:
        try:
            return fn(*args)
        finally:
            self._release()  # before the result is handed over: a caller that saw it sees the slot free

    def _on_done(self, fut: concurrent.futures.Future[T]) -> None:
        if fut.cancelled():  # cancelled before it started (its caller went away): _job never ran
            self._release()

    def submit(self, fn: Callable[..., T], *args: object) -> concurrent.futures.Future[T]:
        with self._lock:
            if self._pending >= self.capacity:
                self.refused += 1
                raise ResourceExhausted(
                    f"the server is busy checking passwords ({self.capacity} checks running or waiting); "
                    f"try again in {RETRY_AFTER:g} s", retry_after=RETRY_AFTER)
            self._pending += 1
        try:
            fut = self._pool.submit(self._job, fn, args)
        except BaseException:
            self._release()
            raise
        fut.add_done_callback(self._on_done)
        return fut

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the pool (fn hashes or verifies); raises ResourceExhausted when full."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
