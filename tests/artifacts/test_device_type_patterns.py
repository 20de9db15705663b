"""Device-type patterns on the server: an artifact pushed for linux-* is signed with its pattern and goes to every
matching device type (deploy, rollouts, the compatible-artifact list, RTOS images), and nowhere else. The rule
itself is on the shared vectors (tests/test_vectors.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleetd.artifacts.catalog import ArtifactRef
from fleetd.artifacts.rtos_image import ImageError, verify_image
from fleetd.cli.devclient import Download, VerificationError, verify_artifact
from fleetd.core.config import Settings
from fleetd.fleet import Fleet
from tests.artifacts.test_artifacts import active_device, check_in, error, open_upload, push
from tests.artifacts.test_rtos_image import push_rtos
from tests.conftest import rpc
from tests.devices.test_devices import make_artifact
from tests.rollouts.test_rollouts import create, enroll, rollout_actions, run_pass

SCRIPT = b"#!/bin/sh\nwhile :; do date; sleep 10; done\n"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # No background rollout passes: the rollout test drives the orchestrator itself.
    return Settings(data_dir=str(tmp_path / "data"), tls=False, mdns=False, host="127.0.0.1", port=8420,
                    rollout_pass_seconds=0)


def deploy(client: Any, key: str, ref: str, *devices: Any) -> Any:
    return rpc(client, "DeviceAdminService", "Deploy", {"artifact": ref, "device_ids": [d.device_id for d in devices]},
               key=key)


def listed(client: Any, key: str, device_type: str) -> list[str]:
    r = rpc(client, "ArtifactService", "ListArtifacts", {"device_type": device_type}, key=key)
    assert r.status_code == 200, r.text
    return [f"{a['name']}@{a['version']}" for a in r.json()["artifacts"]]


def test_one_push_for_linux_star_is_signed_with_it_and_deploys_to_both_linux_boards(
        client: Any, fleet: Fleet, admin_key: str, operator_key: str) -> None:
    a = push(client, operator_key, SCRIPT, name="beat", version="1.0.0", device_types=["linux-*"],
             file_name="beat.sh")
    assert a["device_types"] == ["linux-*"]
    assert json.loads(a["manifest"])["device_types"] == ["linux-*"]
    Ed25519PublicKey.from_public_bytes(fleet.keys.signing_public_key).verify(
        base64.b64decode(a["signature"]), a["manifest"].encode())  # the pattern is in the signed bytes

    pi4 = active_device(client, admin_key, device_type="linux-aarch64")
    pi2 = active_device(client, admin_key, device_type="linux-armv7l")
    mcu = active_device(client, admin_key, device_type="rtos-stm32")
    r = deploy(client, operator_key, "beat@1.0.0", pi4, pi2)
    assert r.status_code == 200, r.text
    assert len(r.json()["action_ids"]) == 2

    status, code, message = error(deploy(client, operator_key, "beat@1.0.0", mcu))
    assert (status, code) == (400, "failed_precondition")
    assert f"{mcu.device_id} is of type rtos-stm32" in message and "built for linux-*" in message

    # Each board gets the action and, verifying as a device does, accepts the manifest for its own type.
    for dev in (pi4, pi2):
        (action,) = check_in(dev)["actions"]
        ref = ArtifactRef(**{k: v for k, v in action["artifact"].items() if k in ArtifactRef.__struct_fields__})
        verify_artifact(ref, fleet.keys.signing_public_key,
                        Download(sha256=hashlib.sha256(SCRIPT).hexdigest(), size=len(SCRIPT)),
                        device_type=dev.device_type)
        with pytest.raises(VerificationError, match="not for device type 'rtos-stm32'"):
            verify_artifact(ref, fleet.keys.signing_public_key, None, device_type="rtos-stm32")

    # The device page's "compatible artifacts" list matches by the same rule.
    assert listed(client, operator_key, "linux-aarch64") == ["beat@1.0.0"]
    assert listed(client, operator_key, "linux-armv7l") == ["beat@1.0.0"]
    assert listed(client, operator_key, "rtos-stm32") == []


def test_deploy_by_tags_picks_only_the_matching_types(client: Any, fleet: Fleet, admin_key: str,
                                                      operator_key: str) -> None:
    make_artifact(fleet, "beat", device_types=["linux-*"])
    linux = enroll(fleet, 2, {"site": "lab"}, device_type="linux-aarch64")
    enroll(fleet, 2, {"site": "lab"}, device_type="rtos-stm32")
    r = rpc(client, "DeviceAdminService", "Deploy", {"artifact": "beat@1.0.0", "tags": {"site": "lab"}},
            key=operator_key)
    assert r.status_code == 200, r.text
    got = fleet.store.read_sync(lambda c: {row[0] for row in c.execute(
        "SELECT device_id FROM actions WHERE kind = 'install'")})
    assert got == set(linux)


@pytest.mark.parametrize("pattern", ["linux-?", "linux-**", "*", "Linux-*", "linux-[a-z]*"])
def test_a_pattern_outside_the_rule_is_refused_at_push(client: Any, operator_key: str, pattern: str) -> None:
    status, code, message = error(open_upload(client, operator_key, device_types=["sim", pattern]))
    assert (status, code) == (400, "invalid_argument")
    assert f"device type {pattern!r} must be a device type" in message and "(e.g. linux-*)" in message


def test_a_rollout_of_a_pattern_targets_the_matching_types(client: Any, fleet: Fleet, admin_key: str) -> None:
    make_artifact(fleet, "beat", device_types=["linux-*"])
    arm64 = enroll(fleet, 3, {"site": "lab"}, device_type="linux-aarch64")
    armv7 = enroll(fleet, 2, {"site": "lab"}, device_type="linux-armv7l")
    enroll(fleet, 2, {"site": "lab"}, device_type="rtos-stm32")
    r = create(client, admin_key, artifact="beat@1.0.0", tags={"site": "lab"}, stages=[100])
    assert r["target"]["device_types"] == ["linux-*"]
    run_pass(fleet, time.time())
    assert set(rollout_actions(fleet, r["id"])) == set(arm64 + armv7)

    # Narrowing to a type the pattern covers works; a type it does not cover is refused.
    enroll(fleet, 1, {"site": "other"}, device_type="linux-armv7l")
    narrow = create(client, admin_key, artifact="beat@1.0.0", tags={"site": "other"}, device_types=["linux-armv7l"])
    assert narrow["target"]["device_types"] == ["linux-armv7l"]
    status, code, message = error(rpc(client, "RolloutService", "CreateRollout",
                                      {"artifact": "beat@1.0.0", "tags": {"site": "lab"},
                                       "device_types": ["rtos-stm32"]}, key=admin_key))
    assert (status, code) == (400, "invalid_argument") and "built for linux-*, not for rtos-stm32" in message


def test_an_rtos_image_for_a_pattern_carries_it_in_its_header(client: Any, fleet: Fleet, admin_key: str,
                                                              operator_key: str) -> None:
    r = push_rtos(client, operator_key, b"\x01" * 300, name="fw", version="1.0.0", device_types=["fw-*"])
    assert r.status_code == 201, r.text
    stored = fleet.blobs.path(r.json()["sha256"]).read_bytes()
    key = fleet.keys.signing_public_key
    assert verify_image(stored, [key], "fw-sim").header.device_type == "fw-*"
    with pytest.raises(ImageError) as e:
        verify_image(stored, [key], "rtos-stm32")
    assert e.value.kind == "device_type"
    assert deploy(client, operator_key, "fw@1.0.0", active_device(client, admin_key, device_type="fw-sim")
                  ).status_code == 200
