"""The Connect routes in binary protobuf (application/proto), against the app as ``fleetd serve`` runs it.

Requests are built with the generated message classes (fleetd.protobuf) and answers parsed with them,
independently of the server's codec: the same call in JSON and in binary must give the same message.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import pkgutil
import urllib.parse
from typing import Any

import pytest
from google.protobuf import empty_pb2, json_format  # type: ignore[import-untyped]
from google.protobuf.message import Message  # type: ignore[import-untyped]

from fleetd import protobuf as generated
from fleetd.app import SERVICES
from fleetd.fleet import Fleet
from fleetd.http import rpc
from tests.conftest import make_key
from tests.conftest import rpc as call
from tests.devices.test_devices import active_device, make_artifact
from tests.support.pki_helper import csr_pem

PROTO = "application/proto"
METHODS = {(s.name, m.name): m for s in SERVICES for m in s.methods.values()}


def _classes() -> dict[str, type[Message]]:
    found: dict[str, type[Message]] = {"Empty": empty_pb2.Empty}
    for module in pkgutil.iter_modules(generated.__path__):
        if module.name.endswith("_pb2"):
            mod = importlib.import_module(f"{generated.__name__}.{module.name}")
            for name in mod.DESCRIPTOR.message_types_by_name:
                found[name] = getattr(mod, name)
    return found


CLASSES = _classes()


def message_classes(service: str, method: str) -> tuple[type[Message], type[Message]]:
    m = METHODS[(service, method)]
    return CLASSES[m.request_type.__name__], CLASSES[m.response_type.__name__]


def binary(client: Any, service: str, method: str, body: dict[str, Any], key: str | None) -> Any:
    """POST the call in binary: the request as the generated message, serialized."""
    request_cls, _ = message_classes(service, method)
    content = json_format.ParseDict(body, request_cls()).SerializeToString()
    headers = {"Content-Type": PROTO, **({"Authorization": f"Bearer {key}"} if key else {})}
    return client.post(f"/fleetd.v1.{service}/{method}", content=content, headers=headers)


def parsed(service: str, method: str, r: Any) -> Message:
    """A 200 binary answer as the generated response message."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == PROTO
    return message_classes(service, method)[1].FromString(r.content)


def from_json(service: str, method: str, r: Any) -> Message:
    assert r.status_code == 200, r.text
    return json_format.ParseDict(r.json(), message_classes(service, method)[1](), ignore_unknown_fields=True)


@pytest.fixture
def world(client: Any, fleet: Fleet, admin_key: str) -> dict[str, Any]:
    """Something in every service to read: a user, a device with a tag and a metric, artifacts, a rule,
    a gateway token, a rollout."""
    device = active_device(client, admin_key)
    assert device.call("CheckIn", {"inventory": {"os": "linux"}}).status_code == 200
    assert device.call("IssueCertificate", {"csr": csr_pem(device.key)}).status_code == 200  # one to list
    # A metric series, as telemetry intake leaves it (tests/http/test_paging.py does the same).
    fleet.store.write_sync(lambda c: c.execute("INSERT INTO telemetry_series (device_id, name) VALUES (?, 'cpu')",
                                               (device.device_id,)))
    make_artifact(fleet)  # the rollout's
    spare = make_artifact(fleet, name="spare")  # one to delete
    for service, method, body in [
        ("UserService", "CreateUser", {"username": "alice", "role": "operator"}),
        ("DeviceAdminService", "UpdateDevice", {"id": device.device_id, "set_tags": {"site": "lab"}}),
        ("AlertService", "CreateRule", {"metric": "mem", "threshold": 1e9, "window_seconds": 60}),
        ("DdiService", "CreateGatewayToken", {"description": "gw"}),
        ("RolloutService", "CreateRollout", {"artifact": "app@1.0.0", "device_ids": [device.device_id]}),
    ]:
        r = call(client, service, method, body, key=admin_key)
        assert r.status_code == 200, (method, r.text)
    asyncio.run(fleet.hub.flush())
    rollout = call(client, "RolloutService", "ListRollouts", {}, key=admin_key).json()["rollouts"][0]
    return {"DEVICE": device.device_id, "ARTIFACT": spare.id, "ROLLOUT": rollout["id"]}


def filled(body: dict[str, Any], world: dict[str, Any]) -> dict[str, Any]:
    """``body`` with the placeholders (DEVICE, ARTIFACT, ROLLOUT) replaced by the world's ids."""
    return {k: world.get(v, v) if isinstance(v, str) else v for k, v in body.items()}


