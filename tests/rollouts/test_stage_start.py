"""A stage start's bulk inserts (one statement over a JSON list per chunk, docs/performance.md "Orchestrator: the
stage start") leave exactly the rows a single action leaves: its first history entry, its DDI number (in insertion
order) and a change log entry for its device; a stage start cut short by a crash is completed by the next pass."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fleetd.accounts.audit import SYSTEM
from fleetd.devices import actions
from fleetd.fleet import Fleet
from fleetd.rollouts import steps as rollout_steps
from fleetd.rollouts import storage as rollout_storage
from tests.rollouts.test_rollouts import audit_actions, enroll, rollout_actions, run_pass
from tests.rollouts.test_rollouts import settings as settings  # the fixture: no background passes
from tests.rollouts.test_tracker import assert_exact, start
from tests.rollouts.test_tracker import quiet_lab as quiet_lab  # the fixture


def footprint(fleet: Fleet, action_ids: list[str], since: int) -> dict[str, Any]:
    """What creating these actions left besides their rows, in a form both paths must agree on."""
    marks = ",".join("?" * len(action_ids))

    def read(conn: Any) -> dict[str, Any]:
        acts = {r[0]: (r[1], r[2], r[3], r[4]) for r in conn.execute(
            f"SELECT id, device_id, state, created_at, rowid FROM actions WHERE id IN ({marks})", action_ids)}
        events = {aid: [(r[0], r[1], r[2], r[3]) for r in conn.execute(
            "SELECT state, ts, message, progress FROM action_events WHERE action_id = ? ORDER BY id", (aid,))]
            for aid in action_ids}
        nums = {r[0]: r[1] for r in conn.execute("SELECT ref, num FROM ddi_ids WHERE kind = 'action'")}
        numbers = conn.execute(f"SELECT COUNT(*) FROM ddi_ids WHERE kind = 'action' AND ref IN ({marks})",
                               action_ids).fetchone()[0]
        logged = [r[0] for r in conn.execute("SELECT device_id FROM device_changes WHERE seq > ? ORDER BY seq",
                                             (since,))]
        return {
            # one history entry each: the state it was made in, at its creation time
            "events": all(events[a] == [(acts[a][1], acts[a][2], "", 0)] for a in action_ids),
            # one DDI number each, handed out in the order the actions were inserted
            "numbered": numbers == len(action_ids)
            and sorted(action_ids, key=lambda a: nums[a]) == sorted(action_ids, key=lambda a: acts[a][3]),
            # one change log entry per action, for its device
            "logged": sorted(logged) == sorted(acts[a][0] for a in action_ids),
        }
    return dict(fleet.store.read_sync(read))


def test_bulk_and_single_actions_leave_the_same_rows(fleet, quiet_lab, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(rollout_steps, "CHUNK", 7)  # several write transactions
    t0 = time.time()
    before = fleet.store.read_sync(rollout_storage.last_change)
    rid = start(fleet, t0, stages=[100])
    statements: list[str] = []
    fleet.store.write_sync(lambda c: c.set_trace_callback(statements.append))
    try:
        rep = run_pass(fleet, t0)
    finally:
        fleet.store.write_sync(lambda c: c.set_trace_callback(None))
    assert rep.actions == 40 and rep.rollouts[0].writes == 6
    # One INSERT for a transaction's actions and one for their first events, not one per action (the trace repeats
    # a statement's text for each trigger it fires; one per row would each show their own values).
    inserts = {s for s in statements if s.startswith(("INSERT INTO actions", "INSERT INTO action_events"))}
    assert len(inserts) == 2 * 6, sorted(inserts)[:3]
    bulk = [a["id"] for a in rollout_actions(fleet, rid).values()]
    assert footprint(fleet, bulk, before) == {"events": True, "numbered": True, "logged": True}

    # The single-row path (an operator's install) through the same triggers.
    others = enroll(fleet, 3, {"site": "desk"}, version="1.0.0")
    before = fleet.store.read_sync(rollout_storage.last_change)
    single = fleet.store.write_sync(lambda c: actions.create_install(c, SYSTEM, others, "app@2.0.0"))
    assert footprint(fleet, single, before) == {"events": True, "numbered": True, "logged": True}
    # Numbered after every bulk one: the DDI numbers follow creation order across both paths.
    nums = fleet.store.read_sync(lambda c: dict(c.execute("SELECT ref, num FROM ddi_ids WHERE kind = 'action'")))
    assert min(nums[a] for a in single) > max(nums[a] for a in bulk)


def test_a_stage_start_cut_short_is_completed_by_the_next_pass(fleet, quiet_lab, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The process dies in the third of six write transactions: the first two stay, whole; the next pass hands out
    the rest, once, and the stage's one audit entry stays the only one."""
    monkeypatch.setattr(rollout_steps, "CHUNK", 7)
    t0 = time.time()
    before = fleet.store.read_sync(rollout_storage.last_change)
    rid = start(fleet, t0, stages=[100])
    real, calls = actions.insert_installs, []

    def dies_third(conn: Any, *args: Any, **kw: Any) -> list[str]:
        calls.append(1)
        ids = real(conn, *args, **kw)
        if len(calls) == 3:
            raise RuntimeError("the process dies mid-write")
        return ids
    monkeypatch.setattr(actions, "insert_installs", dies_third)
    rep = asyncio.run(fleet.orchestrator.run_pass(t0))  # run_pass of test_rollouts insists on no errors
    assert rep.errors == 1
    half = rollout_actions(fleet, rid)
    assert len(half) == 14  # two transactions of 7
    assert footprint(fleet, [a["id"] for a in half.values()], before) == {"events": True, "numbered": True,
                                                                          "logged": True}
    monkeypatch.setattr(actions, "insert_installs", real)
    rep = run_pass(fleet, t0 + 1)
    assert rep.actions == 26
    done = rollout_actions(fleet, rid)
    assert set(done) == set(quiet_lab)
    assert footprint(fleet, [a["id"] for a in done.values()], before) == {"events": True, "numbered": True,
                                                                          "logged": True}
    assert audit_actions(fleet, rid).count("rollout.stage") == 1
    run_pass(fleet, t0 + 2)
    assert_exact(fleet, rid, t0 + 2)

