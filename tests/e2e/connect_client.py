"""A client program written the way an integrator would: nothing of fleetd but the code generated from its .proto
files (protoc + protoc-gen-connect-python) and the connect-python runtime.

tests/e2e/test_generated_clients.py generates the code into a temporary folder and runs this file with only that
folder on the path (the generated modules are named ``fleetd.v1.*``, which the server's own package would shadow).
It calls every read method and writes of each service that has any, in the codec and compression it is given, checks
fields of each answer and the Connect errors, and prints what it saw as JSON:

    {"calls": {"fleetd.v1.UserService/ListKeys": {"http_method": "POST", "request": {...headers},
                                                  "response": {...headers}}, ...},
     "errors": {"unauthenticated": "unauthenticated", ...}}

Usage: python connect_client.py '<JSON: url, ca, admin_key, viewer_key, device_id, artifact_id, webhook_id, codec,
       gzip, run>'
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import Any

from connectrpc.client import ResponseMetadata
from connectrpc.code import Code
from connectrpc.compression.gzip import GzipCompression
from connectrpc.errors import ConnectError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from fleetd.v1 import (
    alert_connect,
    alert_pb2,
    artifact_connect,
    artifact_pb2,
    audit_connect,
    audit_pb2,
    certificate_connect,
    certificate_pb2,
    ddi_connect,
    ddi_pb2,
    device_admin_connect,
    device_admin_pb2,
    device_connect,
    device_pb2,
    enrollment_connect,
    enrollment_pb2,
    rollout_connect,
    rollout_pb2,
    telemetry_connect,
    telemetry_pb2,
    user_connect,
    user_pb2,
)
from google.protobuf.empty_pb2 import Empty
from pyqwest import SyncClient, SyncHTTPTransport

Headers = dict[str, str]


class Recorder:
    """A client interceptor noting each call's HTTP method and request and response headers (codec, compression)."""

    def __init__(self) -> None:
        self.calls: dict[str, dict[str, Any]] = {}

    def intercept_unary_sync(self, call_next: Callable[[Any, Any], Any], request: Any, ctx: Any) -> Any:
        with ResponseMetadata() as answer:
            response = call_next(request, ctx)
        method = ctx.method()
        self.calls[f"{method.service_name}/{method.name}"] = {
            "http_method": ctx.http_method(),
            "request": {k.lower(): v for k, v in ctx.request_headers().items()},
            "response": {k.lower(): v for k, v in answer.headers().items()}}
        return response


def expect_error(code: Code, call: Callable[[], Any]) -> str:
    """The Connect error code ``call`` fails with; an AssertionError if it succeeds or fails otherwise."""
    try:
        call()
    except ConnectError as e:
        assert e.code == code, f"expected {code}, got {e.code}: {e.message}"
        assert e.message, "a Connect error carries the server's message"
        return str(e.code.value)
    raise AssertionError(f"expected {code}, the call succeeded")


