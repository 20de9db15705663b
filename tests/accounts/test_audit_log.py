"""The audit log stays readable: one entry per admin command (a deploy to 50 devices is one line), filters by type
and actor, and clear errors for filters that cannot match."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fleetd.accounts import audit
from fleetd.cli import app
from fleetd.core.config import Settings
from fleetd.fleet import Fleet
from fleetd.store.dialect import dialect_of
from tests.conftest import make_key, rpc
from tests.devices.test_devices import make_artifact
from tests.rollouts.test_rollouts import enroll

pytestmark = pytest.mark.both_backends

SRC = Path(__file__).resolve().parents[2] / "src" / "fleetd"


def entries(client: Any, key: str, **body: Any) -> Any:
    r = rpc(client, "AuditService", "List", body, key=key)
    assert r.status_code == 200, r.text
    return r.json()["entries"]


def test_a_deploy_to_50_devices_is_one_entry_with_its_count(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    ids = enroll(fleet, 50, {"site": "lab"})
    # What a new user does next: push, make a join token and a key, deploy.
    make_artifact(fleet, "app", "2.0.0")
    assert rpc(client, "EnrollmentService", "CreateToken", {"description": "more"}, key=admin_key).status_code == 200
    ops = make_key(fleet, "operator", "deployer")
    r = rpc(client, "DeviceAdminService", "Deploy", {"artifact": "app@2.0.0", "tags": {"site": "lab"}}, key=ops)
    assert r.status_code == 200, r.text
    made = r.json()["action_ids"]
    assert len(made) == 50

    first_page = entries(client, admin_key, limit=4)
    assert [e["action"] for e in first_page] == ["action.install", "key.create", "token.create", "artifact.create"]
    deploy = first_page[0]
    assert deploy["actor_name"] == "deployer" and deploy["target"] is None
    d = deploy["details"]
    assert d["count"] == 50 and d["artifact"] == "app@2.0.0" and d["component"] == "app"
    assert len(d["devices"]) == len(d["actions"]) == audit.LISTED
    assert set(d["devices"]) <= set(ids) and set(d["actions"]) <= set(made)
    assert len(entries(client, admin_key, action="action.")) == 1
    # Each action still says who made it, and the device's history lists it.
    acts = rpc(client, "DeviceAdminService", "ListActions", {"device_id": d["devices"][0]}, key=admin_key).json()
    assert acts["actions"][0]["id"] in made
    created_by = fleet.store.read_sync(lambda c: {r[0] for r in c.execute(
        f"SELECT created_by FROM actions WHERE {dialect_of(c).in_json_list('id')}", (json.dumps(made),))})
    assert created_by == {"deployer"}


def test_one_device_keeps_the_action_as_target(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    make_artifact(fleet, "app", "2.0.0")
    [one] = enroll(fleet, 1)
    r = rpc(client, "DeviceAdminService", "CreateAction", {"kind": "reboot", "device_ids": [one]}, key=admin_key)
    [aid] = r.json()["action_ids"]
    [e] = entries(client, admin_key, action="action.reboot")
    assert e["target"] == aid and e["details"] == {"count": 1, "devices": [one], "actions": [aid], "component": ""}


def test_filters_by_several_types_and_by_actor(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    make_artifact(fleet, "app", "2.0.0")  # artifact.create by fleetd
    ops = make_key(fleet, "operator", "ops-key")
    rpc(client, "EnrollmentService", "CreateToken", {"description": "lab"}, key=ops)
    rpc(client, "UserService", "CreateUser", {"username": "dora", "role": "viewer"}, key=admin_key)
    both = entries(client, admin_key, action="artifact.,token.")
    assert sorted(e["action"] for e in both) == ["artifact.create", "token.create"]
    assert [e["action"] for e in entries(client, admin_key, action="user")] == ["user.create"]
    by_ops = entries(client, admin_key, actor="ops-key")
    assert [e["action"] for e in by_ops] == ["token.create"]
    assert {e["actor_name"] for e in entries(client, admin_key, actor="fleetd")} == {"fleetd"}
    # A user who has done nothing yet is a known actor: no entries, no error.
    assert entries(client, admin_key, actor="dora") == []


@pytest.mark.parametrize("body, status, message", [
    ({"action": "artefact."}, 400, r"no audit entry type begins with 'artefact\.': types begin with action\., "),
    ({"action": "token.,pushes"}, 400, r"no audit entry type begins with 'pushes'"),
    ({"actor": "alcie"}, 404, r"no user, API key or device named 'alcie' has an audit entry; an actor is a user "
                              r"name \(.*\)"),
    ({"actor": "x" * 300}, 400, r"actor must be at most 200 characters"),
    ({"outcome": "fine"}, 400, r"outcome must be ok, denied or failed"),
])
def test_bad_filters_say_what_would_match(client, admin_key, body, status, message) -> None:  # type: ignore[no-untyped-def]
    r = rpc(client, "AuditService", "List", body, key=admin_key)
    assert r.status_code == status, r.text
    assert re.search(message, r.json()["message"]), r.json()["message"]


def test_the_cli_filters_by_type_and_actor_and_shows_the_count(settings: Settings) -> None:
    fleet = Fleet(settings)
    try:
        make_artifact(fleet, "app", "2.0.0")
        enroll(fleet, 12, {"site": "lab"})
        make_key(fleet, "operator", "deployer")
        from fleetd.accounts.audit import Actor
        from fleetd.devices import actions
        fleet.store.write_sync(lambda c: actions.create_install(
            c, Actor("key", None, "deployer"), [r[0] for r in c.execute("SELECT id FROM devices")], "app@2.0.0"))
    finally:
        fleet.close()
    data = ["--data-dir", settings.data_dir]
    r = CliRunner().invoke(app, ["audit", "--type", "action.,key.", "--actor", "deployer", "--json", *data])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert [(e["action"], e["details"]["count"]) for e in got] == [("action.install", 12)]
    r = CliRunner().invoke(app, ["audit", "--type", "action.", *data], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert re.search(r"action\.install\s.*\s12\s", r.stdout), r.stdout
    r = CliRunner().invoke(app, ["audit", "--type", "deploy", *data])
    assert r.exit_code == 1 and "no audit entry type begins with 'deploy'" in " ".join(r.output.split())


def test_every_recorded_type_is_in_a_family() -> None:
    """audit.FAMILIES must know every type the server records, or --type would refuse to find it."""
    recorded = set()
    for p in SRC.rglob("*.py"):
        for m in re.finditer(r"audit\.record(?:_batch)?\(\s*\w+,\s*[^,]+,\s*f?\"([a-z_]+)\.", p.read_text()):
            recorded.add(m.group(1))
    assert recorded and recorded <= set(audit.FAMILIES), recorded - set(audit.FAMILIES)
