"""GET /v1/events: the event bus as server-sent events, for the UI and for scripts (viewer role).

Each event is one SSE message::

    id: 17
    event: action.state
    data: {"id": 17, "type": "action.state", "ts": 1764000000.5, "data": {...}}

A comment line (``: heartbeat``) goes out every 15 s so that proxies keep the
connection open and clients notice a dead one. ``?types=alert.,device.online``
keeps only events whose type starts with one of the given prefixes. There is no
replay: a client that reconnects gets the events from then on (the state itself
is always in the API). :func:`close_streams` ends every open stream, so that a
server shutting down need not wait for clients that never hang up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import msgspec
from litestar import Litestar, Request, get
from litestar.response import Stream

from ..core.events import Event
from ..fleet import Fleet
from . import openapi

HEARTBEAT = 15.0
RETRY_MS = 3000


def format_event(ev: Event) -> bytes:
    body = msgspec.json.encode({"id": ev.id, "type": ev.type, "ts": ev.ts, "data": ev.data})
    head = f"id: {ev.id}\n" if ev.id else ""
    return f"{head}event: {ev.type}\n".encode() + b"data: " + body + b"\n\n"


async def stream(fleet: Fleet, prefixes: tuple[str, ...], heartbeat: float = HEARTBEAT,
                 closing: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """The SSE body: events (filtered by type prefix) and heartbeats, until the client goes or ``closing`` is set."""
    events = cast(AsyncGenerator[Event, None], fleet.events.subscribe())
    # The subscription is registered when the generator first runs; do it before saying hello.
    pending: asyncio.Future[Event] = asyncio.ensure_future(events.__anext__())
    closed = asyncio.ensure_future((closing or asyncio.Event()).wait())
    try:
        await asyncio.sleep(0)
        yield f"retry: {RETRY_MS}\n: connected\n\n".encode()
        while True:
            waiting: set[asyncio.Future[Any]] = {pending, closed}
            done, _ = await asyncio.wait(waiting, timeout=heartbeat, return_when=asyncio.FIRST_COMPLETED)
            if closed in done:
                return
            if not done:
                yield b": heartbeat\n\n"
                continue
            ev = pending.result()
            pending = asyncio.ensure_future(events.__anext__())
            if not prefixes or ev.type == "dropped" or ev.type.startswith(prefixes):
                yield format_event(ev)
    finally:
        for task in (pending, closed):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await task
        await events.aclose()


def _closing(app: Litestar) -> asyncio.Event:
    closing: asyncio.Event | None = getattr(app.state, "events_closing", None)
    if closing is None:
        closing = app.state.events_closing = asyncio.Event()
        app.state.events_loop = asyncio.get_running_loop()
    return closing


def close_streams(app: Litestar) -> None:
    """End every open event stream, e.g. when the server starts to shut down (else each open stream holds the
    shutdown for the server's graceful timeout). Safe to call from any thread or a signal handler."""
    loop: asyncio.AbstractEventLoop | None = getattr(app.state, "events_loop", None)
    if loop is not None and not loop.is_closed():
        loop.call_soon_threadsafe(app.state.events_closing.set)


@get("/v1/events", opt={"auth": "viewer"}, include_in_schema=False)
async def events_endpoint(request: Request[Any, Any, Any]) -> Stream:
    fleet: Fleet = request.app.state.fleet
    types = request.query_params.get("types", "")
    prefixes = tuple(p.strip() for p in types.split(",") if p.strip())
    return Stream(stream(fleet, prefixes, closing=_closing(request.app)), media_type="text/event-stream",
                  headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


ROUTES = [events_endpoint]

OPENAPI_PATHS: dict[str, Any] = {
    "/v1/events": {"get": {
        "summary": "Server-sent events: device.online/offline, action.state, rollout.*, alert.fired/resolved "
                   "(viewer role)",
        **openapi.auth("viewer"),
        "parameters": [{"name": "types", "in": "query", "required": False, "schema": {"type": "string"},
                        "description": "Comma-separated type prefixes to keep, e.g. alert.,device.online"}],
        "responses": {"200": {"description": "text/event-stream"}, "401": {"description": "no credentials"},
                      "403": {"description": "a device, or a role below viewer"}}}},
}
