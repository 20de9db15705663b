"""The device lane answers CheckIn, ReportStatus and PushTelemetry exactly as the Litestar routes would.

Each request goes to both: the app ``fleetd serve`` runs (the lane in front, which takes it) and the
bare Litestar app (which serves the same method through its route, guard and middleware). Status,
body and headers must match, for good calls and for every way a call can be wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from fleetd.app import asgi_app, create_app
from fleetd.fleet import Fleet
from fleetd.http import compression, grpc_web, rpc
from fleetd.http.device_lane import DeviceLane
from tests.conftest import make_key
from tests.support.devices_helper import TestDevice

PATH = "/fleetd.v1.DeviceService/"
CHECKIN = {"inventory": {"os": "linux"}, "components": [{"name": "app", "version": "1.0.0"}]}


@pytest.fixture
def lane_app(fleet: Fleet) -> DeviceLane:
    return asgi_app(fleet)


@pytest.fixture
def pair(fleet: Fleet, lane_app: DeviceLane) -> Iterator[tuple[Any, Any]]:
    with TestClient(app=lane_app) as lane, TestClient(app=create_app(fleet)) as plain:
        yield lane, plain


@pytest.fixture
def token(pair: tuple[Any, Any], fleet: Fleet, admin_key: str) -> str:
    lane, _ = pair
    r = lane.post("/fleetd.v1.EnrollmentService/CreateToken", json={"name": "t"},
                  headers={"Authorization": f"Bearer {admin_key}"})
    assert r.status_code == 200, r.text
    d = TestDevice(lane)
    assert d.enroll(r.json()["token"]).status_code == 200
    assert d.authenticate().status_code == 200
    return d.token


def _headers(r: Any) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k not in ("date",)}


def both(pair: tuple[Any, Any], method: str, content: bytes | str, headers: dict[str, str]) -> Any:
    lane, plain = pair
    a = lane.post(PATH + method, content=content, headers=headers)
    b = plain.post(PATH + method, content=content, headers=headers)
    assert (a.status_code, a.json(), _headers(a)) == (b.status_code, b.json(), _headers(b)), method
    return a


def bearer(token: str, content_type: str = "application/json") -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": content_type}


def passed_to_litestar(lane_app: DeviceLane) -> list[str]:
    """The paths of the requests the lane hands on to Litestar, from now on."""
    served: list[str] = []
    inner = lane_app.app

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        served.append(scope["path"])
        await inner(scope, receive, send)

    lane_app.app = spy
    return served


def test_a_check_in_is_answered_by_the_lane_like_litestar(pair: tuple[Any, Any], token: str,
                                                           lane_app: DeviceLane) -> None:
    served = passed_to_litestar(lane_app)
    r = both(pair, "CheckIn", json.dumps(CHECKIN), bearer(token))
    assert r.status_code == 200 and r.json()["status"] == "active"
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert served == [], "the lane passed the check-in on to Litestar"


@pytest.mark.parametrize("method,body,why", [
    ("CheckIn", "{not json", "malformed JSON"),
    ("CheckIn", json.dumps({"components": "nope"}), "a wrong type"),
    ("CheckIn", json.dumps({"components": [{"name": "c", "version": "1"}] * 65}), "too many components"),
    ("ReportStatus", json.dumps({"action_id": "act_nope", "state": "succeeded"}), "an unknown action"),
    ("PushTelemetry", json.dumps({"points": [{"name": "", "value": 1}]}), "a bad point"),
    ("PushTelemetry", json.dumps({"points": "x"}), "points not a list"),
])
def test_bad_requests_get_the_same_error(pair: tuple[Any, Any], token: str, method: str, body: str, why: str) -> None:
    r = both(pair, method, body, bearer(token))
    assert r.status_code in (400, 404), why
    assert r.json()["message"]


def test_credentials_and_content_type_errors_match(pair: tuple[Any, Any], token: str, fleet: Fleet) -> None:
    body = json.dumps(CHECKIN)
    assert both(pair, "CheckIn", body, bearer("garbage")).status_code == 401
    assert both(pair, "CheckIn", body, bearer(token[:-4] + "AAAA")).status_code == 401
    assert both(pair, "CheckIn", body, {"Authorization": "Basic eDp5", "Content-Type": "application/json"}
                ).status_code == 401
    # An API key is a person's, not a device's.
    assert both(pair, "CheckIn", body, bearer(make_key(fleet, "admin"))).status_code == 403
    r = both(pair, "CheckIn", body, bearer(token, "text/plain"))
    assert r.status_code == 415 and r.headers["accept-post"] == rpc.ACCEPT_POST
    # The guard runs first: bad credentials with a bad body are a 401, not a 415.
    assert both(pair, "CheckIn", "x", bearer("garbage", "text/plain")).status_code == 401


def test_an_oversized_body_is_refused_with_the_limit(pair: tuple[Any, Any], token: str, fleet: Fleet) -> None:
    limit = fleet.settings.max_request_bytes
    big = json.dumps({"points": [{"name": "m", "value": 1.0}] * (limit // 20)})
    assert len(big) > limit
    r = both(pair, "PushTelemetry", big, bearer(token))
    assert r.status_code == 413 and str(limit) in r.json()["message"]


def test_calls_the_lane_does_not_take_reach_litestar(pair: tuple[Any, Any], token: str) -> None:
    lane, _ = pair
    # No Authorization header: Litestar's guard answers.
    r = lane.post(PATH + "CheckIn", content="{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 401 and "credentials" in r.json()["message"]
    # GET of a POST-only method: Litestar's router answers 405 with the Connect wording.
    r = lane.get(PATH + "CheckIn", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 405 and "use POST" in r.json()["message"]


@pytest.mark.parametrize("method,body", [
    ("CheckIn", CHECKIN),
    ("ReportStatus", {"action_id": "act_nope", "state": "succeeded"}),  # not_found, as a JSON error body
    ("PushTelemetry", {"points": [{"name": "cpu", "value": 0.5}]}),
])
def test_a_binary_call_goes_to_litestar_and_gets_the_same_answer(pair: tuple[Any, Any], token: str,
                                                                 lane_app: DeviceLane, method: str,
                                                                 body: dict[str, Any]) -> None:
    from google.protobuf import json_format  # type: ignore[import-untyped]

    from tests.http.test_proto_routes import message_classes

    served = passed_to_litestar(lane_app)
    request_cls, response_cls = message_classes("DeviceService", method)
    content = json_format.ParseDict(body, request_cls()).SerializeToString()
    lane, plain = pair
    a = lane.post(PATH + method, content=content, headers=bearer(token, "application/proto"))
    b = plain.post(PATH + method, content=content, headers=bearer(token, "application/proto"))
    assert (a.status_code, a.content, _headers(a)) == (b.status_code, b.content, _headers(b))
    assert served == [PATH + method], "the lane answered a binary call itself"
    if method == "ReportStatus":
        assert a.status_code == 404 and a.headers["content-type"] == "application/json"
        assert a.json()["code"] == "not_found"
    else:
        assert a.status_code == 200 and a.headers["content-type"] == "application/proto"
        response_cls.FromString(a.content)
    if method == "CheckIn":
        assert response_cls.FromString(a.content).status == "active"


@pytest.mark.parametrize("encoding", ["gzip", "identity", "br"])
def test_a_compressed_check_in_goes_to_litestar_and_gets_the_same_answer(pair: tuple[Any, Any], token: str,
                                                                         lane_app: DeviceLane, encoding: str
                                                                         ) -> None:
    served = passed_to_litestar(lane_app)
    body = json.dumps(CHECKIN).encode()
    content = compression.gzip(body) if encoding == "gzip" else body
    r = both(pair, "CheckIn", content, {**bearer(token), "Content-Encoding": encoding})
    assert served == [PATH + "CheckIn"], "the lane answered a compressed call itself"
    if encoding == "br":
        assert r.status_code == 501 and r.json()["code"] == "unimplemented"
        assert r.headers["accept-encoding"] == "gzip, identity"
    else:
        assert r.status_code == 200 and r.json()["status"] == "active"
        plain = pair[0].post(PATH + "CheckIn", content=body, headers=bearer(token))
        assert r.json() == plain.json(), "the lane and the route answer the same check-in differently"


def test_a_grpc_web_check_in_goes_to_litestar(pair: tuple[Any, Any], token: str, lane_app: DeviceLane) -> None:
    served = passed_to_litestar(lane_app)
    lane, _ = pair
    r = lane.post(PATH + "CheckIn", content=grpc_web.frame(json.dumps(CHECKIN).encode()),
                  headers=bearer(token, grpc_web.GRPC_WEB_JSON))
    assert served == [PATH + "CheckIn"]
    assert r.status_code == 200 and r.headers["content-type"] == grpc_web.GRPC_WEB_JSON
    (flags, message), (tflags, trailer) = grpc_web.frames(r.content)
    assert (flags, tflags) == (0, grpc_web.TRAILER) and b"grpc-status: 0" in trailer
    assert json.loads(message)["status"] == "active"


def test_the_lane_counts_its_requests_in_the_metrics(pair: tuple[Any, Any], token: str, fleet: Fleet) -> None:
    lane, _ = pair
    route = PATH + "CheckIn"
    before = fleet.metrics._requests.get((route, "POST", 200), 0)
    bad = fleet.metrics._requests.get((route, "POST", 401), 0)
    lane.post(route, content=json.dumps(CHECKIN), headers=bearer(token))
    lane.post(route, content=json.dumps(CHECKIN), headers=bearer("garbage"))
    assert fleet.metrics._requests[(route, "POST", 200)] == before + 1
    assert fleet.metrics._requests[(route, "POST", 401)] == bad + 1


def test_only_device_methods_may_take_the_lane(fleet: Fleet) -> None:
    from fleetd.devices import device_api

    public = device_api.service.methods["Enroll"]
    with pytest.raises(ValueError, match="not a device method"):
        DeviceLane(create_app(fleet), fleet, [public], [])
