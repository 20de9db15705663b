"""Security headers on the web UI and every response; the OpenAPI document declares each plain route's auth."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from fleetd.app import create_app
from fleetd.core.config import Settings
from fleetd.core.resources import data_dir
from fleetd.fleet import Fleet
from fleetd.http.security_headers import HSTS

UI_PATHS = ["/", "/index.html", "/app.js", "/style.css", "/pages/login.js"]


def directives(policy: str) -> set[str]:
    return {" ".join(d.split()) for d in policy.split(";") if d.strip()}


@pytest.mark.parametrize("path", UI_PATHS)
def test_every_ui_response_carries_the_browser_rules(client: Any, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert "frame-ancestors 'none'" in directives(r.headers["Content-Security-Policy"])
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "Strict-Transport-Security" not in r.headers  # this server speaks plain HTTP


def test_the_header_policy_keeps_every_rule_of_the_pages_own(client: Any) -> None:
    page = (data_dir("web") / "index.html").read_text()
    m = re.search(r'http-equiv="Content-Security-Policy"\s+content="([^"]+)"', page)
    assert m
    assert directives(m.group(1)) <= directives(client.get("/").headers["Content-Security-Policy"])


@pytest.mark.parametrize("path", ["/healthz", "/fleetd.v1.NoSuchService/Call", "/v1/blobs/" + "0" * 64])
def test_api_and_error_responses_carry_nosniff(client: Any, path: str) -> None:
    r = client.get(path)
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" not in r.headers


def test_hsts_on_every_response_when_tls_is_on(tmp_path: Path) -> None:
    fleet = Fleet(Settings(data_dir=str(tmp_path / "data"), tls=True, mdns=False))
    try:
        with TestClient(app=create_app(fleet)) as client:
            for path in ["/", "/healthz", "/fleetd.v1.NoSuchService/Call"]:
                assert client.get(path).headers["Strict-Transport-Security"] == HSTS
    finally:
        fleet.close()


def test_openapi_declares_the_auth_of_metrics_and_events(client: Any) -> None:
    doc = client.get("/schema/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    for path in ("/metrics", "/v1/events"):
        op = doc["paths"][path]["get"]
        assert op["x-fleetd-auth"] == "viewer"
        assert op["security"] == [{"bearer": []}, {"session": []}]
        assert {name for req in op["security"] for name in req} <= set(schemes)
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert doc["paths"]["/fleetd.v1.UserService/Login"]["post"]["security"] == []
