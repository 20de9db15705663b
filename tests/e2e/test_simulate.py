"""`fleetd simulate` against a real server: 200 devices online, deploys that install, fail, or are refused
as tampered, a server restart survived, and a resumed run from --state. Also the device client's checks."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import multiprocessing
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetd.artifacts.catalog import ArtifactRef, build_manifest, sign
from fleetd.cli.devclient import (
    DeviceClient,
    DeviceError,
    Download,
    VerificationError,
    challenge_message,
    verify_artifact,
)
from fleetd.cli.sim_engine import PACED_AT_ONCE
from fleetd.cli.sim_pacing import Pacer
from fleetd.cli.sim_transport import make_http_client

from .server import ServerProcess, fleetd_cmd, run_cli

T = TypeVar("T")
TERMINAL = ("succeeded", "failed", "rolled_back", "cancelled", "rejected")


# --- helpers -------------------------------------------------------------------------

def call(server: ServerProcess, key: str, service: str, method: str, body: Any = None) -> Any:
    r = server.rpc(service, method, body or {}, api_key=key)
    assert r.status_code == 200, f"{service}.{method}: {r.status_code} {r.text}"
    return r.json()


def wait_for(fn: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def join_token(server: ServerProcess, key: str) -> str:
    return str(call(server, key, "EnrollmentService", "CreateToken", {"uses": 0, "expires_in": 3600})["token"])


def start_sim(server: ServerProcess, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*fleetd_cmd(), "simulate", "--server", server.url, "--json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_sim(p: subprocess.Popen[str]) -> dict[str, Any]:
    """Ctrl-C the simulator; it must exit 0 and print its summary."""
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, f"simulate exited {p.returncode}\nstdout:{out}\nstderr:{err}"
    return dict(json.loads(out))


def device_by_hw(server: ServerProcess, key: str, hardware_id: str) -> dict[str, Any] | None:
    found = call(server, key, "DeviceAdminService", "ListDevices", {"search": hardware_id})["devices"]
    return next((d for d in found if d["hardware_id"] == hardware_id and d["last_seen"]), None)


def push_artifact(server: ServerProcess, key: str, tmp_path: Path, name: str, version: str,
                  payload: bytes) -> dict[str, Any]:
    f = tmp_path / f"{name}-{version}.bin"
    f.write_bytes(payload)
    p = run_cli("artifacts", "push", str(f), "--name", name, "--version", version, "--device-type", "sim",
                "--server", server.url, "--api-key", key, "--ca", server.ca, "--json")
    return dict(json.loads(p.stdout))


def action_states(server: ServerProcess, action_id: str) -> list[str]:
    conn = sqlite3.connect(f"file:{server.data_dir / 'fleetd.db'}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT state FROM action_events WHERE action_id = ? ORDER BY id",
                                           (action_id,))]
    finally:
        conn.close()


def deploy_and_wait(server: ServerProcess, key: str, sim_args: list[str], hardware_id: str,
                    artifact: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Run a simulator, deploy ``artifact`` to its device, wait for the action to end.

    Returns (the device, the finished action, the simulator's summary).
    """
    p = start_sim(server, "--devices", "1", "--prefix", hardware_id.rsplit("-", 1)[0], "--interval", "0.5",
                  "--duration", "40", *sim_args)
    try:
        device = wait_for(lambda: device_by_hw(server, key, hardware_id), 15, f"{hardware_id} to check in")
        ids = call(server, key, "DeviceAdminService", "Deploy",
                   {"device_ids": [device["id"]], "artifact": artifact})["action_ids"]
        assert len(ids) == 1

        def ended() -> dict[str, Any] | None:
            acts = call(server, key, "DeviceAdminService", "ListActions", {"device_id": device["id"]})["actions"]
            return next((a for a in acts if a["id"] == ids[0] and a["state"] in TERMINAL), None)

        action = wait_for(ended, 15, f"the action on {hardware_id} to end")
        if action["state"] == "succeeded":
            name, version = artifact.split("@")
            wait_for(lambda: any(c["name"] == name and c["version"] == version for c in call(
                server, key, "DeviceAdminService", "GetDevice", {"id": device["id"]})["components"]),
                10, f"{hardware_id} to report {artifact}")
    finally:
        summary = stop_sim(p)
    return device, action, summary


