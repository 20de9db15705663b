"""Factory provisioning (docs/pki.md, "Manufacturer CAs"): a device with a factory certificate from a trusted
manufacturer CA enrols without a join token, pending or active, tagged; the certificate enrols only the one device
it names, once. One fleet per backend for the module; real certificates from ``cryptography``."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fleetd.devices import factory
from tests.conftest import rpc
from tests.devices.test_certificates import check_device_certificate
from tests.support.devices_helper import TestDevice
from tests.support.pki_helper import csr_pem, make_ca, make_leaf, pem, sign


def trust(client: Any, key: str, ca_pem: str, status: int = 200, **body: Any) -> Any:
    r = rpc(client, "CertificateService", "TrustManufacturer", {"certificate": ca_pem, **body}, key=key)
    assert r.status_code == status, r.text
    return r.json()


def factory_enroll(d: TestDevice, bundle: str, factory_key: Any, **extra: Any) -> Any:
    """GetChallenge for the hardware id, then Enroll with the factory certificate and its key's signature."""
    nonce = d.call("GetChallenge", {"hardware_id": d.hardware_id}, auth=False).json()["nonce"]
    raw = base64.b64decode(d.public_key_b64)
    signature = sign(factory_key, factory.factory_message(d.hardware_id, nonce, raw))
    return d.enroll(factory_certificate=bundle, factory_nonce=nonce,
                    factory_signature=base64.b64encode(signature).decode(), **extra)


@pytest.fixture(scope="module")
def manufacturers(served):  # type: ignore[no-untyped-def]
    """Two trusted manufacturer CAs: one enrols pending (its devices issued through an intermediate), one active."""
    _, client, key = served
    pending_root, active_root = make_ca("Acme Root"), make_ca("Bolt Devices CA")
    intermediate = make_ca("Acme Line 3", issuer=pending_root)
    pending = trust(client, key, pem(pending_root[0]), tags={"maker": "acme"})
    active = trust(client, key, pem(active_root[0]), tags={"maker": "bolt"}, auto_activate=True)
    return {"pending": (intermediate, pending), "active": (active_root, active), "acme_root": pending_root}


def test_a_factory_certificate_enrols_pending_with_a_claim_code(served, manufacturers) -> None:  # type: ignore[no-untyped-def]
    fleet, client, key = served
    (intermediate, ca) = manufacturers["pending"]
    d = TestDevice(client)
    fkey = ec.generate_private_key(ec.SECP256R1())
    bundle = pem(make_leaf(intermediate, d.hardware_id, fkey)) + pem(intermediate[0])
    r = factory_enroll(d, bundle, fkey)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "pending" and r.json()["claim_code"]
    device = rpc(client, "DeviceAdminService", "GetDevice", {"id": d.device_id}, key=key).json()
    assert device["tags"] == {"maker": "acme"}
    claimed = rpc(client, "EnrollmentService", "ClaimDevice", {"claim_code": r.json()["claim_code"]}, key=key)
    assert claimed.status_code == 200 and claimed.json()["status"] == "active"
    [details] = fleet.store.read_sync(lambda c: [r[0] for r in c.execute(
        "SELECT details FROM audit_log WHERE target = ? AND action = 'device.enroll'", (d.device_id,))])
    assert json.loads(details)["manufacturer_ca"] == ca["id"]


def test_a_factory_certificate_enrols_active_and_gets_its_fleet_certificate(served, manufacturers) -> None:  # type: ignore[no-untyped-def]
    fleet, client, key = served
    (root, _) = manufacturers["active"]
    d = TestDevice(client)
    fkey = ed25519.Ed25519PrivateKey.generate()
    r = factory_enroll(d, pem(make_leaf(root, d.hardware_id, fkey)), fkey, csr=csr_pem(d.key))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "active"
    check_device_certificate(fleet, r.json()["certificate"], d.device_id, d.key.public_key())
    assert rpc(client, "DeviceAdminService", "GetDevice", {"id": d.device_id}, key=key).json()["tags"] == {
        "maker": "bolt"}
    assert d.authenticate().status_code == 200
    # The same device again, with the same key: idempotent.
    assert factory_enroll(d, pem(make_leaf(root, d.hardware_id, fkey)), fkey).json()["device_id"] == d.device_id


