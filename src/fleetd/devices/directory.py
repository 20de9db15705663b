"""The hub's in-memory device directory: what the hot paths read for every device, in columns.

100,000 devices stay resident, so the directory keeps no object per device.
A device id as fleetd makes it (``dev_`` + 12 lowercase hex digits,
core.clock.new_id) is stored as the 48-bit number it spells, in a sorted
``array('q')``; its status, poll interval, device type, auth epoch and last
contact, and presence's online flag, sit at the same index in parallel arrays
(status and type as indexes into small tables of interned strings). That is
34 bytes a device, against about 175 for a dict of id strings to one slotted
record each. Any other id (tests, imports) is kept in a plain dict beside the
columns. Finding a device is a bisect (about a microsecond with building its
record); adding or deleting one moves the arrays' tails (a fraction of a
millisecond at 100,000 devices).

Reads return a :class:`DeviceRuntime` built on the spot: a copy, so the
last contact changes through :meth:`Directory.set_seen`, never by assigning
to a record that was read.
"""

from __future__ import annotations

import math
import re
import sqlite3
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass

PREFIX = "dev_"
_CANONICAL = re.compile(r"dev_[0-9a-f]{12}")
_CANONICAL_RUN = re.compile(r"(?:dev_[0-9a-f]{12})*")  # ids of 16 characters each, joined
_NO_EPOCH = -1
_NEVER = math.nan


@dataclass(slots=True)
class DeviceRuntime:
    """One device as the hot paths see it: what a check-in needs, without touching SQLite."""
    status: str
    poll_interval: int
    device_type: str
    # The auth epoch a bearer token must carry; None when the device may not use one (revoked, DDI).
    epoch: int | None = None
    # The exact last contact; SQLite's copy lags by up to a minute (hub.PERSIST_SEEN_AFTER).
    last_seen: float | None = None


def _number(device_id: str) -> int | None:
    """The number a canonical device id spells, or None for any other id."""
    if len(device_id) != 16 or not _CANONICAL.fullmatch(device_id):
        return None
    return int(device_id[4:], 16)


def _id(n: int) -> str:
    return f"{PREFIX}{n:012x}"