@pytest.fixture(scope="module")
def sim_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("sim") / "data").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def key(sim_server: ServerProcess) -> str:
    return sim_server.create_key("admin", "sim-admin")


@pytest.fixture(scope="module")
def token(sim_server: ServerProcess, key: str) -> str:
    return join_token(sim_server, key)


# --- end to end -------------------------------------------------------------------------

@pytest.mark.e2e
def test_200_devices_enroll_and_stay_online(sim_server: ServerProcess, key: str, token: str) -> None:
    # No --ca: the simulator fetches the CA and pins it by the join token's fingerprint, as devices do.
    p = run_cli("simulate", "--server", sim_server.url, "--token", token, "--devices", "200", "--duration", "20",
                "--interval", "5", "--prefix", "load", "--json", timeout=60)
    summary = json.loads(p.stdout)
    assert summary["enrolled"] == summary["active"] == 200, summary
    assert summary["errors"] == 0 and summary["throttled"] == 0, summary
    assert summary["check_ins"] >= 400, summary  # 20 s at a 5 s interval: 3 to 4 each
    assert summary["telemetry_points"] == 3 * summary["check_ins"], summary

    listed = call(sim_server, key, "DeviceAdminService", "ListDevices", {"search": "load-", "limit": 1000})
    devices = [d for d in listed["devices"] if d["hardware_id"].startswith("load-")]
    assert sorted(d["hardware_id"] for d in devices) == sorted(f"load-{n}" for n in range(1, 201))
    now = dt.datetime.now(dt.UTC)
    for d in devices:
        assert d["status"] == "active" and d["online"] is True and d["device_type"] == "sim", d
        assert now - dt.datetime.fromisoformat(d["last_seen"].replace("Z", "+00:00")) < dt.timedelta(minutes=1), d

    conn = sqlite3.connect(f"file:{sim_server.data_dir / 'fleetd.db'}?mode=ro", uri=True)
    try:
        stored = conn.execute("SELECT COUNT(*) FROM telemetry t JOIN devices d ON d.id = t.device_id "
                              "WHERE d.hardware_id LIKE 'load-%'").fetchone()[0]
    finally:
        conn.close()
    assert stored == summary["telemetry_points"]


@pytest.mark.e2e
def test_deploy_downloads_verifies_installs_and_reports_the_version(
        sim_server: ServerProcess, key: str, token: str, tmp_path: Path) -> None:
    push_artifact(sim_server, key, tmp_path, "simapp", "1.0.0", b"simulated app 1.0.0\n" * 5000)
    device, action, summary = deploy_and_wait(sim_server, key, ["--token", token, "--ca", sim_server.ca],
                                              "dep-1", "simapp@1.0.0")
    assert action["state"] == "succeeded", action
    assert action["message"] == "installed simapp@1.0.0"
    assert action_states(sim_server, action["id"]) == ["queued", "downloading", "verifying", "installing",
                                                       "succeeded"]
    comps = call(sim_server, key, "DeviceAdminService", "GetDevice", {"id": device["id"]})["components"]
    assert [(c["name"], c["version"]) for c in comps] == [("simapp", "1.0.0")]
    assert summary["actions_succeeded"] == 1 and summary["actions_failed"] == 0 and summary["errors"] == 0


