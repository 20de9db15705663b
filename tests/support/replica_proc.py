"""A fleetd replica as a process of its own, for the kill -9 failover test (tests/test_replicas.py): a Fleet on the
PostgreSQL database ``argv[1]`` with the data dir ``argv[2]``, its background parts running (no HTTP: the lease
needs none). Prints ``running`` once it runs the fleet-scope parts, then waits to be killed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from fleetd.core import lifecycle
from fleetd.core.config import Settings
from fleetd.fleet import Fleet


async def main(dsn: str, data_dir: Path) -> None:
    fleet = Fleet(Settings(data_dir=str(data_dir), tls=False, mdns=False, host="127.0.0.1", database=dsn), lock=False)
    async with lifecycle.running(fleet.parts):
        lease = fleet.lease
        assert lease is not None
        while not lease.running:
            await asyncio.sleep(0.05)
        print("running", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