def test_a_second_device_with_the_same_factory_certificate_is_refused(served, manufacturers) -> None:  # type: ignore[no-untyped-def]
    _, client, _ = served
    (root, _) = manufacturers["active"]
    first = TestDevice(client)
    fkey = ec.generate_private_key(ec.SECP256R1())
    leaked = pem(make_leaf(root, first.hardware_id, fkey))
    assert factory_enroll(first, leaked, fkey).status_code == 200
    clone = TestDevice(client, hardware_id=first.hardware_id)  # another key, the leaked certificate and its key
    r = factory_enroll(clone, leaked, fkey)
    assert r.status_code == 409 and "already enrolled with another key" in r.json()["message"], r.text
    # Nor can it name another hardware id than the certificate's subject.
    other = TestDevice(client)
    r = factory_enroll(other, leaked, fkey)
    assert r.status_code == 403 and f"not {other.hardware_id}" in r.json()["message"], r.text


def test_factory_enrolments_that_prove_nothing_are_refused(served, manufacturers) -> None:  # type: ignore[no-untyped-def]
    _, client, _ = served
    (root, _) = manufacturers["active"]
    d = TestDevice(client)
    fkey, wrong = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    leaf = pem(make_leaf(root, d.hardware_id, fkey))
    r = factory_enroll(d, leaf, wrong)  # signed by another key than the certificate's
    assert r.status_code == 401 and "factory_signature" in r.json()["message"], r.text
    untrusted = make_ca("Nobody")
    r = factory_enroll(d, pem(make_leaf(untrusted, d.hardware_id, fkey)), fkey)
    assert r.status_code == 401 and "does not chain" in r.json()["message"], r.text
    expired = make_leaf(root, d.hardware_id, fkey, days=1, start=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    r = factory_enroll(d, pem(expired), fkey)
    assert r.status_code == 401 and "expired" in r.json()["message"], r.text
    # A device certificate is no CA: one it "issued" does not chain.
    device_leaf_key = ec.generate_private_key(ec.SECP256R1())
    device_leaf = make_leaf(root, "some-other-hw", device_leaf_key)
    forged = make_leaf((device_leaf, device_leaf_key), d.hardware_id, fkey)
    r = factory_enroll(d, pem(forged) + pem(device_leaf), fkey)
    assert r.status_code == 401 and "does not chain" in r.json()["message"], r.text
    # A nonce is single use.
    nonce = d.call("GetChallenge", {"hardware_id": d.hardware_id}, auth=False).json()["nonce"]
    sig = base64.b64encode(sign(fkey, factory.factory_message(d.hardware_id, nonce, base64.b64decode(
        d.public_key_b64)))).decode()
    assert d.enroll(factory_certificate=leaf, factory_nonce=nonce, factory_signature=sig).status_code == 200
    again = d.enroll(factory_certificate=leaf, factory_nonce=nonce, factory_signature=sig)
    assert again.status_code == 401, again.text


def test_manufacturer_cas_are_listed_and_removed(served, manufacturers) -> None:  # type: ignore[no-untyped-def]
    _, client, key = served
    listed = rpc(client, "CertificateService", "ListManufacturers", {}, key=key).json()["manufacturers"]
    assert {m["id"] for m in listed} >= {manufacturers["pending"][1]["id"], manufacturers["active"][1]["id"]}
    extra_ca = make_ca("Short lived maker")
    added = trust(client, key, pem(extra_ca[0]))
    trust(client, key, pem(extra_ca[0]), status=409)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    trust(client, key, pem(make_leaf(extra_ca, "hw", leaf_key)), status=400)  # not a CA
    r = rpc(client, "CertificateService", "RemoveManufacturer", {"id": added["fingerprint"]}, key=key)
    assert r.status_code == 200, r.text
    d = TestDevice(client)
    r = factory_enroll(d, pem(make_leaf(extra_ca, d.hardware_id, leaf_key)), leaf_key)
    assert r.status_code == 401 and "does not chain" in r.json()["message"], r.text