@pytest.mark.e2e
def test_fail_rate_one_fails_the_install(sim_server: ServerProcess, key: str, token: str, tmp_path: Path) -> None:
    push_artifact(sim_server, key, tmp_path, "flaky", "2.0.0", b"never installs")
    device, action, summary = deploy_and_wait(
        sim_server, key, ["--token", token, "--ca", sim_server.ca, "--fail-rate", "1"], "fail-1", "flaky@2.0.0")
    assert action["state"] == "failed", action
    assert "simulated failure" in action["message"]
    assert action_states(sim_server, action["id"])[-2:] == ["installing", "failed"]
    assert call(sim_server, key, "DeviceAdminService", "GetDevice", {"id": device["id"]})["components"] == []
    assert summary["actions_failed"] == 1 and summary["actions_succeeded"] == 0


@pytest.mark.e2e
def test_tampered_blob_is_refused_by_the_device(sim_server: ServerProcess, key: str, token: str,
                                                tmp_path: Path) -> None:
    art = push_artifact(sim_server, key, tmp_path, "tampered", "1.0.0", b"the genuine bytes " * 1000)
    blob = sim_server.data_dir / "blobs" / art["sha256"][:2] / art["sha256"]
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0x01  # same size, so the server still serves it; only the device can tell
    blob.write_bytes(bytes(data))
    device, action, summary = deploy_and_wait(sim_server, key, ["--token", token, "--ca", sim_server.ca],
                                              "tamp-1", "tampered@1.0.0")
    assert action["state"] == "failed", action
    assert action["message"].startswith("verification failed:") and "SHA-256" in action["message"], action
    assert "succeeded" not in action_states(sim_server, action["id"])
    assert "installing" not in action_states(sim_server, action["id"])
    assert call(sim_server, key, "DeviceAdminService", "GetDevice", {"id": device["id"]})["components"] == []
    assert summary["actions_failed"] == 1


@pytest.mark.e2e
def test_survives_a_server_restart_and_resumes_from_state(own_server: ServerProcess, tmp_path: Path) -> None:
    own_server.start()
    key = own_server.create_key("admin")
    state = tmp_path / "sim-state.json"
    p = start_sim(own_server, "--token", join_token(own_server, key), "--devices", "5", "--prefix", "rs",
                  "--interval", "0.5", "--duration", "60", "--state", str(state))
    try:
        wait_for(lambda: all(device_by_hw(own_server, key, f"rs-{n}") for n in range(1, 6)), 15,
                 "5 devices to check in")
        own_server.stop()
        time.sleep(1)  # the devices find nobody there
        own_server.start()
        restarted = dt.datetime.now(dt.UTC)

        def all_back() -> bool:
            devices = [device_by_hw(own_server, key, f"rs-{n}") for n in range(1, 6)]
            return all(d and dt.datetime.fromisoformat(d["last_seen"].replace("Z", "+00:00")) > restarted
                       for d in devices)

        wait_for(all_back, 40, "every device to check in after the restart")
    finally:
        summary = stop_sim(p)
    assert summary["errors"] > 0 and summary["active"] == 5, summary
    assert state.stat().st_mode & 0o777 == 0o600
    saved = {hw: d["device_id"] for hw, d in json.loads(state.read_text())["devices"].items()}
    assert sorted(saved) == [f"rs-{n}" for n in range(1, 6)]

    # A second run without a join token (and without --ca) resumes the same devices from the state file.
    p2 = run_cli("simulate", "--server", own_server.url, "--devices", "5", "--prefix", "rs", "--interval", "1",
                 "--duration", "3", "--state", str(state), "--json", timeout=30)
    again = json.loads(p2.stdout)
    assert again["active"] == 5 and again["errors"] == 0 and again["check_ins"] >= 5, again
    listed = call(own_server, key, "DeviceAdminService", "ListDevices", {"search": "rs-"})["devices"]
    assert {d["hardware_id"]: d["id"] for d in listed} == saved


