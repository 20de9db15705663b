"""fleet-shim-sim (the RTOS shim on the host port) against a real `fleetd serve`.

Each test is one simulated microcontroller with its own flash file, provisioned with firmware 1.0.0 signed by
the fleet's key; the server is shared by the module. Firmware goes out the way an operator sends it:
`fleetd artifacts push --kind firmware --format rtos-image` and `fleetd devices deploy`.
"""

from __future__ import annotations

import datetime
import http.server
import json
import os
import re
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from fleetd.artifacts.rtos_image import build_image
from tests.e2e.server import ServerProcess, run_cli

pytestmark = pytest.mark.e2e

RTOS_DIR = Path(__file__).resolve().parents[2] / "agent" / "rtos"
SIM = RTOS_DIR / "build" / "host" / "fleet-shim-sim"
DEVICE_TYPE = "fw-sim"
CRASH_PAYLOAD = b"FWSIM:crash-before-confirm\n" + b"\x00" * 500
RUN_TIMEOUT = 60


@dataclass
class Fleet:
    server: ServerProcess
    env: dict[str, str]
    admin_key: str
    token: str
    signing_key: Ed25519PrivateKey
    work: Path

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=self.env, check=check)

    def push(self, path: Path, version: str, *, rtos_image: bool, counter: int = 1) -> None:
        extra = ["--format", "rtos-image", "--security-counter", str(counter)] if rtos_image else []
        self.cli("artifacts", "push", str(path), "--name", "firmware", "--version", version,
                 "--device-type", DEVICE_TYPE, "--kind", "firmware", *extra, "--json")

    def image(self, name: str, payload: bytes, version: str, key: Ed25519PrivateKey | None = None) -> Path:
        """A signed RTOS image file (the fleet's key unless another is given)."""
        path = self.work / name
        path.write_bytes(build_image(payload, version=version, security_counter=1, device_type=DEVICE_TYPE,
                                     signers=[key or self.signing_key]))
        return path

    def deploy(self, device_id: str, version: str, *extra: str) -> str:
        out = json.loads(self.cli("devices", "deploy", device_id, f"firmware@{version}", *extra, "--json").stdout)
        return str(out["action_ids"][0])

    def action(self, device_id: str, action_id: str) -> dict[str, object]:
        r = self.server.rpc("DeviceAdminService", "ListActions", {"device_id": device_id}, api_key=self.admin_key)
        assert r.status_code == 200, r.text
        return next(a for a in r.json()["actions"] if a["id"] == action_id)

    def component(self, device_id: str, version: str, previous: str | None = None) -> dict[str, object]:
        """The device's firmware component once it reports version (the server stores check-ins in batches)."""
        deadline = time.monotonic() + 10
        while True:
            r = self.server.rpc("DeviceAdminService", "GetDevice", {"id": device_id}, api_key=self.admin_key)
            assert r.status_code == 200, r.text
            found = [c for c in r.json()["components"] if c["name"] == "firmware"]
            stored = found and found[0]["version"] == version and (
                previous is None or found[0]["previous_version"] == previous)
            if stored or time.monotonic() > deadline:
                assert found, r.json()
                return dict(found[0])
            time.sleep(0.1)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, sim_binary: Path) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("shim")
    server = ServerProcess(work / "data").start()
    try:
        admin_key = server.create_key("admin", "shim-e2e")
        env = {"FLEETD_SERVER": server.url, "FLEETD_API_KEY": admin_key, "FLEETD_CA": server.ca}
        token = json.loads(run_cli("tokens", "create", "--json", env=env).stdout)["token"]
        key = serialization.load_pem_private_key((work / "data" / "signing.key").read_bytes(), None)
        assert isinstance(key, Ed25519PrivateKey)
        f = Fleet(server, env, admin_key, token, key, work)
        # The factory image, and what the tests deploy.
        f.image("v1.fdim", b"firmware 1.0.0 " * 64, "1.0.0")
        # 1.0.0 on the server too, so that a rollback has a version to go back to.
        (work / "v1.0.bin").write_bytes(b"firmware 1.0.0 " * 64)
        f.push(work / "v1.0.bin", "1.0.0", rtos_image=True)
        (work / "v1.1.bin").write_bytes(os.urandom(20_000))
        f.push(work / "v1.1.bin", "1.1.0", rtos_image=True)
        (work / "v1.2-crash.bin").write_bytes(CRASH_PAYLOAD)
        f.push(work / "v1.2-crash.bin", "1.2.0", rtos_image=True)
        tampered = bytearray(f.image("v9.0-tampered.fdim", os.urandom(8_000), "9.0.0").read_bytes())
        tampered[64 + 100] ^= 0x01
        (work / "v9.0-tampered.fdim").write_bytes(tampered)
        f.push(work / "v9.0-tampered.fdim", "9.0.0", rtos_image=False)
        f.image("v9.1-other-key.fdim", os.urandom(8_000), "9.1.0", Ed25519PrivateKey.generate())
        f.push(work / "v9.1-other-key.fdim", "9.1.0", rtos_image=False)
        (work / "v2.bin").write_bytes(os.urandom(300_000))
        f.push(work / "v2.bin", "2.0.0", rtos_image=True)
        (work / "v3.bin").write_bytes(os.urandom(5_000))
        f.push(work / "v3.bin", "3.0.0", rtos_image=True, counter=2)  # revokes every image with counter 1
        yield f
    finally:
        server.stop()


