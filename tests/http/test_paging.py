"""Lists that grow with the fleet answer in pages, and a device cannot grow the metric names without bound
(issue 13, item 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleetd.core.config import Settings
from tests.conftest import rpc
from tests.devices.test_devices import active_device, make_artifact


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), tls=False, mdns=False, host="127.0.0.1", port=8420,
                    max_metric_names_per_device=3, max_metric_names=5)


def push(dev: Any, *names: str) -> Any:
    return dev.call("PushTelemetry", {"points": [{"name": n, "value": 1.0} for n in names]})


def test_metric_names_are_limited_per_device_and_fleet_wide(client: Any, admin_key: str) -> None:
    a, b = active_device(client, admin_key), active_device(client, admin_key)
    assert push(a, "cpu", "mem", "disk").status_code == 200
    r = push(a, "cpu", "temp")
    assert r.status_code == 429 and "Retry-After" not in r.headers
    assert r.json()["code"] == "resource_exhausted"
    assert "at most 3 per device (setting max_metric_names_per_device)" in r.json()["message"]
    assert push(a, "cpu", "disk").status_code == 200  # names it has keep working
    assert push(b, "net", "fan").status_code == 200  # five names in the fleet now
    r = push(b, "volts")
    assert r.status_code == 429 and "at most 5 (setting max_metric_names)" in r.json()["message"]


def test_list_metrics_pages(client: Any, fleet: Any, admin_key: str) -> None:
    dev = active_device(client, admin_key)
    series = [(dev.device_id, f"m{i:02}") for i in range(25)]
    fleet.store.write_sync(lambda c: c.executemany("INSERT INTO telemetry_series (device_id, name) VALUES (?, ?)",
                                                   series))
    r = rpc(client, "TelemetryService", "ListMetrics", {"device": dev.device_id, "limit": 10, "offset": 20},
            key=admin_key)
    assert r.json() == {"metrics": ["m20", "m21", "m22", "m23", "m24"], "total": 25}
    r = rpc(client, "TelemetryService", "ListMetrics", {"device": dev.device_id}, key=admin_key)
    assert len(r.json()["metrics"]) == 25
    for bad in ({"limit": 10_001}, {"limit": -1}, {"offset": -1}):
        r = rpc(client, "TelemetryService", "ListMetrics", {"device": dev.device_id, **bad}, key=admin_key)
        assert r.status_code == 400, bad


def test_list_artifacts_pages(client: Any, fleet: Any, admin_key: str) -> None:
    for v in range(5):
        make_artifact(fleet, version=f"1.{v}.0")
    r = rpc(client, "ArtifactService", "ListArtifacts", {"limit": 2, "offset": 3}, key=admin_key)
    assert [a["version"] for a in r.json()["artifacts"]] == ["1.3.0", "1.4.0"] and r.json()["total"] == 5
    assert rpc(client, "ArtifactService", "ListArtifacts", {"limit": 10_001}, key=admin_key).status_code == 400


def test_artifact_pages_follow_version_precedence_and_filters(client: Any, fleet: Any, admin_key: str) -> None:
    for v in ("1.10.0", "2.0.0", "1.9.0", "1.10.0-rc.1"):  # text order would put 1.10 before 1.9
        make_artifact(fleet, version=v)
    make_artifact(fleet, name="other", device_types=["esp"])
    r = rpc(client, "ArtifactService", "ListArtifacts", {"device_type": "sim", "limit": 2, "offset": 1},
            key=admin_key).json()
    assert [a["version"] for a in r["artifacts"]] == ["1.10.0-rc.1", "1.10.0"] and r["total"] == 4
    r = rpc(client, "ArtifactService", "ListArtifacts", {"device_type": "esp"}, key=admin_key).json()
    assert [a["name"] for a in r["artifacts"]] == ["other"] and r["total"] == 1


@pytest.mark.parametrize(("service", "method"), [("AlertService", "ListIncidents"),
                                                 ("AlertService", "ListDeliveries"),
                                                 ("RolloutService", "ListRollouts")])
def test_newest_first_lists_cap_their_limit(client: Any, admin_key: str, service: str, method: str) -> None:
    assert rpc(client, service, method, {"limit": 1000}, key=admin_key).status_code == 200
    r = rpc(client, service, method, {"limit": 1001}, key=admin_key)
    assert r.status_code == 400 and "limit must be 1..1000" in r.json()["message"]


def test_list_tokens_pages(client: Any, admin_key: str) -> None:
    for _ in range(4):
        assert rpc(client, "EnrollmentService", "CreateToken", {"uses": 1}, key=admin_key).status_code == 200
    every = rpc(client, "EnrollmentService", "ListTokens", {}, key=admin_key).json()
    assert every["total"] == 4 and len(every["tokens"]) == 4
    page = rpc(client, "EnrollmentService", "ListTokens", {"limit": 3, "offset": 2}, key=admin_key).json()
    assert page["tokens"] == every["tokens"][2:] and page["total"] == 4