@pytest.mark.e2e
def test_a_run_that_lost_its_state_is_told_what_to_do(sim_server: ServerProcess, token: str) -> None:
    args = ["simulate", "--server", sim_server.url, "--token", token, "--devices", "1", "--prefix", "lost",
            "--duration", "1", "--interval", "1", "--json"]
    first = json.loads(run_cli(*args, timeout=30).stdout)
    assert first["enrolled"] == 1, first
    # No --state: new keys for the same hardware ids, and the token does not let them take the devices over.
    p = run_cli(*args, timeout=30, check=False)
    assert p.returncode != 0
    assert ("hardware id lost-1 is already enrolled with another key (did the simulator lose its --state file?). "
            "An admin runs 'fleetd devices rekey lost-1'") in " ".join(p.stderr.split()), p.stderr


@pytest.mark.e2e
def test_two_workers_add_up_to_the_fleet(sim_server: ServerProcess, key: str, token: str) -> None:
    p = run_cli("simulate", "--server", sim_server.url, "--token", token, "--devices", "30", "--workers", "2",
                "--duration", "7", "--interval", "1", "--prefix", "wk", "--json", timeout=60)
    summary = json.loads(p.stdout)
    assert summary["workers"] == 2 and summary["enrolled"] == summary["active"] == 30, summary
    assert summary["errors"] == 0 and summary["errors_by_reason"] == {} and summary["throttled"] == 0, summary
    # What the two workers reported adds up to what the server stored.
    conn = sqlite3.connect(f"file:{sim_server.data_dir / 'fleetd.db'}?mode=ro", uri=True)
    try:
        stored = conn.execute("SELECT COUNT(*) FROM telemetry t JOIN devices d ON d.id = t.device_id "
                              "WHERE d.hardware_id LIKE 'wk-%'").fetchone()[0]
    finally:
        conn.close()
    assert stored == summary["telemetry_points"] == 3 * summary["check_ins"], summary
    listed = call(sim_server, key, "DeviceAdminService", "ListDevices", {"search": "wk-"})["devices"]
    assert sorted(d["hardware_id"] for d in listed) == sorted(f"wk-{n}" for n in range(1, 31))
    # 30 devices at 1 s ask 30 check-ins/s, and get them once each is on its slot.
    assert summary["asked_check_ins_per_second"] == 30.0, summary
    assert summary["steady_check_ins_per_second"] is not None and summary["steady_percent_of_asked"] >= 80, summary
    assert summary["check_ins"] >= 30 * 4, summary
    assert 0 < summary["simulator_cpu_percent"] < 200, summary


@pytest.mark.e2e
def test_enrollment_is_paced_to_the_servers_limit(own_server: ServerProcess) -> None:
    own_server.env = {"FLEETD_ENROLL_RATE_PER_MINUTE": "20"}
    own_server.start()
    token = join_token(own_server, own_server.create_key("admin"))
    # Without --json and without a terminal: status lines, then the summary.
    p = run_cli("simulate", "--server", own_server.url, "--token", token, "--devices", "30", "--workers", "2",
                "--prefix", "rl", "--duration", "5", "--interval", "1", timeout=40)
    out = p.stdout
    # 20 get in; the 429 shows the limit, and the rest wait for the server's Retry-After instead of hammering.
    assert "enrolled 20/30, paced to 20/min by the server's limit (next in 5" in out, out
    summary = {m[1]: m[2] for m in re.finditer(r"^ *(errors|throttled|enrolled|active|enrollment) +(.+?) *$",
                                                 out, re.M)}
    assert summary["enrolled"] == summary["active"] == "20", out
    assert summary["errors"] == "0", out  # paced, not failed
    throttled = int(summary["throttled"])
    assert 1 <= throttled <= 2 * PACED_AT_ONCE, out  # only what was in flight at the first 429
    assert summary["enrollment"].startswith(f"paced to 20/min by the server's limit; {throttled} answered 429"), out


