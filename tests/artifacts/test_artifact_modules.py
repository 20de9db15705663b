"""Update modules on the server: --module/--meta signed into the manifest (app manifests unchanged), their
checks, and deploys and rollouts refused for devices whose inventory does not list the module."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fleetd.artifacts.modules import modules_in
from fleetd.fleet import Fleet
from tests.artifacts.test_artifacts import active_device, error, open_upload, push
from tests.conftest import rpc
from tests.support.devices_helper import TestDevice

pytestmark = pytest.mark.both_backends


@pytest.mark.sqlite_only("input refused before the store is asked: the backend changes nothing")
@pytest.mark.parametrize(("fields", "needle"), [
    ({"module": "Bad Name"}, "module name 'Bad Name' must be"),
    ({"module": "file"}, "the file module needs the absolute destination on the device: --meta path=/absolute/path"),
    ({"module": "directory", "meta": {"path": "relative"}}, "needs the absolute destination"),
    ({"meta": {"path": "/x"}}, "--meta is for an update module's settings; give the module with --module NAME"),
    ({"kind": "firmware", "module": "file"}, "--module and --meta apply to app artifacts only"),
    ({"module": "mine", "meta": {"1 bad": "x"}}, "meta key '1 bad'"),
    ({"module": "mine", "meta": {"k": "a\nb"}}, "no control characters"),
    ({"module": "mine", "install_spec": {"command": ["x"]}}, "the mine module takes its settings from --meta"),
])
def test_bad_modules_and_meta_are_refused(client: Any, operator_key: str, fields: dict[str, Any],
                                          needle: str) -> None:
    status, code, message = error(open_upload(client, operator_key, **fields))
    assert (status, code) == (400, "invalid_argument") and needle in message, message


def test_module_and_meta_are_signed_into_the_manifest(client: Any, operator_key: str) -> None:
    a = push(client, operator_key, b"port = 80\n", name="conf", module="file", meta={"path": "/etc/a.conf"})
    m = json.loads(a["manifest"])
    assert (m["module"], m["meta"]) == ("file", {"path": "/etc/a.conf"})
    plain = push(client, operator_key, b"#!/bin/sh\n", name="app", module="app")
    assert '"module"' not in plain["manifest"] and '"meta"' not in plain["manifest"], "app manifests stay as before"


def inventory(device: TestDevice, fleet: Fleet, modules: str | None) -> None:
    inv: dict[str, Any] = {"hostname": "h"}
    if modules is not None:
        inv["extra"] = {"update_modules": modules}
    r = device.call("CheckIn", {"inventory": inv})
    assert r.status_code == 200, r.text
    asyncio.run(fleet.hub.flush())


def test_a_deploy_is_refused_for_devices_that_lack_the_module(client: Any, admin_key: str, operator_key: str,
                                                               fleet: Fleet) -> None:
    has, lacks, old = (active_device(client, admin_key) for _ in range(3))
    inventory(has, fleet, "app,file,directory,v3-test")
    inventory(lacks, fleet, "app,file,directory")
    inventory(old, fleet, None)  # an agent from before update modules
    push(client, operator_key, b"x", name="thing", module="v3-test")
    push(client, operator_key, b"y", name="conf", module="file", meta={"path": "/etc/c"})
    deploy = {"artifact": "thing@1.0.0", "device_ids": [has.device_id, lacks.device_id]}
    status, code, message = error(rpc(client, "DeviceAdminService", "Deploy", deploy, key=operator_key))
    assert (status, code) == (400, "failed_precondition")
    assert f"thing@1.0.0 is installed by the 'v3-test' update module, which 1 device(s) do not have: " \
           f"{lacks.device_id}; install the module on them (an executable named v3-test" in message, message
    r = rpc(client, "DeviceAdminService", "Deploy", {"artifact": "thing@1.0.0", "device_ids": [has.device_id]},
            key=operator_key)
    assert r.status_code == 200, r.text
    # A built-in module an old agent lacks: update the agent. A rollout is refused the same way.
    status, _, message = error(rpc(client, "DeviceAdminService", "Deploy",
                                   {"artifact": "conf@1.0.0", "device_ids": [old.device_id]}, key=operator_key))
    assert status == 400 and f"do not have: {old.device_id}; update fleet-agent on them" in message, message
    r = rpc(client, "RolloutService", "CreateRollout", {"artifact": "conf@1.0.0", "device_types": ["sim"]},
            key=operator_key)
    status, _, message = error(r)
    assert status == 400 and f"which 1 device(s) do not have: {old.device_id}" in message, message


def test_the_modules_an_inventory_lists() -> None:
    assert modules_in('{"extra": {"update_modules": "app,file, x"}}') == {"app", "file", "x"}
    assert modules_in({}) == modules_in("not json") == {"app"}
