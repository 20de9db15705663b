"""The orchestrator's incremental pass (issue 16): its tracker's counts equal a full evaluation after every kind
of change (reports, a crash mid-write, a restart, a stage advance, a rollback, a cancel), while a pass re-reads
only the devices that changed or came due."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from fleetd.accounts.audit import SYSTEM
from fleetd.fleet import Fleet
from fleetd.maintenance import Maintenance
from fleetd.rollouts import service as rollouts
from fleetd.rollouts import storage as rollout_storage
from fleetd.rollouts.orchestrator import PassReport
from fleetd.rollouts.progress import evaluate, installed, read_snapshot
from fleetd.rollouts.tracker import Tracker
from tests.devices.test_devices import make_artifact
from tests.rollouts.test_rollouts import (
    audit_actions,
    enroll,
    install_all,
    report,
    rollout_actions,
    run_pass,
    runs,
    seen,
)
from tests.rollouts.test_rollouts import settings as settings  # the fixture: no background passes

pytestmark = pytest.mark.both_backends


def settle(fleet: Fleet, now: float) -> PassReport:
    """Passes at ``now`` until one writes nothing; that one."""
    for _ in range(6):
        rep = run_pass(fleet, now)
        if all(p.writes == 0 for p in rep.rollouts):
            return rep
    raise AssertionError("the orchestrator keeps writing at the same time")


def assert_exact(fleet: Fleet, rid: str, now: float) -> Tracker:
    """The tracker's counts are those of a full evaluation of the rollout at ``now``."""
    tr = fleet.orchestrator.tracker(rid)
    assert tr is not None
    snap = fleet.store.read_sync(lambda c: read_snapshot(c, rid, now, fleet.hub.last_seen))
    ev = evaluate(snap)
    assert tr.counts == ev.counts
    assert (tr.members, tr.attempted, tr.failed, tr.late_failed, tr.done) == (
        ev.members, ev.attempted, ev.failed, ev.late_failed, ev.done)
    assert set(tr.missing) == set(ev.missing)
    assert tr.new_faults == dict(ev.new_faults)
    assert set(tr.installed) == set(installed(snap))
    return tr


def start(fleet: Fleet, t0: float, **spec: Any) -> str:
    ro, _ = fleet.store.write_sync(lambda c: rollouts.create(c, SYSTEM, rollouts.RolloutSpec(
        artifact="app@2.0.0", tags={"site": "lab"}, **spec), t0))
    return ro.id


@pytest.fixture
def quiet_lab(fleet: Fleet) -> list[str]:
    make_artifact(fleet, version="1.0.0")
    make_artifact(fleet, version="2.0.0", data=b"version two")
    return enroll(fleet, 40, {"site": "lab"}, version="1.0.0")


def test_a_pass_rereads_only_what_changed_and_counts_exactly(fleet, quiet_lab) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    rid = start(fleet, t0, stages=[50, 100], soak_seconds=60, max_failure_percent=50)
    settle(fleet, t0)
    assert_exact(fleet, rid, t0)
    rep = run_pass(fleet, t0 + 1)  # nothing changed: no device read
    assert not rep.rollouts[0].rebuilt and not rep.rollouts[0].full and rep.rollouts[0].reread == 0
    acts = rollout_actions(fleet, rid)
    first = sorted(acts)
    report(fleet, first[0], acts[first[0]]["id"], "downloading")
    report(fleet, first[1], acts[first[1]]["id"], "downloading", "installing", "failed", message="disk full")
    rep = run_pass(fleet, t0 + 2)
    assert rep.rollouts[0].reread == 2 and not rep.rollouts[0].rebuilt
    assert_exact(fleet, rid, t0 + 2)
    # Installed, soaking; then the soak ends (a deadline, no change) and the devices check in (no change logged).
    install_all(fleet, rid, "2.0.0", at=t0 + 3, devices=first[2:])
    settle(fleet, t0 + 10)
    tr = assert_exact(fleet, rid, t0 + 10)
    assert tr.counts[0][1 + 3] == len(first) - 2  # soaking
    rep = run_pass(fleet, t0 + 100)  # past the soak: every soaking device came due, none checked in since
    assert rep.rollouts[0].reread >= len(first) - 2
    assert_exact(fleet, rid, t0 + 100)
    seen(fleet, first, t0 + 100)
    settle(fleet, t0 + 100)
    assert_exact(fleet, rid, t0 + 100)
    # Past the offline timeout: the device part way is skipped by time alone (a deadline), the stage is done, the
    # next one starts with its installs, and those devices (never picking them up) are skipped in turn.
    rep = run_pass(fleet, t0 + 4000)
    assert rep.rollouts[0].full and rep.rollouts[0].actions == 40 - len(first)
    settle(fleet, t0 + 4000)
    got = fleet.store.read_sync(lambda c: rollouts.get(c, rid, t0 + 4000))
    assert got.stage == 1 and got.state == "completed" and got.stages[0].skipped == 1
    assert fleet.orchestrator.tracker(rid) is None  # ended: no longer tracked
    assert set(rollout_actions(fleet, rid)) == set(quiet_lab)
    # One audit entry per stage start, naming the stage and how many installs it handed out; none per device.
    names = audit_actions(fleet, rid)
    assert names.count("rollout.stage") == 2
    stage_entries = fleet.store.read_sync(lambda c: [r[0] for r in c.execute(
        "SELECT details FROM audit_log WHERE target = ? AND action = 'rollout.stage' ORDER BY id", (rid,))])
    assert ['"installs": ' + str(n) in d for d, n in zip(stage_entries, [len(first), 40 - len(first)],
                                                          strict=True)] == [True, True]
    assert fleet.store.read_sync(lambda c: c.execute(
        "SELECT COUNT(*) FROM audit_log WHERE action = 'action.install'").fetchone()[0]) == 0


