"""Binary protobuf against a real `fleetd serve` (tests/e2e/test_binary.py runs the same check on the binary)."""

from __future__ import annotations

from .server import ServerProcess

PROTO = {"Content-Type": "application/proto"}


def assert_answers_binary_protobuf(server: ServerProcess, key: str) -> None:
    """A write and a read in binary, answered in binary; an error as a Connect JSON body."""
    from fleetd.protobuf import user_pb2

    with server.client(key) as c:
        r = c.post("/fleetd.v1.UserService/CreateKey", headers=PROTO,
                   content=user_pb2.CreateKeyRequest(name="binary-key", role="viewer").SerializeToString())
        assert r.status_code == 200 and r.headers["content-type"] == "application/proto", r.text
        created = user_pb2.ApiKey.FromString(r.content)
        assert created.name == "binary-key" and created.role == "viewer"
        r = c.post("/fleetd.v1.UserService/ListKeys", headers=PROTO,
                   content=user_pb2.ListKeysRequest().SerializeToString())
        assert r.status_code == 200 and r.headers["content-type"] == "application/proto", r.text
        assert created.id in [k.id for k in user_pb2.ListKeysResponse.FromString(r.content).keys]
        r = c.post("/fleetd.v1.UserService/RevokeKey", headers=PROTO,
                   content=user_pb2.RevokeKeyRequest(id="no-such-key").SerializeToString())
        assert r.status_code == 404 and r.headers["content-type"] == "application/json"
        assert r.json()["code"] == "not_found"
        r = c.post("/fleetd.v1.UserService/ListKeys", headers={"Content-Type": "text/plain"}, content=b"")
        assert r.status_code == 415
        assert {t.strip() for t in r.headers["accept-post"].split(",")} >= {
            "application/json", "application/proto", "application/grpc-web+proto", "application/grpc-web+json"}


def test_a_server_answers_binary_protobuf(server: ServerProcess, admin_key: str) -> None:
    assert_answers_binary_protobuf(server, admin_key)