class _Strings:
    """A small table of interned strings (statuses, device types), each stored by its index."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self._index: dict[str, int] = {}

    def code(self, s: str) -> int:
        i = self._index.get(s)
        if i is None:
            i = self._index[s] = len(self.values)
            self.values.append(sys.intern(s))
        return i

    def codes(self, strings: tuple[str, ...]) -> map[int]:
        """The code of each of ``strings`` (a column has few distinct values: each new one is added first)."""
        for s in set(strings).difference(self._index):
            self.code(s)
        return map(self._index.__getitem__, strings)


class Directory:
    """A mapping of device id → :class:`DeviceRuntime` (get, ``[]``, ``in``, set, pop, iterate, len)."""

    def __init__(self) -> None:
        self._ids = array("q")
        self._status = array("B")
        self._poll = array("i")
        self._type = array("I")
        self._epoch = array("q")
        self._seen = array("d")
        # Presence's view (presence.py): 1 where the last sweep found the device online.
        self._online = bytearray()
        self._statuses = _Strings()
        self._types = _Strings()
        self._other: dict[str, DeviceRuntime] = {}
        self._other_online: set[str] = set()
        self._departed: list[str] = []  # deleted while online, until the next sweep takes them

    @classmethod
    def load(cls, rows: sqlite3.Cursor, *, no_epoch: str = "", chunk: int = 500) -> Directory:
        """From rows of (id, status, poll interval, device type, epoch, last seen) sorted by id, read ``chunk`` at
        a time and a column at a time (row by row only in a chunk with another kind of id). A device whose
        status is ``no_epoch`` gets no epoch."""
        d = cls()
        while batch := rows.fetchmany(chunk):
            ids, sts, polls, types, epochs, seen = zip(*batch, strict=True)
            # Every id canonical: one regex over the chunk's ids joined (a tenth of the cost of checking each).
            joined = "".join(ids)
            if set(map(len, ids)) != {16} or not _CANONICAL_RUN.fullmatch(joined):
                for did, st, poll, typ, epoch, last in batch:
                    d[did] = DeviceRuntime(st, poll, typ, None if st == no_epoch else epoch, last)
                continue
            # Sorted ids: each chunk's come after every canonical id before it. Their numbers in one step: the
            # prefix, which no hex digit spells, becomes 16 zero bits of a big-endian 64-bit number.
            numbers = array("q", bytes.fromhex(joined.replace(PREFIX, "0000")))
            if sys.byteorder == "little":
                numbers.byteswap()
            d._ids.extend(numbers)
            d._status.extend(d._statuses.codes(sts))
            d._poll.extend(polls)
            d._type.extend(d._types.codes(types))
            d._epoch.extend([_NO_EPOCH if e is None or s == no_epoch else e for s, e in zip(sts, epochs, strict=True)])
            d._seen.extend([_NEVER if t is None else t for t in seen])
            d._online.extend(bytes(len(ids)))
        return d

    # --- one device ---------------------------------------------------------
    def _find(self, n: int) -> int:
        """The index of number ``n`` in the columns, or -1."""
        i = bisect_left(self._ids, n)
        return i if i < len(self._ids) and self._ids[i] == n else -1

    def _row(self, i: int) -> DeviceRuntime:
        epoch, seen = self._epoch[i], self._seen[i]
        return DeviceRuntime(self._statuses.values[self._status[i]], self._poll[i], self._types.values[self._type[i]],
                             None if epoch == _NO_EPOCH else epoch, None if seen != seen else seen)

    def get(self, device_id: str, default: DeviceRuntime | None = None) -> DeviceRuntime | None:
        n = _number(device_id)
        if n is None:
            return self._other.get(device_id, default)
        i = self._find(n)
        return default if i < 0 else self._row(i)

    def __getitem__(self, device_id: str) -> DeviceRuntime:
        rt = self.get(device_id)
        if rt is None:
            raise KeyError(device_id)
        return rt

    def __contains__(self, device_id: object) -> bool:
        if not isinstance(device_id, str):
            return False
        n = _number(device_id)
        return device_id in self._other if n is None else self._find(n) >= 0

    def _columns(self, rt: DeviceRuntime) -> tuple[int, int, int, int, float]:
        return (self._statuses.code(rt.status), rt.poll_interval, self._types.code(rt.device_type),
                _NO_EPOCH if rt.epoch is None else rt.epoch, _NEVER if rt.last_seen is None else rt.last_seen)

    def __setitem__(self, device_id: str, rt: DeviceRuntime) -> None:
        """Add or replace a device's record (its last contact included)."""
        n = _number(device_id)
        if n is None:
            self._other[device_id] = DeviceRuntime(sys.intern(rt.status), rt.poll_interval, sys.intern(rt.device_type),
                                                   rt.epoch, rt.last_seen)
            return
        status, poll, dtype, epoch, seen = self._columns(rt)
        i = bisect_left(self._ids, n)
        if i == len(self._ids) or self._ids[i] != n:
            self._ids.insert(i, n)
            self._status.insert(i, status)
            self._poll.insert(i, poll)
            self._type.insert(i, dtype)
            self._epoch.insert(i, epoch)
            self._seen.insert(i, seen)
            self._online.insert(i, 0)
            return
        self._status[i], self._poll[i], self._type[i], self._epoch[i], self._seen[i] = status, poll, dtype, epoch, seen

    def pop(self, device_id: str, default: DeviceRuntime | None = None) -> DeviceRuntime | None:
        n = _number(device_id)
        if n is None:
            if device_id in self._other_online:
                self._other_online.discard(device_id)
                self._departed.append(device_id)
            return self._other.pop(device_id, default)
        i = self._find(n)
        if i < 0:
            return default
        rt = self._row(i)
        if self._online[i]:
            self._departed.append(device_id)
        for col in (self._ids, self._status, self._poll, self._type, self._epoch, self._seen, self._online):
            del col[i]
        return rt

    def __delitem__(self, device_id: str) -> None:
        if self.pop(device_id) is None:
            raise KeyError(device_id)

    def last_seen(self, device_id: str) -> float | None:
        rt = self.get(device_id)
        return None if rt is None else rt.last_seen

    def set_seen(self, device_id: str, t: float) -> None:
        """A contact at ``t``; nothing for a device the directory does not hold."""
        n = _number(device_id)
        if n is None:
            rt = self._other.get(device_id)
            if rt is not None:
                rt.last_seen = t
            return
        i = self._find(n)
        if i >= 0:
            self._seen[i] = t

    # --- every device ---------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids) + len(self._other)

    def __iter__(self) -> Iterator[str]:
        return iter(self.snapshot())

    def keys(self) -> Iterator[str]:
        return iter(self)

    def items(self) -> Iterator[tuple[str, DeviceRuntime]]:
        for did in self.snapshot():
            rt = self.get(did)
            if rt is not None:
                yield did, rt

    def values(self) -> Iterator[DeviceRuntime]:
        return (rt for _, rt in self.items())

    def snapshot(self) -> IdSnapshot:
        """The ids held now (a copy of the id column: 8 bytes a device), read in slices."""
        return IdSnapshot(array("q", self._ids), list(self._other))

    def count(self, status: str, online_at: float, slack: float) -> int:
        """Devices with ``status`` whose last contact is within two poll intervals plus ``slack`` of
        ``online_at`` (registry.is_online, over the columns: no record is built)."""
        code = self._statuses._index.get(status)
        total = sum(1 for rt in self._other.values() if rt.status == status and rt.last_seen is not None
                    and online_at - rt.last_seen <= 2 * rt.poll_interval + slack)
        if code is None:
            return total
        for s, poll, seen in zip(self._status, self._poll, self._seen, strict=True):
            if s == code and online_at - seen <= 2 * poll + slack:  # NaN (never seen) compares False
                total += 1
        return total

    # --- presence -------------------------------------------------------------
    def sweep(self, start: int, count: int, at: float, slack: float, status: str = "active"
              ) -> tuple[list[str], list[str], int | None]:
        """Mark up to ``count`` devices, from the id number ``start`` on, online or not (``status`` and a last
        contact within two poll intervals plus ``slack`` of ``at``). → (came online, went offline, the number
        the next step starts at, or None after the last canonical id; then the other ids are swept whole).

        Steps go by id number, not by position, so devices added or deleted between two steps shift nothing.
        """
        came: list[str] = []
        went: list[str] = []
        code = self._statuses._index.get(status, -1)
        ids, st, poll, seen, online = self._ids, self._status, self._poll, self._seen, self._online
        i = bisect_left(ids, start)
        j = min(i + count, len(ids))
        for k in range(i, j):
            on = st[k] == code and at - seen[k] <= 2 * poll[k] + slack  # NaN (never seen) compares False
            if on != online[k]:
                online[k] = on
                (came if on else went).append(_id(ids[k]))
        if j < len(ids):
            return came, went, ids[j]
        for did, rt in self._other.items():
            on = rt.status == status and rt.last_seen is not None and at - rt.last_seen <= 2 * rt.poll_interval + slack
            if on != (did in self._other_online):
                (self._other_online.add if on else self._other_online.discard)(did)
                (came if on else went).append(did)
        return came, went, None

    def take_departed(self) -> list[str]:
        """The devices deleted while a sweep had them online, since the last call."""
        gone, self._departed = self._departed, []
        return gone


class IdSnapshot:
    """Device ids at one moment; ``[i:j]`` gives them as strings, a slice at a time."""

    def __init__(self, numbers: array[int], other: list[str]) -> None:
        self._numbers, self._other = numbers, other

    def __len__(self) -> int:
        return len(self._numbers) + len(self._other)

    def __getitem__(self, s: slice) -> list[str]:
        start, stop, _ = s.indices(len(self))
        k = len(self._numbers)
        out = [_id(n) for n in self._numbers[start:min(stop, k)]]
        if stop > k:
            out += self._other[max(start - k, 0):stop - k]
        return out

    def __iter__(self) -> Iterator[str]:
        for i in range(0, len(self), 2_000):
            yield from self[i:i + 2_000]
