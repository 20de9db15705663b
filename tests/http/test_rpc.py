"""The Connect layer: decoding, error mapping, auth policies."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar.handlers import HTTPRouteHandler

from fleetd.app import create_app
from fleetd.core.errors import FleetdError, InvalidArgument
from fleetd.http import rpc
from tests.conftest import rpc as call


class Inner(msgspec.Struct, kw_only=True):
    hardware_id: str
    env: dict[str, str] = {}


class Outer(msgspec.Struct, kw_only=True):
    device_type: str = ""
    poll_interval: int = 0
    inner: Inner | None = None
    items: list[Inner] = []


codec = rpc.Codec(Outer)


def test_every_method_builds_its_codec_and_only_on_first_use() -> None:
    """The codecs are built lazily (a start skips them): a request type msgspec cannot decode fails here instead."""
    import subprocess
    import sys
    built_at_import = subprocess.run(
        [sys.executable, "-c", "from fleetd.app import SERVICES; "
         "print(sum('codec' in vars(m) for s in SERVICES for m in s.methods.values()))"],
        capture_output=True, text=True, check=True).stdout
    assert built_at_import.strip() == "0"
    from fleetd.app import SERVICES
    methods = [m for s in SERVICES for m in s.methods.values()]
    assert len(methods) > 50
    for m in methods:
        assert m.codec.type is m.request_type and vars(m)["codec"] is m.codec


def test_snake_and_camel_case_both_decode() -> None:
    snake = codec.decode(b'{"device_type": "sim", "poll_interval": 5, "inner": {"hardware_id": "h"}}')
    camel = codec.decode(b'{"deviceType": "sim", "pollInterval": 5, "inner": {"hardwareId": "h"}}')
    assert snake == camel == Outer(device_type="sim", poll_interval=5, inner=Inner(hardware_id="h"))


def test_camel_case_renames_struct_fields_but_never_map_keys() -> None:
    out = codec.decode(b'{"items": [{"hardwareId": "a", "env": {"someVar": "1", "x_y": "2"}}]}')
    assert out.items == [Inner(hardware_id="a", env={"someVar": "1", "x_y": "2"})]


def test_int64_as_string_and_unknown_fields_ignored() -> None:
    out = codec.decode(b'{"poll_interval": "9007199254740993", "brand_new_field": [1, 2], "pollX": 1}')
    assert out.poll_interval == 9007199254740993


def test_empty_body_is_empty_message() -> None:
    assert codec.decode(b"") == Outer()


@pytest.mark.parametrize("body, fragment", [
    (b"{", "malformed JSON"),
    (b"[1]", "Expected `object`"),
    (b'{"poll_interval": "abc"}', "poll_interval"),
    (b'{"inner": {}}', "hardware_id"),
])
def test_bad_bodies_say_what_is_wrong(body: bytes, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        codec.decode(body)
    assert fragment in e.value.message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decoder_raises_only_invalid_argument_on_arbitrary_bytes(body: bytes) -> None:
    with contextlib.suppress(InvalidArgument):
        codec.decode(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["device_type", "deviceType", "poll_interval", "pollInterval", "inner",
                                        "items", "other"]), json_values, max_size=5))
def test_decoder_total_on_arbitrary_json_objects(obj: dict[str, Any]) -> None:
    """Any JSON object either decodes to an Outer or is refused as invalid_argument — never a 500."""
    try:
        out = codec.decode(json.dumps(obj).encode())
    except InvalidArgument:
        return
    assert isinstance(out, Outer)


@given(st.sampled_from([InvalidArgument, rpc.Unauthenticated, rpc.PermissionDenied, rpc.Unimplemented,
                        rpc.UnsupportedMediaType, rpc.PayloadTooLarge]), st.text(max_size=50))
def test_every_error_maps_to_connect_json(cls: type[FleetdError], message: str) -> None:
    err = cls(message)
    assert err.to_json() == {"code": err.code, "message": message}
    assert 400 <= err.http_status < 600


def test_every_route_declares_an_auth_policy(fleet) -> None:  # type: ignore[no-untyped-def]
    app = create_app(fleet)
    handlers = [h for r in app.routes for h in getattr(r, "route_handlers", [])]
    assert len(handlers) > 10
    # Litestar adds an OPTIONS handler per path by itself; the guard refuses those (no policy).
    ours = [h for h in handlers if isinstance(h, HTTPRouteHandler) and h.fn.__module__ != "litestar.routes.http"]
    missing = [h.paths for h in ours if h.opt.get("auth") not in rpc.POLICIES]
    assert missing == []


def test_route_without_policy_is_refused(fleet) -> None:  # type: ignore[no-untyped-def]
    """Fail closed: a route someone forgot to give a policy answers 403, never its content."""
    from litestar import get
    from litestar.testing import TestClient

    @get("/forgotten")
    async def forgotten() -> str:
        return "secret"

    app = create_app(fleet)
    app.register(forgotten)
    with TestClient(app=app) as c:
        r = c.get("/forgotten")
    assert r.status_code == 403
    assert "secret" not in r.text


def test_method_registration_requires_policy() -> None:
    s = rpc.Service("X")
    with pytest.raises(TypeError):
        s.method()  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        s.method(auth="everyone")  # type: ignore[arg-type]


# --- over HTTP, in-process --------------------------------------------------

def test_unauthenticated_call_is_401(client) -> None:  # type: ignore[no-untyped-def]
    r = call(client, "UserService", "ListUsers")
    assert r.status_code == 401
    assert r.json()["code"] == "unauthenticated"


def test_viewer_cannot_write_users(client, viewer_key) -> None:  # type: ignore[no-untyped-def]
    r = call(client, "UserService", "CreateUser", {"username": "eve", "role": "admin"}, key=viewer_key)
    assert r.status_code == 403 and r.json()["code"] == "permission_denied"
    r = call(client, "UserService", "ListUsers", key=viewer_key)
    assert r.status_code == 403


def test_operator_can_read_audit_but_not_create_keys(client, operator_key) -> None:  # type: ignore[no-untyped-def]
    assert call(client, "AuditService", "List", key=operator_key).status_code == 200
    assert call(client, "UserService", "CreateKey", {"name": "x", "role": "viewer"},
                key=operator_key).status_code == 403


def test_malformed_json_is_400_and_changes_nothing(client, admin_key, fleet) -> None:  # type: ignore[no-untyped-def]
    before = fleet.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM users").fetchone()[0])
    r = call(client, "UserService", "CreateUser", b'{"username": "bob", "role": ', key=admin_key)
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
    r = call(client, "UserService", "CreateUser", {"username": "bob", "role": 7}, key=admin_key)
    assert r.status_code == 400 and "role" in r.json()["message"]
    after = fleet.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM users").fetchone()[0])
    assert before == after


def test_text_plain_is_415(client, admin_key) -> None:  # type: ignore[no-untyped-def]
    r = call(client, "UserService", "ListUsers", b"{}", key=admin_key, headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_unknown_method_is_404_unimplemented(client, admin_key) -> None:  # type: ignore[no-untyped-def]
    r = call(client, "UserService", "Frobnicate", key=admin_key)
    assert r.status_code == 404 and r.json()["code"] == "unimplemented"
    assert "Frobnicate" in r.json()["message"]


def test_oversized_body_is_refused_early(client, admin_key, fleet) -> None:  # type: ignore[no-untyped-def]
    big = b'{"username": "' + b"a" * (fleet.settings.max_request_bytes + 10) + b'", "role": "viewer"}'
    r = call(client, "UserService", "CreateUser", big, key=admin_key)
    assert r.status_code == 413 and r.json()["code"] == "resource_exhausted"


def test_connect_get_for_readonly_methods(client, admin_key) -> None:  # type: ignore[no-untyped-def]
    h = {"Authorization": f"Bearer {admin_key}"}
    r = client.get("/fleetd.v1.AuditService/List", params={"encoding": "json", "message": '{"limit": 1}'},
                   headers=h)
    assert r.status_code == 200 and len(r.json()["entries"]) == 1
    # Methods with side effects do not answer GET.
    r = client.get("/fleetd.v1.UserService/CreateKey", params={"message": "{}"}, headers=h)
    assert r.status_code == 405


def test_openapi_lists_every_method(client) -> None:  # type: ignore[no-untyped-def]
    doc = client.get("/schema/openapi.json").json()
    assert "/fleetd.v1.UserService/CreateKey" in doc["paths"]
    assert "/fleetd.v1.AuditService/List" in doc["paths"]
    op = doc["paths"]["/fleetd.v1.UserService/CreateKey"]["post"]
    assert op["x-fleetd-auth"] == "admin"