READS = [
    ("UserService", "ListUsers", {}),
    ("UserService", "WhoAmI", {}),
    ("EnrollmentService", "ListTokens", {}),
    ("DeviceAdminService", "ListDevices", {}),
    ("DeviceAdminService", "GetDevice", {"id": "DEVICE"}),
    ("AuditService", "List", {"limit": 20}),
    ("ArtifactService", "ListArtifacts", {}),
    ("ArtifactService", "GetSigningKey", {}),
    ("TelemetryService", "ListMetrics", {"device": "DEVICE"}),
    ("AlertService", "ListRules", {}),
    ("RolloutService", "ListRollouts", {}),
    ("DdiService", "ListGatewayTokens", {}),
    ("CertificateService", "ListDeviceCertificates", {"id": "DEVICE"}),
]


def test_every_service_has_a_read_here() -> None:
    assert {s for s, _, _ in READS} == {s.name for s in SERVICES} - {"DeviceService"}  # its calls are writes


@pytest.mark.parametrize("service,method,body", READS, ids=[f"{s}.{m}" for s, m, _ in READS])
def test_a_read_in_binary_answers_what_json_does(client: Any, admin_key: str, world: dict[str, Any],
                                                 service: str, method: str, body: dict[str, Any]) -> None:
    body = filled(body, world)
    # The orchestrator works in the background (a rollout starts, the audit log grows): the binary answer
    # must be what JSON answered just before or just after it.
    before = from_json(service, method, call(client, service, method, body, key=admin_key))
    answer = parsed(service, method, binary(client, service, method, body, admin_key))
    after = from_json(service, method, call(client, service, method, body, key=admin_key))
    assert answer in (before, after)
    assert answer.ByteSize() > 0, "an empty answer proves nothing"


# (service, method, body, then a JSON read that shows the write, and what it must show)
WRITES = [
    ("UserService", "CreateUser", {"username": "binuser", "role": "viewer"}, ("UserService", "ListUsers"), "binuser"),
    ("EnrollmentService", "CreateToken", {"description": "bin-token"}, ("EnrollmentService", "ListTokens"),
     "bin-token"),
    ("DeviceAdminService", "UpdateDevice", {"id": "DEVICE", "set_tags": {"site": "binsite"}},
     ("DeviceAdminService", "ListDevices"), "binsite"),
    # Telemetry and AuditService: no write methods (telemetry comes in through DeviceService, below).
    ("ArtifactService", "DeleteArtifact", {"id": "ARTIFACT"}, ("ArtifactService", "ListArtifacts"), None),
    ("AlertService", "CreateRule", {"metric": "binmetric", "threshold": 5, "window_seconds": 60},
     ("AlertService", "ListRules"), "binmetric"),
    ("RolloutService", "PauseRollout", {"id": "ROLLOUT"}, ("RolloutService", "ListRollouts"), "paused"),
    ("DdiService", "CreateGatewayToken", {"description": "bin-gw"}, ("DdiService", "ListGatewayTokens"), "bin-gw"),
]


@pytest.mark.parametrize("service,method,body,read,shows", WRITES, ids=[f"{w[0]}.{w[1]}" for w in WRITES])
def test_a_write_in_binary_takes_effect(client: Any, admin_key: str, world: dict[str, Any], service: str,
                                        method: str, body: dict[str, Any], read: tuple[str, str],
                                        shows: str | None) -> None:
    body = filled(body, world)
    before = call(client, *read, {}, key=admin_key).text
    answer = parsed(service, method, binary(client, service, method, body, admin_key))
    after = call(client, *read, {}, key=admin_key).text
    if shows is None:  # a delete: the thing is gone
        assert body["id"] in before and body["id"] not in after
    else:
        assert shows not in before and shows in after
    if shows in ("binuser", "bin-token", "binmetric", "bin-gw"):
        assert shows in str(json_format.MessageToDict(answer)), "the answer is the created thing"


