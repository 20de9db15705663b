"""Housekeeping jobs run when due and survive failures."""

from __future__ import annotations

import asyncio
import time

import pytest

from fleetd.accounts import users as auth
from fleetd.accounts.audit import SYSTEM
from fleetd.maintenance import Maintenance

pytestmark = pytest.mark.both_backends


def test_due_jobs_run_and_failures_do_not_stop_the_rest(fleet) -> None:  # type: ignore[no-untyped-def]
    # An expired session and an unreferenced old blob, both for the jobs to clean up.
    user = fleet.store.write_sync(lambda c: auth.create_user(c, SYSTEM, "u1", "a-long-password", "viewer"))
    fleet.store.write_sync(lambda c: auth.create_session(c, user, 1))
    fleet.store.write_sync(lambda c: c.execute("UPDATE sessions SET expires_at = 0"))
    info = asyncio.run(fleet.blobs.put_bytes(b"orphan"))
    fleet.store.write_sync(lambda c: c.execute("UPDATE blobs SET created_at = 0"))

    m = Maintenance(fleet)
    calls = []

    async def broken() -> None:
        calls.append("broken")
        raise RuntimeError("boom")

    m.jobs[0].run = broken  # the first job fails ...
    m.jobs.append(type(m.jobs[0])("real gc", 3600, lambda: fleet.blobs.gc(grace_seconds=0)))
    for j in m.jobs:
        j.next_at = 0
    asyncio.run(m.run_due())
    assert calls == ["broken"]
    # ... and the others still ran.
    assert fleet.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]) == 0
    assert fleet.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM blobs WHERE sha256 = ?",
                                                     (info.sha256,)).fetchone()[0]) == 0
    # Not due again until the interval has passed.
    calls.clear()
    asyncio.run(m.run_due())
    assert calls == []
    assert all(j.next_at > time.monotonic() for j in m.jobs)
