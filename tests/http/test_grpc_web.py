"""gRPC-Web (application/grpc-web+proto and +json) on the RPC routes, against the app as ``fleetd serve`` runs it.

Frames are built and read here with struct, not with fleetd.http.grpc_web, so the server's framing is checked
against the protocol (github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md), not against itself.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import struct
import urllib.parse
from typing import Any

import pytest
from google.protobuf import json_format  # type: ignore[import-untyped]
from google.protobuf.message import Message  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.core.errors import FleetdError, InvalidArgument
from fleetd.fleet import Fleet
from fleetd.http import grpc_web
from tests.conftest import make_key
from tests.conftest import rpc as call
from tests.http.test_proto_routes import READS, filled, from_json, message_classes, world  # noqa: F401

PROTO = "application/grpc-web+proto"
JSON = "application/grpc-web+json"


def frame(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


class Answer:
    """A gRPC-Web answer taken apart: the message (inflated if its frame says so) and the status."""

    def __init__(self, r: Any) -> None:
        assert r.status_code == 200, (r.status_code, r.text)  # gRPC-Web answers errors with HTTP 200 too
        self.headers = r.headers
        body, messages, trailers = r.content, [], {}
        while body:
            flags, length = struct.unpack(">BI", body[:5])
            payload, body = body[5:5 + length], body[5 + length:]
            assert len(payload) == length, "a frame shorter than its length"
            if flags & 0x80:
                assert not body, "bytes after the trailer frame"
                for line in payload.decode("ascii").split("\r\n"):
                    if line:
                        k, _, v = line.partition(":")
                        trailers[k.strip()] = v.strip()
            else:
                assert not trailers, "a message after the trailers"
                messages.append(gzip.decompress(payload) if flags & 1 else payload)
        if not r.content:  # trailers-only: the status is in the HTTP headers
            trailers = {k: v for k, v in r.headers.items() if k.startswith("grpc-")}
        self.messages = messages
        self.status = int(trailers["grpc-status"])
        self.message = urllib.parse.unquote(trailers.get("grpc-message", ""))


def grpc(client: Any, service: str, method: str, payload: bytes, content_type: str = PROTO,
         key: str | None = None, flags: int = 0, **headers: str) -> Answer:
    h = {"Content-Type": content_type, **{k.replace("_", "-"): v for k, v in headers.items()}}
    if key:
        h["Authorization"] = f"Bearer {key}"
    return Answer(client.post(f"/fleetd.v1.{service}/{method}", content=frame(payload, flags), headers=h))


def as_proto(service: str, method: str, body: dict[str, Any]) -> bytes:
    return json_format.ParseDict(body, message_classes(service, method)[0]()).SerializeToString()


def answered(service: str, method: str, a: Answer, content_type: str) -> Message:
    assert a.status == 0, a.message
    assert len(a.messages) == 1
    cls = message_classes(service, method)[1]
    if content_type == JSON:
        return json_format.ParseDict(json.loads(a.messages[0]), cls(), ignore_unknown_fields=True)
    return cls.FromString(a.messages[0])


# A read of every service but DeviceService (its calls are writes: test_device_check_in below).
@pytest.mark.parametrize("content_type", [PROTO, JSON, "application/grpc-web", "Application/grpc-web+JSON; x=y"])
@pytest.mark.parametrize("service,method,body", READS, ids=[f"{s}.{m}" for s, m, _ in READS])
def test_a_read_answers_what_connect_json_does(client: Any, admin_key: str, world: dict[str, Any],  # noqa: F811
                                               service: str, method: str, body: dict[str, Any],
                                               content_type: str) -> None:
    body = filled(body, world)
    payload = json.dumps(body).encode() if "json" in content_type.lower() else as_proto(service, method, body)
    before = from_json(service, method, call(client, service, method, body, key=admin_key))
    a = grpc(client, service, method, payload, content_type, admin_key)
    after = from_json(service, method, call(client, service, method, body, key=admin_key))
    media = content_type.split(";")[0].lower()
    assert a.headers["content-type"] == media
    answer = answered(service, method, a, JSON if "json" in media else PROTO)
    assert answer in (before, after)
    assert answer.ByteSize() > 0, "an empty answer proves nothing"


@pytest.mark.parametrize("content_type", [PROTO, JSON])
@pytest.mark.parametrize("service,method,body,read,shows", [
    ("UserService", "CreateUser", {"username": "webuser", "role": "viewer"}, ("UserService", "ListUsers"),
     "webuser"),
    ("AlertService", "CreateRule", {"metric": "webmetric", "threshold": 5, "window_seconds": 60},
     ("AlertService", "ListRules"), "webmetric"),
    ("DdiService", "CreateGatewayToken", {"description": "web-gw"}, ("DdiService", "ListGatewayTokens"), "web-gw"),
])
def test_a_write_takes_effect(client: Any, admin_key: str, service: str, method: str, body: dict[str, Any],
                              read: tuple[str, str], shows: str, content_type: str) -> None:
    payload = json.dumps(body).encode() if content_type == JSON else as_proto(service, method, body)
    assert shows not in call(client, *read, {}, key=admin_key).text
    answer = answered(service, method, grpc(client, service, method, payload, content_type, admin_key),
                      content_type)
    assert shows in call(client, *read, {}, key=admin_key).text
    assert shows in str(json_format.MessageToDict(answer))


def test_device_check_in(client: Any, admin_key: str, fleet: Fleet) -> None:
    from tests.devices.test_devices import active_device

    device = active_device(client, admin_key)
    body = {"inventory": {"os": "webos"}}
    a = grpc(client, "DeviceService", "CheckIn", as_proto("DeviceService", "CheckIn", body), key=device.token)
    assert answered("DeviceService", "CheckIn", a, PROTO).status == "active"
    asyncio.run(fleet.hub.flush())  # the check-in's inventory is written in the background
    assert "webos" in call(client, "DeviceAdminService", "GetDevice", {"id": device.device_id}, key=admin_key).text


@pytest.mark.parametrize("content_type", [PROTO, JSON])
@pytest.mark.parametrize("service,method,body,role,status,code", [
    ("DeviceAdminService", "GetDevice", {"id": "dev_nope"}, "admin", 5, "not_found"),
    ("UserService", "ListUsers", {}, None, 16, "unauthenticated"),
    ("UserService", "CreateUser", {"username": "x", "role": "admin"}, "viewer", 7, "permission_denied"),
    ("UserService", "CreateUser", {"username": "", "role": "admin"}, "admin", 3, "invalid_argument"),
])
def test_errors_are_trailers_only_with_the_grpc_status(client: Any, fleet: Fleet, service: str, method: str,
                                                       body: dict[str, Any], role: str | None, status: int,
                                                       code: str, content_type: str) -> None:
    key = make_key(fleet, role) if role else None
    payload = json.dumps(body).encode() if content_type == JSON else as_proto(service, method, body)
    r = client.post(f"/fleetd.v1.{service}/{method}", content=frame(payload),
                    headers={"Content-Type": content_type, **({"Authorization": f"Bearer {key}"} if key else {})})
    connect = call(client, service, method, body, key=key).json()
    assert connect["code"] == code
    assert r.status_code == 200 and r.content == b"" and r.headers["content-type"] == content_type
    a = Answer(r)
    assert (a.status, a.message) == (status, connect["message"])


def test_grpc_message_is_percent_encoded() -> None:
    assert grpc_web.percent_encode("plain text: ok") == "plain text: ok"
    assert grpc_web.percent_encode("größe 100%\n") == "gr%C3%B6%C3%9Fe 100%25%0A"
    assert urllib.parse.unquote(grpc_web.percent_encode("größe 100%\n")) == "größe 100%\n"
    assert set(grpc_web.STATUS.values()) == set(range(17))


@pytest.mark.parametrize("body,headers,status,needle", [
    (b"", {}, 3, "exactly one message frame"),
    (b"\x00\x00\x00", {}, 3, "less than a 5-byte frame prefix"),
    (b"\x00\x00\x00\x00\x09{}", {}, 3, "promises 9 bytes, only 2 follow"),
    (frame(b"") + b"\x00", {}, 3, "less than a 5-byte frame prefix"),
    (frame(b"") + frame(b""), {}, 3, "this one has 2"),
    (frame(b"", 0x80), {}, 3, "frame flags 0x80"),
    (frame(gzip.compress(b""), 0x01), {}, 13, "no grpc-encoding header"),
    (frame(b"", 0x01), {"grpc-encoding": "identity"}, 13, "no grpc-encoding header"),
    (frame(b"", 0x01), {"grpc-encoding": "snappy"}, 12, "unknown compression 'snappy'"),
    (frame(b""), {"grpc-encoding": "snappy"}, 12, "unknown compression 'snappy'"),
    (frame(b"not gzip", 0x01), {"grpc-encoding": "gzip"}, 3, "not valid gzip"),
    (frame(b"\x0a\x05ab"), {}, 3, "malformed protobuf"),
])
def test_malformed_requests_get_a_clear_grpc_error(client: Any, admin_key: str, body: bytes,
                                                   headers: dict[str, str], status: int, needle: str) -> None:
    r = client.post("/fleetd.v1.UserService/ListUsers", content=body,
                    headers={"Content-Type": PROTO, "Authorization": f"Bearer {admin_key}", **headers})
    a = Answer(r)
    assert a.status == status and needle in a.message, a.message
    if status == 12:
        assert r.headers["grpc-accept-encoding"] == "gzip, identity"


def test_compressed_frames_both_ways(client: Any, admin_key: str) -> None:
    for i in range(24):  # enough users that the answer passes compression.MIN_BYTES
        call(client, "UserService", "CreateUser", {"username": f"web-user-{i:02}", "role": "viewer"}, key=admin_key)
    expected = from_json("UserService", "ListUsers", call(client, "UserService", "ListUsers", {}, key=admin_key))
    a = grpc(client, "UserService", "ListUsers", gzip.compress(b""), key=admin_key, flags=1, grpc_encoding="gzip",
             grpc_accept_encoding="gzip")
    assert a.headers["grpc-encoding"] == "gzip"
    assert answered("UserService", "ListUsers", a, PROTO) == expected
    r = client.post("/fleetd.v1.UserService/ListUsers", content=frame(b""),
                    headers={"Content-Type": PROTO, "Authorization": f"Bearer {admin_key}"})
    assert r.content[0] == 0 and "grpc-encoding" not in r.headers, "compressed for a client that did not ask"


def test_body_limits_are_resource_exhausted(client: Any, admin_key: str, fleet: Fleet) -> None:
    limit = fleet.settings.max_request_bytes
    headers = {"Content-Type": JSON, "Authorization": f"Bearer {admin_key}", "grpc-encoding": "gzip"}
    bomb = frame(gzip.compress(b"{}" + b" " * limit, 9), 0x01)
    a = Answer(client.post("/fleetd.v1.UserService/ListUsers", content=bomb, headers=headers))
    assert a.status == 8 and str(limit) in a.message
    big = frame(b"{}" + b" " * limit)
    a = Answer(client.post("/fleetd.v1.UserService/ListUsers", content=big, headers=headers))
    assert a.status == 8 and str(limit) in a.message


def test_an_unknown_method_is_unimplemented(client: Any, admin_key: str) -> None:
    a = Answer(client.post("/fleetd.v1.UserService/Nope", content=frame(b""),
                           headers={"Content-Type": PROTO, "Authorization": f"Bearer {admin_key}"}))
    assert a.status == 12 and "unknown method" in a.message


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(body=st.one_of(st.binary(max_size=40),
                      st.lists(st.tuples(st.sampled_from([0, 1, 0x80, 0x7F]), st.binary(max_size=8)), max_size=3)
                      .map(lambda fs: b"".join(frame(p, f) for f, p in fs))),
       encoding=st.sampled_from([None, "gzip", "identity", "br"]))
def test_the_frame_parser_raises_only_clear_errors(body: bytes, encoding: str | None) -> None:
    try:
        message = grpc_web.request_message(body, encoding, 100)
    except FleetdError as exc:
        assert exc.code in ("invalid_argument", "internal", "unimplemented", "resource_exhausted")
        assert exc.message
        return
    assert body[:1] in (b"\x00", b"\x01") and len(message) <= max(100, len(body))


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(messages=st.lists(st.tuples(st.sampled_from([0, 1, 0x80]), st.binary(max_size=300)), max_size=4))
def test_frames_round_trip(messages: list[tuple[int, bytes]]) -> None:
    body = b"".join(grpc_web.frame(m, f) for f, m in messages)
    assert grpc_web.frames(body) == messages
    if len(messages) == 1 and messages[0][0] == 0:
        assert grpc_web.request_message(body, None, 1000) == messages[0][1]
    for broken in ([body[:-1]] if body else []) + [body + b"\x00"]:
        with pytest.raises(InvalidArgument):
            grpc_web.frames(broken)


def test_a_browser_session_and_the_login_rate_limit(client: Any, fleet: Fleet) -> None:
    from tests.accounts.test_auth import _make_user

    _make_user(fleet)
    login = json.dumps({"username": "carol", "password": "a-long-password"}).encode()
    r = client.post("/fleetd.v1.UserService/Login", content=frame(login), headers={"Content-Type": JSON})
    csrf = json.loads(Answer(r).messages[0])["csrf_token"]
    assert "HttpOnly" in r.headers["set-cookie"]
    # The session cookie (kept by the client) and its CSRF header, as on a Connect call.
    assert grpc(client, "AuditService", "List", b"{}", JSON).status == 7  # no CSRF header
    a = grpc(client, "UserService", "WhoAmI", b"{}", JSON, x_csrf_token=csrf)
    assert json.loads(a.messages[0])["name"] == "carol"
    client.cookies.clear()
    wrong = frame(json.dumps({"username": "carol", "password": "wrong-password!"}).encode())
    answers = [client.post("/fleetd.v1.UserService/Login", content=wrong, headers={"Content-Type": JSON})
               for _ in range(fleet.settings.login_rate_per_minute + 1)]
    assert Answer(answers[0]).status == 16
    assert Answer(answers[-1]).status == 8 and answers[-1].headers["retry-after"]
