"""Background-task helpers: a cancelled loop really stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from fleetd.core import tasks
from fleetd.core.tasks import cancel_and_wait, within


async def _cancel_as_it_completes(wait: object) -> str:
    """Run a task that awaits ``wait(future, 10)``; resolve the future and cancel the task in the same loop step."""
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def waiter() -> str:
        await wait(fut, 10)  # type: ignore[operator]
        return "went on"

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)  # the task now waits on fut
    fut.set_result("done")
    task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return "cancelled"


def test_within_keeps_a_cancellation_that_arrives_as_the_awaitable_completes() -> None:
    assert asyncio.run(_cancel_as_it_completes(within)) == "cancelled"


def test_within_times_out() -> None:
    async def run() -> None:
        await within(asyncio.sleep(5), 0.01)

    with pytest.raises(TimeoutError):
        asyncio.run(run())


def test_cancel_and_wait_cancels_again_a_task_that_swallowed_the_cancellation(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(tasks, "RECANCEL_AFTER", 0.05)
    seen: list[str] = []

    async def swallows_once() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)
        seen.append("swallowed")
        await asyncio.sleep(10)  # the second cancellation ends it

    async def run() -> bool:
        task = asyncio.create_task(swallows_once(), name="swallower")
        await asyncio.sleep(0)
        await within(cancel_and_wait(task), 5)
        return task.cancelled()

    with caplog.at_level(logging.WARNING, logger="fleetd.core.tasks"):
        assert asyncio.run(run())
    assert seen == ["swallowed"]
    assert "swallower" in caplog.text