class Device:
    """One simulated microcontroller: a flash file (and its identity file beside it) and the sim's runs."""

    def __init__(self, fleet: Fleet, name: str) -> None:
        self.fleet = fleet
        self.flash = fleet.work / f"{name}.flash"
        self.args = [str(SIM), "--flash", str(self.flash), "--provision", str(fleet.work / "v1.fdim"),
                     "--server", fleet.server.url, "--ca", fleet.server.ca, "--token", fleet.token,
                     "--hardware-id", f"e2e-{name}", "--interval", "1"]

    def run(self, *extra: str, expect: int = 0) -> str:
        p = subprocess.run([*self.args, "--exit-when-idle", *extra], capture_output=True, text=True,
                           timeout=RUN_TIMEOUT)
        assert p.returncode == expect, f"sim exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
        return p.stdout

    @property
    def device_id(self) -> str:
        ident = dict(line.split(" ", 1) for line in self.flash.with_name(self.flash.name + ".identity")
                     .read_text().splitlines())
        return ident["device_id"]

    def enroll(self) -> str:
        out = self.run()
        assert "fleet-sim: boot version=1.0.0 trial=0" in out
        assert "fleet-sim: checkin status=active actions=0" in out
        # Stored before the next version arrives, so the server keeps 1.0.0 as the known-good version.
        assert self.fleet.component(self.device_id, "1.0.0")["version"] == "1.0.0"
        return self.device_id


def test_update_succeeds_and_the_device_reports_the_new_version(fleet: Fleet) -> None:
    dev = Device(fleet, "update")
    device_id = dev.enroll()
    action_id = fleet.deploy(device_id, "1.1.0")

    out = dev.run()
    # Downloaded, verified, rebooted into a trial, reached the server, confirmed, reported.
    assert f"fleet-sim: download action={action_id} offset=0" in out
    assert f"fleet-sim: verified action={action_id}" in out
    assert "fleet-sim: boot version=1.1.0 trial=1" in out
    assert out.index("boot version=1.1.0 trial=1") < out.index(f"confirmed action={action_id}")
    assert "fleet-sim: report state=succeeded" in out
    action = fleet.action(device_id, action_id)
    assert action["state"] == "succeeded", action
    component = fleet.component(device_id, "1.1.0")
    assert component["version"] == "1.1.0" and component["previous_version"] == "1.0.0"

    # The confirmed image stays: the next reset boots it as the known-good one.
    out = dev.run()
    assert "fleet-sim: boot version=1.1.0 trial=0" in out


