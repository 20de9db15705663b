"""Background-task helpers shared by the server's long-running loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
RECANCEL_AFTER = 5.0


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task (if any) and wait until it has really stopped. A task still running
    ``RECANCEL_AFTER`` seconds later has swallowed the cancellation (library code that catches it): it is cancelled
    again, with a warning, rather than waited on for ever; a task's own cleanup gets that long."""
    if task is None or task.done():
        return
    task.cancel()
    while not (await asyncio.wait({task}, timeout=RECANCEL_AFTER))[0]:
        log.warning("background task %s still runs %g s after it was cancelled; cancelling it again",
                    task.get_name(), RECANCEL_AFTER)
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """``await awaitable`` for at most ``seconds`` (TimeoutError after). Use it, not ``asyncio.wait_for``: on Python
    3.11, wait_for returns the result and drops a cancellation that arrives as the awaitable completes, so a
    background loop cancelled at that moment never stops (the suspected cause of a shutdown that hung in CI)."""
    async with asyncio.timeout(seconds):
        return await awaitable
