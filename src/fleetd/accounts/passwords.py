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
    # On Linux, setpriority on a thread id renices that thread only: hashing yields the CPU to the event
    # loop and the writer on a busy machine. Elsewhere the call would renice the whole process: skip it.
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


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
