"""Device client certificates from the fleet CA (docs/pki.md): CSRs at enrolment and through IssueCertificate, the
CRL, revocation, the admin listing. One fleet per backend for the whole module; real certificates from
``cryptography``."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetd.core import clock
from fleetd.core.config import Settings
from fleetd.core.errors import InvalidArgument
from fleetd.devices import certificates
from fleetd.fleet import Fleet
from tests.conftest import rpc
from tests.devices.test_devices import active_device, make_token
from tests.support.devices_helper import TestDevice
from tests.support.pki_helper import csr_pem

DAY = 86400.0


def spki(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_device_certificate(fleet: Fleet, pem: str, device_id: str, key: Any, days: float = 90) -> x509.Certificate:
    cert = x509.load_pem_x509_certificate(pem.encode())
    cert.verify_directly_issued_by(fleet.keys.ca_cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == device_id
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:fleetd:device:{device_id}"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    assert spki(cert.public_key()) == spki(key)
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert abs(life - dt.timedelta(days=days, minutes=1)) < dt.timedelta(seconds=5)
    return cert


def certs_of(client: Any, key: str, device: str) -> list[dict[str, Any]]:
    r = rpc(client, "CertificateService", "ListDeviceCertificates", {"id": device}, key=key)
    assert r.status_code == 200, r.text
    return list(r.json()["certificates"])


def test_an_ed25519_csr_at_enrolment_gets_a_client_certificate(served) -> None:  # type: ignore[no-untyped-def]
    fleet, client, key = served
    d = TestDevice(client)
    r = d.enroll(make_token(client, key), csr=csr_pem(d.key))
    assert r.status_code == 200, r.text
    cert = check_device_certificate(fleet, r.json()["certificate"], d.device_id, d.key.public_key())
    [listed] = certs_of(client, key, d.device_id)
    assert listed["serial"] == certificates.serial_hex(cert.serial_number) and listed["state"] == "valid"


def test_a_pending_device_gets_its_certificate_once_claimed(served) -> None:  # type: ignore[no-untyped-def]
    fleet, client, key = served
    d = TestDevice(client)
    r = d.enroll(csr=csr_pem(d.key))
    assert r.status_code == 200 and r.json()["status"] == "pending" and r.json()["certificate"] == ""
    assert certs_of(client, key, d.device_id) == []
    claim = rpc(client, "EnrollmentService", "ClaimDevice", {"claim_code": r.json()["claim_code"]}, key=key)
    assert claim.status_code == 200, claim.text
    again = d.enroll(csr=csr_pem(d.key))  # the same key again: idempotent, and now active
    assert again.status_code == 200 and again.json()["status"] == "active", again.text
    check_device_certificate(fleet, again.json()["certificate"], d.device_id, d.key.public_key())


def test_an_enrolment_csr_for_another_key_is_refused(served) -> None:  # type: ignore[no-untyped-def]
    _, client, key = served
    d = TestDevice(client)
    r = d.enroll(make_token(client, key), csr=csr_pem(ed25519.Ed25519PrivateKey.generate()))
    assert r.status_code == 400, r.text
    assert "must be for public_key" in r.json()["message"]


def test_a_p256_key_gets_a_certificate_through_issue_certificate(served) -> None:  # type: ignore[no-untyped-def]
    fleet, client, key = served
    d = active_device(client, key)
    element = ec.generate_private_key(ec.SECP256R1())
    r = d.call("IssueCertificate", {"csr": csr_pem(element)})
    assert r.status_code == 200, r.text
    body = r.json()
    cert = check_device_certificate(fleet, body["certificate"], d.device_id, element.public_key())
    assert body["serial"] == certificates.serial_hex(cert.serial_number)
    assert body["ca_certificate"] == fleet.keys.ca_pem.decode()
    start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    assert int(end) == int(body["not_after"])
    assert abs(int(body["renew_after"]) - (start + (end - start) * 2 / 3)) <= 1


def test_a_csr_for_a_key_the_sender_does_not_hold_is_refused(served) -> None:  # type: ignore[no-untyped-def]
    _, client, key = served
    d = active_device(client, key)
    mine, foreign = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    # A CSR signed by my key, carrying someone else's public key (the SPKI swapped; both are P-256, same length).
    der = x509.load_pem_x509_csr(csr_pem(mine).encode()).public_bytes(serialization.Encoding.DER)
    forged = der.replace(spki(mine.public_key()), spki(foreign.public_key()))
    assert forged != der
    pem = "-----BEGIN CERTIFICATE REQUEST-----\n" + __import__("base64").encodebytes(forged).decode() + \
        "-----END CERTIFICATE REQUEST-----\n"
    r = d.call("IssueCertificate", {"csr": pem})
    assert r.status_code == 400, r.text
    assert "does not verify with the key it carries" in r.json()["message"]
    r = d.call("IssueCertificate", {"csr": csr_pem(ec.generate_private_key(ec.SECP384R1()))})
    assert r.status_code == 400 and "P-256" in r.json()["message"], r.text
    r = d.call("IssueCertificate", {"csr": "not a csr"})
    assert r.status_code == 400 and "CERTIFICATE REQUEST" in r.json()["message"], r.text


def test_issue_certificate_needs_an_active_device(served) -> None:  # type: ignore[no-untyped-def]
    _, client, _ = served
    d = TestDevice(client)
    r = d.call("IssueCertificate", {"csr": csr_pem(d.key)})
    assert r.status_code == 401, r.text
    assert d.enroll().status_code == 200 and d.authenticate().status_code == 200  # pending
    r = d.call("IssueCertificate", {"csr": csr_pem(d.key)})
    assert r.status_code == 403 and "only active devices" in r.json()["message"], r.text


def test_renewal_with_a_fast_clock(served, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    fleet, client, key = served
    d = active_device(client, key)
    first = d.call("IssueCertificate", {"csr": csr_pem(d.key)}).json()
    # Two thirds of the lifetime later the device renews over its current credentials: a new serial, a new term.
    later = first["renew_after"] + 60.0
    monkeypatch.setattr(clock, "now", lambda: later)
    second = d.call("IssueCertificate", {"csr": csr_pem(d.key)})
    assert second.status_code == 200, second.text
    renewed = check_device_certificate(fleet, second.json()["certificate"], d.device_id, d.key.public_key())
    assert second.json()["serial"] != first["serial"]
    assert abs(renewed.not_valid_before_utc.timestamp() - (later - 60)) < 2
    # Past the first one's end it lists as expired; the renewed one is valid.
    monkeypatch.setattr(clock, "now", lambda: first["not_after"] + 1.0)
    states = {c["serial"]: c["state"] for c in certs_of(client, key, d.device_id)}
    assert states == {first["serial"]: "expired", second.json()["serial"]: "valid"}


def test_a_device_holds_a_bounded_number_of_live_certificates(served) -> None:  # type: ignore[no-untyped-def]
    _, client, key = served
    d = active_device(client, key)
    for _ in range(certificates.MAX_LIVE_PER_DEVICE):
        assert d.call("IssueCertificate", {"csr": csr_pem(d.key)}).status_code == 200
    r = d.call("IssueCertificate", {"csr": csr_pem(d.key)})
    assert r.status_code == 429 and "neither expired nor revoked" in r.json()["message"], r.text


def crl(client: Any, fleet: Fleet) -> x509.CertificateRevocationList:
    r = client.get("/v1/crl.pem")
    assert r.status_code == 200, r.text
    found = x509.load_pem_x509_crl(r.content)
    assert found.is_signature_valid(fleet.keys.ca_cert.public_key())
    assert found.issuer == fleet.keys.ca_cert.subject
    return found


def test_revoking_a_device_puts_its_certificates_on_the_crl_at_once(served) -> None:  # type: ignore[no-untyped-def]
    fleet, client, key = served
    d = active_device(client, key)
    serials = [int(d.call("IssueCertificate", {"csr": csr_pem(d.key)}).json()["serial"], 16) for _ in range(2)]
    other = active_device(client, key)
    kept = int(other.call("IssueCertificate", {"csr": csr_pem(other.key)}).json()["serial"], 16)
    before = crl(client, fleet)
    assert all(before.get_revoked_certificate_by_serial_number(s) is None for s in serials)

    assert rpc(client, "DeviceAdminService", "RevokeDevice", {"id": d.device_id}, key=key).status_code == 200
    after = crl(client, fleet)
    assert all(after.get_revoked_certificate_by_serial_number(s) is not None for s in serials)
    assert after.get_revoked_certificate_by_serial_number(kept) is None
    assert after.next_update_utc is not None and after.next_update_utc > dt.datetime.now(dt.UTC)
    assert {c["state"] for c in certs_of(client, key, d.device_id)} == {"revoked"}

    # Deleting a device revokes its certificates too; they stay listed by the device's id.
    assert rpc(client, "DeviceAdminService", "DeleteDevice", {"id": other.device_id}, key=key).status_code == 200
    assert crl(client, fleet).get_revoked_certificate_by_serial_number(kept) is not None
    assert [c["state"] for c in certs_of(client, key, other.device_id)] == ["revoked"]


def test_the_crl_is_made_again_before_its_next_update(served, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    fleet, client, _ = served
    first = crl(client, fleet)
    assert crl(client, fleet).last_update_utc == first.last_update_utc  # nothing changed: the same one
    assert first.next_update_utc is not None
    monkeypatch.setattr(clock, "now", lambda: first.next_update_utc.timestamp() - 3600)  # type: ignore[union-attr]
    assert crl(client, fleet).last_update_utc > first.last_update_utc


def test_certificate_settings_are_checked() -> None:
    with pytest.raises(InvalidArgument, match="device_certificate_days"):
        Settings(device_certificate_days=0)
    with pytest.raises(InvalidArgument, match="client_cert_proxies is empty"):
        Settings(client_cert_header="x-client-cert")
    with pytest.raises(InvalidArgument, match="client_cert_proxies: 'nope'"):
        Settings(client_cert_header="x-client-cert", client_cert_proxies=["nope"])
    s = Settings(device_certificate_days=30)
    assert msgspec.structs.asdict(s)["device_certificate_days"] == 30


def test_issue_certificate_and_an_enrolment_csr_in_binary_protobuf(served) -> None:  # type: ignore[no-untyped-def]
    from fleetd.protobuf import device_pb2
    from tests.http.test_proto_routes import binary

    fleet, client, key = served
    d = TestDevice(client)
    enrol = {"hardware_id": d.hardware_id, "device_type": "sim", "public_key": d.public_key_b64,
             "token": make_token(client, key), "csr": csr_pem(d.key)}
    r = binary(client, "DeviceService", "Enroll", enrol, None)
    assert r.status_code == 200, r.text
    enrolled = device_pb2.EnrollResponse.FromString(r.content)
    d.device_id = enrolled.device_id
    check_device_certificate(fleet, enrolled.certificate, d.device_id, d.key.public_key())
    assert d.authenticate().status_code == 200
    element = ec.generate_private_key(ec.SECP256R1())
    r = binary(client, "DeviceService", "IssueCertificate", {"csr": csr_pem(element)}, d.token)
    assert r.status_code == 200, r.text
    issued = device_pb2.IssueCertificateResponse.FromString(r.content)
    cert = check_device_certificate(fleet, issued.certificate, d.device_id, element.public_key())
    assert issued.serial == certificates.serial_hex(cert.serial_number)
    assert issued.not_after == int(cert.not_valid_after_utc.timestamp()) and issued.renew_after < issued.not_after
