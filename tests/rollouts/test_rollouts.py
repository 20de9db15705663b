"""Rollouts in-process: bucketing, the small languages, and the state machine one orchestrator pass at a time.

Devices are real rows enrolled through the registry; what they report is driven directly (action reports
through ``actions.report`` or the device protocol, component versions and check-in times into the store,
as the check-in hub would write them). Passes run with an injected clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from fleetd.accounts.audit import SYSTEM
from fleetd.core.config import Settings
from fleetd.core.errors import InvalidArgument
from fleetd.devices import actions, join_tokens, registry
from fleetd.fleet import Fleet
from fleetd.rollouts import service as rollouts
from fleetd.rollouts import steps as rollout_steps
from fleetd.rollouts.orchestrator import PassReport
from fleetd.rollouts.progress import read_snapshot, stage_of
from fleetd.rollouts.rules import HealthCondition, Window, bucket, parse_percent, parse_stages, parse_start_at
from tests.conftest import rpc
from tests.devices.test_devices import make_artifact, make_token
from tests.support.devices_helper import TestDevice

pytestmark = pytest.mark.both_backends

SVC = "RolloutService"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # No background passes: every test drives the orchestrator itself, with its own clock.
    return Settings(data_dir=str(tmp_path / "data"), tls=False, mdns=False, host="127.0.0.1", port=8420,
                    rollout_pass_seconds=0)


@pytest.fixture
def events(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    got: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(fleet.events, "publish", lambda kind, data: got.append((kind, data)))
    return got


# --- helpers ------------------------------------------------------------------------------------

def enroll(fleet: Fleet, n: int, tags: dict[str, str] | None = None, device_type: str = "sim",
           version: str | None = None, component: str = "app") -> list[str]:
    """``n`` active devices with ``tags``; with ``version``, each already runs that version of ``component``."""
    def write(conn: Any) -> list[str]:
        token, _ = join_tokens.create_token(conn, SYSTEM, tags=tags or {})
        ids = []
        for _ in range(n):
            r = registry.enroll(conn, hardware_id=f"hw-{os.urandom(6).hex()}", device_type=device_type,
                                public_key=os.urandom(32), name="", token=lambda: token, inventory={}, addr=None)
            ids.append(r.device.id)
            if version:
                conn.execute("INSERT INTO device_components (device_id, name, version, state, health, updated_at) "
                             "VALUES (?, ?, ?, 'running', 'healthy', ?)",
                             (r.device.id, component, version, time.time()))
        return ids
    return fleet.store.write_sync(write)


def run_pass(fleet: Fleet, now: float) -> PassReport:
    report = asyncio.run(fleet.orchestrator.run_pass(now))
    assert report.errors == 0
    return report


def create(client: Any, key: str, **body: Any) -> dict[str, Any]:
    r = rpc(client, SVC, "CreateRollout", body, key=key)
    assert r.status_code == 200, r.text
    return dict(r.json())


def get(client: Any, key: str, rid: str) -> dict[str, Any]:
    r = rpc(client, SVC, "GetRollout", {"id": rid}, key=key)
    assert r.status_code == 200, r.text
    return dict(r.json())


def at_time(fleet: Fleet, rid: str, now: float) -> dict[str, Any]:
    """GetRollout's answer as it would be at ``now`` (the API answers at the real clock)."""
    return dict(msgspec.json.decode(msgspec.json.encode(fleet.store.read_sync(lambda c: rollouts.get(c, rid, now)))))


def call(client: Any, key: str, method: str, **body: Any) -> Any:
    return rpc(client, SVC, method, body, key=key)


def rollout_actions(fleet: Fleet, rid: str, kind: str = "install") -> dict[str, dict[str, Any]]:
    """device → its action of ``kind`` in the rollout; fails if a device has two."""
    rows = fleet.store.read_sync(lambda c: [dict(r) for r in c.execute(
        "SELECT ac.*, ar.version AS artifact_version FROM actions ac LEFT JOIN artifacts ar ON ar.id = ac.artifact_id "
        "WHERE ac.rollout_id = ? AND ac.kind = ?", (rid, kind))])
    by_device = {r["device_id"]: r for r in rows}
    assert len(by_device) == len(rows), "a device got two actions of one kind from one rollout"
    return by_device


def report(fleet: Fleet, device_id: str, action_id: str, *states: str, message: str = "") -> None:
    for state in states:
        def write(conn: Any, state: str = state) -> Any:
            return actions.report(conn, device_id, action_id, state, message)
        fleet.store.write_sync(write)


def runs(fleet: Fleet, device_ids: list[str], version: str, component: str = "app", health: str = "healthy",
         state: str = "running", restarts: int = 0, previous: str | None = "1.0.0") -> None:
    """The devices report ``version`` of the component (as the hub would store their check-in)."""
    fleet.store.write_sync(lambda c: c.executemany(
        "INSERT INTO device_components (device_id, name, version, previous_version, state, health, restarts, "
        "updated_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (device_id, name) DO UPDATE SET version = excluded.version, "
        "previous_version = excluded.previous_version, state = excluded.state, health = excluded.health, "
        "restarts = excluded.restarts, updated_at = excluded.updated_at",
        [(d, component, version, previous, state, health, restarts, time.time()) for d in device_ids]))


