"""`fleet-agent enroll` and `run --once` as real processes against a real server: pinning the CA from a join
token, refusing a server whose CA is not the token's, the claim flow, idempotent re-enrollment, mDNS."""

from __future__ import annotations

import base64
import json
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from fleet_agent import discovery
from tests.e2e.server import ServerProcess, free_port

from .core_support import (
    AGENT,
    agent_env,
    call,
    device,
    make_token,
    ok,
    run_agent,
    server_ca_fingerprint,
    state,
    telemetry_names,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("enroll") / "data").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> str:
    return server.create_key("admin", "agent-core")


def test_enroll_with_a_token_pins_the_ca_and_the_signing_key(server: ServerProcess, admin: str,
                                                             tmp_path: Path) -> None:
    sd = tmp_path / "agent"
    token = make_token(server, admin, uses=1, tags={"room": "kitchen"})
    args = ["enroll", "--token", token, "--server", server.url, "--hardware-id", "core-tok-1", "--name",
            "kitchen-pi", "--device-type", "linux-test", "--json"]
    first = json.loads(ok(run_agent(sd, *args)).stdout)
    assert first["status"] == "active" and first["device_id"].startswith("dev_")
    assert first["trust"] == "token" and first["ca_fingerprint"] == server_ca_fingerprint(server)

    assert stat.S_IMODE((sd / "device.key").stat().st_mode) == 0o600
    assert (sd / "ca.pem").read_text() == Path(server.ca).read_text()
    st = state(sd)
    signing = call(server, admin, "ArtifactService", "GetSigningKey")["public_key"]
    assert st["signing_public_key"] == signing and len(base64.b64decode(signing)) == 32
    assert st["device_id"] == first["device_id"] and st["server"] == server.url and st["status"] == "active"

    d = device(server, admin, "core-tok-1")
    assert d is not None and d["status"] == "active" and d["name"] == "kitchen-pi"
    assert d["device_type"] == "linux-test" and d["tags"] == {"room": "kitchen"}
    assert d["inventory"]["agent_version"] and d["inventory"]["hostname"]

    # The same key again, even with the single-use token spent: the same device, nothing changes.
    again = json.loads(ok(run_agent(sd, *args)).stdout)
    assert again["device_id"] == first["device_id"] and again["status"] == "active"

    # One full iteration: check-in, telemetry.
    ok(run_agent(sd, "run", "--once"))
    d = device(server, admin, "core-tok-1")
    assert d is not None and d["last_seen"] and d["online"]
    names = telemetry_names(server, first["device_id"])
    # cpu.percent needs a clock tick (10 ms) between two readings, which one quick `run --once` may not
    # span (seen once in CI); test_core_readers checks it with a real interval.
    assert {"cpu.load1", "mem.used", "mem.total", "mem.available", "disk.used_percent", "uptime"} <= set(names)

    status = json.loads(ok(run_agent(sd, "status", "--json")).stdout)
    assert status["enrolled"] and status["device_id"] == first["device_id"] and status["status"] == "active"
    assert status["last_checkin"] and not status["running"] and status["last_error"] == ""
    assert status["queues"] == {"reports": {"items": 0, "bytes": 0}, "telemetry": {"items": 0, "bytes": 0}}
    human = ok(run_agent(sd, "status")).stdout
    assert first["device_id"] in human and "from a join token" in human and "last check-in:" in human


def test_a_token_for_another_ca_is_refused_and_nothing_but_the_key_is_written(server: ServerProcess, admin: str,
                                                                            tmp_path: Path) -> None:
    sd = tmp_path / "agent"
    real = make_token(server, admin)
    parts = real.split(".")
    forged = ".".join([parts[0], "ab" * 32, parts[2], parts[3]])
    p = run_agent(sd, "enroll", "--token", forged, "--server", server.url, "--hardware-id", "core-forged")
    assert p.returncode == 1
    assert "not the fleet the token belongs to" in p.stderr and server_ca_fingerprint(server) in p.stderr
    assert sorted(x.name for x in sd.iterdir()) == ["device.key"]
    assert device(server, admin, "core-forged") is None
    # run refuses the same way, without looping.
    p = run_agent(sd, "run", "--token", forged, "--server", server.url, "--hardware-id", "core-forged")
    assert p.returncode == 1 and "not the fleet the token belongs to" in p.stderr
    assert sorted(x.name for x in sd.iterdir()) == ["device.key"]