@pytest.mark.e2e
def test_device_client_reauthenticates_and_keeps_connect_codes(sim_server: ServerProcess, token: str) -> None:
    async def scenario() -> None:
        async with make_http_client(sim_server.url, Path(sim_server.ca).read_text(), 1) as http:
            c = DeviceClient(http, sim_server.url, "client-1", "sim")
            enrolled = await c.enroll(token)
            assert enrolled.status == "active" and c.signing_public_key is not None
            assert (await c.check_in()).status == "active"
            # A token the server no longer honours (expired, or from before a re-key): 401, then a fresh one.
            c._token = "fdt.e30.AAAA"
            assert (await c.check_in(components=[])).status == "active"
            assert c._token.startswith("fdt.") and c._token != "fdt.e30.AAAA"
            c._token_expires = 0.0  # about to expire: re-authenticates before calling
            assert await c.push_telemetry([{"name": "cpu", "value": 1.5}]) == 1
            with pytest.raises(DeviceError) as e:
                await c.report("act_nope", "succeeded")
            assert e.value.code == "not_found" and e.value.http_status == 404
            ref = ArtifactRef(name="x", version="1.0.0", kind="app", url=f"/v1/blobs/{'ab' * 32}",
                              sha256="ab" * 32, size=1, file_name="x", manifest="{}", signature="")
            with pytest.raises(DeviceError) as e:
                await c.download(ref)
            assert e.value.code == "permission_denied"

    asyncio.run(scenario())


@pytest.mark.e2e
def test_a_challenge_answer_goes_before_requests_waiting_longer(sim_server: ServerProcess, key: str,
                                                                token: str) -> None:
    """The challenge expires a minute after it is issued: its answer never queues behind other devices' calls."""
    async def scenario() -> list[str]:
        async with make_http_client(sim_server.url, Path(sim_server.ca).read_text(), 1) as http:
            dev = DeviceClient(http, sim_server.url, "urgent-1", "sim")
            await dev.enroll(token)
            rpc = sim_server.url + "/fleetd.v1.DeviceService/"
            ch = (await http.post(rpc + "GetChallenge", json={"device_id": dev.device_id})).json()
            sig = dev.key.sign(challenge_message(dev.device_id, ch["nonce"]))
            done: list[str] = []

            async def call(name: str, method: str, body: dict[str, Any]) -> None:
                r = await http.post(rpc + method, json=body)
                assert r.status_code == 200, r.text
                done.append(name)

            # An event stream (it never ends) holds the pool's one connection.
            async with http.stream("GET", sim_server.url + "/v1/events",
                                   headers={"Authorization": f"Bearer {key}"}) as held:
                assert held.status_code == 200
                others = [asyncio.create_task(call(f"other-{i}", "GetChallenge", {"device_id": dev.device_id}))
                          for i in range(3)]
                await asyncio.sleep(0.1)
                answer = asyncio.create_task(call("answer", "Authenticate", {
                    "device_id": dev.device_id, "nonce": ch["nonce"],
                    "signature": base64.b64encode(sig).decode()}))
                await asyncio.sleep(0.1)
                assert done == []  # all four wait for the connection
                await held.aclose()
            await asyncio.gather(*others, answer)
            return done

    assert asyncio.run(scenario()) == ["answer", "other-0", "other-1", "other-2"]


def test_pacer_waits_out_a_429_then_spaces_requests_at_the_limit_it_showed() -> None:
    pacer = Pacer("enrollment")
    for _ in range(29):
        assert pacer.take_slot() == 0  # no limit seen yet: as fast as they come
        pacer.accepted(time.monotonic())
    sent_before = time.monotonic()
    # A worker process meets the 429; the pacer lives in shared memory, so every worker waits.
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=pacer.throttled, args=(2.0,))
    child.start()
    child.join(10)
    assert child.exitcode == 0
    assert pacer.snapshot()["limit_per_minute"] == 29 and pacer.snapshot()["throttled"] == 1
    pacer.accepted(sent_before)  # sent before the 429, answered after it: the limit it showed is 30
    assert pacer.snapshot()["limit_per_minute"] == 30
    waits = [pacer.take_slot() for _ in range(3)]
    spacing = 60 / (30 * 0.98)  # 30/min, a little under
    assert waits[0] == pytest.approx(2.0, abs=0.3)  # the Retry-After
    assert waits[1] - waits[0] == pytest.approx(spacing, abs=0.05)
    assert waits[2] - waits[1] == pytest.approx(spacing, abs=0.05)
    assert pacer.snapshot()["paced"] == 3