def seen(fleet: Fleet, device_ids: list[str], at: float) -> None:
    fleet.store.write_sync(lambda c: c.executemany("UPDATE devices SET last_seen = ? WHERE id = ?",
                                                   [(at, d) for d in device_ids]))


def install_all(fleet: Fleet, rid: str, version: str, at: float, devices: list[str] | None = None) -> list[str]:
    """Every open install action of the rollout (or of ``devices``) succeeds; the devices run the version and
    check in at ``at``."""
    done = [d for d, a in rollout_actions(fleet, rid).items() if a["open"] and (devices is None or d in devices)]
    for d in done:
        report(fleet, d, rollout_actions(fleet, rid)[d]["id"], "downloading", "installing", "succeeded")
    runs(fleet, done, version)
    seen(fleet, done, at)
    return done


def member_stage(rid: str, device_id: str, stages: list[float]) -> int:
    return stage_of(stages, bucket(rid, device_id))


def stages_of(client: Any, key: str, rid: str) -> dict[str, int]:
    return {d["device_id"]: d["stage"] for d in call(client, key, "ListRolloutDevices", id=rid).json()["devices"]}


def audit_actions(fleet: Fleet, rid: str) -> list[str]:
    return fleet.store.read_sync(lambda c: [r[0] for r in c.execute(
        "SELECT action FROM audit_log WHERE target = ? ORDER BY id", (rid,))])


@pytest.fixture
def lab(client: Any, fleet: Fleet) -> Iterator[list[str]]:
    """40 lab devices running app 1.0.0, artifacts app@1.0.0 and app@2.0.0, and some devices not targeted."""
    make_artifact(fleet, version="1.0.0")
    make_artifact(fleet, version="2.0.0", data=b"version two")
    ids = enroll(fleet, 40, {"site": "lab"}, version="1.0.0")
    enroll(fleet, 5, {"site": "home"}, version="1.0.0")
    enroll(fleet, 3, {"site": "lab"}, device_type="linux-aarch64")
    yield ids


# --- buckets ------------------------------------------------------------------------------------------

ids_text = st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=24)


@given(ids_text, ids_text)
def test_bucket_is_stable_and_in_range(rollout_id: str, device_id: str) -> None:
    b = bucket(rollout_id, device_id)
    assert 0 <= b < 100
    assert bucket(rollout_id, device_id) == b
    assert bucket(rollout_id + "x", device_id) != b or bucket(rollout_id + "y", device_id) != b


@hypothesis_settings(max_examples=25, deadline=None)
@given(ids_text, st.floats(min_value=1, max_value=99))
def test_buckets_are_proportional(rollout_id: str, percent: float) -> None:
    n = 10_000
    share = sum(1 for i in range(n) if bucket(rollout_id, f"dev_{i:06x}") < percent) / n
    # Binomial: the standard deviation is at most 0.5 %; five of them.
    assert abs(share - percent / 100) < 0.025


@given(st.lists(ids_text, min_size=1, max_size=30, unique=True), st.lists(ids_text, max_size=30, unique=True),
       st.lists(st.floats(min_value=1, max_value=99), min_size=1, max_size=4, unique=True))
def test_adding_devices_never_moves_existing_ones(before: list[str], added: list[str], cuts: list[float]) -> None:
    stages = [*sorted(cuts), 100.0]
    placed = {d: stage_of(stages, bucket("ro_x", d)) for d in before}
    again = {d: stage_of(stages, bucket("ro_x", d)) for d in before + added}
    assert {d: again[d] for d in before} == placed


def test_stage_membership_differs_between_rollouts() -> None:
    devices = [f"dev_{i}" for i in range(4000)]
    a = {d for d in devices if bucket("ro_a", d) < 10}
    b = {d for d in devices if bucket("ro_b", d) < 10}
    # Independent draws: about 1 % of the devices are canaries of both, not 10 %.
    assert len(a & b) < 0.03 * len(devices)


# --- the small languages ------------------------------------------------------------------------------

def test_stages_and_percentages() -> None:
    assert parse_stages("5,25,100") == [5, 25, 100]
    assert parse_stages("1%, 10%, 100%") == [1, 10, 100]
    assert parse_percent("5%") == 5 and parse_percent("0") == 0
    for text, fragment in [("25,5,100", "must grow"), ("5,25", "last stage must be 100"), ("0,100", "(0, 100]"),
                           ("five", "cannot read stages")]:
        with pytest.raises(InvalidArgument, match=fragment.replace("(", r"\(").replace("]", r"\]")):
            parse_stages(text)
    with pytest.raises(InvalidArgument, match=r"0\.\.100"):
        parse_percent("120%")


MONDAY = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)  # a Monday


def at(days: float, hours: float, minutes: float = 0) -> float:
    return (MONDAY + dt.timedelta(days=days, hours=hours, minutes=minutes)).timestamp()


def test_maintenance_window() -> None:
    w = Window.parse("Mon-Fri 01:00-05:00 UTC")
    assert w is not None
    assert w.contains(at(0, 1)) and w.contains(at(4, 4, 59))
    assert not w.contains(at(0, 5)) and not w.contains(at(0, 0, 59)) and not w.contains(at(5, 2))
    assert w.next_open(at(4, 6)) == at(7, 1)  # Friday after the window → next Monday
    night = Window.parse("Fri 22:00-02:00 UTC")
    assert night is not None
    assert night.contains(at(4, 23)) and night.contains(at(5, 1, 30))  # Friday night, into Saturday
    assert not night.contains(at(3, 23)) and not night.contains(at(4, 1))
    berlin = Window.parse("Sat,Sun 01:00-02:00 Europe/Berlin")
    assert berlin is not None and berlin.contains(at(5, 0, 30)) and not berlin.contains(at(5, 1, 30))
    whole = Window.parse("00:00-24:00")
    assert whole is not None and whole.contains(time.time())
    assert Window.parse("  ") is None


