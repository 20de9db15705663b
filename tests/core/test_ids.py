"""Ids: action ids sort by when they were made (docs/decisions.md, "Action ids sort by time") and stay unguessable."""

from __future__ import annotations

import re
import time

from fleetd.core.clock import new_id, new_ordered_id


def test_ordered_ids_sort_by_time_and_keep_48_random_bits() -> None:
    first = [new_ordered_id("act") for _ in range(2000)]
    time.sleep(0.002)
    later = new_ordered_id("act")
    assert all(re.fullmatch(r"act_[0-9a-f]{23}", i) for i in [*first, later])
    assert len(set(first)) == len(first)
    assert max(first) < later  # a later millisecond sorts after every id made before it
    assert int(later[4:15], 16) // 1000 in range(int(time.time()) - 5, int(time.time()) + 1)
    assert len({i[15:] for i in first}) == len(first)  # the random part alone tells them apart
    assert len(later) <= 39  # the RTOS shim's FLEET_ACTION_ID_MAX
    assert re.fullmatch(r"dev_[0-9a-f]{12}", new_id("dev"))