def test_a_change_rolled_back_by_a_crash_leaves_no_trace(fleet, quiet_lab) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    rid = start(fleet, t0, stages=[100])
    settle(fleet, t0)
    before = fleet.store.read_sync(rollout_storage.last_change)
    act = next(iter(rollout_actions(fleet, rid).values()))

    def crash(conn: Any) -> None:
        conn.execute("UPDATE actions SET state = 'failed', open = 0 WHERE id = ?", (act["id"],))
        raise RuntimeError("the process dies mid-write")
    with pytest.raises(RuntimeError):
        fleet.store.write_sync(crash)
    assert fleet.store.read_sync(rollout_storage.last_change) == before  # the change and its log entry: neither
    rep = run_pass(fleet, t0 + 1)
    assert rep.rollouts[0].reread == 0
    assert_exact(fleet, rid, t0 + 1)
    fleet.store.write_sync(lambda c: c.execute("UPDATE actions SET state = 'failed', open = 0 WHERE id = ?",
                                               (act["id"],)))
    assert fleet.store.read_sync(rollout_storage.last_change) > before  # committed: logged with it
    rep = run_pass(fleet, t0 + 2)
    assert rep.rollouts[0].reread == 1
    assert assert_exact(fleet, rid, t0 + 2).counts[0][1 + 5] == 1  # failed


def test_a_restart_rebuilds_the_same_counts_from_the_database(settings, fleet, quiet_lab) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    rid = start(fleet, t0, stages=[100], soak_seconds=30)
    settle(fleet, t0)
    install_all(fleet, rid, "2.0.0", at=t0 + 2, devices=sorted(quiet_lab)[:10])
    settle(fleet, t0 + 5)
    old = assert_exact(fleet, rid, t0 + 5)
    counts = [list(c) for c in old.counts]
    fleet.close()
    again = Fleet(fleet.settings)
    try:
        rep = run_pass(again, t0 + 5)
        assert rep.rollouts[0].rebuilt
        assert assert_exact(again, rid, t0 + 5).counts == counts
        rep = run_pass(again, t0 + 6)
        assert not rep.rollouts[0].rebuilt and rep.rollouts[0].reread == 0
    finally:
        again.close()


