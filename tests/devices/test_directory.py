"""The hub's device directory in columns (devices/directory.py): a mapping that holds no object per device."""

from __future__ import annotations

import random
import sqlite3

from fleetd.devices import registry
from fleetd.devices.directory import DeviceRuntime, Directory
from fleetd.devices.registry import ONLINE_SLACK


def _id(n: int) -> str:
    return f"dev_{n:012x}"


def test_it_behaves_as_the_dict_it_replaces() -> None:
    d, ref = Directory(), {}
    rnd = random.Random(7)
    ids = [_id(rnd.getrandbits(48)) for _ in range(300)] + ["dev_a", "dev_0000000000AB", "ddi-x", "dev_0000_0000_01"]
    for step in range(3000):
        did = rnd.choice(ids)
        op = rnd.random()
        if op < 0.5:
            rt = DeviceRuntime(rnd.choice(["active", "pending", "revoked"]), rnd.choice([30, 60, 3600]),
                               rnd.choice(["rpi4", "sim"]), rnd.choice([None, 0, 7]),
                               rnd.choice([None, 1_700_000_000.5 + step]))
            d[did] = rt
            ref[did] = DeviceRuntime(rt.status, rt.poll_interval, rt.device_type, rt.epoch, rt.last_seen)
        elif op < 0.7:
            assert d.pop(did) == ref.pop(did, None)
        elif op < 0.8:
            d.set_seen(did, float(step))
            if did in ref:
                ref[did].last_seen = float(step)
        assert d.get(did) == ref.get(did) and (did in d) == (did in ref) and d.last_seen(did) == (
            ref[did].last_seen if did in ref else None)
    assert len(d) == len(ref) and sorted(d) == sorted(ref) and dict(d.items()) == ref
    # Canonical ids live in the columns, in order; the others (upper case, underscores, short) beside them.
    canonical = sorted(i for i in ref if len(i) == 16 and i[4:].isalnum() and i[4:] == i[4:].lower())
    assert list(d)[:len(canonical)] == canonical
    assert d.count("active", 10_000.0, ONLINE_SLACK) == sum(
        1 for rt in ref.values() if rt.status == "active" and rt.last_seen is not None
        and 10_000.0 - rt.last_seen <= 2 * rt.poll_interval + ONLINE_SLACK)


def test_load_reads_canonical_ids_into_columns_and_the_others_beside_them() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE devices (id TEXT PRIMARY KEY, status TEXT, poll_interval INTEGER, device_type TEXT, "
                 "auth_epoch INTEGER, last_seen REAL)")
    rows = [(_id(n), "active", 60, "sim", 3, 1000.5 + n) for n in (5, 2, 9, 0xfedcba987654)] + [
        (_id(1), "revoked", 60, "sim", 4, None), ("dev_a", "active", 30, "rpi", 1, None),
        ("dev_0x0000000001", "pending", 60, "sim", 0, None), ("dev_00000000000A", "active", 60, "sim", 2, None)]
    conn.executemany("INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?)", rows)
    d = registry.load_runtime(conn)
    held = list(d)  # the columns by number, then the other ids
    assert held[:5] == [_id(1), _id(2), _id(5), _id(9), "dev_fedcba987654"]  # all 48 bits of the number
    assert sorted(held[5:]) == sorted(["dev_a", "dev_0x0000000001", "dev_00000000000A"])
    assert d[_id(1)] == DeviceRuntime("revoked", 60, "sim", None, None)  # a revoked device keeps no epoch
    assert d[_id(9)] == DeviceRuntime("active", 60, "sim", 3, 1009.5)
    assert d["dev_fedcba987654"].last_seen == 1000.5 + 0xfedcba987654
    assert d["dev_0x0000000001"].status == "pending" and d.get(_id(0)) is None
    rt = d[_id(2)]
    rt.last_seen = 99.0
    assert d.last_seen(_id(2)) == 1002.5  # setting a read copy changes nothing: set_seen does
    d.set_seen(_id(2), 99.0)
    assert d.last_seen(_id(2)) == 99.0


def test_sweep_steps_by_id_and_reports_changes_and_deleted_online_devices() -> None:
    d = Directory()
    for n in range(10):
        d[_id(n)] = DeviceRuntime("active", 60, "sim", 0, 1000.0 if n % 2 else None)
    d["dev_other"] = DeviceRuntime("active", 60, "sim", 0, 1000.0)
    came: list[str] = []
    start: int | None = 0
    steps = 0
    while start is not None:
        c, w, start = d.sweep(start, 3, 1000.0, ONLINE_SLACK)
        came += c
        assert not w
        steps += 1
        if steps == 2:
            d[_id(0)] = DeviceRuntime("active", 60, "sim", 0, 1000.0)  # added behind the sweep: next time
    assert steps == 4 and came == [_id(n) for n in (1, 3, 5, 7, 9)] + ["dev_other"]
    d.pop(_id(3))
    d.pop("dev_other")
    assert d.take_departed() == [_id(3), "dev_other"] and d.take_departed() == []
    c, w, start = d.sweep(0, 100, 1000.0 + 2 * 60 + ONLINE_SLACK + 1, ONLINE_SLACK)
    assert c == [] and w == [_id(n) for n in (1, 5, 7, 9)] and start is None
