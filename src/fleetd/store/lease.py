"""The fleet lease: on PostgreSQL, exactly one replica at a time runs the fleet-scope background parts.

Every replica runs one :class:`FleetLease` (a process-scope part) that holds the fleet-scope parts
(docs/architecture.md, "Background parts"). It tries, every ``check`` seconds, to take a session-level advisory
lock (:data:`LEASE_KEY`) on a connection of its own; the replica that has it starts the parts, then probes the
connection every ``check`` seconds. Why an advisory lock and not a lease row: docs/decisions.md.

Never two at once:

- the holder stops its parts when no probe has answered for ``seconds / 2`` (a connection lost, a database that
  does not answer), before the database can have given the lock to another: PostgreSQL frees the lock of a silent
  client only after its TCP keepalives fail, set on the lease's session to at least ``seconds`` of silence;
- a replica that takes the lock waits ``seconds / 2`` before it starts the parts, so that a holder whose connection
  broke with a reset (the database restarted, the lock freed at once) has noticed and stopped them meanwhile;
- a holder that dies (``kill -9``) closes its socket: the database frees the lock at once and another replica
  takes over within ``check + seconds / 2`` (measured in docs/decisions.md). A holder that is paused (SIGSTOP)
  keeps its lock (its kernel still answers keepalives): nothing runs anywhere until it resumes or dies
  (tests/test_replicas.py pauses a holder process for 2 x ``seconds``, resumes it, pauses and kills it).

On SQLite the data dir's lock already makes one process the only server: no lease, the parts run as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from ..core.lifecycle import Part, Scope, stop_all
from ..core.tasks import cancel_and_wait, within

log = logging.getLogger(__name__)

# The advisory lock's key ("fleetd" + 1; the migration lock is "fleetd": store.database._PG_MIGRATE_LOCK). Advisory
# locks are per database, so fleets on other databases of the same server do not share it.
LEASE_KEY = 0x666C65657464 + 1


class FleetLease:
    """Holds ``parts`` (fleet-scope) under the fleet lease of the PostgreSQL database at ``dsn``."""

    name = "lease"
    scope: Scope = "process"  # docs/architecture.md, "Background parts"

    def __init__(self, dsn: str, parts: Sequence[Part], *, seconds: float, check: float) -> None:
        self.dsn, self.parts = dsn, tuple(parts)
        self.seconds, self.check = seconds, check
        self.holding = False  # whether this replica holds the lease (its parts run once the grace has passed)
        self.running = False  # whether the parts run here
        self._conn: Any = None  # psycopg.AsyncConnection while holding
        self._last_ok = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="fleetd-lease")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self._release("this server stops")

    # --- the loop -----------------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            try:
                if self.holding:
                    await self._renew()
                else:
                    await self._acquire()
            except Exception:
                log.exception("fleet lease: unexpected failure; letting go of the lease")
                await self._release("of an unexpected failure")
            await asyncio.sleep(self.check)

    async def _acquire(self) -> None:
        conn = None
        try:
            conn = await within(self._connect(), self.seconds)
            cur = await within(conn.execute("SELECT pg_try_advisory_lock(%s)", (LEASE_KEY,)), self.check)
            row = await cur.fetchone()
        except Exception as e:  # the database is down or slow: try again at the next check
            log.debug("fleet lease: cannot try the lease: %s", e)
            await _close(conn)
            return
        if not (row and row[0]):
            await _close(conn)
            return
        self._conn, self.holding, self._last_ok = conn, True, time.monotonic()
        grace = self.seconds / 2
        log.info("fleet lease taken; starting the fleet-scope parts in %.1f s", grace)
        await asyncio.sleep(grace)  # a previous holder whose connection broke stops its parts meanwhile
        if await self._probe():
            await self._start_parts()
        else:
            await self._release("the database stopped answering before the parts started")

    async def _renew(self) -> None:
        if not await self._probe() and time.monotonic() - self._last_ok >= self.seconds / 2:
            await self._release(f"the database has not answered for {self.seconds / 2:g} s")

    async def _probe(self) -> bool:
        try:
            await within(self._conn.execute("SELECT 1"), self.check)
        except Exception as e:
            if self._conn.broken or self._conn.closed:
                await self._release(f"its connection was lost ({e})")
            return False
        self._last_ok = time.monotonic()
        return True

    async def _connect(self) -> Any:
        import psycopg  # PostgreSQL mode only

        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, application_name="fleetd-lease",
                                                     connect_timeout=max(2, math.ceil(self.seconds)))
        # The database frees the lock of a client that went silent (a dead host, a cut network) only after this
        # long: at least ``seconds``, while the holder stops its parts after ``seconds / 2`` without an answer.
        idle = max(1, math.ceil(self.seconds / 2))
        for setting, value in (("tcp_keepalives_idle", idle), ("tcp_keepalives_interval", 1),
                               ("tcp_keepalives_count", idle)):
            await conn.execute(f"SET {setting} = {int(value)}")
        return conn

    # --- the parts ----------------------------------------------------------------------------------------------
    async def _start_parts(self) -> None:
        self.running = True  # set first: a stop while they start stops them all (stopping one not started is safe)
        try:
            for part in self.parts:
                await part.start()
        except Exception:
            log.exception("fleet lease: a fleet-scope part failed to start; letting go of the lease")
            await self._release("a part failed to start")
            return
        log.info("fleet lease: the fleet-scope parts run on this replica (%s)", ", ".join(p.name for p in self.parts))

    async def _release(self, why: str) -> None:
        """Stop the parts (if they run), then let go of the lock (closing the connection frees it)."""
        if self.running:
            self.running = False
            log.warning("fleet lease: stopping the fleet-scope parts: %s", why)
            try:
                await stop_all(self.parts)
            except Exception:
                log.exception("fleet lease: stopping the fleet-scope parts failed")
        if self.holding:
            log.info("fleet lease given up: %s", why)
        self.holding = False
        conn, self._conn = self._conn, None
        await _close(conn)


async def _close(conn: Any) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close()
