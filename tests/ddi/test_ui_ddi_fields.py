"""What the web UI needs to show hawkBit DDI: GetDevice's controller id and the tenant in the OpenAPI document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleetd.core.config import Settings
from tests.conftest import rpc
from tests.support.devices_helper import TestDevice


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), tls=False, mdns=False, host="127.0.0.1", port=8420,
                    ddi_tenant="Plant3", public_url="https://fleet.example.net:8420/")


def get_device(client: Any, key: str, ref: str) -> dict[str, Any]:
    r = rpc(client, "DeviceAdminService", "GetDevice", {"id": ref}, key=key)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_get_device_names_the_controller_id_of_a_ddi_device_only(client: Any, admin_key: str,
                                                                 viewer_key: str) -> None:
    r = rpc(client, "DdiService", "CreateTargetToken", {"device": "board-0042"}, key=admin_key)
    assert r.status_code == 200, r.text
    ddi_id = r.json()["device_id"]
    assert get_device(client, viewer_key, ddi_id)["ddi_controller_id"] == "board-0042"
    assert get_device(client, viewer_key, "board-0042")["ddi_controller_id"] == "board-0042"

    agent = TestDevice(client, hardware_id="agent-1")
    assert agent.enroll().status_code == 200
    assert get_device(client, viewer_key, "agent-1")["ddi_controller_id"] is None


def test_the_openapi_document_names_the_ddi_tenant_and_public_url(client: Any) -> None:
    info = client.get("/schema/openapi.json").json()["info"]
    assert info["x-fleetd-ddi"] == {"tenant": "Plant3", "public_url": "https://fleet.example.net:8420"}
