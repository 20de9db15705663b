"""`fleetd tokens` and `fleetd devices` against a real server over HTTPS, with devices made by raw HTTP calls."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from fleetd.accounts.audit import SYSTEM
from fleetd.artifacts import catalog as artifacts
from fleetd.fleet import open_offline
from fleetd.store import blobs
from fleetd.store.database import transaction
from tests.support.devices_helper import TestDevice

from .server import ServerProcess, fleetd_cmd, run_cli


@pytest.fixture(scope="module")
def env(server: ServerProcess, admin_key: str) -> dict[str, str]:
    return {"FLEETD_SERVER": server.url, "FLEETD_API_KEY": admin_key, "FLEETD_CA": server.ca, "COLUMNS": "200"}


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def cli(env: dict[str, str], *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, **kw)


def cli_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(cli(env, *args, "--json").stdout)


def failing(env: dict[str, str], *args: str, input: str | None = None) -> str:
    """Run a command that must fail; returns its stderr."""
    p = cli(env, *args, check=False, input=input)
    assert p.returncode != 0, p.stdout
    return p.stderr


def new_token(env: dict[str, str], *args: str) -> dict[str, Any]:
    tok: dict[str, Any] = cli_json(env, "tokens", "create", *args)
    return tok


def device(http: httpx.Client, prefix: str, token: str = "", name: str = "") -> TestDevice:
    d = TestDevice(http, hardware_id=f"{prefix}-{secrets.token_hex(3)}")
    r = d.enroll(token, **({"name": name} if name else {}))
    assert r.status_code == 200, r.text
    return d


def by_id(devices: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["id"]: d for d in devices}


def test_tokens_create_list_revoke(env: dict[str, str], server: ServerProcess, http: httpx.Client) -> None:
    run = secrets.token_hex(3)
    tok = new_token(env, "--uses", "2", "--tag", f"run={run}", "--description", "lab pis")
    ca = x509.load_pem_x509_certificate(Path(server.ca).read_bytes())
    fingerprint = ca.fingerprint(hashes.SHA256()).hex()
    assert tok["token"].startswith(f"fdj1.{fingerprint}.{tok['id']}.")
    assert f"--token {tok['token']}" in tok["install_command"] and "--pinnedpubkey" in tok["install_command"]
    assert tok["tags"] == {"run": run} and tok["max_uses"] == 2 and tok["expires_at"] is not None

    d = device(http, "tok", tok["token"])
    listed = {t["id"]: t for t in cli_json(env, "tokens", "list")}
    assert listed[tok["id"]]["uses"] == 1 and listed[tok["id"]]["token"] is None  # the secret is never listed
    revoked = cli_json(env, "tokens", "revoke", tok["id"])
    assert revoked["revoked_at"] is not None
    assert tok["id"] not in {t["id"] for t in cli_json(env, "tokens", "list")}
    assert tok["id"] in {t["id"] for t in cli_json(env, "tokens", "list", "--all")}
    assert TestDevice(http).enroll(tok["token"]).status_code == 401
    assert cli_json(env, "devices", "show", d.device_id)["status"] == "active"  # enrolled devices stay

    assert new_token(env, "--expires", "never")["expires_at"] is None
    assert "duration" in failing(env, "tokens", "create", "--expires", "soon")
    assert "tokens list --all" in failing(env, "tokens", "revoke", "000000000000")


def test_tokens_create_prints_copyable_install_command(env: dict[str, str]) -> None:
    out = cli(env, "tokens", "create", "--description", "human").stdout.splitlines()
    # Each on one line of its own, however long, so a terminal copy gets the whole string.
    token = next(line for line in out if line.startswith("fdj1."))
    assert any(line.startswith("curl ") and line.endswith(f"--token {token}") for line in out), out


def test_list_filters_claim_and_reject(env: dict[str, str], http: httpx.Client) -> None:
    run = secrets.token_hex(3)
    prefix = f"lst{run}"
    tok = new_token(env, "--tag", f"run={run}")
    active = device(http, prefix, tok["token"], name=f"cam-{run}")
    pend_a, pend_b = device(http, prefix), device(http, prefix)
    assert active.authenticate().status_code == 200
    assert active.call("CheckIn", {}).status_code == 200

    devices = by_id(cli_json(env, "devices", "list", "--search", prefix))
    assert isinstance(devices, dict) and set(devices) == {active.device_id, pend_a.device_id, pend_b.device_id}
    assert devices[active.device_id]["status"] == "active" and devices[active.device_id]["online"] is True
    assert devices[pend_a.device_id]["status"] == "pending" and devices[pend_a.device_id]["online"] is False

    pending = cli_json(env, "devices", "list", "--search", prefix, "--status", "pending")
    assert {d["id"] for d in pending} == {pend_a.device_id, pend_b.device_id}
    assert all(d["claim_code"] for d in pending)
    assert [d["id"] for d in cli_json(env, "devices", "list", "--tag", f"run={run}")] == [active.device_id]
    assert [d["id"] for d in cli_json(env, "devices", "list", "--search", prefix, "--limit", "1")] == [
        active.device_id]
    assert "status must be" in failing(env, "devices", "list", "--status", "sleeping")
    assert f"cam-{run}" in cli(env, "devices", "list", "--search", prefix).stdout  # the human table

    code = next(d["claim_code"] for d in pending if d["id"] == pend_a.device_id)
    claimed = cli_json(env, "devices", "claim", code.lower(), "--name", f"porch-{run}", "--tag", "site=porch")
    assert claimed["id"] == pend_a.device_id and claimed["status"] == "active"
    assert claimed["name"] == f"porch-{run}" and claimed["tags"] == {"site": "porch"}
    assert "devices list --status pending" in failing(env, "devices", "claim", code)  # no longer pending

    cli(env, "devices", "reject", pend_b.device_id)
    assert set(by_id(cli_json(env, "devices", "list", "--search", prefix))) == {active.device_id,
                                                                                pend_a.device_id}
    assert "not pending" in failing(env, "devices", "reject", active.device_id)


def test_tag_untag_rename_show(env: dict[str, str], http: httpx.Client) -> None:
    tok = new_token(env)
    d = device(http, "tag", tok["token"])
    assert cli_json(env, "devices", "tag", d.device_id, "site=home", "role=cam")["tags"] == {
        "site": "home", "role": "cam"}
    assert cli_json(env, "devices", "untag", d.device_id, "site")["tags"] == {"role": "cam"}
    name = f"kitchen-{secrets.token_hex(3)}"
    assert cli_json(env, "devices", "rename", d.device_id, name)["name"] == name
    shown = cli_json(env, "devices", "show", name)  # found by its new name
    assert shown["id"] == d.device_id and shown["hardware_id"] == d.hardware_id and shown["tags"] == {"role": "cam"}
    assert "key=value" in failing(env, "devices", "tag", d.device_id, "site")
    assert "fleetd devices list" in failing(env, "devices", "show", "dev_nosuchdevice")


def test_revoke_refuses_the_device_token_at_once(env: dict[str, str], http: httpx.Client) -> None:
    d = device(http, "rev", new_token(env)["token"])
    assert d.authenticate().status_code == 200
    assert d.call("CheckIn", {}).status_code == 200
    [reboot] = cli_json(env, "devices", "reboot", d.device_id)["action_ids"]
    assert cli_json(env, "devices", "revoke", d.device_id)["status"] == "revoked"
    assert d.call("CheckIn", {}).status_code == 401
    [action] = cli_json(env, "devices", "actions", d.device_id)
    assert action["id"] == reboot and action["state"] == "cancelled"
    assert "active" in failing(env, "devices", "reboot", d.device_id)  # no actions for a revoked device


def test_rekey_prints_a_token_for_that_device_alone(env: dict[str, str], http: httpx.Client) -> None:
    d = device(http, "rekey", new_token(env)["token"])
    assert d.authenticate().status_code == 200 and d.call("CheckIn", {}).status_code == 200
    out = cli(env, "devices", "rekey", d.hardware_id, "--expires", "2h").stdout
    # Still online: said plainly, but the admin's explicit request goes ahead.
    assert "does not need re-keying" in out and "checked in" in out
    token = next(line for line in out.splitlines() if line.startswith("fdj1."))
    assert any("fleet-agent enroll" in line and token in line for line in out.splitlines()), out
    listed = {t["id"]: t for t in cli_json(env, "tokens", "list")}
    tok = listed[token.split(".")[2]]
    assert tok["device_id"] == d.device_id and tok["max_uses"] == 1
    assert f"re-key {d.device_id}" in cli(env, "tokens", "list").stdout

    lost = TestDevice(http, hardware_id=d.hardware_id)
    assert lost.enroll(token).json()["device_id"] == d.device_id
    assert lost.authenticate().status_code == 200 and d.call("CheckIn", {}).status_code == 401
    assert "at most 30d" in failing(env, "devices", "rekey", d.device_id, "--expires", "never")


def test_delete_asks_unless_yes(env: dict[str, str], http: httpx.Client) -> None:
    d = device(http, "del", new_token(env)["token"])
    failing(env, "devices", "delete", d.device_id, input="n\n")
    assert cli_json(env, "devices", "show", d.device_id)["id"] == d.device_id
    cli(env, "devices", "delete", d.device_id, "--yes")
    assert "fleetd devices list" in failing(env, "devices", "show", d.device_id)
    again = TestDevice(http, hardware_id=d.hardware_id)  # a deleted device may enroll again
    assert again.enroll().json()["status"] == "pending"


def test_actions_restart_reboot_rollback_cancel_and_watch(env: dict[str, str], http: httpx.Client) -> None:
    d = device(http, "act", new_token(env)["token"])
    [restart] = cli_json(env, "devices", "restart", d.device_id, "--app", "web")["action_ids"]
    [reboot] = cli_json(env, "devices", "reboot", d.device_id)["action_ids"]
    [rollback] = cli_json(env, "devices", "rollback", d.device_id, "--app", "db")["action_ids"]
    actions = {a["id"]: a for a in cli_json(env, "devices", "actions", d.device_id)}
    assert set(actions) == {restart, reboot, rollback}
    assert all(a["state"] == "queued" for a in actions.values())
    assert (actions[restart]["kind"], actions[restart]["component"]) == ("restart", "web")
    assert actions[rollback]["kind"] == "rollback" and actions[rollback]["params"]["no_previous_version"] is True
    assert "say which devices" in failing(env, "devices", "reboot")
    assert "open action" in failing(env, "devices", "rollback", d.device_id, "--app", "db")

    assert cli_json(env, "devices", "cancel", reboot)["state"] == "cancelled"
    assert cli_json(env, "devices", "cancel", rollback)["state"] == "cancelled"
    assert "already ended" in failing(env, "devices", "cancel", reboot)
    assert "fleetd devices actions" in failing(env, "devices", "cancel", "act_nosuchaction")

    # --watch waits until every action has ended: the device finishes its restart meanwhile.
    watcher = subprocess.Popen([*fleetd_cmd(), "devices", "actions", d.device_id, "--watch", "--json",
                                "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **env})
    try:
        assert d.authenticate().status_code == 200
        r = d.call("ReportStatus", {"action_id": restart, "state": "succeeded", "progress": 100})
        assert r.status_code == 200, r.text
        out, err = watcher.communicate(timeout=20)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, err
    assert {a["id"]: a["state"] for a in json.loads(out)}[restart] == "succeeded"
    human = cli(env, "devices", "actions", d.device_id, "--watch").stdout  # all ended: draws once and returns
    assert restart in human and "all actions have ended" in human


def _artifact(server: ServerProcess, name: str, version: str) -> str:
    """Record an artifact straight in the server's store, as an offline command would."""
    sk = serialization.load_pem_private_key((server.data_dir / "signing.key").read_bytes(), None)
    conn = open_offline(server.data_dir)
    try:
        info = blobs.put_sync(server.data_dir / "blobs", conn, [f"{name} {version}".encode()])
        with transaction(conn):
            a = artifacts.create(conn, SYSTEM, sk, name=name, version=version, kind="app",  # type: ignore[arg-type]
                                 device_types=["sim"], sha256=info.sha256, size=info.size, file_name=name,
                                 install_spec=None)
    finally:
        conn.close()
    return f"{a.name}@{a.version}"


def test_deploy_to_devices_and_to_tags(env: dict[str, str], server: ServerProcess, http: httpx.Client) -> None:
    run = secrets.token_hex(3)
    tok = new_token(env, "--tag", f"run={run}")
    d1, d2 = device(http, "dep", tok["token"]), device(http, "dep", tok["token"])
    first, second = _artifact(server, f"app{run}", "1.2.0"), _artifact(server, f"svc{run}", "2.0.0")

    ids = cli_json(env, "devices", "deploy", d1.device_id, d2.device_id, first)["action_ids"]
    assert len(ids) == 2
    offered = cli_json(env, "devices", "deploy", "--tag", f"run={run}", second, "--consent")["action_ids"]
    assert len(offered) == 2
    for d in (d1, d2):
        states = {(a["kind"], a["artifact"], a["state"]) for a in cli_json(env, "devices", "actions", d.device_id)}
        assert states == {("install", first, "queued"), ("install", second, "offered")}
    assert "fleetd artifacts list" in failing(env, "devices", "deploy", d1.device_id, f"app{run}@9.9.9")
    assert "say which devices" in failing(env, "devices", "deploy", first)
    assert "the last argument is the artifact" in failing(env, "devices", "deploy", d1.device_id)
