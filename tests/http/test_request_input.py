"""Hostile request input answers 400 invalid_argument, never 500: nesting, huge integers, long search text,
tag keys that would break a JSON path. Each case was a 500 in the adversarial review (issue 13, item 10)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetd.app import SERVICES
from fleetd.ddi import feedback as ddi_feedback
from fleetd.http.rpc import _struct_infos
from tests.conftest import make_key, rpc
from tests.ddi.test_ddi_server import Ddi, target

DDI_BODIES = (ddi_feedback.DdiActionFeedback, ddi_feedback.DdiConfigData)
INT64 = (-(2**63), 2**63 - 1)


def _ints(t: msgspec.inspect.Type) -> list[msgspec.inspect.IntType]:
    if isinstance(t, msgspec.inspect.IntType):
        return [t]
    if isinstance(t, msgspec.inspect.UnionType):
        return [i for u in t.types for i in _ints(u)]
    if isinstance(t, (msgspec.inspect.ListType, msgspec.inspect.SetType, msgspec.inspect.VarTupleType)):
        return _ints(t.item_type)
    if isinstance(t, msgspec.inspect.DictType):
        return _ints(t.key_type) + _ints(t.value_type)
    return []


def test_every_integer_a_client_sends_is_bounded() -> None:
    """Walks every request message (and the DDI bodies): a new unbounded int field fails here."""
    roots = [m.request_type for s in SERVICES for m in s.methods.values()] + list(DDI_BODIES)
    unbounded = []
    for root in roots:
        for info in _struct_infos(root):
            for f in info.fields:
                for i in _ints(f.type):
                    low = i.ge if i.ge is not None else (i.gt + 1 if i.gt is not None else None)
                    high = i.le if i.le is not None else (i.lt - 1 if i.lt is not None else None)
                    if low is None or high is None or low < INT64[0] or high > INT64[1]:
                        unbounded.append(f"{info.cls.__module__}.{info.cls.__name__}.{f.name}")
    assert not unbounded, "give these fields a range (fleetd.core.fields): " + ", ".join(sorted(set(unbounded)))


def _bad(r: Any, needle: str) -> None:
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["code"] == "invalid_argument" and needle in body["message"], body


DEEP_ARRAY = "[" * 1000 + "]" * 1000
DEEP_OBJECT = '{"a":' * 1000 + "1" + "}" * 1000


@pytest.mark.parametrize(("service", "method", "body"), [
    ("UserService", "Login", '{"username": "x", "password": "y", "extra": ' + DEEP_ARRAY + "}"),
    ("UserService", "Login", '{"username": "x", "password": "y", "extra": ' + DEEP_OBJECT + "}"),
    # lowerCamelCase keys take the decode-then-rename path
    ("DeviceService", "Enroll", '{"hardwareId": "h", "deviceType": "sim", "publicKey": "", "x": '
     + DEEP_ARRAY + "}"),
    ("DeviceService", "Enroll", '{"hardware_id": "h", "device_type": "sim", "public_key": "", "inventory": {"x": '
     + DEEP_ARRAY + "}}"),
])
def test_deep_nesting_is_refused(client: Any, service: str, method: str, body: str) -> None:
    _bad(rpc(client, service, method, body), "nests arrays or objects too deeply")


def test_deep_nesting_in_ddi_bodies_is_refused(client: Any, admin_key: str) -> None:
    dev = Ddi(client, "ctl-deep", target(client, admin_key, "ctl-deep", device_type="sim")["token"])
    headers = {**dev.headers, "Content-Type": "application/json"}
    for path, send in (("/configData", client.put), ("/deploymentBase/1/feedback", client.post)):
        r = send(dev.base + path, content='{"data": {}, "x": ' + DEEP_ARRAY + "}", headers=headers)
        assert r.status_code == 400, r.text
        assert "nests arrays or objects too deeply" in r.json()["message"]


@pytest.mark.parametrize(("service", "method", "body", "needle"), [
    ("DeviceAdminService", "ListDevices", {"offset": 2**63}, "$.offset"),
    ("DeviceAdminService", "ListDevices", {"offset": str(2**63)}, "$.offset"),
    ("DeviceAdminService", "ListDevices", {"limit": -(2**63) - 1}, "$.limit"),
    ("AuditService", "List", {"before_id": 2**63}, "$.before_id"),
    ("AuditService", "List", {"beforeId": str(2**64)}, "$.before_id"),
    ("EnrollmentService", "CreateToken", {"expires_in": 10**12}, "$.expires_in"),
    ("UserService", "CreateKey", {"name": "k", "role": "viewer", "expires_in": 10**12}, "$.expires_in"),
    ("DeviceAdminService", "ListDevices", {"search": "%_" * 30000}, "search must be at most 200"),
    ("AuditService", "List", {"action": "x" * 60000}, "action must be at most 200"),
    ("DeviceAdminService", "ListDevices", {"tags": {'a"b': "x"}}, "tag key 'a\"b'"),
    ("TelemetryService", "Query", {"metric": "m", "tags": {'k"': "v"}}, "tag key"),
])
def test_out_of_range_input_is_invalid_argument(client: Any, admin_key: str, service: str, method: str,
                                                body: dict[str, Any], needle: str) -> None:
    _bad(rpc(client, service, method, body, key=admin_key), needle)


def test_search_matches_wildcards_literally(client: Any, fleet: Any, admin_key: str) -> None:
    from tests.rollouts.test_rollouts import enroll
    enroll(fleet, 2)
    r = rpc(client, "DeviceAdminService", "ListDevices", {"search": "hw-"}, key=admin_key)
    assert r.json()["total"] == 2
    for wildcard in ("%", "%%", "hw_"):
        r = rpc(client, "DeviceAdminService", "ListDevices", {"search": wildcard}, key=admin_key)
        assert r.status_code == 200 and r.json()["total"] == 0, wildcard


# --- the decoding edge cases, generated ---------------------------------------------------------

LIST_CALLS = [("DeviceAdminService", "ListDevices", "offset"), ("DeviceAdminService", "ListDevices", "limit"),
              ("AuditService", "List", "before_id"), ("AuditService", "List", "limit"),
              ("EnrollmentService", "CreateToken", "expires_in"), ("EnrollmentService", "CreateToken", "uses"),
              ("RolloutService", "ListRollouts", "limit"), ("AlertService", "ListIncidents", "limit")]


@pytest.fixture
def admin(fleet: Any) -> str:
    return make_key(fleet, "admin", "fuzz-admin")


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(call=st.sampled_from(LIST_CALLS),
       value=st.integers() | st.integers(-(2**70), 2**70).map(str) | st.floats(allow_nan=False))
def test_any_number_in_an_integer_field_is_200_or_400(client: Any, admin: str, call: tuple[str, str, str],
                                                      value: Any) -> None:
    service, method, name = call
    r = rpc(client, service, method, json.dumps({name: value}), key=admin)
    assert r.status_code in (200, 400), r.text


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(1, 5000), opener=st.sampled_from(["[", '{"k":']),
       field=st.sampled_from(["extra", "search", "tags"]))
def test_any_nesting_depth_is_200_or_400(client: Any, admin: str, depth: int, opener: str, field: str) -> None:
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + ("" if opener == "[" else "1") + closer * depth
    r = rpc(client, "DeviceAdminService", "ListDevices", '{"' + field + '": ' + nested + "}", key=admin)
    assert r.status_code in (200, 400), r.text


@pytest.mark.parametrize("path", ["/cancelAction/13030392285446261056850624512", "/deploymentBase/-1",
                                  "/installedBase/9223372036854775808",
                                  "/softwaremodules/99999999999999999999999/artifacts",
                                  "/softwaremodules/99999999999999999999999/artifacts/app.bin"])
def test_ddi_numbers_out_of_range_are_400(client: Any, admin_key: str, path: str) -> None:
    dev = Ddi(client, "ctl-num", target(client, admin_key, "ctl-num", device_type="sim")["token"])
    r = dev.get(path)
    assert r.status_code == 400, r.text
    assert "Expected `int`" in r.json()["message"]
