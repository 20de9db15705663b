"""The on-disk queue: order, durability across reopen and kill -9, torn items, and the byte bound."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet_agent.queue import DiskQueue, queue_stats


def test_items_come_back_in_order_and_ack_removes_them(tmp_path: Path) -> None:
    q = DiskQueue(tmp_path / "q")
    for i in range(5):
        assert q.put({"n": i})
    assert len(q) == 5
    got = q.peek(3)
    assert [item["n"] for _, item in got] == [0, 1, 2]
    q.ack([seq for seq, _ in got[:2]])
    assert [item["n"] for _, item in q.peek(10)] == [2, 3, 4]
    # Reopening sees the same items, and new ones go after them.
    q2 = DiskQueue(tmp_path / "q")
    q2.put({"n": 5})
    assert [item["n"] for _, item in q2.peek(10)] == [2, 3, 4, 5]
    assert queue_stats(tmp_path / "q") == {"items": 4, "bytes": q2.bytes}


def test_a_put_torn_by_a_crash_and_an_unreadable_item_are_skipped(tmp_path: Path) -> None:
    d = tmp_path / "q"
    q = DiskQueue(d)
    q.put({"n": 1})
    q.put({"n": 2})
    # A crash inside put() leaves a temp file that was never renamed: not an item.
    (d / ".tmp-3-deadbeef").write_bytes(b'{"n": 3, "trunc')
    # A file system that lost data despite fsync: an item file with half its bytes.
    (d / "0000000000000003.json").write_bytes(b'{"n": 3, "tru')
    q = DiskQueue(d)
    assert not (d / ".tmp-3-deadbeef").exists()
    assert [item["n"] for _, item in q.peek(10)] == [1, 2]
    assert q.dropped == 1 and len(q) == 2
    assert not (d / "0000000000000003.json").exists()
    q.put({"n": 4})
    assert [item["n"] for _, item in q.peek(10)] == [1, 2, 4]


def test_the_byte_bound_drops_the_oldest_first(tmp_path: Path) -> None:
    q = DiskQueue(tmp_path / "q", max_bytes=100)
    for i in range(10):
        q.put({"n": i, "pad": "x" * 20})  # 36 bytes each: two fit
    assert q.bytes == 72
    kept = [item["n"] for _, item in q.peek(100)]
    assert kept == [8, 9]
    assert q.dropped == 8
    # An item larger than the whole bound is refused, and nothing else is lost for it.
    assert q.put({"pad": "y" * 200}) is False
    assert [item["n"] for _, item in q.peek(100)] == kept
    # Reopening with a smaller bound trims at once.
    q = DiskQueue(tmp_path / "q", max_bytes=50)
    assert [item["n"] for _, item in q.peek(100)] == [9]


ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(0, 80)),
    st.tuples(st.just("ack"), st.integers(1, 4)),
    st.tuples(st.just("reopen"), st.just(0)),
), max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops, bound=st.sampled_from([0, 64, 200, 1000]))
def test_the_queue_behaves_like_a_bounded_fifo(tmp_path_factory, ops: list[tuple[str, int]], bound: int) -> None:
    d = tmp_path_factory.mktemp("q")
    q = DiskQueue(d, max_bytes=bound)
    model: list[tuple[int, int]] = []  # (id, size)
    counter = 0
    for op, arg in ops:
        if op == "put":
            item = {"id": counter, "pad": "p" * arg}
            size = len(json.dumps(item, separators=(",", ":")))
            stored = q.put(item)
            assert stored == (not bound or size <= bound)
            if stored:
                model.append((counter, size))
                while bound and sum(s for _, s in model) > bound:
                    model.pop(0)
            counter += 1
        elif op == "ack":
            got = q.peek(arg)
            q.ack(seq for seq, _ in got)
            del model[:len(got)]
        else:
            q = DiskQueue(d, max_bytes=bound)
        assert [item["id"] for _, item in q.peek(1000)] == [i for i, _ in model]
        assert q.bytes == sum(s for _, s in model)
        if bound:
            assert q.bytes <= bound


_WRITER = """
import sys
from pathlib import Path
from fleet_agent.queue import DiskQueue
q = DiskQueue(Path(sys.argv[1]), max_bytes=int(sys.argv[2]))
n = 0
while True:
    q.put({"n": n, "pad": "z" * (n % 300)})
    print(n, flush=True)   # acknowledged: put() returned
    n += 1
"""


def test_kill_9_while_writing_loses_nothing_acknowledged(tmp_path: Path) -> None:
    for bound in (0, 5_000):
        d = tmp_path / f"q{bound}"
        p = subprocess.Popen([sys.executable, "-c", _WRITER, str(d), str(bound)], stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        acked = -1
        deadline = time.monotonic() + 60
        while acked < 100 and time.monotonic() < deadline:
            acked = int(p.stdout.readline())
        assert acked >= 100, "the writer is too slow"
        time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        rest = p.stdout.read().split()
        acked = int(rest[-1]) if rest else acked
        q = DiskQueue(d, max_bytes=bound)
        got = [item["n"] for _, item in q.peek(100_000)]
        assert not list(d.glob(".tmp-*"))
        # Every acknowledged put is there (or, bounded, every one that fits), in order, without gaps.
        assert got == list(range(got[0], got[-1] + 1))
        assert got[-1] >= acked
        if not bound:
            assert got[0] == 0
        else:
            assert q.bytes <= bound and got[0] > 0