def test_bad_input_is_refused_clearly(server: ServerProcess, tmp_path: Path) -> None:
    sd = tmp_path / "agent"
    p = run_agent(sd, "enroll", "--token", "hello", "--server", server.url)
    assert p.returncode == 1 and "a join token looks like fdj1." in p.stderr
    p = run_agent(sd, "enroll", "--server", server.url.replace("https", "http"), "--hardware-id", "x1")
    assert p.returncode == 1 and "must start with https://" in p.stderr
    p = run_agent(sd, "enroll", "--server", server.url, "--hardware-id", "bad id!")
    assert p.returncode == 1 and "hardware id 'bad id!'" in p.stderr
    p = run_agent(sd, "status")
    assert p.returncode == 1 and "not enrolled" in p.stdout
    p = run_agent(sd, "status", "--json")
    assert p.returncode == 1 and json.loads(p.stdout)["enrolled"] is False


def test_without_a_token_the_device_waits_to_be_claimed(server: ServerProcess, admin: str, tmp_path: Path) -> None:
    sd = tmp_path / "agent"
    p = ok(run_agent(sd, "enroll", "--server", server.url, "--hardware-id", "core-claim-1"))
    fp = server_ca_fingerprint(server)
    assert "claim code:" in p.stdout and fp in p.stdout and "trusted on first use" in p.stdout
    code = p.stdout.split("claim code:")[1].split()[0]
    assert len(code) == 9 and code[4] == "-"
    st = state(sd)
    assert st["status"] == "pending" and st["claim_code"] == code and st["trust"] == "tofu"
    assert (sd / "ca.pem").read_text() == Path(server.ca).read_text()  # trusted on first use, and pinned

    # Pending: it checks in, but sends no telemetry.
    ok(run_agent(sd, "run", "--once"))
    assert state(sd)["status"] == "pending"
    assert telemetry_names(server, st["device_id"]) == {}
    status = json.loads(ok(run_agent(sd, "status", "--json")).stdout)
    assert status["status"] == "pending" and status["claim_code"] == code

    claimed = call(server, admin, "EnrollmentService", "ClaimDevice", {"claim_code": code.lower().replace("-", ""),
                                                                       "name": "claimed-one"})
    assert claimed["id"] == st["device_id"] and claimed["status"] == "active"
    ok(run_agent(sd, "run", "--once"))
    st = state(sd)
    assert st["status"] == "active" and st["claim_code"] == ""
    assert "mem.total" in telemetry_names(server, st["device_id"])
    # Enrolling again keeps the TOFU pin and says active.
    again = json.loads(ok(run_agent(sd, "enroll", "--json")).stdout)
    assert again["status"] == "active" and again["device_id"] == st["device_id"] and again["trust"] == "tofu"


def test_a_pending_device_becomes_active_with_a_token(server: ServerProcess, admin: str, tmp_path: Path) -> None:
    sd = tmp_path / "agent"
    ok(run_agent(sd, "enroll", "--server", server.url, "--hardware-id", "core-claim-2"))
    assert state(sd)["status"] == "pending"
    # run with a token while pending enrolls again with it: active, same device.
    ok(run_agent(sd, "run", "--once", "--token", make_token(server, admin)))
    assert state(sd)["status"] == "active"
    d = device(server, admin, "core-claim-2")
    assert d is not None and d["status"] == "active" and d["id"] == state(sd)["device_id"]


def test_run_enrolls_first_when_there_is_no_state(server: ServerProcess, admin: str, tmp_path: Path) -> None:
    sd = tmp_path / "agent"
    ok(run_agent(sd, "run", "--once", "--server", server.url, "--token", make_token(server, admin),
                 "--hardware-id", "core-run-1"))
    st = state(sd)
    assert st["status"] == "active"
    d = device(server, admin, "core-run-1")
    assert d is not None and d["id"] == st["device_id"] and d["last_seen"]


