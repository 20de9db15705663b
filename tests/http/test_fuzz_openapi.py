"""Schema-driven fuzzing: schemathesis generates requests for every operation of the served OpenAPI document
(valid ones and ones that break the schema) against an in-process fleetd, and no answer may be a 5xx.

Credentials: an admin API key for the RPC and plain HTTP routes, a device's bearer token for DeviceService,
and a DDI target token for the DDI routes (their tenant and controllerId are pinned to that device's so the
calls get past authentication; every other parameter is generated). No operation is left out: none can
revoke the run's own credentials, as those are addressed by ids the generator cannot guess (the API key's
id, the device's id, the controller id "fuzz-ctl"). One operation is left out: GET /v1/events, a stream that
never ends, which the in-process client would wait for whole (tests/e2e/test_events.py covers it).

Every RPC method is fuzzed once more in the other encodings it answers (test_no_server_error_in_other_encodings):
the generated body gzip-compressed, in binary protobuf (converted where it fits the message, else the JSON bytes
as a broken message), and framed as gRPC-Web (+json, its frame gzip-compressed every other time), so both codecs,
both protocols and compression see the same generated input.

Bounded and repeatable: a fixed number of examples per operation, derandomized, no example database.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from fleetd.app import PLAIN_PATHS, SERVICES, create_app
from fleetd.core.config import Settings
from fleetd.fleet import Fleet
from fleetd.http import grpc_web, openapi
from tests.conftest import make_key, rpc
from tests.support.devices_helper import TestDevice

DOC = openapi.build(SERVICES, PLAIN_PATHS)
SCHEMA = schemathesis.openapi.from_dict(DOC)
NOT_FUZZED = {"GET /v1/events"}
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations()) if op.label not in NOT_FUZZED}
EXAMPLES = 25
OTHER_ENCODING_EXAMPLES = 6
RPC_OPERATIONS = sorted(label for label in OPERATIONS if label.startswith("POST /fleetd.v1."))
CONTROLLER = "fuzz-ctl"
TENANT = "DEFAULT"


class Server:
    def __init__(self, client: TestClient[Any], admin: str, device: str, ddi: str) -> None:
        self.client, self.admin, self.device, self.ddi = client, admin, device, ddi
        self.statuses: dict[str, set[int]] = {}  # operation label → the statuses it answered

    def headers(self, op: Any) -> dict[str, str]:
        auth = op.definition.raw.get("x-fleetd-auth")
        if auth == "ddi":
            return {"Authorization": f"TargetToken {self.ddi}"}
        if auth == "device":
            return {"Authorization": f"Bearer {self.device}"}
        return {"Authorization": f"Bearer {self.admin}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = Path(tmp_path_factory.mktemp("fuzz")) / "data"
    fleet = Fleet(Settings(data_dir=str(data), tls=False, mdns=False, host="127.0.0.1", port=8420,
                           login_rate_per_minute=100_000, enroll_rate_per_minute=100_000))
    try:
        with TestClient(app=create_app(fleet)) as client:
            admin = make_key(fleet, "admin", "fuzz-admin")
            token = rpc(client, "EnrollmentService", "CreateToken", {}, key=admin).json()["token"]
            dev = TestDevice(client)
            assert dev.enroll(token).status_code == 200
            dev.authenticate()
            ddi = rpc(client, "DdiService", "CreateTargetToken", {"device": CONTROLLER, "device_type": "sim"},
                      key=admin).json()["token"]
            yield Server(client, admin, dev.token, ddi)
    finally:
        fleet.close()


def test_the_fuzzed_document_is_the_served_one(server: Server) -> None:
    served = server.client.get("/schema/openapi.json").json()
    assert served["paths"] == DOC["paths"]


def test_every_route_is_declared(server: Server) -> None:
    """Each route the app serves (but the UI's files and the document itself) is in the document."""
    app = server.client.app

    def shape(path: str) -> str:
        return re.sub(r"{[^}]*}", "{}", path.replace("/{tenant}/", f"/{TENANT}/"))

    declared = {shape(p) for p in DOC["paths"]}
    # The UI's files (/ and /{file_path}), the document itself, and the tenant's lowercase spelling.
    skipped = {"/", "/{}", "/schema/openapi.json"}
    served = {shape(r.path) for r in app.routes if not r.path.startswith("/default/")} - skipped
    assert sorted(served - declared) == []


def _request(server: Server, op: Any, case: Any) -> Any:
    if op.definition.raw.get("x-fleetd-auth") == "ddi":
        case.path_parameters = {**(case.path_parameters or {}), "tenant": TENANT, "controllerId": CONTROLLER}
    kw = case.as_transport_kwargs(base_url="http://testserver", headers=server.headers(op))
    method, url = kw.pop("method"), kw.pop("url")
    data = kw.pop("data", None)
    if data is not None and not isinstance(data, dict):
        kw["content"] = data if isinstance(data, (bytes, str)) else bytes(data)
    elif data is not None:
        kw["data"] = data
    for unused in ("auth", "timeout", "allow_redirects", "verify", "files"):
        kw.pop(unused, None)
    cookies = kw.pop("cookies", None)
    if cookies:  # generated for the session scheme; sent as a header (httpx deprecates per-request cookies)
        kw["headers"] = {**kw.get("headers", {}), "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}
    return server.client.request(method, url, **kw)


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_no_server_error(server: Server, label: str) -> None:
    op = OPERATIONS[label]
    strategy = st.one_of(op.as_strategy(generation_mode=GenerationMode.POSITIVE),
                         op.as_strategy(generation_mode=GenerationMode.NEGATIVE))

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def fuzz(case: Any) -> None:
        response = _request(server, op, case)
        server.statuses.setdefault(label, set()).add(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])

    fuzz()


def _as_proto(label: str, body: Any, fallback: bytes) -> bytes:
    """``body`` as the method's protobuf request when it fits the message, else ``fallback`` (a broken one)."""
    from google.protobuf import json_format  # type: ignore[import-untyped]

    from tests.http.test_proto_routes import message_classes

    service, method = label.removeprefix("POST /fleetd.v1.").split("/")
    try:
        return bytes(json_format.ParseDict(body, message_classes(service, method)[0]()).SerializeToString())
    except Exception:  # anything the generator made that is not this message
        return fallback


def _grpc_status(r: Any) -> int:
    """A gRPC-Web answer's status: in the headers (trailers-only) or in its trailer frame."""
    if "grpc-status" in r.headers:
        return int(r.headers["grpc-status"])
    flags, trailer = grpc_web.frames(r.content)[-1]
    found = re.search(rb"grpc-status: (\d+)", trailer)
    assert flags == grpc_web.TRAILER and found, r.content
    return int(found.group(1))


@pytest.mark.parametrize("label", RPC_OPERATIONS)
def test_no_server_error_in_other_encodings(server: Server, label: str) -> None:
    op = OPERATIONS[label]
    strategy = st.one_of(op.as_strategy(generation_mode=GenerationMode.POSITIVE),
                         op.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    url = label.removeprefix("POST ")
    auth = server.headers(op)
    seen = []

    @settings(max_examples=OTHER_ENCODING_EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def fuzz(case: Any) -> None:
        try:
            body = case.body if isinstance(case.body, (dict, list, str, int, float, bool)) else {}
            content = json.dumps(body).encode()
        except (TypeError, ValueError):
            content, body = b"{}", {}
        zipped = len(seen) % 2 == 1
        seen.append(label)
        requests = [
            ({"Content-Type": "application/json", "Content-Encoding": "gzip"}, gzip.compress(content)),
            ({"Content-Type": "application/proto", "Accept-Encoding": "gzip"}, _as_proto(label, body, content)),
            ({"Content-Type": grpc_web.GRPC_WEB_JSON, "grpc-accept-encoding": "gzip",
              **({"grpc-encoding": "gzip"} if zipped else {})},
             grpc_web.frame(gzip.compress(content), 1) if zipped else grpc_web.frame(content)),
        ]
        for headers, payload in requests:
            r = server.client.post(url, content=payload, headers={**auth, **headers})
            assert r.status_code < 500, (headers, payload[:200], r.text)
            if headers["Content-Type"] == grpc_web.GRPC_WEB_JSON:  # unknown (2) or internal (13): a server error
                assert r.status_code == 200 and _grpc_status(r) not in (2, 13), (payload[:200], r.headers, r.content)

    fuzz()
    assert seen


def test_the_credentials_got_the_calls_past_authentication(server: Server) -> None:
    """The run above reached the handlers: device and DDI calls were not all refused at the door."""
    assert server.statuses, "run the whole module: the fuzz tests fill in the statuses"
    for auth, credential in (("device", "a device token"), ("ddi", "a DDI target token")):
        labels = [label for label, op in OPERATIONS.items() if op.definition.raw.get("x-fleetd-auth") == auth]
        answered = set().union(*(server.statuses.get(label, set()) for label in labels))
        assert answered - {401, 403}, f"every {auth} call was refused: is {credential} still valid?"
    assert 200 in server.statuses["POST /fleetd.v1.DeviceService/CheckIn"]
