"""DeviceHub: the in-memory side of the device protocol, kept lean for the check-in hot path.

It holds what every check-in needs without touching SQLite: each device's
status, poll interval, auth epoch and last contact (the columns of
directory.Directory, shared with the token checker); which devices have open actions; the hash
of the inventory each last reported. Writes a check-in causes (last seen,
changed inventory) are coalesced and flushed by one task about once a second on
the writer thread. Every write that changes devices or actions records an effect
(registry.DeviceChanged, DeviceGone, ActionsOpen) that the store hands to the hub
once the transaction has committed.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

import msgspec

from ..core.lifecycle import Scope
from ..core.tasks import cancel_and_wait
from ..store.database import Store
from . import actions, registry, storage
from .devauth import DeviceTokens
from .directory import DeviceRuntime, Directory
from .inventory import Component, Inventory, check_inventory_size
from .registry import ActionsOpen, DeviceChanged, DeviceGone

log = logging.getLogger(__name__)
FLUSH_INTERVAL = 1.0
# last_seen is written to the database only when the stored value is this old; the hub has the exact one. Replicas
# (PostgreSQL) write it sooner: the lease holder's orchestrator and presence read the others' check-ins from the
# database, and a rollout's soak ends at a check-in. A device polling every minute or slower is written at each
# check-in either way; only faster pollers cost more.
PERSIST_SEEN_AFTER = 60.0
PERSIST_SEEN_AFTER_SHARED = 5.0
# Component lists kept per device between flushes (a device changes versions a few times a second at most).
MAX_PENDING_COMPONENT_LISTS = 8


class DeviceHub:
    name = "hub"
    scope: Scope = "process"  # docs/architecture.md, "Background parts"

    def __init__(self, store: Store, token_key: bytes) -> None:
        self.persist_seen_after = PERSIST_SEEN_AFTER if store.dsn is None else PERSIST_SEEN_AFTER_SHARED
        self.store = store
        # On a connection of its own, closed after: the scan would leave a pooled reader's page cache full of
        # device rows for the rest of the process's life (2 MiB).
        conn = store.connect(readonly=True)
        try:
            self.runtime: Directory = registry.load_runtime(conn)
        finally:
            conn.close()
        self.tokens = DeviceTokens(token_key, self.runtime)
        self.open_actions: set[str] = store.read_sync(actions.devices_with_open_actions)
        self._seen: dict[str, tuple[float, str | None]] = {}
        self.mqtt_seen: dict[str, float] = {}  # device id -> its last message through the MQTT broker (mqtt/bridge.py)
        self._persisted: dict[str, tuple[float, str | None]] = {}
        self._inventory_hash: dict[str, int] = {}
        self._inventory: dict[str, tuple[str | None, list[list[Component]]]] = {}
        self._task: asyncio.Task[None] | None = None

    # --- keeping the directory in step -------------------------------------
    def set_device(self, device_id: str, runtime: DeviceRuntime | None, epoch: int | None) -> None:
        """Replace a device's record (``None``: it is gone); ``epoch`` None or a revoked status stops its tokens."""
        if runtime is None:
            self.runtime.pop(device_id, None)
            self.open_actions.discard(device_id)
            return
        runtime.last_seen = self.runtime.last_seen(device_id)
        runtime.epoch = None if runtime.status == "revoked" else epoch
        self.runtime[device_id] = runtime

    # The effects a committed write records (the handlers Fleet registers with the store).
    def device_changed(self, e: DeviceChanged) -> None:
        self.set_device(e.device_id, DeviceRuntime(e.status, e.poll_interval, e.device_type), e.epoch)

    def device_gone(self, e: DeviceGone) -> None:
        self.set_device(e.device_id, None, None)

    def actions_open(self, e: ActionsOpen) -> None:
        if e.open:
            self.open_actions.update(e.device_ids)
        else:
            self.open_actions.difference_update(e.device_ids)

    # After the change feed lost its connection (PostgreSQL replicas, store/changes.py): the start's load again.
    @staticmethod
    def load_state(conn: sqlite3.Connection) -> tuple[Directory, set[str]]:
        return registry.load_runtime(conn), actions.devices_with_open_actions(conn)

    def apply_state(self, state: tuple[Directory, set[str]]) -> None:
        """Every device's record and the open-actions set as loaded (last contacts: the newer of the two)."""
        fresh, open_actions = state
        for did in [d for d in self.runtime if d not in fresh]:
            self.runtime.pop(did)
        for did, rt in fresh.items():
            mine = self.runtime.last_seen(did)
            if mine is not None and (rt.last_seen is None or mine > rt.last_seen):
                rt.last_seen = mine
            self.runtime[did] = rt
        self.open_actions.clear()
        self.open_actions.update(open_actions)

    def seen_elsewhere(self, rows: list[tuple[str, float, str | None]]) -> None:
        """Contacts other replicas stored (device id, last seen, address): the newer ones become this hub's, as
        stored already (presence on PostgreSQL replicas, devices/presence.py)."""
        for did, t, addr in rows:
            mine = self.runtime.last_seen(did)
            if mine is None or t > mine:
                self.runtime.set_seen(did, t)
                self._persisted[did] = (t, addr)

    # --- check-in ------------------------------------------------------------
    def note_checkin(self, device_id: str, addr: str | None, inventory: Inventory | None,
                     components: list[Component]) -> None:
        """Remember a check-in; the inventory is written only when it changed (and then at the next flush)."""
        inv = msgspec.json.encode(inventory).decode() if inventory is not None else None
        if inv is not None:
            check_inventory_size(inv)
        self.note_seen(device_id, addr)
        h = hash((inv, msgspec.json.encode(components)))
        if self._inventory_hash.get(device_id) != h:
            self._inventory_hash[device_id] = h
            pending = self._inventory.get(device_id)
            if inv is None and pending is not None:
                inv = pending[0]  # a check-in without inventory must not drop one still waiting for the flush
            # Every component list since the last flush is applied in order, so a version that came and went
            # within one flush (install, reboot, check in again) still becomes the previous known-good version.
            history = pending[1] if pending is not None else []
            if not history or history[-1] != components:
                history = [*history, components][-MAX_PENDING_COMPONENT_LISTS:]
            self._inventory[device_id] = (inv, history)

    def note_seen(self, device_id: str, addr: str | None) -> None:
        """A contact: last seen (and address) only, e.g. a hawkBit DDI poll, which reports no components. ``addr``
        None (a check-in over MQTT, which shows no address) keeps the address last seen."""
        t = time.time()
        self.runtime.set_seen(device_id, t)
        stored = self._persisted.get(device_id)
        if addr is None and stored is not None:
            addr = stored[1]
        if stored is None or t - stored[0] >= self.persist_seen_after or stored[1] != addr:
            self._seen[device_id] = self._persisted[device_id] = (t, addr)

    def last_seen(self, device_id: str) -> float | None:
        return self.runtime.last_seen(device_id)

    async def flush(self, *, everything: bool = False) -> None:
        """Write coalesced check-ins; ``everything`` also writes last-seen times not yet due (at shutdown)."""
        if everything:
            for did, rt in self.runtime.items():
                t = rt.last_seen
                if t is None:
                    continue
                stored = self._persisted.get(did)
                if stored is None or stored[0] < t:
                    self._seen[did] = (t, stored[1] if stored else None)
        seen, self._seen = self._seen, {}
        inventory, self._inventory = self._inventory, {}
        if not seen and not inventory:
            return

        def write(conn: sqlite3.Connection) -> None:
            storage.record_seen(conn, [(t, addr, did) for did, (t, addr) in seen.items()])
            for did, (inv, history) in inventory.items():
                if inv is not None:
                    storage.set_inventory(conn, did, inv)
                for components in history:
                    _store_components(conn, did, components)

        try:
            await self.store.write(write)
        except Exception:
            log.exception("could not record check-ins; retrying at the next flush")
            for did, when in seen.items():
                self._seen.setdefault(did, when)
                self._persisted.pop(did, None)
            for did, inv in inventory.items():
                self._inventory.setdefault(did, inv)
                self._inventory_hash.pop(did, None)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            await self.flush()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._flush_loop(), name="fleetd-checkin-flush")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self.flush(everything=True)


def _store_components(conn: sqlite3.Connection, device_id: str, components: list[Component]) -> None:
    """Upsert what the device runs. A version change keeps the old version as known-good if it was healthy."""
    t = time.time()
    current = {r["name"]: r for r in storage.component_rows(conn, device_id)}
    for c in components:
        old = current.get(c.name)
        previous = old["previous_version"] if old else None
        if old and old["version"] != c.version and old["health"] != "unhealthy" and old["state"] != "failed":
            previous = old["version"]
        storage.upsert_component(conn, device_id, c.name, c.version, previous, c.state, c.health, c.restarts, t)
    reported = {c.name for c in components}
    for name in current.keys() - reported:
        storage.delete_component(conn, device_id, name)
