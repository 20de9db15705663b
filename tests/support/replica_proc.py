"""A fleetd replica as a process of its own, for the failover tests of tests/test_replicas.py (kill -9, SIGSTOP): a
Fleet on the PostgreSQL database ``argv[1]`` with the data dir ``argv[2]``, its background parts running (no HTTP:
the lease needs none); ``argv[3]`` and ``argv[4]``, when given, are its lease_seconds and lease_check_seconds (else
the defaults). Prints ``running`` once it runs the fleet-scope parts, and ``stopped`` if it stops them; then waits to
be killed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from fleetd.core import lifecycle
from fleetd.core.config import Settings
from fleetd.fleet import Fleet


async def main(dsn: str, data_dir: Path, timings: list[str]) -> None:
    lease_timings = dict(zip(("lease_seconds", "lease_check_seconds"), map(float, timings), strict=False))
    fleet = Fleet(Settings(data_dir=str(data_dir), tls=False, mdns=False, host="127.0.0.1", database=dsn,
                           **lease_timings), lock=False)
    async with lifecycle.running(fleet.parts):
        lease = fleet.lease
        assert lease is not None
        while not lease.running:
            await asyncio.sleep(0.05)
        print("running", flush=True)
        while lease.running:
            await asyncio.sleep(0.05)
        print("stopped", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:5]))
