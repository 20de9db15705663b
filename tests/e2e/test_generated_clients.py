"""Clients of the Connect ecosystem against one real `fleetd serve`, from the published .proto files alone.

- `buf curl` (the Connect project's command-line client) with its defaults (Connect protocol, binary protobuf)
  and with ``--protocol grpcweb`` calls a read method of every service, reading the schema from
  src/fleetd/proto.
- A Python client generated here (protoc + protoc-gen-connect-python, into a temporary folder) calls every
  read method and a write method of each service, in both codecs, with and without gzip
  (tests/e2e/connect_client.py is that client program).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetd.core.resources import proto_dir
from fleetd.protobuf import (
    alert_pb2,
    artifact_pb2,
    audit_pb2,
    certificate_pb2,
    ddi_pb2,
    device_admin_pb2,
    device_pb2,
    enrollment_pb2,
    rollout_pb2,
    telemetry_pb2,
    user_pb2,
)
from tests.support.devices_helper import TestDevice

from .server import ServerProcess
from .test_simulate import call, push_artifact

SERVICES = [alert_pb2, artifact_pb2, audit_pb2, certificate_pb2, ddi_pb2, device_admin_pb2, device_pb2, enrollment_pb2,
            rollout_pb2, telemetry_pb2, user_pb2]
CLIENT = Path(__file__).with_name("connect_client.py")


def methods(read: bool) -> set[str]:
    """Every method of the published services that is (read=True) or is not marked NO_SIDE_EFFECTS."""
    found = set()
    for module in SERVICES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                if (m.GetOptions().idempotency_level == m.GetOptions().NO_SIDE_EFFECTS) == read:
                    found.add(f"{service.full_name}/{m.name}")
    return found


def services(names: set[str]) -> set[str]:
    """The services of these methods."""
    return {m.split("/")[0] for m in names}


@pytest.fixture(scope="module")
def fleet(server: ServerProcess, admin_key: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the calls read: a join token, a device that sent telemetry, an artifact and a rollout of it, a
    webhook, a gateway token, a user, a viewer key."""
    token = call(server, admin_key, "EnrollmentService", "CreateToken",
                 {"description": "gen-fleet", "uses": 0, "expires_in": 600})["token"]
    with server.client() as c:
        device = TestDevice(c, hardware_id="buf-curl-device")
        assert device.enroll(token).status_code == 200 and device.authenticate().status_code == 200
        r = device.call("PushTelemetry", {"points": [{"name": "fleet_temp", "value": 20.5}]})
        assert r.status_code == 200, r.text
    artifact = push_artifact(server, admin_key, tmp_path_factory.mktemp("fleet"), "genapp", "1.0.0", b"gen\n")
    call(server, admin_key, "RolloutService", "CreateRollout",
         {"artifact": artifact["id"], "device_ids": [device.device_id], "stages": [100]})
    hook = call(server, admin_key, "AlertService", "CreateWebhook",
                {"name": "gen-hook", "url": "http://127.0.0.1:9/hook", "events": ["alert.fired"]})
    call(server, admin_key, "DdiService", "CreateGatewayToken", {"description": "gen-fleet", "device_type": "sim"})
    call(server, admin_key, "UserService", "CreateUser", {"username": "gen-user", "role": "viewer"})
    return {"device_id": device.device_id, "artifact_id": artifact["id"], "webhook_id": hook["id"],
            "viewer_key": server.create_key("viewer", "gen-viewer")}


# --- buf curl ---------------------------------------------------------------------------------------------------

def buf_calls(fleet: dict[str, Any]) -> list[tuple[str, str | None, dict[str, Any], Callable[[Any], bool]]]:
    """One read method per service: the credential it needs, its request (buf curl's -d) and a check on the
    decoded answer (buf curl prints protobuf JSON: lowerCamelCase names, 64-bit integers as strings)."""
    device, artifact, hook = fleet["device_id"], fleet["artifact_id"], fleet["webhook_id"]
    return [
        ("UserService/ListKeys", "admin", {}, lambda out: "gen-viewer" in [k["name"] for k in out["keys"]]),
        ("AuditService/List", "admin", {"action": "webhook."},  # (the shared server has other tests' too)
         lambda out: ("webhook.create", hook) in [(e["action"], e.get("target")) for e in out["entries"]]),
        ("EnrollmentService/ListTokens", "admin", {},
         lambda out: "gen-fleet" in [t.get("description") for t in out["tokens"]]),
        ("DeviceAdminService/GetDevice", "viewer", {"id": device},
         lambda out: (out["hardwareId"], out["status"]) == ("buf-curl-device", "active")),
        ("ArtifactService/GetArtifact", "viewer", {"id": artifact},
         lambda out: (out["name"], out["version"], out["size"]) == ("genapp", "1.0.0", "4")),
        ("RolloutService/ListRollouts", "viewer", {},
         lambda out: "genapp@1.0.0" in [r["artifact"] for r in out["rollouts"]]),
        ("TelemetryService/Query", "viewer", {"device": device, "metric": "fleet_temp"},
         lambda out: [p["avg"] for p in out["points"]] == [20.5]),
        ("AlertService/ListWebhooks", "admin", {}, lambda out: "gen-hook" in [w["name"] for w in out["webhooks"]]),
        ("DdiService/ListGatewayTokens", "admin", {},
         lambda out: "gen-fleet" in [t.get("description") for t in out["tokens"]]),
        ("CertificateService/ListDeviceCertificates", "viewer", {"id": device},
         lambda out: out["deviceId"] == device and out.get("certificates", []) == []),
        ("DeviceService/GetChallenge", None, {"device_id": device},
         lambda out: len(out["nonce"]) > 16 and out["expiresIn"] == 60),
    ]