def test_without_a_token_the_device_waits_to_be_claimed_by_its_code(fleet: Fleet) -> None:
    dev = Device(fleet, "claim")
    i = dev.args.index("--token")
    del dev.args[i:i + 2]
    out = dev.run()
    assert re.search(r"fleet-sim: enrolled device_id=dev_\w+ active=0", out), out
    m = re.search(r"fleet-sim: claim code=([A-Z0-9]{4}-[A-Z0-9]{4})", out)
    assert m, out
    assert "fleet-sim: checkin status=pending actions=0" in out

    fleet.cli("devices", "claim", m.group(1))
    out = dev.run()
    assert "fleet-sim: checkin status=active actions=0" in out
    assert "claim code" not in out


def test_a_consent_deploy_is_accepted_and_installed(fleet: Fleet) -> None:
    dev = Device(fleet, "consent")
    device_id = dev.enroll()
    action_id = fleet.deploy(device_id, "1.1.0", "--consent")
    assert fleet.action(device_id, action_id)["state"] == "offered"
    out = dev.run()
    assert "fleet-sim: report state=accepted" in out
    assert "fleet-sim: boot version=1.1.0 trial=1" in out
    assert fleet.action(device_id, action_id)["state"] == "succeeded"


def test_a_rollback_action_installs_the_previous_version(fleet: Fleet) -> None:
    dev = Device(fleet, "rollback")
    device_id = dev.enroll()
    fleet.deploy(device_id, "1.1.0")
    assert "fleet-sim: report state=succeeded" in dev.run()
    assert fleet.component(device_id, "1.1.0", previous="1.0.0")["previous_version"] == "1.0.0"

    out = json.loads(fleet.cli("devices", "rollback", device_id, "--app", "firmware", "--json").stdout)
    action_id = out["action_ids"][0]
    out = dev.run()
    # A lower version with the same security counter is a valid rollback.
    assert "fleet-sim: boot version=1.0.0 trial=1" in out
    assert f"fleet-sim: confirmed action={action_id}" in out
    action = fleet.action(device_id, action_id)
    assert action["kind"] == "rollback" and action["state"] == "succeeded", action
    assert fleet.component(device_id, "1.0.0")["version"] == "1.0.0"


def test_a_rollback_into_a_revoked_security_epoch_is_refused(fleet: Fleet) -> None:
    dev = Device(fleet, "epoch")
    device_id = dev.enroll()
    fleet.deploy(device_id, "3.0.0")  # counter 2: confirming it raises the device's minimum to 2
    assert "fleet-sim: report state=succeeded" in dev.run()
    assert fleet.component(device_id, "3.0.0", previous="1.0.0")["previous_version"] == "1.0.0"

    out = json.loads(fleet.cli("devices", "rollback", device_id, "--app", "firmware", "--json").stdout)
    action_id = out["action_ids"][0]
    out = dev.run()
    assert "security counter below the device's minimum" in out
    assert "reboot" not in out
    action = fleet.action(device_id, action_id)
    assert action["state"] == "failed", action
    assert "security counter below the device's minimum" in str(action["message"])
    assert "fleet-sim: boot version=3.0.0 trial=0" in dev.run()


def test_an_image_that_never_confirms_is_reverted_and_reported_rolled_back(fleet: Fleet) -> None:
    dev = Device(fleet, "revert")
    device_id = dev.enroll()
    action_id = fleet.deploy(device_id, "1.2.0")

    # The new firmware crashes on boot before it confirms (its payload says so).
    out = dev.run(expect=70)
    assert "fleet-sim: boot version=1.2.0 trial=1" in out
    assert "fleet-sim: crash before-confirm version=1.2.0" in out
    assert "confirmed" not in out
    assert fleet.action(device_id, action_id)["state"] == "installing"

    # The watchdog's reset: the loader reverts, and the old firmware reports it.
    out = dev.run()
    assert "fleet-sim: boot version=1.0.0 trial=0" in out
    assert "fleet-sim: report state=rolled_back" in out
    action = fleet.action(device_id, action_id)
    assert action["state"] == "rolled_back", action
    assert "reverted to 1.0.0" in str(action["message"])
    assert fleet.component(device_id, "1.0.0")["version"] == "1.0.0"
    # Reported once: the result was acknowledged, nothing is reported again.
    assert "report state=" not in dev.run()