def test_a_deleted_device_enrolls_again(server: ServerProcess, admin: str, tmp_path: Path) -> None:
    sd = tmp_path / "agent"
    token = make_token(server, admin)
    ok(run_agent(sd, "enroll", "--server", server.url, "--token", token, "--hardware-id", "core-del-1"))
    old = state(sd)["device_id"]
    call(server, admin, "DeviceAdminService", "DeleteDevice", {"id": old})
    # The next run finds itself unknown, enrolls again with its token, and goes on with the new id.
    p = run_agent(sd, "run", "--once", "--token", token)
    assert p.returncode == 1 and "enrolling again" in p.stderr
    new = state(sd)["device_id"]
    assert new != old and state(sd)["status"] == "active"
    ok(run_agent(sd, "run", "--once"))
    d = device(server, admin, "core-del-1")
    assert d is not None and d["id"] == new and d["last_seen"]


def test_a_device_that_lost_its_key_is_told_what_to_do(server: ServerProcess, admin: str, tmp_path: Path) -> None:
    old_card = tmp_path / "old"
    ok(run_agent(old_card, "enroll", "--server", server.url, "--token", make_token(server, admin),
                 "--hardware-id", "core-lost-1"))
    # A new SD card: a new key for the same hardware id. A valid join token is not enough to take the device over.
    new_card = tmp_path / "new"
    args = ["enroll", "--server", server.url, "--hardware-id", "core-lost-1"]
    p = run_agent(new_card, *args, "--token", make_token(server, admin))
    assert p.returncode == 1
    assert ("hardware id core-lost-1 is already enrolled with another key (did this device lose its key?). An admin "
            "runs 'fleetd devices rekey core-lost-1' and gives the device the token it prints") in p.stderr, p.stderr
    # The token the admin's re-key prints brings it back as the same device; the old key stops working.
    rekey = call(server, admin, "DeviceAdminService", "RekeyDevice", {"id": "core-lost-1"})["token"]["token"]
    again = json.loads(ok(run_agent(new_card, *args, "--token", rekey, "--json")).stdout)
    assert again["device_id"] == state(old_card)["device_id"] and again["status"] == "active"
    ok(run_agent(new_card, "run", "--once"))
    assert run_agent(old_card, "run", "--once").returncode == 1


def test_a_device_whose_key_file_is_gone_is_told_what_to_do(server: ServerProcess, admin: str,
                                                            tmp_path: Path) -> None:
    sd = tmp_path / "agent"
    ok(run_agent(sd, "enroll", "--server", server.url, "--token", make_token(server, admin), "--hardware-id",
                 "core-nokey-1"))
    device_id = state(sd)["device_id"]
    advice = "An admin runs 'fleetd devices rekey core-nokey-1' and gives the device the token it prints"
    (sd / "device.key").unlink()
    # At start: the key is missing while state.json names the device. It enrolls with a new key, which is refused.
    p = run_agent(sd, "run", "--once")
    assert p.returncode == 1
    assert f"device.key is missing, but {sd / 'state.json'} says this device enrolled: device {device_id} " \
           "(hardware id core-nokey-1) lost the key it enrolled with" in p.stderr, p.stderr
    assert advice in p.stderr and "FLEET_AGENT_TOKEN=TOKEN" in p.stderr
    # The next start has a (new) key, and Authenticate refuses it: the same advice, not a bare error.
    p = run_agent(sd, "run", "--once")
    assert p.returncode == 1
    assert "the server refuses this device's key: device" in p.stderr and advice in p.stderr, p.stderr
    assert advice in json.loads(run_agent(sd, "status", "--json").stdout)["last_error"]
    # run with the re-key token the admin got: it enrolls again with its new key as the same device.
    rekey = call(server, admin, "DeviceAdminService", "RekeyDevice", {"id": "core-nokey-1"})["token"]["token"]
    p = run_agent(sd, "run", "--once", env=agent_env(FLEET_AGENT_TOKEN=rekey))
    assert "enrolling again with the token given" in p.stderr, p.stderr
    assert state(sd)["device_id"] == device_id and state(sd)["status"] == "active"
    ok(run_agent(sd, "run", "--once"))
    # Lost again, and re-run at once with a re-key token: it enrolls at start and checks in.
    (sd / "device.key").unlink()
    rekey = call(server, admin, "DeviceAdminService", "RekeyDevice", {"id": "core-nokey-1"})["token"]["token"]
    p = ok(run_agent(sd, "run", "--once", "--token", rekey))
    assert "lost the key it enrolled with" in p.stderr and f"as {device_id} (active)" in p.stderr
    d = device(server, admin, "core-nokey-1")
    assert d is not None and d["id"] == device_id and d["last_seen"]