def buf_curl(server: ServerProcess, method: str, body: dict[str, Any], key: str | None,
             *args: str) -> subprocess.CompletedProcess[str]:
    buf = shutil.which("buf")
    assert buf, "buf is not installed: npm install -g @bufbuild/buf@1.75.0 (as .ci/run does)"
    auth = ["-H", f"Authorization: Bearer {key}"] if key else []
    return subprocess.run([buf, "curl", "--schema", str(proto_dir()), "--cacert", server.ca, *auth, "-d",
                           json.dumps(body), *args, f"{server.url}/fleetd.v1.{method}"],
                          capture_output=True, text=True, timeout=60)


def assert_buf_curl_reads_every_service(server: ServerProcess, admin_key: str, fleet: dict[str, Any],
                                        *args: str) -> None:
    calls = buf_calls(fleet)
    assert services({f"fleetd.v1.{m}" for m, *_ in calls}) == services(methods(True) | methods(False))
    keys = {"admin": admin_key, "viewer": fleet["viewer_key"], None: None}
    for method, credential, body, check in calls:
        p = buf_curl(server, method, body, keys[credential], *args)
        assert p.returncode == 0, f"{method}: buf curl exited {p.returncode}\n{p.stdout}\n{p.stderr}"
        out = json.loads(p.stdout)
        assert check(out), f"{method}: {out}"
    # An error: buf curl decodes the Connect error and prints it on stderr
    p = buf_curl(server, "DeviceAdminService/GetDevice", {"id": "no-such-device"}, admin_key, *args)
    assert p.returncode != 0 and json.loads(p.stderr)["code"] == "not_found", p.stdout + p.stderr


def test_buf_curl_with_its_defaults_reads_every_service(server: ServerProcess, admin_key: str,
                                                        fleet: dict[str, Any]) -> None:
    assert_buf_curl_reads_every_service(server, admin_key, fleet)


def test_buf_curl_over_grpc_web_reads_every_service(server: ServerProcess, admin_key: str,
                                                    fleet: dict[str, Any]) -> None:
    assert_buf_curl_reads_every_service(server, admin_key, fleet, "--protocol", "grpcweb")


# --- a generated Python client ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The protobuf and connect-python modules generated from src/fleetd/proto, as an integrator would."""
    out = tmp_path_factory.mktemp("generated")
    plugin = Path(sys.executable).with_name("protoc-gen-connect-python")
    assert plugin.exists(), f"{plugin} is missing: pip install -e '.[test]' installs protoc-gen-connect-python"
    source = proto_dir()
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*.proto"))
    run = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", f"--python_out={out}", f"--pyi_out={out}",
                          f"--plugin=protoc-gen-connect-python={plugin}", f"--connect-python_out={out}", *files],
                         cwd=source, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    # Regular packages, so they come before the server's own `fleetd` package wherever that is installed.
    for package in (out / "fleetd", out / "fleetd" / "v1"):
        (package / "__init__.py").touch()
    yield out


@pytest.mark.parametrize("gzip", [False, True], ids=["identity", "gzip"])
@pytest.mark.parametrize("codec", ["proto", "json"])
def test_a_generated_client_calls_every_service(server: ServerProcess, admin_key: str, fleet: dict[str, Any],
                                                 generated: Path, codec: str, gzip: bool) -> None:
    cfg = {"url": server.url, "ca": server.ca, "admin_key": admin_key, **fleet, "codec": codec, "gzip": gzip,
           "run": f"{codec}-{'gzip' if gzip else 'identity'}"}
    env = dict(os.environ, PYTHONPATH=str(generated))
    p = subprocess.run([sys.executable, str(CLIENT), json.dumps(cfg)], capture_output=True, text=True, env=env,
                       timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    seen = json.loads(p.stdout)
    calls: dict[str, dict[str, Any]] = seen["calls"]
    assert methods(read=True) <= set(calls), f"read methods not called: {sorted(methods(read=True) - set(calls))}"
    missing = services(methods(read=False)) - services(set(calls) & methods(read=False))
    assert not missing, f"services with writes none of which was called: {missing}"
    assert calls["fleetd.v1.UserService/ListUsers"]["http_method"] == "GET"  # Connect GET, the message in the URL
    content_type = "application/json" if codec == "json" else "application/proto"
    for method, call_ in calls.items():
        request, response = call_["request"], call_["response"]
        assert request["content-type"] == response["content-type"] == content_type, (method, call_)
        # The request body as sent; whether an answer came compressed the client does not show (pyqwest
        # decompresses it and drops the header; tests/http/test_compression.py checks the server's side).
        assert request["content-encoding"] == ("gzip" if gzip else "identity"), (method, call_)
        assert request["accept-encoding"] == ("gzip,identity" if gzip else "identity"), (method, call_)
    assert seen["errors"] == {"unauthenticated": "unauthenticated", "not_found": "not_found",
                              "permission_denied": "permission_denied", "invalid_argument": "invalid_argument"}