def test_the_crash_flag_also_reverts_a_good_image(fleet: Fleet) -> None:
    dev = Device(fleet, "crashflag")
    device_id = dev.enroll()
    action_id = fleet.deploy(device_id, "1.1.0")
    out = dev.run("--crash-before-confirm", expect=70)
    assert "fleet-sim: boot version=1.1.0 trial=1" in out
    out = dev.run()
    assert "fleet-sim: boot version=1.0.0 trial=0" in out
    assert fleet.action(device_id, action_id)["state"] == "rolled_back"


@pytest.mark.parametrize(("version", "reason"), [
    ("9.0.0", "SHA-256 does not match"),        # a payload byte flipped after signing
    ("9.1.0", "no signature by a trusted key"),  # signed by a key the device does not trust
])
def test_a_tampered_image_is_refused_and_the_old_firmware_keeps_running(
        fleet: Fleet, version: str, reason: str) -> None:
    dev = Device(fleet, f"tampered-{version}")
    device_id = dev.enroll()
    action_id = fleet.deploy(device_id, version)

    out = dev.run()
    assert "fleet-sim: refused" in out and reason in out
    assert "reboot" not in out
    action = fleet.action(device_id, action_id)
    assert action["state"] == "failed", action
    assert reason in str(action["message"])
    assert fleet.component(device_id, "1.0.0")["version"] == "1.0.0"
    assert "fleet-sim: boot version=1.0.0 trial=0" in dev.run()


