"""DDI fixtures: one real `fleetd serve` per test module, and the admin side (CLI and RPC) around it.

The device side is tests/ddi/client.py, which never imports fleetd.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.e2e_helpers import wait_for
from tests.e2e.server import ServerProcess, run_cli

from .client import DdiClient

# Rollout passes every half second, so that gates and rollbacks happen within a test's patience.
FAST = {"FLEETD_ROLLOUT_PASS_SECONDS": "0.5"}
TERMINAL = ("succeeded", "failed", "rolled_back", "cancelled", "rejected")


class Fleetd:
    """The admin's side of a running server: `fleetd` commands and Connect calls with an admin key."""

    def __init__(self, server: ServerProcess, key: str, files: Path) -> None:
        self.server, self.key, self.files = server, key, files

    # --- plumbing ---------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--server", self.server.url, "--api-key", self.key, "--ca", self.server.ca,
                       check=check)

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def call(self, service: str, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = self.server.rpc(service, method, body or {}, api_key=self.key)
        assert r.status_code == 200, f"{service}.{method}: {r.status_code} {r.text}"
        return dict(r.json())

    def ddi(self, controller_id: str, token: str | None, *, scheme: str = "TargetToken",
            tenant: str = "DEFAULT") -> DdiClient:
        return DdiClient(self.server.url, controller_id, token, scheme=scheme, tenant=tenant, ca=self.server.ca)

    # --- DDI credentials (the commands docs/ddi.md tells admins to run, or their Connect calls) --------
    # Tests about the CLI pass cli=True; the others take the Connect call, which spares a process start.

    def gateway_token(self, device_type: str, tags: dict[str, str] | None = None, *,
                      cli: bool = False) -> dict[str, Any]:
        tags = tags or {}
        if not cli:
            return self.call("DdiService", "CreateGatewayToken", {"device_type": device_type, "tags": tags})
        args = ["tokens", "create", "--ddi-gateway", "--device-type", device_type]
        for k, v in tags.items():
            args += ["--tag", f"{k}={v}"]
        return dict(self.cli_json(*args))

    def target_token(self, controller_id: str, device_type: str | None = None, tags: dict[str, str] | None = None,
                     *, cli: bool = False) -> dict[str, Any]:
        tags = tags or {}
        if not cli:
            return self.call("DdiService", "CreateTargetToken",
                             {"device": controller_id, "device_type": device_type or "", "tags": tags})
        args = ["devices", "ddi-token", controller_id]
        if device_type:
            args += ["--device-type", device_type]
        for k, v in tags.items():
            args += ["--tag", f"{k}={v}"]
        return dict(self.cli_json(*args))

    # --- artifacts, devices, actions ----------------------------------------------------

    def push(self, name: str, version: str, data: bytes, device_type: str, kind: str = "app",
             file_name: str | None = None) -> dict[str, Any]:
        f = self.files / (file_name or f"{name}-{version}.bin")
        f.write_bytes(data)
        return dict(self.cli_json("artifacts", "push", str(f), "--name", name, "--version", version,
                                  "--device-type", device_type, "--kind", kind))

    def deploy(self, device: str, artifact: str, *, cli: bool = False) -> str:
        if cli:
            ids = self.cli_json("devices", "deploy", device, artifact)["action_ids"]
        else:
            body = {"device_ids": [device], "artifact": artifact}
            ids = self.call("DeviceAdminService", "Deploy", body)["action_ids"]
        assert len(ids) == 1, ids
        return str(ids[0])

    def find_device(self, hardware_id: str, *, cli: bool = False) -> dict[str, Any] | None:
        if cli:
            listed = self.cli_json("devices", "list", "--search", hardware_id)
        else:
            listed = self.call("DeviceAdminService", "ListDevices", {"search": hardware_id})["devices"]
        return next((d for d in listed if d["hardware_id"] == hardware_id), None)

    def device(self, device_id: str) -> dict[str, Any]:
        return self.call("DeviceAdminService", "GetDevice", {"id": device_id})

    def component(self, device_id: str, name: str) -> str | None:
        return next((c["version"] for c in self.device(device_id)["components"] if c["name"] == name), None)

    def actions(self, device_id: str) -> list[dict[str, Any]]:
        return list(self.call("DeviceAdminService", "ListActions", {"device_id": device_id})["actions"])

    def action(self, device_id: str, action_id: str) -> dict[str, Any]:
        return next(a for a in self.actions(device_id) if a["id"] == action_id)

    def wait_action(self, device_id: str, action_id: str, state: str, timeout: float = 20) -> dict[str, Any]:
        return wait_for(f"action {action_id} to be {state}",
                        lambda: (a := self.action(device_id, action_id))["state"] == state and a, timeout)


def start_server(tmp: Path, *extra: str, env: dict[str, str] | None = None) -> ServerProcess:
    return ServerProcess(tmp / "data", extra_args=list(extra), env={**FAST, **(env or {})}).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = start_server(tmp_path_factory.mktemp("ddi"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def fleetd(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Fleetd:
    return Fleetd(server, server.create_key("admin", "ddi-e2e"), tmp_path_factory.mktemp("ddi-files"))