@pytest.mark.parametrize("text, fragment", [
    ("Mon-Fri 05:00-05:00", "same time"), ("Funday 01:00-02:00", "unknown day"), ("Mon-Fri 1-5", "HH:MM"),
    ("Mon 01:00-02:00 Mars/Olympus", "unknown time zone"), ("Mon 01:00 02:00", "maintenance window"),
    ("Mon 25:00-26:00", "HH:MM")])
def test_bad_windows(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        Window.parse(text)


def test_health_conditions() -> None:
    c = HealthCondition.parse("cpu_temp<80")
    assert c is not None and c.holds(79.9) and not c.holds(80) and str(c) == "cpu_temp<80"
    c = HealthCondition.parse(" mem.used >= 3.5 ")
    assert c is not None and c.metric == "mem.used" and c.holds(3.5) and not c.holds(3.4)
    c = HealthCondition.parse("errors=0")
    assert c is not None and c.op == "==" and c.holds(0)
    assert HealthCondition.parse("") is None
    for bad in ("cpu_temp", "<80", "cpu temp<80", "cpu_temp<hot", "cpu_temp=>80"):
        with pytest.raises(InvalidArgument, match="METRIC OP NUMBER"):
            HealthCondition.parse(bad)


def test_start_times() -> None:
    now = time.time()
    assert parse_start_at("", now) is None
    assert parse_start_at("+2h", now) == now + 7200
    assert parse_start_at("2099-01-01 02:00 UTC", now) == dt.datetime(2099, 1, 1, 2, tzinfo=dt.UTC).timestamp()
    assert parse_start_at("2099-01-01T02:00+01:00", now) == dt.datetime(2099, 1, 1, 1, tzinfo=dt.UTC).timestamp()
    local = dt.datetime(2099, 1, 1, 2).astimezone().timestamp()
    assert parse_start_at("2099-01-01 02:00", now) == local  # the server's local time
    with pytest.raises(InvalidArgument, match="in the past"):
        parse_start_at("2001-01-01 00:00", now)
    with pytest.raises(InvalidArgument, match="cannot read start time"):
        parse_start_at("tomorrow-ish", now)


# --- the state machine ----------------------------------------------------------------------------

def test_stages_run_in_order_and_the_rollout_completes(client, fleet, admin_key, lab, events) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    r = create(client, admin_key, artifact="app@2.0.0", tags={"site": "lab"}, stages=[25, 60, 100], soak_seconds=60)
    rid, stages = r["id"], [25.0, 60.0, 100.0]
    assert r["state"] == "scheduled" and r["stage"] == -1 and r["target"]["device_types"] == ["sim"]
    by_stage = {k: {d for d in lab if member_stage(rid, d, stages) == k} for k in range(3)}
    assert all(by_stage.values())

    run_pass(fleet, t0)
    got = get(client, admin_key, rid)
    assert got["state"] == "running" and got["stage"] == 0
    assert set(rollout_actions(fleet, rid)) == by_stage[0]
    assert [s["targeted"] for s in got["stages"]] == [len(by_stage[k]) for k in range(3)]
    assert got["stages"][0]["queued"] == len(by_stage[0]) and got["stages"][0]["state"] == "running"
    assert got["stages"][1]["state"] == "pending" and got["waiting_for"] == f"{len(by_stage[0])} device(s) to install"
    assert all(d in fleet.hub.open_actions for d in by_stage[0])
    assert not any(d in fleet.hub.open_actions for d in by_stage[1] | by_stage[2])

    run_pass(fleet, t0 + 1)  # nothing new: no device gets a second action
    assert set(rollout_actions(fleet, rid)) == by_stage[0]

    # Installed, but not yet checked in after the soak: still soaking, the next stage waits.
    install_all(fleet, rid, "2.0.0", at=t0 + 2)
    run_pass(fleet, t0 + 120)
    got = at_time(fleet, rid, t0 + 120)
    assert got["stage"] == 0 and got["stages"][0]["soaking"] == len(by_stage[0])
    seen(fleet, list(by_stage[0]), t0 + 120)
    run_pass(fleet, t0 + 120)
    assert get(client, admin_key, rid)["stage"] == 1
    assert set(rollout_actions(fleet, rid)) == by_stage[0] | by_stage[1]

    install_all(fleet, rid, "2.0.0", at=t0 + 300)
    run_pass(fleet, t0 + 300)
    install_all(fleet, rid, "2.0.0", at=t0 + 500)
    run_pass(fleet, t0 + 500)
    got = at_time(fleet, rid, t0 + 500)
    assert got["state"] == "completed" and got["finished_at"] and got["reason"] == ""
    assert [s["state"] for s in got["stages"]] == ["completed", "completed", "completed"]
    assert [s["succeeded"] for s in got["stages"]] == [len(by_stage[k]) for k in range(3)]
    assert set(rollout_actions(fleet, rid)) == set(lab)  # every lab device, once; nobody else
    assert audit_actions(fleet, rid) == ["rollout.create", "rollout.stage", "rollout.start", "rollout.stage",
                                         "rollout.stage", "rollout.complete"]
    kinds = [(k, d.get("state", d.get("stage"))) for k, d in events if d["id"] == rid]
    assert kinds == [("rollout.state", "scheduled"), ("rollout.stage", 0), ("rollout.state", "running"),
                     ("rollout.stage", 1), ("rollout.stage", 2), ("rollout.state", "completed")]
    run_pass(fleet, t0 + 900)  # a completed rollout is left alone
    assert len(rollout_actions(fleet, rid)) == len(lab)


def test_failures_past_the_threshold_halt_and_roll_back(client, fleet, admin_key, lab, events) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    rid = create(client, admin_key, artifact="app@2.0.0", tags={"site": "lab"}, stages=[50, 100],
                 max_failure_percent=10, soak_seconds=60)["id"]
    run_pass(fleet, t0)
    first = sorted(rollout_actions(fleet, rid))
    assert len(first) >= 10
    failing, downloading, installed = first[:3], first[3:5], first[5:]
    for d in failing:
        report(fleet, d, rollout_actions(fleet, rid)[d]["id"], "downloading", "failed", message="disk full")
    for d in downloading:
        report(fleet, d, rollout_actions(fleet, rid)[d]["id"], "downloading")
    install_all(fleet, rid, "2.0.0", at=t0 + 5, devices=installed)

    run_pass(fleet, t0 + 10)
    got = get(client, admin_key, rid)
    assert got["state"] == "rolled_back", (len(first), got.get("reason"), got["stages"])
    assert f"3 of {len(first)} attempted" in got["reason"] and "10% allowed" in got["reason"]
    assert "disk full" in got["reason"] and got["stages"][0]["state"] == "rolled_back"
    assert got["stages"][0]["failed"] == 3
    # The devices that run 2.0.0 go back to 1.0.0; the failed ones never left it; nobody else was touched.
    backs = rollout_actions(fleet, rid, "rollback")
    assert set(backs) == set(installed)
    assert {a["artifact_version"] for a in backs.values()} == {"1.0.0"}
    assert all(json.loads(a["params"])["to_version"] == "1.0.0" for a in backs.values())
    assert all(d in fleet.hub.open_actions for d in installed)
    installs = rollout_actions(fleet, rid)
    assert set(installs) == set(first)  # the second stage never started
    assert {installs[d]["state"] for d in downloading} == {"cancelled"}
    assert got["rollback"] == {"actions": len(installed), "open": len(installed), "succeeded": 0, "failed": 0}
    assert "rollout.rollback" in audit_actions(fleet, rid)
    assert ("rollout.state", "rolled_back") in [(k, d.get("state")) for k, d in events if d["id"] == rid]

    # A device that finished installing after the halt (its report refused) still runs 2.0.0: it goes back too.
    runs(fleet, downloading[:1], "2.0.0")
    run_pass(fleet, t0 + 20)
    assert set(rollout_actions(fleet, rid, "rollback")) == set(installed) | set(downloading[:1])
    run_pass(fleet, t0 + 30)
    assert len(rollout_actions(fleet, rid, "rollback")) == len(installed) + 1
    r = call(client, admin_key, "RollbackRollout", id=rid)
    assert r.status_code == 400 and "already rolled back" in r.json()["message"]


@pytest.mark.parametrize("max_failure, final", [(5, "completed"), (0, "rolled_back")])
def test_one_failure_and_the_threshold(client, fleet, admin_key, lab, max_failure, final) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    rid = create(client, admin_key, artifact="app@2.0.0", tags={"site": "lab"}, stages=[100],
                 max_failure_percent=max_failure, soak_seconds=0)["id"]
    run_pass(fleet, t0)
    one = sorted(rollout_actions(fleet, rid))[0]
    report(fleet, one, rollout_actions(fleet, rid)[one]["id"], "failed", message="nope")
    install_all(fleet, rid, "2.0.0", at=t0 + 5)
    run_pass(fleet, t0 + 10)
    got = at_time(fleet, rid, t0 + 10)
    assert got["state"] == final  # 1 of 40 is 2.5 %: within 5 %, not within 0 %
    assert got["stages"][0]["failed"] == 1 and got["stages"][0]["succeeded"] == 39


def test_failures_of_devices_enrolled_after_the_start_are_shown_but_do_not_halt(client, fleet, admin_key, lab) -> None:  # type: ignore[no-untyped-def]
    # A leaked join token must not let its holder enroll devices that report failures and roll the fleet back.
    t0 = time.time()
    rid = create(client, admin_key, artifact="app@2.0.0", tags={"site": "lab"}, stages=[100],
                 max_failure_percent=0, soak_seconds=0)["id"]
    run_pass(fleet, t0)
    late = enroll(fleet, 5, {"site": "lab"}, version="1.0.0")
    run_pass(fleet, t0 + 1)
    assert set(late) <= set(rollout_actions(fleet, rid))  # they still get the update
    for d in late:
        report(fleet, d, rollout_actions(fleet, rid)[d]["id"], "failed", message="bricked, honest")
    run_pass(fleet, t0 + 2)
    got = at_time(fleet, rid, t0 + 2)
    assert got["state"] == "running" and got["stages"][0]["failed"] == 5
    shown = {d["device_id"]: d for d in call(client, admin_key, "ListRolloutDevices", id=rid).json()["devices"]}
    names = fleet.store.read_sync(lambda c: {d: registry.get_device(c, d).name for d in shown})
    assert {d: x["name"] for d, x in shown.items()} == names and all(names.values())  # names, for the UI
    assert shown[late[0]]["status"] == "failed" and "not counted toward its failure threshold" in shown[late[0]][
        "detail"]
    # The same failure from a device enrolled before the start halts at once (0 % allowed).
    one = lab[0]
    report(fleet, one, rollout_actions(fleet, rid)[one]["id"], "failed", message="bricked, honest")
    run_pass(fleet, t0 + 3)
    got = at_time(fleet, rid, t0 + 3)
    assert got["state"] == "rolled_back", got
    assert "1 of 40 attempted" in got["reason"] and "5 more failed but enrolled after the rollout started" in got[
        "reason"]


def test_faults_while_soaking_fail_a_device_for_good(client, fleet, admin_key, lab) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    rid = create(client, admin_key, artifact="app@2.0.0", tags={"site": "lab"}, stages=[100], max_failure_percent=100,
                 soak_seconds=60, offline_timeout_seconds=300)["id"]
    run_pass(fleet, t0)
    install_all(fleet, rid, "2.0.0", at=t0 + 1)
    unhealthy, restarted, reverted, silent = sorted(lab)[:4]
    runs(fleet, [unhealthy], "2.0.0", health="unhealthy")
    runs(fleet, [restarted], "2.0.0", restarts=2)
    runs(fleet, [reverted], "1.0.0")
    others = [d for d in lab if d not in (unhealthy, restarted, reverted, silent)]
    seen(fleet, [*others, unhealthy, restarted, reverted], t0 + 100)
    run_pass(fleet, t0 + 100)
    got = at_time(fleet, rid, t0 + 100)
    assert got["stages"][0]["failed"] == 3 and got["stages"][0]["soaking"] == 1 and got["state"] == "running"
    # The unhealthy device recovers: the fault seen during its soak stands.
    runs(fleet, [unhealthy], "2.0.0")
    seen(fleet, [silent], t0 + 1)
    run_pass(fleet, t0 + 400)  # the silent one never checked in after installing, past the offline timeout
    got = at_time(fleet, rid, t0 + 400)
    assert got["state"] == "completed" and got["stages"][0]["failed"] == 4
    failed = call(client, admin_key, "ListRolloutDevices", id=rid, status="failed").json()
    why = {d["device_id"]: d["detail"] for d in failed["devices"]}
    assert failed["total"] == 4
    assert "unhealthy" in why[unhealthy] and "restarted 2" in why[restarted]
    assert "reports 1.0.0 after installing 2.0.0" in why[reverted] and "stopped checking in" in why[silent]


def test_health_condition_is_judged_over_each_soak(client, fleet, admin_key, lab) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    rid = create(client, admin_key, artifact="app@2.0.0", tags={"site": "lab"}, stages=[100], max_failure_percent=100,
                 soak_seconds=60, health="cpu_temp<80")["id"]
    run_pass(fleet, t0)
    install_all(fleet, rid, "2.0.0", at=t0 + 70)
    installed_at = {d: a["finished_at"] for d, a in rollout_actions(fleet, rid).items()}
    hot, hot_before, cool = sorted(lab)[:3]
    points = [(hot, "cpu_temp", installed_at[hot] + 10, 85.0), (hot_before, "cpu_temp", installed_at[hot_before] - 5,
                                                                  95.0),
              (cool, "cpu_temp", installed_at[cool] + 10, 70.0), (cool, "cpu", installed_at[cool] + 10, 99.0)]
    fleet.store.write_sync(lambda c: c.executemany(
        "INSERT INTO telemetry (device_id, name, ts, value) VALUES (?, ?, ?, ?)", points))
    run_pass(fleet, t0 + 70)
    got = at_time(fleet, rid, t0 + 70)
    assert got["state"] == "completed" and got["stages"][0]["failed"] == 1, got
    failed = call(client, admin_key, "ListRolloutDevices", id=rid, status="failed").json()["devices"]
    assert [d["device_id"] for d in failed] == [hot] and "cpu_temp<80 broken" in failed[0]["detail"]


def test_offline_devices_are_skipped_and_the_stage_goes_on(client, fleet, admin_key, lab) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    rid = create(client, admin_key, artifact="app@2.0.0", tags={"site": "lab"}, stages=[50, 100], soak_seconds=10,
                 offline_timeout_seconds=300)["id"]
    seen(fleet, lab, t0)
    run_pass(fleet, t0)
    first = sorted(rollout_actions(fleet, rid))
    away = first[0]
    install_all(fleet, rid, "2.0.0", at=t0 + 20, devices=first[1:])
    run_pass(fleet, t0 + 20)
    got = at_time(fleet, rid, t0 + 20)
    assert got["stage"] == 0 and got["stages"][0]["queued"] == 1  # waits for the one that is away ...
    run_pass(fleet, t0 + 301)
    got = at_time(fleet, rid, t0 + 301)
    assert got["stage"] == 1, got  # ... but not forever, and says so
    assert got["stages"][0]["skipped"] == 1 and got["stages"][0]["state"] == "completed"
    skipped, _ = fleet.store.read_sync(lambda c: rollouts.device_progress(c, rid, t0 + 301, "skipped"))
    in_first = [d for d in skipped if d.stage == 0]
    assert [d.device_id for d in in_first] == [away] and "offline since" in in_first[0].detail


def test_operators_pause_resume_promote_cancel_and_roll_back(client, fleet, admin_key, viewer_key, lab, events) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    rid = create(client, admin_key, artifact="app@2.0.0", tags={"site": "lab"}, stages=[20, 50, 100],
                 soak_seconds=10)["id"]
    assert call(client, viewer_key, "PauseRollout", id=rid).status_code == 403
    r = call(client, admin_key, "PromoteRollout", id=rid)  # starts a scheduled rollout now
    assert r.status_code == 200 and r.json()["state"] == "running" and r.json()["stage"] == 0
    first = set(rollout_actions(fleet, rid))
    assert first and all(d in fleet.hub.open_actions for d in first)

    paused = call(client, admin_key, "PauseRollout", id=rid).json()
    assert paused["state"] == "paused" and paused["reason"].startswith("paused by")
    install_all(fleet, rid, "2.0.0", at=t0 + 50)
    run_pass(fleet, t0 + 50)
    assert get(client, admin_key, rid)["stage"] == 0  # done soaking, but paused: no next stage
    r = call(client, admin_key, "PromoteRollout", id=rid)
    assert r.status_code == 400 and "paused" in r.json()["message"]
    assert call(client, admin_key, "ResumeRollout", id=rid).json()["state"] == "running"
    run_pass(fleet, t0 + 50)
    got = get(client, admin_key, rid)
    assert got["stage"] == 1 and got["stages"][0]["state"] == "completed"

    promoted = call(client, admin_key, "PromoteRollout", id=rid).json()  # without waiting for stage 2's soak
    assert promoted["stage"] == 2 and promoted["stages"][1]["state"] == "promoted"
    assert set(rollout_actions(fleet, rid)) == set(lab)
    r = call(client, admin_key, "PromoteRollout", id=rid)
    assert r.status_code == 400 and "last stage" in r.json()["message"]

    cancelled = call(client, admin_key, "CancelRollout", id=rid).json()
    assert cancelled["state"] == "cancelled" and cancelled["reason"].startswith("cancelled by")
    open_installs = [a for a in rollout_actions(fleet, rid).values() if a["state"] not in actions.TERMINAL]
    assert open_installs == []
    assert call(client, admin_key, "CancelRollout", id=rid).status_code == 400
    run_pass(fleet, t0 + 1000)
    assert get(client, admin_key, rid)["state"] == "cancelled"

    # Found a problem later: send back the devices that run 2.0.0.
    back = call(client, admin_key, "RollbackRollout", id=rid, reason="crashes at night").json()
    assert back["state"] == "rolled_back" and back["reason"].endswith("crashes at night")
    running_two = fleet.store.read_sync(lambda c: {r[0] for r in c.execute(
        "SELECT device_id FROM device_components WHERE name = 'app' AND version = '2.0.0'")})
    assert set(rollout_actions(fleet, rid, "rollback")) == running_two and running_two
    assert audit_actions(fleet, rid) == ["rollout.create", "rollout.stage", "rollout.start", "rollout.promote",
                                         "rollout.pause", "rollout.resume", "rollout.stage", "rollout.stage",
                                         "rollout.promote", "rollout.cancel", "rollout.rollback"]
    actors = fleet.store.read_sync(lambda c: {r[0] for r in c.execute(
        "SELECT actor_name FROM audit_log WHERE target = ? AND action IN ('rollout.pause', 'rollout.cancel')",
        (rid,))})
    assert actors == {"test-admin"}
    states = [d["state"] for k, d in events if k == "rollout.state" and d["id"] == rid]
    assert states == ["scheduled", "running", "paused", "running", "cancelled", "rolled_back"]


def test_overlapping_rollouts_are_refused(client, fleet, admin_key, lab) -> None:  # type: ignore[no-untyped-def]
    first = create(client, admin_key, artifact="app@2.0.0", tags={"site": "lab"})["id"]
    r = call(client, admin_key, "CreateRollout", artifact="app@1.0.0", device_ids=[lab[0]])
    assert r.status_code == 400 and r.json()["code"] == "failed_precondition"
    assert first in r.json()["message"] and "one rollout at a time" in r.json()["message"]
    # Other devices, or another component, are fine.
    assert call(client, admin_key, "CreateRollout", artifact="app@1.0.0", tags={"site": "home"}).status_code == 200
    make_artifact(fleet, name="other", version="1.0.0")
    assert call(client, admin_key, "CreateRollout", artifact="other@1.0.0", tags={"site": "lab"}).status_code == 200
    call(client, admin_key, "CancelRollout", id=first)
    assert call(client, admin_key, "CreateRollout", artifact="app@1.0.0", device_ids=[lab[0]]).status_code == 200


@pytest.mark.sqlite_only("input refused before the store is asked: the backend changes nothing")
@pytest.mark.parametrize("body, code, fragment", [
    ({"artifact": "app@9.9.9", "tags": {"site": "lab"}}, "not_found", "no artifact"),
    ({"artifact": "app@2.0.0"}, "invalid_argument", "say which devices"),
    ({"artifact": "app@2.0.0", "tags": {"site": "nowhere"}}, "failed_precondition", "no active device matches"),
    ({"artifact": "app@2.0.0", "tags": {"site": "lab"}, "device_types": ["linux-aarch64"]}, "invalid_argument",
     "built for sim"),
    ({"artifact": "app@2.0.0", "tags": {"site": "lab"}, "stages": [50, 20, 100]}, "invalid_argument", "must grow"),
    ({"artifact": "app@2.0.0", "tags": {"site": "lab"}, "max_failure_percent": 150}, "invalid_argument", "0..100"),
    ({"artifact": "app@2.0.0", "tags": {"site": "lab"}, "soak_seconds": -1}, "invalid_argument", "soak"),
    ({"artifact": "app@2.0.0", "tags": {"site": "lab"}, "window": "Mon-Fri 9-5"}, "invalid_argument", "HH:MM"),
    ({"artifact": "app@2.0.0", "tags": {"site": "lab"}, "health": "cpu hot"}, "invalid_argument", "METRIC OP"),
    ({"artifact": "app@2.0.0", "tags": {"site": "lab"}, "start_at": "2001-01-01 00:00"}, "invalid_argument",
     "in the past"),
    ({"artifact": "app@2.0.0", "tags": {"bad key": "x"}}, "invalid_argument", "tag key"),
])
def test_bad_rollouts_get_clear_errors(client, fleet, admin_key, lab, body, code, fragment) -> None:  # type: ignore[no-untyped-def]
    r = call(client, admin_key, "CreateRollout", **body)
    assert r.status_code in (400, 404) and r.json()["code"] == code and fragment in r.json()["message"], r.text
    assert fleet.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM rollouts").fetchone()[0]) == 0


def test_explicit_devices_must_fit_the_artifact(client, fleet, admin_key, lab) -> None:  # type: ignore[no-untyped-def]
    arm = enroll(fleet, 1, device_type="linux-aarch64")[0]
    r = call(client, admin_key, "CreateRollout", artifact="app@2.0.0", device_ids=[arm])
    assert r.status_code == 400 and "linux-aarch64" in r.json()["message"]
    r = create(client, admin_key, artifact="app@2.0.0", device_ids=lab[:3], stages=[100])
    assert r["target"] == {"tags": {}, "device_types": [], "device_ids": lab[:3]}
    run_pass(fleet, time.time())
    assert set(rollout_actions(fleet, r["id"])) == set(lab[:3])


def test_start_time_and_maintenance_window(client, fleet, admin_key, lab) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    later = create(client, admin_key, artifact="app@2.0.0", tags={"site": "home"}, start_at="+1h")
    run_pass(fleet, t0)
    got = get(client, admin_key, later["id"])
    assert got["state"] == "scheduled" and got["waiting_for"].startswith("its start time")
    run_pass(fleet, t0 + 3601)
    assert get(client, admin_key, later["id"])["state"] == "running"

    # A window on another weekday than today's: created now, the rollout must wait for it, whenever the test runs
    # (a fixed "Mon 01:00-02:00" started at once when the suite ran on a Monday at 01:xx UTC).
    spec = time.strftime("%a 01:00-02:00 UTC", time.gmtime(t0 + 3 * 86400))
    w = Window.parse(spec)
    assert w is not None and not w.contains(t0)
    opens = w.next_open(t0)
    rid = create(client, admin_key, artifact="app@2.0.0", tags={"site": "lab"}, stages=[50, 100], soak_seconds=10,
                 window=spec)["id"]
    run_pass(fleet, opens - 60)
    got = at_time(fleet, rid, opens - 60)
    assert got["state"] == "scheduled" and "maintenance window" in got["waiting_for"]
    assert rollout_actions(fleet, rid) == {}
    run_pass(fleet, opens + 60)
    assert get(client, admin_key, rid)["stage"] == 0
    install_all(fleet, rid, "2.0.0", at=opens + 7200)
    run_pass(fleet, opens + 7200)  # soaked, but the window has closed: the next stage waits a week
    assert get(client, admin_key, rid)["stage"] == 0
    run_pass(fleet, opens + 7 * 86400 + 60)
    assert get(client, admin_key, rid)["stage"] == 1


def test_consent_mode_offers_the_update(client, fleet, admin_key, lab) -> None:  # type: ignore[no-untyped-def]
    rid = create(client, admin_key, artifact="app@2.0.0", tags={"site": "lab"}, stages=[100], consent=True)["id"]
    run_pass(fleet, time.time())
    got = rollout_actions(fleet, rid)
    assert len(got) == 40 and {a["state"] for a in got.values()} == {"offered"}
    one = sorted(got)[0]
    report(fleet, one, got[one]["id"], "rejected")
    counts = get(client, admin_key, rid)["stages"][0]
    assert counts["skipped"] == 1 and counts["queued"] == 39


def test_devices_that_enroll_later_join_their_started_stage(client, fleet, admin_key, lab) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    rid = create(client, admin_key, artifact="app@2.0.0", tags={"site": "lab"}, stages=[30, 100])["id"]
    stages = [30.0, 100.0]
    run_pass(fleet, t0)
    placed = stages_of(client, admin_key, rid)
    assert placed == {d: member_stage(rid, d, stages) for d in lab}
    newcomers = enroll(fleet, 60, {"site": "lab", "room": "2"})
    strangers = enroll(fleet, 5, {"site": "home"})
    run_pass(fleet, t0 + 1)
    got = set(rollout_actions(fleet, rid))
    assert got == {d for d in lab + newcomers if member_stage(rid, d, stages) == 0}
    assert not got & set(strangers)
    again = stages_of(client, admin_key, rid)
    assert {d: again[d] for d in lab} == placed  # the newcomers moved nobody


def test_a_restart_mid_stage_continues_exactly(settings, fleet, lab) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    ro, _ = fleet.store.write_sync(lambda c: rollouts.create(c, SYSTEM, rollouts.RolloutSpec(
        artifact="app@2.0.0", tags={"site": "lab"}, stages=[50, 100], soak_seconds=10), t0))
    run_pass(fleet, t0)
    first = rollout_actions(fleet, ro.id)
    install_all(fleet, ro.id, "2.0.0", at=t0 + 5, devices=sorted(first)[: len(first) // 2])
    fleet.close()

    # A new process, as far as the rollout can tell: fresh caches, fresh orchestrator.
    again = Fleet(fleet.settings)
    try:
        assert again.orchestrator is not fleet.orchestrator
        run_pass(again, t0 + 6)
        assert rollout_actions(again, ro.id).keys() == first.keys()  # nobody got a second install
        assert again.store.read_sync(lambda c: rollouts.get(c, ro.id, t0 + 6)).stage == 0
        install_all(again, ro.id, "2.0.0", at=t0 + 30)
        seen(again, list(first), t0 + 30)
        run_pass(again, t0 + 30)
        run_pass(again, t0 + 31)
        after = rollout_actions(again, ro.id)
        assert again.store.read_sync(lambda c: rollouts.get(c, ro.id, t0 + 31)).stage == 1
        assert set(after) == set(lab) and all(after[d]["id"] == first[d]["id"] for d in first)
    finally:
        again.close()


def test_a_decision_on_a_stale_read_is_not_applied(fleet, lab) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    ro, _ = fleet.store.write_sync(lambda c: rollouts.create(c, SYSTEM, rollouts.RolloutSpec(
        artifact="app@2.0.0", tags={"site": "lab"}, stages=[100]), t0))
    snap = fleet.store.read_sync(lambda c: read_snapshot(c, ro.id, t0))
    plan = rollouts.decide(snap)
    assert plan.start == 0 and len(plan.installs) == 40
    fleet.store.write_sync(lambda c: rollouts.pause(c, SYSTEM, ro.id, t0))  # an operator got there first
    assert fleet.store.write_sync(lambda c: rollouts.apply(c, ro.id, snap.row.rev, plan, t0)) is None
    assert rollout_actions(fleet, ro.id) == {}


def test_a_big_stage_is_written_in_chunks(fleet, lab, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(rollout_steps, "CHUNK", 7)
    ro, _ = fleet.store.write_sync(lambda c: rollouts.create(c, SYSTEM, rollouts.RolloutSpec(
        artifact="app@2.0.0", tags={"site": "lab"}, stages=[100]), time.time()))
    rep = run_pass(fleet, time.time())
    assert rep.rollouts[0].writes == 6 and rep.actions == 40
    assert len(rollout_actions(fleet, ro.id)) == 40


def test_devices_get_their_rollout_action_at_check_in(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    make_artifact(fleet, version="2.0.0")
    token = make_token(client, admin_key, tags={"site": "desk"})
    devices = [TestDevice(client) for _ in range(2)]
    for d in devices:
        assert d.enroll(token).status_code == 200 and d.authenticate().status_code == 200
        assert d.call("CheckIn", {}).json()["actions"] == []
    rid = create(client, admin_key, artifact="app@2.0.0", tags={"site": "desk"}, stages=[100], soak_seconds=0)["id"]
    run_pass(fleet, time.time())
    for d in devices:
        got = d.call("CheckIn", {}).json()["actions"]
        assert [(a["kind"], a["component"], a["artifact"]["version"]) for a in got] == [("install", "app", "2.0.0")]
        for state in ("downloading", "verifying", "installing", "succeeded"):
            assert d.call("ReportStatus", {"action_id": got[0]["id"], "state": state}).status_code == 200
        r = d.call("CheckIn", {"components": [{"name": "app", "version": "2.0.0", "state": "running",
                                              "health": "healthy"}]})
        assert r.status_code == 200
    asyncio.run(fleet.hub.flush())
    run_pass(fleet, time.time() + 1)
    got = get(client, admin_key, rid)
    assert got["state"] == "completed" and got["stages"][0]["succeeded"] == 2


def test_lists_and_unknown_rollouts(client, fleet, admin_key, viewer_key, lab) -> None:  # type: ignore[no-untyped-def]
    a = create(client, admin_key, artifact="app@2.0.0", tags={"site": "lab"})["id"]
    b = create(client, admin_key, artifact="app@1.0.0", tags={"site": "home"})["id"]
    listed = rpc(client, SVC, "ListRollouts", {}, key=viewer_key).json()["rollouts"]
    assert [r["id"] for r in listed] == [b, a] and not listed[0]["counted"]
    assert [r["id"] for r in call(client, viewer_key, "ListRollouts", state="cancelled").json()["rollouts"]] == []
    r = call(client, viewer_key, "ListRollouts", state="done")
    assert r.status_code == 400 and "scheduled" in r.json()["message"]
    r = call(client, viewer_key, "GetRollout", id="ro_nope")
    assert r.status_code == 404 and "fleetd rollouts list" in r.json()["message"]
    r = call(client, viewer_key, "ListRolloutDevices", id=a, status="happy")
    assert r.status_code == 400 and "soaking" in r.json()["message"]
