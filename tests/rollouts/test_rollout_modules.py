"""A rollout of an artifact for an update module checks each device's inventory as the device gets its action:
at every stage's start and for devices that join a started stage later, not only at the rollout's creation. A
device that does not list the module gets no action; it is recorded as skipped, with the reason, in the
rollout's status (docs/agent.md "Update modules")."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from fleetd.accounts.audit import SYSTEM
from fleetd.artifacts import catalog as artifacts
from fleetd.fleet import Fleet
from tests.rollouts.test_rollouts import (
    at_time,
    call,
    create,
    enroll,
    member_stage,
    report,
    rollout_actions,
    run_pass,
    runs,
    seen,
)
from tests.rollouts.test_rollouts import settings as settings  # the fixture: no background passes

pytestmark = pytest.mark.both_backends

STAGES = [50.0, 100.0]


def lists(fleet: Fleet, device_ids: list[str], modules: str) -> None:
    """The devices' inventories list these update modules (as a check-in would store them)."""
    inv = json.dumps({"hostname": "h", "extra": {"update_modules": modules}})
    fleet.store.write_sync(lambda c: c.executemany("UPDATE devices SET inventory = ? WHERE id = ?",
                                                   [(inv, d) for d in device_ids]))


def file_artifact(fleet: Fleet) -> None:
    blob = asyncio.run(fleet.blobs.put_bytes(b"port = 80\n"))
    fleet.store.write_sync(lambda c: artifacts.create(
        c, SYSTEM, fleet.keys.signing_key, name="conf", version="2.0.0", kind="app", device_types=["sim"],
        sha256=blob.sha256, size=blob.size, file_name="conf.bin", install_spec=None, module="file",
        meta={"path": "/etc/app.conf"}))


def install_all(fleet: Fleet, rid: str, at: float) -> set[str]:
    """Every open install of the rollout succeeds; the devices report conf 2.0.0 and check in at ``at``."""
    done = [d for d, a in rollout_actions(fleet, rid).items() if a["open"]]
    for d, a in rollout_actions(fleet, rid).items():
        if a["open"]:
            report(fleet, d, a["id"], "downloading", "installing", "succeeded")
    runs(fleet, done, "2.0.0", component="conf")
    seen(fleet, done, at)
    return set(done)


def test_each_stage_start_rechecks_the_module(client: Any, fleet: Fleet, admin_key: str) -> None:
    file_artifact(fleet)
    ids = enroll(fleet, 24, {"site": "lab"})
    lists(fleet, ids, "app,file,directory")
    t0 = time.time()
    rid = create(client, admin_key, artifact="conf@2.0.0", tags={"site": "lab"}, stages=STAGES,
                 soak_seconds=10)["id"]
    first = [d for d in ids if member_stage(rid, d, STAGES) == 0]
    second = [d for d in ids if member_stage(rid, d, STAGES) == 1]
    assert first and len(second) >= 3

    # After the creation's check: one stage-2 device loses the module (its agent was replaced), and newcomers
    # join the target, one of them with an agent from before update modules (it lists none: app only).
    lost = second[0]
    lists(fleet, [lost], "app")
    newcomers = enroll(fleet, 12, {"site": "lab"})
    lists(fleet, newcomers[1:], "app,file")
    old = newcomers[0]

    run_pass(fleet, t0)
    got = set(rollout_actions(fleet, rid))
    new_first = [d for d in newcomers if member_stage(rid, d, STAGES) == 0]
    assert got == (set(first) | set(new_first)) - {old}
    assert install_all(fleet, rid, at=t0 + 20) == got
    run_pass(fleet, t0 + 20)  # stage 1 soaked: stage 2 starts, and checks each device again
    r = at_time(fleet, rid, t0 + 20)
    assert (r["state"], r["stage"]) == ("running", 1), r
    given = set(rollout_actions(fleet, rid)) - got
    everyone_second = set(second) | {d for d in newcomers if member_stage(rid, d, STAGES) == 1}
    assert given == everyone_second - {lost, old}
    run_pass(fleet, t0 + 21)  # a skipped device is never handed an action later
    assert set(rollout_actions(fleet, rid)) == got | given

    # Shown as skipped, with the reason, in the rollout's status.
    devices = {d["device_id"]: d for d in call(client, admin_key, "ListRolloutDevices", id=rid).json()["devices"]}
    skipped = {d for d, row in devices.items() if row["status"] == "skipped"}
    assert skipped == {lost, old}, devices
    assert devices[lost]["detail"] == (
        "its inventory does not list the 'file' update module (it has app); update fleet-agent on it (the file "
        "module is built into newer agents), then deploy to it (this rollout leaves it out)")
    r = at_time(fleet, rid, t0 + 21)
    assert sum(s["skipped"] for s in r["stages"]) == len(skipped)
    assert r["stages"][1]["skipped"] >= 1 and r["stages"][1]["failed"] == 0
    # Skipped devices are done: the last stage completes once the others have soaked.
    assert install_all(fleet, rid, at=t0 + 40) == given
    run_pass(fleet, t0 + 40)
    assert at_time(fleet, rid, t0 + 40)["state"] == "completed"