def test_device_calls_in_binary(client: Any, admin_key: str, fleet: Fleet) -> None:
    device = active_device(client, admin_key)
    answer = parsed("DeviceService", "CheckIn",
                    binary(client, "DeviceService", "CheckIn", {"inventory": {"os": "binos"},
                                                                "components": [{"name": "app", "version": "2.0.0"}]},
                           device.token))
    asyncio.run(fleet.hub.flush())
    assert json_format.MessageToDict(answer, preserving_proto_field_name=True)["status"] == "active"
    shown = call(client, "DeviceAdminService", "GetDevice", {"id": device.device_id}, key=admin_key).text
    assert "binos" in shown and "2.0.0" in shown
    # The same check-in in JSON answers the same message.
    again = call(client, "DeviceService", "CheckIn", {"inventory": {"os": "binos"},
                                                      "components": [{"name": "app", "version": "2.0.0"}]},
                 headers={"Authorization": f"Bearer {device.token}"})
    assert answer == from_json("DeviceService", "CheckIn", again)
    # A public call too: enrolment's first step.
    challenge = parsed("DeviceService", "GetChallenge",
                       binary(client, "DeviceService", "GetChallenge", {"device_id": device.device_id}, None))
    assert challenge.nonce


@pytest.mark.parametrize("service,method,body,key,status,code", [
    ("DeviceAdminService", "GetDevice", {"id": "dev_nope"}, "admin", 404, "not_found"),
    ("UserService", "ListUsers", {}, None, 401, "unauthenticated"),
    ("UserService", "CreateUser", {"username": "x", "role": "admin"}, "viewer", 403, "permission_denied"),
])
def test_errors_of_binary_calls_are_connect_json(client: Any, fleet: Fleet, service: str, method: str,
                                                  body: dict[str, Any], key: str | None, status: int,
                                                  code: str) -> None:
    r = binary(client, service, method, body, make_key(fleet, key) if key else None)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    assert r.json()["code"] == code and r.json()["message"]


def test_malformed_protobuf_is_invalid_argument(client: Any, admin_key: str) -> None:
    r = client.post("/fleetd.v1.UserService/ListUsers", content=b"\x0a\x05ab",
                    headers={"Content-Type": PROTO, "Authorization": f"Bearer {admin_key}"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    assert r.json()["code"] == "invalid_argument" and "malformed protobuf" in r.json()["message"]


def test_connect_get_with_encoding_proto(client: Any, admin_key: str, world: dict[str, Any]) -> None:
    h = {"Authorization": f"Bearer {admin_key}"}
    request_cls, _ = message_classes("DeviceAdminService", "GetDevice")
    raw = request_cls(id=world["DEVICE"]).SerializeToString()
    expected = from_json("DeviceAdminService", "GetDevice",
                         call(client, "DeviceAdminService", "GetDevice", {"id": world["DEVICE"]}, key=admin_key))
    url = "/fleetd.v1.DeviceAdminService/GetDevice"
    # base64 (URL-safe, padding optional), as Connect clients send it
    b64 = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    r = client.get(url, params={"connect": "v1", "encoding": "proto", "base64": "1", "message": b64}, headers=h)
    assert parsed("DeviceAdminService", "GetDevice", r) == expected
    # percent-encoded bytes
    r = client.get(f"{url}?encoding=proto&message={urllib.parse.quote_from_bytes(raw)}", headers=h)
    assert parsed("DeviceAdminService", "GetDevice", r) == expected
    r = client.get(url, params={"encoding": "xml", "message": "x"}, headers=h)
    assert r.status_code == 415 and "encoding=proto" in r.json()["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/grpc", "application/grpc-web-text", None])
def test_other_content_types_get_415_naming_the_accepted_ones(client: Any, admin_key: str,
                                                              content_type: str | None) -> None:
    headers = {"Authorization": f"Bearer {admin_key}"}
    if content_type:
        headers["Content-Type"] = content_type
    r = client.post("/fleetd.v1.UserService/ListUsers", content=b"{}", headers=headers)
    assert r.status_code == 415
    assert r.headers["accept-post"] == rpc.ACCEPT_POST == (
        "application/json, application/proto, application/grpc-web, application/grpc-web+proto, "
        "application/grpc-web+json")
    assert r.headers["content-type"] == "application/json"
    message = r.json()["message"]
    assert "application/json or application/proto" in message and "application/grpc-web+json" in message


def test_content_type_parameters_and_case_are_accepted(client: Any, admin_key: str, world: dict[str, Any]) -> None:
    request_cls, _ = message_classes("UserService", "ListUsers")
    r = client.post("/fleetd.v1.UserService/ListUsers", content=request_cls().SerializeToString(),
                    headers={"Content-Type": "Application/Proto; charset=binary",
                             "Authorization": f"Bearer {admin_key}"})
    assert parsed("UserService", "ListUsers", r).users