def test_cli_refuses_bad_options(tmp_path: Path) -> None:
    p = run_cli("simulate", "--server", "https://127.0.0.1:1", "--devices", "3", "--fail-rate", "1.5",
                check=False, timeout=30)
    assert p.returncode == 1 and "--fail-rate" in p.stderr
    p = run_cli("simulate", "--server", "https://127.0.0.1:1", "--devices", "3", check=False, timeout=30)
    assert p.returncode == 1 and "--ca" in p.stderr and "--token" in p.stderr


# --- the device client's artifact checks, without a server ------------------------------------

def _ref(key: Ed25519PrivateKey, payload: bytes, **override: Any) -> ArtifactRef:
    import hashlib
    sha = hashlib.sha256(payload).hexdigest()
    manifest = build_manifest(name="app", version="1.0.0", kind="app", sha256=sha, size=len(payload),
                              file_name="app.bin", device_types=["sim"], install_spec=None, created=1.7e9)
    fields: dict[str, Any] = dict(name="app", version="1.0.0", kind="app", url=f"/v1/blobs/{sha}", sha256=sha,
                                  size=len(payload), file_name="app.bin", manifest=manifest.decode(),
                                  signature=sign(key, manifest))
    fields.update(override)
    return ArtifactRef(**fields)


def _pub(key: Ed25519PrivateKey) -> bytes:
    from fleetd.cli.devclient import raw_public_key
    return raw_public_key(key)


def test_verify_accepts_the_genuine_artifact() -> None:
    import hashlib
    key, payload = Ed25519PrivateKey.generate(), b"payload"
    m = verify_artifact(_ref(key, payload), _pub(key), Download(hashlib.sha256(payload).hexdigest(), 7),
                        device_type="sim")
    assert m["name"] == "app" and m["version"] == "1.0.0"


@pytest.mark.parametrize("case, reason", [
    ("other key", "signature"),
    ("bad signature", "signature"),
    ("version swapped", "version"),
    ("sha swapped", "sha256"),
    ("wrong device type", "device type"),
    ("short download", "bytes"),
    ("wrong bytes", "SHA-256"),
])
def test_verify_refuses(case: str, reason: str) -> None:
    import hashlib
    key, payload = Ed25519PrivateKey.generate(), b"payload"
    good = Download(hashlib.sha256(payload).hexdigest(), len(payload))
    ref, pub, dl, device_type = _ref(key, payload), _pub(key), good, "sim"
    if case == "other key":
        pub = _pub(Ed25519PrivateKey.generate())
    elif case == "bad signature":
        sig = bytearray(base64.b64decode(ref.signature))
        sig[0] ^= 1
        ref = _ref(key, payload, signature=base64.b64encode(bytes(sig)).decode())
    elif case == "version swapped":
        ref = _ref(key, payload, version="9.9.9")
    elif case == "sha swapped":
        ref = _ref(key, payload, sha256="0" * 64)
    elif case == "wrong device type":
        device_type = "linux-aarch64"
    elif case == "short download":
        dl = Download(good.sha256, len(payload) - 1)
    elif case == "wrong bytes":
        dl = Download(hashlib.sha256(b"paylOad").hexdigest(), len(payload))
    with pytest.raises(VerificationError) as e:
        verify_artifact(ref, pub, dl, device_type=device_type)
    assert reason in e.value.message
