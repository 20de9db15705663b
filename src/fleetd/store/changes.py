"""The change feed: on PostgreSQL, the effects of a write on one replica run on every other replica too.

The store's writer sends the effects a write recorded (:mod:`fleetd.core.effects`, encoded with msgspec) with
``pg_notify`` inside the write's transaction (:class:`Notifier`): PostgreSQL delivers the notification only if the
write commits, after it commits, and in commit order. An encoding longer than one notification may carry goes as
several numbered pieces, which PostgreSQL delivers together, in order (a transaction's notifications are queued at
its commit under one lock). Every replica listens on a connection of its own (:class:`ChangeFeed`, a
process-scope part), skips its own notifications (its writer ran their effects already) and runs the others'
through the same handlers (``Fleet._effect_handlers``) on its event loop.

A listener that loses its connection cannot know what it missed: when it is back, it reloads every cache the
effects keep (the reloads registered with :meth:`ChangeFeed.on_reload`, each the cache's own start-up load),
tells the event stream's subscribers that events may be missing (a ``dropped`` event), and says so in the log.
On SQLite nothing of this is imported or runs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Union

import msgspec
import psycopg

from ..core.effects import Effect
from ..core.errors import FailedPrecondition
from ..core.lifecycle import Scope

log = logging.getLogger(__name__)

CHANNEL = "fleetd_changes"
# Bytes of encoded effects per notification (PostgreSQL's limit for a whole payload is 8000 bytes).
PIECE = 7000
# Seconds between two attempts to reconnect a listener that lost its connection.
RECONNECT_EVERY = 1.0


def _pieces(data: bytes) -> list[bytes]:
    """``data`` (UTF-8) cut into pieces of at most PIECE bytes, each cut at a character's boundary."""
    out, start = [], 0
    while start < len(data):
        end = min(start + PIECE, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # not in the middle of a character
            end -= 1
        out.append(data[start:end])
        start = end
    return out


class Notifier:
    """The writer's side: :meth:`send` in a write's transaction, for the effects other replicas must run."""

    def __init__(self, origin: str, shipped: Callable[[Effect], bool]) -> None:
        self.origin = origin
        self.shipped = shipped  # whether other replicas have a handler for an effect's kind
        self._serial = itertools.count(1)

    def send(self, conn: Any, effects: list[Effect]) -> None:
        kept = [e for e in effects if self.shipped(e)]
        if not kept:
            return
        pieces = _pieces(msgspec.json.encode(kept))
        serial = next(self._serial)
        for i, piece in enumerate(pieces):
            conn.execute("SELECT pg_notify(?, ?)",
                         (CHANNEL, f"{self.origin}:{serial}:{i}:{len(pieces)}:{piece.decode()}"))


Reload = tuple[Callable[[Any], Any], Callable[[Any], None]]


class ChangeFeed:
    """A replica's listener. It LISTENs as soon as it is made (before the caches load, so that no change committed
    after their load is missed); its thread starts with :meth:`start` and runs the effects on that event loop."""

    name = "change feed"
    scope: Scope = "process"  # docs/architecture.md, "Background parts"

    def __init__(self, dsn: str, origin: str, run: Callable[[list[Effect]], None],
                 kinds: Callable[[], list[type[Effect]]]) -> None:
        self.dsn, self.origin, self._run, self._kinds = dsn, origin, run, kinds
        self._reloads: list[Reload] = []
        self._gap: list[Callable[[str], None]] = []
        self._conn: psycopg.Connection[Any] | None = self._listen()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._decoder: msgspec.json.Decoder[Any] | None = None
        self._partial: dict[tuple[str, str], list[str]] = {}
        self.reconnects = 0  # times the listener lost its connection and reloaded the caches
        self.received = 0  # other replicas' writes whose effects ran here

    def on_reload(self, load: Callable[[Any], Any], apply: Callable[[Any], None]) -> None:
        """After a lost connection: ``load(conn)`` on the listener's thread (a store connection), then
        ``apply(loaded)`` on the event loop, before any later effect."""
        self._reloads.append((load, apply))

    def on_gap(self, tell: Callable[[str], None]) -> None:
        """``tell(why)`` on the event loop when changes may have been missed (what cannot be reloaded: events)."""
        self._gap.append(tell)

    def _listen(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, application_name="fleetd-changes", connect_timeout=10)
            conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as e:
            raise FailedPrecondition(f"cannot listen for the other replicas' changes on the PostgreSQL database: "
                                     f"{' '.join(str(e).split())} Check that the server accepts one more connection "
                                     "(each replica keeps two of its own besides the store's).") from None
        return conn

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._decoder = msgspec.json.Decoder(list[Union[tuple(self._kinds())]])  # type: ignore[misc]  # noqa: UP007
        self._stop.clear()
        self._thread = threading.Thread(target=self._listen_loop, name="fleetd-changes", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def close(self) -> None:
        """Close the connection (after :meth:`stop`; the Fleet closes it)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- the listener's thread ----------------------------------------------------------------------------------
    def _listen_loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self._conn is None or self._conn.closed:
                    self._reconnect()
                    continue
                for note in self._conn.notifies(timeout=0.5):
                    self._take(note.payload)
            except psycopg.Error as e:
                if self._conn is not None and not self._conn.closed:
                    self._conn.close()
                self._conn = None
                log.warning("change feed: lost the database connection (%s); reconnecting", " ".join(str(e).split()))
                self._stop.wait(RECONNECT_EVERY)
            except Exception:  # e.g. a notification on our channel that fleetd did not send: keep listening
                log.exception("change feed: a notification could not be handled")

    def _reconnect(self) -> None:
        try:
            conn = self._listen()
        except FailedPrecondition as e:
            log.debug("change feed: cannot reconnect yet: %s", e)
            self._stop.wait(RECONNECT_EVERY)
            return
        self._partial.clear()
        t0 = time.monotonic()
        try:
            self._reload()
        except Exception:
            log.exception("change feed: reloading the caches failed; trying again")
            conn.close()
            self._stop.wait(RECONNECT_EVERY)
            return
        self._conn = conn
        self.reconnects += 1
        log.warning("change feed: reconnected; reloaded the caches other replicas' changes keep (%.2f s); "
                    "events of the time without a connection are lost", time.monotonic() - t0)

    def _reload(self) -> None:
        """Every registered cache loaded afresh (listening already: a change after the load comes as a
        notification and applies on top), handed to the loop in one callback, with the gap's notice."""
        from .database import open_connection  # no import cycle at load time

        conn = open_connection(self.dsn, readonly=True)
        try:
            loaded = [(apply, load(conn)) for load, apply in self._reloads]
        finally:
            conn.close()

        def apply_all() -> None:
            for apply, data in loaded:
                apply(data)
            for tell in self._gap:
                tell("the change feed lost its connection to the database")
        self._call(apply_all)

    def _take(self, payload: str) -> None:
        origin, serial, _piece, n, data = payload.split(":", 4)
        if origin == self.origin:
            return
        if n != "1":
            key = (origin, serial)
            pieces = self._partial.setdefault(key, [])
            pieces.append(data)
            if len(pieces) < int(n):
                return
            data = "".join(self._partial.pop(key))
        assert self._decoder is not None
        try:
            effects = self._decoder.decode(data)
        except msgspec.DecodeError:
            log.exception("change feed: a notification from replica %s could not be read (another fleetd "
                          "version?); reloading the caches", origin)
            self._reload()
            return
        self.received += 1
        self._call(self._run, effects)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop has closed: the server is stopping
            self._stop.set()


def new_origin() -> str:
    """A replica's id in the change feed (unique per process start)."""
    return uuid.uuid4().hex[:16]
