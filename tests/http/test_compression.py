"""gzip on the Connect routes (Content-Encoding, Accept-Encoding, GET's compression=), in JSON and in binary,
against the app as ``fleetd serve`` runs it. httpx inflates gzip answers itself, so a test that looks at the
bytes on the wire reads the raw stream."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.core.errors import InvalidArgument, PayloadTooLarge
from fleetd.fleet import Fleet
from fleetd.http import compression
from tests.conftest import rpc as call

URL = "/fleetd.v1.UserService/ListUsers"


def auth(key: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **more}


def raw(client: Any, url: str, content: bytes, headers: dict[str, str]) -> tuple[Any, bytes]:
    """The response and its body exactly as sent (not inflated by httpx)."""
    with client.stream("POST", url, content=content, headers=headers) as r:
        return r, b"".join(r.iter_raw())


@pytest.fixture
def many_users(client: Any, admin_key: str) -> None:
    """Enough users that ListUsers answers more than compression.MIN_BYTES."""
    for i in range(24):
        r = call(client, "UserService", "CreateUser", {"username": f"compressible-user-{i:02}", "role": "viewer"},
                 key=admin_key)
        assert r.status_code == 200, r.text


def test_a_gzip_request_is_inflated_in_json(client: Any, admin_key: str) -> None:
    body = json.dumps({"username": "zipped", "role": "viewer"}).encode()
    r = client.post("/fleetd.v1.UserService/CreateUser", content=gzip.compress(body),
                    headers=auth(admin_key, **{"Content-Type": "application/json", "Content-Encoding": "gzip"}))
    assert r.status_code == 200, r.text
    assert r.json()["user"]["username"] == "zipped"
    assert "zipped" in call(client, "UserService", "ListUsers", {}, key=admin_key).text


def test_a_gzip_request_is_inflated_in_binary(client: Any, admin_key: str) -> None:
    from tests.http.test_proto_routes import message_classes

    request_cls, response_cls = message_classes("UserService", "CreateUser")
    body = request_cls(username="zipbin", role="viewer").SerializeToString()
    r = client.post("/fleetd.v1.UserService/CreateUser", content=gzip.compress(body),
                    headers=auth(admin_key, **{"Content-Type": "application/proto", "Content-Encoding": "GZIP"}))
    assert r.status_code == 200, r.text
    assert response_cls.FromString(r.content).user.username == "zipbin"


@pytest.mark.parametrize("content_type", ["application/json", "application/proto"])
def test_a_large_answer_is_gzip_when_accepted(client: Any, admin_key: str, many_users: None,
                                              content_type: str) -> None:
    body = b"{}" if content_type == "application/json" else b""
    plain, plain_bytes = raw(client, URL, body, auth(admin_key, **{"Content-Type": content_type,
                                                                   "Accept-Encoding": "identity"}))
    assert "content-encoding" not in plain.headers and len(plain_bytes) >= compression.MIN_BYTES
    zipped, zipped_bytes = raw(client, URL, body, auth(admin_key, **{"Content-Type": content_type,
                                                                     "Accept-Encoding": "br, gzip;q=0.8"}))
    assert zipped.status_code == 200 and zipped.headers["content-type"] == content_type
    assert zipped.headers["content-encoding"] == "gzip" and zipped.headers["vary"] == "Accept-Encoding"
    assert len(zipped_bytes) < len(plain_bytes) / 2
    assert gzip.decompress(zipped_bytes) == plain_bytes
    # gzip refused (q=0), or not offered: the same answer uncompressed
    for accept in ("gzip;q=0", "deflate", "*;q=0"):
        r, b = raw(client, URL, body, auth(admin_key, **{"Content-Type": content_type, "Accept-Encoding": accept}))
        assert "content-encoding" not in r.headers and b == plain_bytes, accept


def test_a_small_answer_is_not_compressed(client: Any, admin_key: str) -> None:
    r, body = raw(client, "/fleetd.v1.UserService/WhoAmI", b"{}",
                  auth(admin_key, **{"Content-Type": "application/json", "Accept-Encoding": "gzip"}))
    assert r.status_code == 200 and len(body) < compression.MIN_BYTES
    assert "content-encoding" not in r.headers and json.loads(body)


def test_a_gzip_bomb_is_413_at_the_body_limit(client: Any, admin_key: str, fleet: Fleet) -> None:
    limit = fleet.settings.max_request_bytes
    headers = auth(admin_key, **{"Content-Type": "application/json", "Content-Encoding": "gzip"})
    # Exactly the limit once inflated: accepted (JSON whitespace around an empty object).
    at_limit = b"{}" + b" " * (limit - 2)
    assert client.post(URL, content=gzip.compress(at_limit), headers=headers).status_code == 200
    # One byte more, and a real bomb (64 MiB of zeros in ~64 KiB): refused like an oversized plain body.
    for inflated in (limit + 1, 64 << 20):
        bomb = gzip.compress(b"{}" + b" " * (inflated - 2), 9)
        assert len(bomb) < limit
        r = client.post(URL, content=bomb, headers=headers)
        assert r.status_code == 413, r.text
        assert r.json()["code"] == "resource_exhausted" and str(limit) in r.json()["message"]


def test_an_unknown_encoding_is_unimplemented_naming_the_supported_ones(client: Any, admin_key: str) -> None:
    r = client.post(URL, content=b"{}", headers=auth(admin_key, **{"Content-Type": "application/json",
                                                                   "Content-Encoding": "br"}))
    assert r.status_code == 501
    assert r.json()["code"] == "unimplemented" and "'br'" in r.json()["message"] and "gzip" in r.json()["message"]
    assert r.headers["accept-encoding"] == "gzip, identity"
    # identity is no compression
    r = client.post(URL, content=b"{}", headers=auth(admin_key, **{"Content-Type": "application/json",
                                                                   "Content-Encoding": "identity"}))
    assert r.status_code == 200


@pytest.mark.parametrize("content,why", [
    (b"not gzip at all", "not gzip"),
    (gzip.compress(b"{}")[:-6], "truncated"),
    (gzip.compress(b"{}") + b"garbage", "trailing garbage"),
])
def test_corrupt_gzip_is_invalid_argument(client: Any, admin_key: str, content: bytes, why: str) -> None:
    r = client.post(URL, content=content, headers=auth(admin_key, **{"Content-Type": "application/json",
                                                                     "Content-Encoding": "gzip"}))
    assert r.status_code == 400, why
    assert r.json()["code"] == "invalid_argument" and "gzip" in r.json()["message"], why
    assert "content-encoding" not in r.headers


def test_connect_get_with_compression_gzip(client: Any, admin_key: str, many_users: None) -> None:
    from tests.http.test_proto_routes import message_classes

    expected = call(client, "UserService", "ListUsers", {}, key=admin_key).json()
    message = base64.urlsafe_b64encode(gzip.compress(b"{}")).decode().rstrip("=")
    r = client.get(URL, params={"connect": "v1", "encoding": "json", "compression": "gzip", "base64": "1",
                                "message": message}, headers=auth(admin_key, **{"Accept-Encoding": "gzip"}))
    assert r.status_code == 200, r.text
    assert r.headers["content-encoding"] == "gzip" and r.json() == expected
    request_cls, response_cls = message_classes("UserService", "ListUsers")
    message = base64.urlsafe_b64encode(gzip.compress(request_cls().SerializeToString())).decode()
    r = client.get(URL, params={"encoding": "proto", "compression": "gzip", "base64": "1", "message": message},
                   headers=auth(admin_key))
    assert r.status_code == 200 and len(response_cls.FromString(r.content).users) == len(expected["users"])
    r = client.get(URL, params={"encoding": "json", "compression": "zstd", "message": "{}"}, headers=auth(admin_key))
    assert r.status_code == 501 and r.headers["accept-encoding"] == "gzip, identity"


def test_gunzip_reads_several_members_and_stops_at_the_limit() -> None:
    assert compression.gunzip(gzip.compress(b"ab") + gzip.compress(b"cd"), 4) == b"abcd"
    with pytest.raises(PayloadTooLarge):
        compression.gunzip(gzip.compress(b"ab") + gzip.compress(b"cd"), 3)
    assert compression.gunzip(b"", 10) == b""


@pytest.mark.parametrize("accept,takes", [
    (None, False), ("", False), ("gzip", True), ("GZIP", True), ("deflate, gzip", True), ("gzip;q=0", False),
    ("gzip; q=0.0", False), ("gzip;q=0.5", True), ("*", True), ("*;q=0", False), ("gzip;q=0, *", False),
    ("identity", False), ("gzipx", False),
])
def test_accepts_gzip(accept: str | None, takes: bool) -> None:
    assert compression.accepts_gzip(accept) is takes


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(data=st.binary(max_size=300), limit=st.integers(0, 2000))
def test_gunzip_of_any_bytes_is_the_bytes_or_a_clear_error(data: bytes, limit: int) -> None:
    zipped = compression.gzip(data)
    if len(data) <= limit:
        assert compression.gunzip(zipped, limit) == data
    else:
        with pytest.raises(PayloadTooLarge):
            compression.gunzip(zipped, limit)
    try:
        out = compression.gunzip(data, limit)
    except (InvalidArgument, PayloadTooLarge):
        return
    assert len(out) <= limit  # random bytes that happen to be gzip: inflated, within the limit