def main(cfg: dict[str, Any]) -> dict[str, Any]:
    run = cfg["run"]
    recorder = Recorder()
    with open(cfg["ca"], "rb") as f:
        http = SyncClient(SyncHTTPTransport(tls_ca_cert=f.read()))
    gzip = GzipCompression()
    options: dict[str, Any] = {
        "proto_json": cfg["codec"] == "json",
        "send_compression": gzip if cfg["gzip"] else None,
        "accept_compression": [gzip] if cfg["gzip"] else [],
        "interceptors": [recorder], "http_client": http}

    def client(cls: type) -> Any:
        return cls(cfg["url"], **options)

    admin: Headers = {"Authorization": f"Bearer {cfg['admin_key']}"}
    viewer: Headers = {"Authorization": f"Bearer {cfg['viewer_key']}"}
    users, audit = client(user_connect.UserServiceClientSync), client(audit_connect.AuditServiceClientSync)
    enrollment = client(enrollment_connect.EnrollmentServiceClientSync)
    devices = client(device_connect.DeviceServiceClientSync)
    admin_devices = client(device_admin_connect.DeviceAdminServiceClientSync)
    artifacts = client(artifact_connect.ArtifactServiceClientSync)
    rollouts = client(rollout_connect.RolloutServiceClientSync)
    telemetry = client(telemetry_connect.TelemetryServiceClientSync)
    alerts = client(alert_connect.AlertServiceClientSync)
    ddi = client(ddi_connect.DdiServiceClientSync)
    certs = client(certificate_connect.CertificateServiceClientSync)

    # UserService
    key = users.create_key(user_pb2.CreateKeyRequest(name=f"gen-{run}", role="viewer"), headers=admin)
    assert key.role == "viewer" and key.key.startswith("fk_"), key
    me = users.who_am_i(Empty(), headers={"Authorization": f"Bearer {key.key}"})
    assert (me.kind, me.id, me.role) == ("key", key.id, "viewer"), me
    assert key.id in [k.id for k in users.list_keys(user_pb2.ListKeysRequest(), headers=admin).keys]
    # Connect GET (a method without side effects), the message in the URL in this codec
    listed_users = users.list_users(Empty(), headers=admin, use_get=True).users
    assert [(u.role, u.disabled) for u in listed_users if u.username == "gen-user"] == [("viewer", False)]

    # EnrollmentService: a join token the device below enrolls with
    join = enrollment.create_token(enrollment_pb2.CreateTokenRequest(
        description=f"gen-{run}", uses=1, expires_in=600, tags={"run": run}), headers=admin)
    assert join.token.startswith("fdj1.") and join.tags["run"] == run, join
    assert join.id in [t.id for t in enrollment.list_tokens(enrollment_pb2.ListTokensRequest(), headers=admin).tokens]

    # DeviceService: enroll with the token, authenticate with the device key, check in, push telemetry
    device_key = Ed25519PrivateKey.generate()
    public = device_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    enrolled = devices.enroll(device_pb2.EnrollRequest(
        hardware_id=f"gen-{run}", device_type="sim", public_key=base64.b64encode(public).decode(), token=join.token,
        inventory=device_pb2.Inventory(hostname=f"host-{run}", addresses=["192.0.2.7"])))
    assert enrolled.status == "active" and len(enrolled.ca_fingerprint) == 64, enrolled
    device_id = enrolled.device_id
    nonce = devices.get_challenge(device_pb2.ChallengeRequest(device_id=device_id)).nonce
    signature = device_key.sign(f"fleetd-auth-v1:{device_id}:{nonce}".encode())
    token = devices.authenticate(device_pb2.AuthenticateRequest(
        device_id=device_id, nonce=nonce, signature=base64.b64encode(signature).decode())).token
    as_device: Headers = {"Authorization": f"Bearer {token}"}
    checked = devices.check_in(device_pb2.CheckInRequest(
        components=[device_pb2.Component(name="app", version="1.0.0", state="running")]), headers=as_device)
    assert checked.status == "active" and checked.poll_interval > 0, checked
    pushed = devices.push_telemetry(device_pb2.PushTelemetryRequest(points=[
        device_pb2.Point(name="gen_temp", value=41.5, tags={"run": run})]), headers=as_device)
    assert pushed.accepted == 1
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])).sign(device_key, None)
    issued = devices.issue_certificate(device_pb2.IssueCertificateRequest(
        csr=csr.public_bytes(serialization.Encoding.PEM).decode()), headers=as_device)
    assert issued.certificate.startswith("-----BEGIN CERTIFICATE-----") and issued.renew_after < issued.not_after

    # DeviceAdminService
    updated = admin_devices.update_device(device_admin_pb2.UpdateDeviceRequest(
        id=device_id, set_tags={"codec": cfg["codec"]}), headers=admin)
    assert updated.tags == {"run": run, "codec": cfg["codec"]}, updated.tags
    listed = admin_devices.list_devices(device_admin_pb2.ListDevicesRequest(tags={"run": run}), headers=viewer)
    assert [d.id for d in listed.devices] == [device_id] and listed.total == 1
    # (the inventory Enroll sent; a check-in's is written a moment later)
    device = admin_devices.get_device(device_admin_pb2.DeviceRef(id=device_id), headers=viewer)
    assert device.hardware_id == f"gen-{run}" and device.inventory["hostname"] == f"host-{run}", device
    assert list(device.inventory["addresses"]) == ["192.0.2.7"], device.inventory
    created = admin_devices.create_action(device_admin_pb2.CreateActionRequest(
        device_ids=[device_id], kind="restart", component="app"), headers=admin)
    action_id, = created.action_ids
    assert [a.id for a in admin_devices.list_actions(
        device_admin_pb2.ListActionsRequest(device_id=device_id), headers=viewer).actions] == [action_id]
    action = admin_devices.get_action(device_admin_pb2.ActionRef(id=action_id), headers=viewer)
    assert (action.device_id, action.kind, action.component) == (device_id, "restart", "app"), action

    # ArtifactService (the artifact itself was pushed by the test)
    ticket = artifacts.create_upload(artifact_pb2.CreateUploadRequest(
        name="genapp", version=f"9.9.9-{run}", device_types=["sim"], file_name="genapp.bin", size=3), headers=admin)
    assert ticket.upload_url == f"{cfg['url']}/v1/uploads/{ticket.upload_id}" and ticket.max_bytes >= 3, ticket
    artifact = artifacts.get_artifact(artifact_pb2.ArtifactId(id=cfg["artifact_id"]), headers=viewer)
    assert artifact.name == "genapp" and list(artifact.device_types) == ["sim"] and len(artifact.sha256) == 64
    assert artifact.id in [a.id for a in artifacts.list_artifacts(
        artifact_pb2.ListArtifactsRequest(name="genapp"), headers=viewer).artifacts]
    signing = artifacts.get_signing_key(Empty(), headers=viewer)
    assert signing.algorithm == "ed25519" and signing.public_key_pem.startswith("-----BEGIN PUBLIC KEY-----")

    # RolloutService
    rollout = rollouts.create_rollout(rollout_pb2.RolloutSpec(
        artifact=artifact.id, device_ids=[device_id], stages=[100]), headers=admin)
    assert rollout.artifact == f"{artifact.name}@{artifact.version}", rollout
    listed_rollouts = rollouts.list_rollouts(rollout_pb2.ListRolloutsRequest(), headers=viewer).rollouts
    assert rollout.id in [r.id for r in listed_rollouts]
    assert rollouts.get_rollout(rollout_pb2.RolloutRef(id=rollout.id), headers=viewer).id == rollout.id
    in_rollout = rollouts.list_rollout_devices(rollout_pb2.ListRolloutDevicesRequest(id=rollout.id), headers=viewer)
    assert [d.device_id for d in in_rollout.devices] == [device_id] and in_rollout.total == 1

    # TelemetryService: the point the device pushed (read raw at once; ListMetrics lists the names rolled up so
    # far, every 10 s, so the test's device, which pushed fleet_temp a moment ago, may have none yet)
    names = telemetry.list_metrics(telemetry_pb2.ListMetricsRequest(device=cfg["device_id"]), headers=viewer)
    assert set(names.metrics) <= {"fleet_temp"} and names.total == len(names.metrics), names
    series = telemetry.query(telemetry_pb2.QueryRequest(device=device_id, metric="gen_temp"), headers=viewer)
    assert series.metric == "gen_temp" and [p.avg for p in series.points] == [41.5], series

    # AlertService
    rule = alerts.create_rule(alert_pb2.CreateRuleRequest(
        name=f"gen-{run}", metric="gen_temp", comparison=">", threshold=90.0), headers=admin)
    assert rule.threshold == 90.0 and rule.enabled, rule
    assert rule.id in [r.id for r in alerts.list_rules(Empty(), headers=viewer).rules]
    incidents = alerts.list_incidents(alert_pb2.ListIncidentsRequest(rule_id=rule.id), headers=viewer).incidents
    assert list(incidents) == []  # gen_temp is 41.5: nothing fired
    hook_id = cfg["webhook_id"]  # the test's
    hooks = alerts.list_webhooks(Empty(), headers=admin).webhooks
    assert [(h.name, list(h.events)) for h in hooks if h.id == hook_id] == [("gen-hook", ["alert.fired"])], hooks
    deliveries = alerts.list_deliveries(alert_pb2.ListDeliveriesRequest(webhook_id=hook_id), headers=admin)
    assert {d.webhook_id for d in deliveries.deliveries} <= {hook_id}  # (none unless another test's alert fired)

    # DdiService
    gateway = ddi.create_gateway_token(ddi_pb2.CreateGatewayTokenRequest(
        description=f"gen-{run}", device_type="sim"), headers=admin)
    assert gateway.description == f"gen-{run}" and gateway.token, gateway
    gateways = ddi.list_gateway_tokens(ddi_pb2.ListGatewayTokensRequest(), headers=admin).tokens
    assert gateway.id in [t.id for t in gateways]

    # CertificateService: the certificate the device got; a manufacturer CA trusted, listed and removed
    listed = certs.list_device_certificates(certificate_pb2.ListDeviceCertificatesRequest(id=device_id),
                                            headers=viewer)
    assert [(c.serial, c.state) for c in listed.certificates] == [(issued.serial, "valid")], listed
    maker_key = ec.generate_private_key(ec.SECP256R1())
    maker_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"gen-maker-{run}")])
    maker = (x509.CertificateBuilder().subject_name(maker_name).issuer_name(maker_name)
             .public_key(maker_key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(dt.datetime.now(dt.UTC)).not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(days=9))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .sign(maker_key, hashes.SHA256()))
    trusted = certs.trust_manufacturer(certificate_pb2.TrustManufacturerRequest(
        certificate=maker.public_bytes(serialization.Encoding.PEM).decode(), tags={"run": run}), headers=admin)
    assert trusted.id in [m.id for m in certs.list_manufacturers(certificate_pb2.ListManufacturersRequest(),
                                                                 headers=viewer).manufacturers]
    assert certs.remove_manufacturer(certificate_pb2.RemoveManufacturerRequest(id=trusted.id),
                                     headers=admin).id == trusted.id

    # AuditService (read only): the writes above, newest first (a page of several KiB: the server compresses it
    # when the client accepts gzip)
    entries = audit.list(audit_pb2.ListAuditRequest(limit=100), headers=admin).entries
    assert len(entries) >= 10 and entries[0].id > entries[-1].id, entries
    assert gateway.id in [e.target for e in entries if e.action.startswith("ddi.")], entries

    # Errors decode as Connect errors in this codec
    errors = {
        "unauthenticated": expect_error(Code.UNAUTHENTICATED, lambda: users.list_keys(user_pb2.ListKeysRequest())),
        "not_found": expect_error(Code.NOT_FOUND, lambda: admin_devices.get_device(
            device_admin_pb2.DeviceRef(id="no-such-device"), headers=admin)),
        "permission_denied": expect_error(Code.PERMISSION_DENIED, lambda: users.create_key(
            user_pb2.CreateKeyRequest(name="nope", role="admin"), headers=viewer)),
        "invalid_argument": expect_error(Code.INVALID_ARGUMENT, lambda: enrollment.create_token(
            enrollment_pb2.CreateTokenRequest(uses=-1), headers=admin)),
    }
    return {"calls": recorder.calls, "errors": errors}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