def test_rollback_and_cancel(fleet, quiet_lab) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    rid = start(fleet, t0, stages=[100], soak_seconds=30)
    settle(fleet, t0)
    done = sorted(quiet_lab)[:10]
    install_all(fleet, rid, "2.0.0", at=t0 + 2, devices=done)
    settle(fleet, t0 + 5)
    fleet.store.write_sync(lambda c: rollouts.rollback(c, SYSTEM, rid, t0 + 6, "testing"))
    rep = settle(fleet, t0 + 7)
    assert rep.rollouts[0].rebuilt or fleet.orchestrator.tracker(rid) is not None
    tr = assert_exact(fleet, rid, t0 + 7)
    assert not tr.installed  # every device on the new version got its rollback
    # A device that finishes installing after the halt goes back too, found by the change alone.
    late = sorted(quiet_lab)[10]
    fleet.store.write_sync(lambda c: c.execute(
        "UPDATE actions SET state = 'succeeded', open = 0, finished_at = ? WHERE rollout_id = ? AND device_id = ? "
        "AND kind = 'install'", (t0 + 8, rid, late)))
    runs(fleet, [late], "2.0.0")
    rep = run_pass(fleet, t0 + 8)
    assert not rep.rollouts[0].rebuilt and rep.rollouts[0].actions == 1
    assert late in rollout_actions(fleet, rid, "rollback")
    settle(fleet, t0 + 8)
    assert_exact(fleet, rid, t0 + 8)

    other = enroll(fleet, 4, {"site": "other"}, version="1.0.0")
    ro, _ = fleet.store.write_sync(lambda c: rollouts.create(c, SYSTEM, rollouts.RolloutSpec(
        artifact="app@2.0.0", tags={"site": "other"}, stages=[100]), t0 + 9))
    settle(fleet, t0 + 9)
    assert fleet.orchestrator.tracker(ro.id) is not None
    fleet.store.write_sync(lambda c: rollouts.cancel(c, SYSTEM, ro.id, t0 + 10))
    run_pass(fleet, t0 + 10)
    assert fleet.orchestrator.tracker(ro.id) is None  # ended: no longer tracked
    got = fleet.store.read_sync(lambda c: rollouts.get(c, ro.id, t0 + 10))
    assert got.state == "cancelled" and got.stages[0].skipped == len(other)


def test_a_point_stored_before_the_tracker_was_built_counts_once_the_install_succeeds(fleet, quiet_lab) -> None:  # type: ignore[no-untyped-def]
    """A device's clock runs ahead: its point, stamped after its install finishes, is stored before that, and
    before the tracker is built (the stage start rebuilds it). The install's success must still find it, as a full
    evaluation does, although the tracker reads only raw points past the last id it read."""
    t0 = time.time()
    rid = start(fleet, t0, stages=[100], soak_seconds=60, max_failure_percent=100, health="cpu_temp<80")
    hot = sorted(quiet_lab)[0]
    fleet.store.write_sync(lambda c: c.execute(
        "INSERT INTO telemetry (device_id, name, ts, value) VALUES (?, 'cpu_temp', ?, 95.0)", (hot, t0 + 30)))
    settle(fleet, t0)  # the tracker is built after the point was stored, when no install had succeeded
    tr = fleet.orchestrator.tracker(rid)
    assert tr is not None and not tr.failed
    install_all(fleet, rid, "2.0.0", at=t0 + 5, devices=[hot])
    rep = run_pass(fleet, t0 + 40)
    assert not rep.rollouts[0].rebuilt  # found by the tracker itself, not by a rebuild
    tr = fleet.orchestrator.tracker(rid)
    assert tr is not None and tr.failed == 1 and "cpu_temp<80 broken" in tr.new_faults[hot]
    settle(fleet, t0 + 40)
    assert assert_exact(fleet, rid, t0 + 40).failed == 1
    faults = fleet.store.read_sync(lambda c: rollout_storage.faults(c, rid))
    assert "cpu_temp<80 broken" in faults[hot]


def test_the_change_log_keeps_only_what_a_tracker_needs_whether_rollouts_run_or_not(fleet, quiet_lab) -> None:  # type: ignore[no-untyped-def]
    """No background passes here (rollout_pass_seconds 0): maintenance's job bounds the log all the same."""
    job = next(j for j in Maintenance(fleet).jobs if j.name == "device change log")
    assert job.every <= 60

    def logged() -> int:
        return int(fleet.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM device_changes").fetchone()[0]))
    assert logged() >= 40  # the lab's enrolment and component reports; no rollout, no pass ever ran
    asyncio.run(job.run())
    assert logged() == 0  # no tracker needs any of it

    t0 = time.time()
    rid = start(fleet, t0, stages=[100])
    settle(fleet, t0)
    acts = rollout_actions(fleet, rid)
    first = sorted(acts)[0]
    report(fleet, first, acts[first]["id"], "downloading")
    asyncio.run(job.run())
    assert logged() == 1  # the report no pass has read yet: the tracker needs it ...
    rep = run_pass(fleet, t0 + 1)
    assert rep.rollouts[0].reread == 1  # ... and finds it
    assert_exact(fleet, rid, t0 + 1)
    asyncio.run(job.run())
    assert logged() == 0

    fleet.store.write_sync(lambda c: rollouts.cancel(c, SYSTEM, rid, t0 + 2))
    run_pass(fleet, t0 + 2)
    assert fleet.orchestrator.tracker(rid) is None
    enroll(fleet, 3, {"site": "elsewhere"})
    asyncio.run(job.run())
    assert logged() == 0  # nothing tracked: unread entries go too
