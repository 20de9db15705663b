"""Device certificates end to end (docs/pki.md): a real `fleetd serve` behind Debian's haproxy terminating TLS and
forwarding the verified client certificate; the certificate CLI commands; the CRL. One server and one proxy for the
module."""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleetd.core import pki
from fleetd.devices import certificates
from tests.e2e.server import ServerProcess, run_cli
from tests.support.devices_helper import TestDevice
from tests.support.pki_helper import csr_pem, make_ca, make_leaf, pem
from tests.support.services.haproxy import HAProxy

HEADER = "x-client-cert"


class TlsProxy(HAProxy):
    """haproxy terminating TLS in front of fleetd: it asks for a client certificate, verifies it under the fleet CA
    and forwards it (base64 DER) in the x-client-cert header (docs/pki.md's haproxy setup)."""

    def __init__(self, backend: str, ca_file: Path, cert_file: Path) -> None:
        super().__init__([backend], health_path=None)
        self.ca_file, self.cert_file = ca_file, cert_file

    def config(self) -> str:
        return (
            "global\n"
            f"    stats socket {self.stats_socket} mode 600 level admin\n"
            "defaults\n"
            "    mode http\n"
            "    timeout connect 2s\n"
            "    timeout client 30s\n"
            "    timeout server 30s\n"
            "frontend fleetd\n"
            f"    bind {self.address} ssl crt {self.cert_file} ca-file {self.ca_file} verify optional\n"
            f"    http-request del-header {HEADER}\n"
            f"    http-request set-header {HEADER} %[ssl_c_der,base64] if {{ ssl_c_used }} {{ ssl_c_verify 0 }}\n"
            "    option forwardfor\n"
            "    default_backend fleetd\n"
            "backend fleetd\n"
            f"    server f {self.backends[0]}\n"
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("pki")
    server = ServerProcess(root / "data", tls=False, env={
        "FLEETD_CLIENT_CERT_HEADER": HEADER, "FLEETD_CLIENT_CERT_PROXIES": "127.0.0.1",
        "FLEETD_TRUSTED_PROXIES": "127.0.0.1"})
    server.start()
    try:
        # The proxy's own TLS certificate, from the fleet CA (what devices already trust).
        material = pki.material_in(server.data_dir, write=False)
        proxy_pem = root / "proxy.pem"
        fleet_keys = pki.with_server_cert(root, material)
        proxy_pem.write_bytes(fleet_keys.server_cert_path.read_bytes() + fleet_keys.server_key_path.read_bytes())
        with TlsProxy(f"127.0.0.1:{server.port}", server.data_dir / "ca.pem", proxy_pem) as proxy:
            key = server.create_key()
            env = {"FLEETD_SERVER": server.url, "FLEETD_API_KEY": key}
            yield {"server": server, "proxy": proxy, "key": key, "env": env, "root": root, "material": material}
    finally:
        server.stop()


def enrolled_device(world: dict[str, Any]) -> tuple[TestDevice, ec.EllipticCurvePrivateKey, dict[str, Any]]:
    """An active device (enrolled over plain HTTP to fleetd) with a P-256 client certificate."""
    server = world["server"]
    token = server.rpc("EnrollmentService", "CreateToken", {}, world["key"]).json()["token"]
    with server.client() as c:
        d = TestDevice(c)
        assert d.enroll(token).status_code == 200 and d.authenticate().status_code == 200
        element = ec.generate_private_key(ec.SECP256R1())
        r = d.call("IssueCertificate", {"csr": csr_pem(element)})
        assert r.status_code == 200, r.text
    return d, element, r.json()


def through_proxy(world: dict[str, Any], name: str, cert_pem: str, key: Any) -> httpx.Response:
    """CheckIn through haproxy with a client certificate and no Authorization header."""
    root: Path = world["root"]
    (root / f"{name}.crt").write_text(cert_pem)
    (root / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    tls = ssl.create_default_context(cafile=str(world["server"].data_dir / "ca.pem"))
    tls.load_cert_chain(str(root / f"{name}.crt"), str(root / f"{name}.key"))
    with httpx.Client(verify=tls, timeout=15) as c:
        return c.post(f"https://{world['proxy'].address}/fleetd.v1.DeviceService/CheckIn", content="{}",
                      headers={"Content-Type": "application/json"})


def direct(world: dict[str, Any], source: str, header: str) -> httpx.Response:
    """CheckIn straight to fleetd from a loopback ``source`` address, with the header a proxy would add."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=15) as c:
        return c.post(f"{world['server'].url}/fleetd.v1.DeviceService/CheckIn", content="{}",
                      headers={"Content-Type": "application/json", HEADER: header})


def der_b64(cert_pem: str) -> str:
    return base64.b64encode(x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(
        serialization.Encoding.DER)).decode()


def test_a_device_authenticates_by_its_certificate_through_the_proxy(world) -> None:  # type: ignore[no-untyped-def]
    d, element, issued = enrolled_device(world)
    r = through_proxy(world, "good", issued["certificate"], element)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "active"
    # fleetd saw the device's address from X-Forwarded-For, and the device checked in under its id.
    shown = world["server"].rpc("DeviceAdminService", "GetDevice", {"id": d.device_id}, world["key"]).json()
    assert shown["last_addr"] == "127.0.0.1"
    # Without a certificate the proxy forwards nothing: no credentials.
    with httpx.Client(verify=ssl.create_default_context(cafile=str(world["server"].data_dir / "ca.pem")),
                      timeout=15) as c:
        r = c.post(f"https://{world['proxy'].address}/fleetd.v1.DeviceService/CheckIn", content="{}",
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 401, r.text


def test_the_header_is_ignored_from_an_untrusted_address(world) -> None:  # type: ignore[no-untyped-def]
    _, _, issued = enrolled_device(world)
    r = direct(world, "127.0.0.2", der_b64(issued["certificate"]))  # not in client_cert_proxies
    assert r.status_code == 401, r.text
    assert "needs credentials" in r.json()["message"]
    r = direct(world, "127.0.0.1", der_b64(issued["certificate"]))  # the proxy's address: believed
    assert r.status_code == 200, r.text
    # nginx's $ssl_client_escaped_cert (URL-escaped PEM) works too.
    from urllib.parse import quote
    assert direct(world, "127.0.0.1", quote(issued["certificate"], safe="")).status_code == 200


def test_expired_other_ca_and_revoked_certificates_are_refused(world) -> None:  # type: ignore[no-untyped-def]
    d, element, issued = enrolled_device(world)
    material = world["material"]
    past = time.time() - 200 * 86400
    expired = certificates.issue(material.ca_cert, material.ca_key, d.device_id, element.public_key(), days=90,
                                 at=past)
    r = direct(world, "127.0.0.1", der_b64(certificates.pem(expired)))
    assert r.status_code == 401 and "expired" in r.json()["message"], r.text
    other = make_ca("Another CA")
    foreign = make_leaf(other, d.device_id, element, uri=certificates.device_uri(d.device_id))
    r = direct(world, "127.0.0.1", der_b64(pem(foreign)))
    assert r.status_code == 401 and "not issued by this fleet's CA" in r.json()["message"], r.text
    # haproxy itself refuses the other CA's certificate in the handshake (it verifies under the fleet CA).
    with pytest.raises(httpx.HTTPError, match="unknown ca"):
        through_proxy(world, "foreign", pem(foreign), element)
    # A certificate of the fleet CA that fleetd never recorded (its CA key misused elsewhere) is refused.
    unrecorded = certificates.issue(material.ca_cert, material.ca_key, d.device_id, element.public_key(),
                                    at=time.time())
    r = direct(world, "127.0.0.1", der_b64(certificates.pem(unrecorded)))
    assert r.status_code == 401 and "not one this fleet issued" in r.json()["message"], r.text

    assert through_proxy(world, "before", issued["certificate"], element).status_code == 200
    # Re-keyed (its key lost): the device stays active, the lost key's certificates are revoked.
    rekeyed, rekey_element, rekeyed_cert = enrolled_device(world)
    token = world["server"].rpc("DeviceAdminService", "RekeyDevice", {"id": rekeyed.device_id},
                                world["key"]).json()["token"]["token"]
    with world["server"].client() as c:
        assert TestDevice(c, hardware_id=rekeyed.hardware_id).enroll(token).status_code == 200
    r = through_proxy(world, "rekeyed", rekeyed_cert["certificate"], rekey_element)
    assert r.status_code == 401 and f"{rekeyed_cert['serial']} is revoked" in r.json()["message"], r.text

    run_cli("devices", "revoke", d.device_id, env=world["env"])
    r = through_proxy(world, "after", issued["certificate"], element)
    assert r.status_code == 401, r.text
    crl = x509.load_pem_x509_crl(httpx.get(f"{world['server'].url}/v1/crl.pem", timeout=15).content)
    assert crl.is_signature_valid(material.ca_cert.public_key())
    assert crl.get_revoked_certificate_by_serial_number(int(issued["serial"], 16)) is not None


def test_devices_cert_shows_serial_expiry_and_revocation(world) -> None:  # type: ignore[no-untyped-def]
    d, _, issued = enrolled_device(world)
    shown = json.loads(run_cli("devices", "cert", d.device_id, "--json", env=world["env"]).stdout)
    [cert] = shown["certificates"]
    assert cert["serial"] == issued["serial"] and cert["state"] == "valid"
    assert dt.datetime.fromisoformat(cert["not_after"]).timestamp() == pytest.approx(issued["not_after"], abs=1)
    wide = {**world["env"], "COLUMNS": "200"}
    table = run_cli("devices", "cert", d.device_id, env=wide).stdout
    assert issued["serial"] in table and "valid" in table
    assert world["server"].rpc("DeviceAdminService", "RevokeDevice", {"id": d.device_id}, world["key"]).is_success
    table = run_cli("devices", "cert", d.device_id, env=wide).stdout
    assert "revoked" in table and "valid" not in table


def test_manufacturer_ca_commands(world) -> None:  # type: ignore[no-untyped-def]
    ca_cert, _ = make_ca("Factory Test CA")
    path = world["root"] / "maker.pem"
    path.write_text(pem(ca_cert))
    out = run_cli("ca", "trust-manufacturer", str(path), "--tag", "maker=test", "--auto-activate",
                  env=world["env"]).stdout
    assert "trusted manufacturer CA mca_" in out and "active at once" in out
    [listed] = [m for m in world["server"].rpc("CertificateService", "ListManufacturers", {},
                                                 world["key"]).json()["manufacturers"]
                if m["subject"] == "CN=Factory Test CA"]
    assert listed["tags"] == {"maker": "test"} and listed["auto_activate"] is True
    table = run_cli("ca", "manufacturers", env={**world["env"], "COLUMNS": "200"}).stdout
    assert listed["id"] in table and "Factory Test CA" in table and "maker=test" in table
    assert "no longer trusted" in run_cli("ca", "remove-manufacturer", listed["id"], env=world["env"]).stdout
    left = world["server"].rpc("CertificateService", "ListManufacturers", {}, world["key"]).json()
    assert listed["id"] not in [m["id"] for m in left["manufacturers"]]


def test_the_agent_gets_and_renews_its_certificate_from_its_run_loop(world) -> None:  # type: ignore[no-untyped-def]
    from fleet_agent.config import Settings as AgentSettings
    from fleet_agent.enroll import EnrollOptions, enroll
    from fleet_agent.runloop import RunLoop
    from fleet_agent.worker import NullExecutor

    server = world["server"]
    token = server.rpc("EnrollmentService", "CreateToken", {}, world["key"]).json()["token"]
    settings = AgentSettings.from_env(str(world["root"] / "agent"), {
        "FLEET_AGENT_CLIENT_CERTIFICATE": "1", "FLEET_AGENT_POLL_INTERVAL": "0.2"})
    # The agent speaks only TLS: it enrols through the proxy (no client certificate yet: a bearer token).
    res = enroll(settings, EnrollOptions(token=token, server=f"https://{world['proxy'].address}",
                                         hardware_id="agent-cert-1"))
    loop = RunLoop(settings, res.state, res.client, executor=NullExecutor(settings.paths.root))
    now = [time.time()]
    loop.certificate.clock = lambda: now[0]
    assert loop.iteration(once=True) is True
    first = x509.load_pem_x509_certificate((settings.paths.root / "client.pem").read_bytes())
    first.verify_directly_issued_by(world["material"].ca_cert)
    assert certificates.device_id_of(first) == res.state.device_id
    assert loop.iteration(once=True) is True  # not due: the same certificate
    assert x509.load_pem_x509_certificate((settings.paths.root / "client.pem").read_bytes()) == first

    meta = json.loads((settings.paths.root / "client-cert.json").read_text())
    now[0] = meta["renew_after"] + 1  # two thirds of the lifetime later
    assert loop.iteration(once=True) is True
    renewed = x509.load_pem_x509_certificate((settings.paths.root / "client.pem").read_bytes())
    assert renewed.serial_number != first.serial_number
    saved = json.loads((settings.paths.root / "client-cert.json").read_text())
    assert saved["serial"] == certificates.serial_hex(renewed.serial_number)
    loop.client.close()

    # The renewed certificate and the device key authenticate through the proxy (mutual TLS, Ed25519).
    from fleet_agent.identity import load_or_create_key
    r = through_proxy(world, "agent", certificates.pem(renewed), load_or_create_key(settings.paths.key))
    assert r.status_code == 200, r.text
