"""Background parts: the one start/stop interface, and running a list of parts in order.

The Fleet lists its parts once, in start order (docs/architecture.md, "Background parts"); the app's lifespan
starts them in that order and stops them in reverse, so what feeds a part stops before it does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Literal, Protocol, get_args

log = logging.getLogger(__name__)

# "fleet": must run once for the whole fleet (the scale-out issue puts it under a lease);
# "process": runs in every server process, on that process's own state.
Scope = Literal["fleet", "process"]
SCOPES: tuple[str, ...] = get_args(Scope)


class Part(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def scope(self) -> Scope: ...

    async def start(self) -> None:
        """Start the background work and return at once; never waits on the network."""

    async def stop(self) -> None:
        """Stop the background work and finish what it holds (flush, close); safe if start() never ran."""


async def stop_all(parts: Sequence[Part]) -> None:
    """Stop ``parts`` in reverse order. Every part is stopped even if one fails; the first failure is raised."""
    first: BaseException | None = None
    for part in reversed(parts):
        try:
            await part.stop()
        except Exception as e:
            log.exception("stopping %s failed", part.name)
            first = first or e
    if first is not None:
        raise first


@asynccontextmanager
async def running(parts: Sequence[Part]) -> AsyncIterator[None]:
    """Start ``parts`` in order, stop them in reverse on the way out. If one fails to start, the ones already
    started (and it) are stopped and its failure is raised."""
    entered: list[Part] = []
    try:
        for part in parts:
            entered.append(part)  # a part that fails half-way through start() is stopped too
            await part.start()
        yield
    except BaseException:
        with contextlib.suppress(Exception):  # stop_all logged it; the first error is the one to see
            await stop_all(entered)
        raise
    await stop_all(entered)