def kill_mid_download(dev: Device, action_id: str) -> None:
    """Runs the sim on a slow link and kill -9s it once the first 64 KiB of the image are in flash."""
    p = subprocess.Popen([*dev.args, "--exit-when-idle", "--max-recv-speed", "150000", "--progress-step", "65536"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.monotonic() + RUN_TIMEOUT
    assert p.stdout is not None
    try:
        for line in p.stdout:
            seen.append(line)
            if f"progress action={action_id}" in line or time.monotonic() > deadline:
                break
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        assert p.stderr is not None
        p.stderr.close()
    assert any(f"progress action={action_id} bytes=65536" in line for line in seen), "".join(seen)
    assert dev.fleet.action(dev.device_id, action_id)["state"] == "downloading"


def resumed_offset(out: str, action_id: str) -> int:
    m = re.search(rf"fleet-sim: download action={action_id} offset=(\d+)", out)
    assert m, out
    return int(m.group(1))


def test_download_resumes_with_range_after_the_device_is_killed(fleet: Fleet) -> None:
    dev = Device(fleet, "resume")
    device_id = dev.enroll()
    action_id = fleet.deploy(device_id, "2.0.0")
    kill_mid_download(dev, action_id)

    out = dev.run()
    assert resumed_offset(out, action_id) >= 65536  # resumed, not restarted
    assert f"fleet-sim: verified action={action_id}" in out
    assert "fleet-sim: boot version=2.0.0 trial=1" in out
    assert fleet.action(device_id, action_id)["state"] == "succeeded"
    assert fleet.component(device_id, "2.0.0")["version"] == "2.0.0"


def test_an_action_cancelled_mid_download_is_abandoned_and_never_installed(fleet: Fleet) -> None:
    dev = Device(fleet, "cancel")
    device_id = dev.enroll()
    action_id = fleet.deploy(device_id, "2.0.0")
    p = subprocess.Popen([*dev.args, "--exit-when-idle", "--max-recv-speed", "150000", "--progress-step", "65536"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        seen = []
        for line in p.stdout:
            seen.append(line)
            if f"progress action={action_id}" in line:
                r = fleet.server.rpc("DeviceAdminService", "CancelAction", {"id": action_id},
                                     api_key=fleet.admin_key)
                assert r.status_code == 200, r.text
                break
        out, _ = p.communicate(timeout=RUN_TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = "".join(seen) + out
    assert p.returncode == 0, out
    assert f"verified action={action_id}" not in out and "reboot" not in out, out
    assert fleet.action(device_id, action_id)["state"] == "cancelled"
    out = dev.run()  # and after a reset nothing resumes: the download was abandoned
    assert "fleet-sim: boot version=1.0.0 trial=0" in out and "download action=" not in out, out


def test_a_device_that_lost_its_key_is_told_what_to_do(fleet: Fleet) -> None:
    device_id = Device(fleet, "lost-key").enroll()
    # A new flash, so a new key, for the same hardware id: the join token does not take the device over.
    new_flash = Device(fleet, "lost-key-new")
    new_flash.args[new_flash.args.index("--hardware-id") + 1] = "e2e-lost-key"
    out = new_flash.run("--max-cycles", "1", expect=3)  # the sim's factory enrollment gives up at once
    assert ('fleet-sim: error what="Enroll: this hardware id is already enrolled with another key (did this device '
            "lose its key?). An admin runs 'fleetd devices rekey HARDWARE_ID'") in out, out
    assert out.rstrip().endswith("code=-13"), out  # FLEET_E_CONFLICT
    assert "fleet-sim: enrolled" not in out
    # The admin's re-key token, as its join token, brings it back as the same device.
    r = fleet.server.rpc("DeviceAdminService", "RekeyDevice", {"id": "e2e-lost-key"}, api_key=fleet.admin_key)
    assert r.status_code == 200, r.text
    new_flash.args[new_flash.args.index("--token") + 1] = r.json()["token"]["token"]
    out = new_flash.run()
    assert f"fleet-sim: enrolled device_id={device_id} active=1" in out, out


def test_a_different_signing_key_from_the_server_is_refused(fleet: Fleet) -> None:
    dev = Device(fleet, "pinned")
    dev.enroll()
    ident = dev.flash.with_name(dev.flash.name + ".identity")
    lines = [ln for ln in ident.read_text().splitlines() if not ln.startswith(("device_id", "signing_key"))]
    ident.write_text("\n".join([*lines, "signing_key " + "ab" * 32]) + "\n")
    fleet_key = fleet.signing_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                            serialization.PublicFormat.Raw).hex()
    out = dev.run("--trusted-key", fleet_key, "--max-cycles", "1")
    assert "signing key differs from the pinned one" in out
    assert "enrolled" not in out
    assert "signing_key " + "ab" * 32 in ident.read_text()


def _other_ca(path: Path) -> Path:
    """A self-signed CA that did not issue the server's certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the fleet CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_a_server_without_a_certificate_from_the_pinned_ca_is_refused(fleet: Fleet) -> None:
    dev = Device(fleet, "wrong-ca")
    dev.args[dev.args.index("--ca") + 1] = str(_other_ca(fleet.work / "other-ca.pem"))
    fleet_key = fleet.signing_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                            serialization.PublicFormat.Raw).hex()
    p = subprocess.run([*dev.args, "--trusted-key", fleet_key, "--max-cycles", "1"], capture_output=True,
                       text=True, timeout=RUN_TIMEOUT)
    assert p.returncode == 0, p.stderr
    assert "fleet-sim: boot version=1.0.0 trial=0" in p.stdout
    assert "enrolled" not in p.stdout and "poll error" in p.stdout
    assert "certificate" in p.stderr.lower() or "ssl" in p.stderr.lower(), p.stderr
    r = fleet.server.rpc("DeviceAdminService", "ListDevices", {}, api_key=fleet.admin_key)
    assert "e2e-wrong-ca" not in r.text

class FaultProxy:
    """A proxy in front of the server (HTTPS with the server's own certificate, so the sim's pinned CA accepts it,
    when the server has TLS) that can misbehave the ways real networks, proxies and buckets do."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.faults: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None, int]] = []  # method, path, Range sent on, status
        self.upstream = server.client()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy.forward(self)

            def do_POST(self) -> None:
                proxy.forward(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if server.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(server.data_dir / "server.pem", server.data_dir / "server.key")
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.server.tls else 'http'}://127.0.0.1:{self.httpd.server_address[1]}"

    def take(self, fault: str) -> bool:
        if self.faults.get(fault, 0) > 0:
            self.faults[fault] -= 1
            return True
        return False

    def forward(self, h: http.server.BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        headers = {k: v for k in ("Authorization", "Content-Type", "Range") if (v := h.headers.get(k))}
        blob = h.path.startswith("/v1/blobs/")
        location = None
        if blob and self.take("ignore_range"):
            headers.pop("Range", None)
        if h.path.endswith("/CheckIn") and self.take("checkin_401"):
            status, ctype, data = 401, "application/json", b'{"code":"unauthenticated","message":"expired"}'
        elif blob and "Range" in headers and self.take("range_416"):
            status, ctype, data = 416, "application/json", b'{"code":"out_of_range","message":"no"}'
        else:
            r = self.upstream.request(h.command, h.path, content=body, headers=headers)
            status, ctype, data = r.status_code, r.headers.get("content-type", ""), r.content
            location = r.headers.get("location")
            if location and self.take("presign_403"):
                # A pre-signed URL the bucket refuses (403), as it does an expired one.
                location = re.sub(r"(X-Amz-Signature=)([0-9a-f])",
                                  lambda m: m.group(1) + ("1" if m.group(2) == "0" else "0"), location)
        self.requests.append((h.command, h.path, headers.get("Range"), status))
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        if location:
            h.send_header("Location", location)
        h.end_headers()
        h.wfile.write(data)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.upstream.close()


@pytest.fixture
def proxy(fleet: Fleet) -> Iterator[FaultProxy]:
    p = FaultProxy(fleet.server)
    yield p
    p.close()


def test_resume_copes_with_a_server_that_ignores_range_and_an_expired_token(
        fleet: Fleet, proxy: FaultProxy) -> None:
    dev = Device(fleet, "ignore-range")
    device_id = dev.enroll()
    action_id = fleet.deploy(device_id, "2.0.0")
    kill_mid_download(dev, action_id)

    # Through the proxy: the token is refused once, and the resumed download gets the whole file (200).
    proxy.faults = {"checkin_401": 1, "ignore_range": 1}
    dev.args[dev.args.index("--server") + 1] = proxy.url
    out = dev.run()
    assert out.count("fleet-sim: authenticated") >= 2  # re-authenticated after the 401, then repeated the call
    assert resumed_offset(out, action_id) >= 65536
    first_blob = next(r for r in proxy.requests if r[1].startswith("/v1/blobs/"))
    assert first_blob[2] is None and first_blob[3] == 200  # Range stripped: the whole file came back
    assert f"fleet-sim: verified action={action_id}" in out  # the bytes already in flash were skipped, not doubled
    assert fleet.action(device_id, action_id)["state"] == "succeeded"
    assert fleet.component(device_id, "2.0.0")["version"] == "2.0.0"


def test_a_416_restarts_the_download_from_zero(fleet: Fleet, proxy: FaultProxy) -> None:
    dev = Device(fleet, "range-416")
    device_id = dev.enroll()
    action_id = fleet.deploy(device_id, "2.0.0")
    kill_mid_download(dev, action_id)

    proxy.faults = {"range_416": 1}
    dev.args[dev.args.index("--server") + 1] = proxy.url
    out = dev.run()
    assert resumed_offset(out, action_id) >= 65536
    (first_range, first_status), (second_range, second_status) = [
        (r[2] or "", r[3]) for r in proxy.requests if r[1].startswith("/v1/blobs/")][:2]
    assert first_status == 416 and not first_range.startswith("bytes=0-")
    assert second_status == 206 and second_range.startswith("bytes=0-")  # started over
    assert f"fleet-sim: verified action={action_id}" in out
    assert fleet.action(device_id, action_id)["state"] == "succeeded"