# --- mDNS ------------------------------------------------------------------------------

def _advertise(zc: Zeroconf, name: str, port: int, ca: str) -> None:
    zc.register_service(ServiceInfo(
        discovery.SERVICE_TYPE, f"{name}.{discovery.SERVICE_TYPE}", port=port,
        properties={"version": "0", "scheme": "https", "port": str(port), "ca": ca, "path": "/"},
        server=f"{name}-core-test.local.", parsed_addresses=["127.0.0.1"]))


def test_enroll_finds_the_server_by_mdns_and_refuses_rogues(server: ServerProcess, admin: str,
                                                           tmp_path: Path) -> None:
    rogue = ServerProcess(tmp_path / "rogue").start()
    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        fp, rogue_fp = server_ca_fingerprint(server), server_ca_fingerprint(rogue)
        _advertise(zc, "core-a-liar", rogue.port, fp)        # claims our CA, serves another
        _advertise(zc, "core-b-other", rogue.port, rogue_fp)  # honest, but another fleet
        _advertise(zc, "core-c-real", server.port, fp)
        sd = tmp_path / "agent"
        p = ok(run_agent(sd, "enroll", "--token", make_token(server, admin), "--hardware-id", "core-mdns-1",
                         "--json", env=agent_env(FLEET_AGENT_MDNS_TIMEOUT="3")))
        got = json.loads(p.stdout)
        assert got["server"] == server.url and got["status"] == "active"
        assert "refusing 'core-b-other'" in p.stderr and f"names CA {rogue_fp}" in p.stderr
        assert f"refusing the server at {rogue.url}: its CA has fingerprint {rogue_fp}" in p.stderr
        assert state(sd)["discovered"] is True
        assert (sd / "ca.pem").read_text() == Path(server.ca).read_text()
    finally:
        zc.close()
        rogue.stop()


def test_no_server_on_mdns_says_what_to_do(tmp_path: Path, server: ServerProcess, admin: str) -> None:
    p = run_agent(tmp_path / "agent", "enroll", "--token", make_token(server, admin), "--hardware-id", "core-none",
                  env=agent_env(FLEET_AGENT_MDNS_TIMEOUT="0.5", FLEET_AGENT_MDNS_INTERFACES="127.0.0.2"))
    assert p.returncode == 1 and "found no fleetd server by mDNS" in p.stderr and "--server" in p.stderr


def test_first_start_waits_for_an_unreachable_server_and_stops_on_sigterm(tmp_path: Path) -> None:
    sd = tmp_path / "agent"
    token = "fdj1." + "ab" * 32 + ".1c4efbcf3a71.34e4466f4a4f72bd2ead76bd266d4384"
    p = subprocess.Popen([*AGENT, "run", "--state-dir", str(sd), "--server", f"https://127.0.0.1:{free_port()}",
                          "--token", token, "--hardware-id", "core-wait-1"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=agent_env(FLEET_AGENT_MAX_BACKOFF="0.3"))
    try:
        time.sleep(2)
        assert p.poll() is None  # still trying
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    assert err.count("cannot enroll yet") >= 3 and "got SIGTERM" in err
    assert sorted(x.name for x in sd.iterdir()) == ["device.key"]
