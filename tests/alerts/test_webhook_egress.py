"""Webhook destinations: loopback, link-local, metadata and (by default) private addresses are refused when a
webhook is saved and again at each delivery, after DNS resolution, and the delivery connects to the address
that was checked. The receiver is real, on 127.0.0.1; names are resolved through a patched
``socket.getaddrinfo`` (the boundary the server's resolver uses) to play DNS rebinding."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetd.accounts.audit import SYSTEM
from fleetd.alerts import webhooks
from fleetd.alerts.egress import Policy, pinned_transport
from fleetd.alerts.webhooks import Deliverer
from fleetd.core.config import Settings, load_settings
from fleetd.core.errors import InvalidArgument
from tests.conftest import rpc
from tests.support.webhook_receiver import Receiver

DEFAULT = Policy()
LAN = Policy.of(True, [])
LOOPBACK = Policy.of(False, ["127.0.0.1/32"])


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), tls=False, mdns=False, host="127.0.0.1", port=8420,
                    **getattr(request, "param", {}))


@pytest.mark.parametrize(("address", "policy", "refused"), [
    ("8.8.8.8", DEFAULT, None),
    ("2001:4860:4860::8888", DEFAULT, None),
    ("127.0.0.1", DEFAULT, "loopback address; list it in webhook_allowed_networks"),
    ("127.8.9.10", DEFAULT, "loopback"),
    ("::1", DEFAULT, "loopback"),
    ("::ffff:127.0.0.1", DEFAULT, "loopback"),
    ("64:ff9b::a9fe:a9fe", DEFAULT, "cloud metadata address"),  # NAT64 of 169.254.169.254
    ("64:ff9b::808:808", DEFAULT, None),
    ("169.254.169.254", DEFAULT, "cloud metadata address"),
    ("169.254.10.1", DEFAULT, "link-local"),
    ("fe80::1", DEFAULT, "link-local"),
    ("0.0.0.0", DEFAULT, "unspecified"),
    ("::", DEFAULT, "unspecified"),
    ("224.0.0.1", DEFAULT, "multicast"),
    ("ff02::1", DEFAULT, "multicast"),
    ("192.0.2.1", DEFAULT, "reserved"),
    ("10.1.2.3", DEFAULT, "private address; set webhook_allow_private = true"),
    ("172.16.0.1", DEFAULT, "private"),
    ("192.168.1.10", DEFAULT, "private"),
    ("100.64.0.1", DEFAULT, "private"),
    ("fd12::1", DEFAULT, "private"),
    ("192.168.1.10", LAN, None),
    ("fd12::1", LAN, None),
    ("100.64.0.1", LAN, None),
    ("127.0.0.1", LAN, "loopback"),
    ("fd00:ec2::254", LAN, "cloud metadata address"),
    ("100.100.100.200", LAN, "cloud metadata address"),
    ("127.0.0.1", LOOPBACK, None),
    ("127.0.0.2", LOOPBACK, "loopback"),
    ("169.254.169.254", Policy.of(True, ["169.254.0.0/16"]), "cloud metadata address"),
    ("169.254.10.1", Policy.of(False, ["169.254.0.0/16"]), None),
])
def test_which_addresses_a_webhook_may_reach(address: str, policy: Policy, refused: str | None) -> None:
    why = policy.refusal(ipaddress.ip_address(address))
    assert (why is None) if refused is None else (why is not None and refused in why), why


def test_allowed_networks_are_checked_when_the_server_starts(tmp_path: Path) -> None:
    env = {"FLEETD_DATA_DIR": str(tmp_path), "FLEETD_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32, 10.0.0.0/8",
           "FLEETD_WEBHOOK_ALLOW_PRIVATE": "true"}
    s = load_settings(environ=env)
    assert s.webhook_allow_private and s.webhook_allowed_networks == ["127.0.0.1/32", "10.0.0.0/8"]
    with pytest.raises(InvalidArgument, match="'localhost' is not an IP network"):
        load_settings(environ={**env, "FLEETD_WEBHOOK_ALLOWED_NETWORKS": "localhost"})


@pytest.mark.parametrize(("url", "refused"), [
    ("http://127.0.0.1:8080/hook", "127.0.0.1 is a loopback address"),
    ("http://[::1]/hook", "::1 is a loopback address"),
    ("http://localhost:8123/api/webhook/x", "localhost resolves to"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata address"),
    ("https://192.168.1.10/hook", "webhook_allow_private"),
    ("http://0.0.0.0/", "unspecified"),
])
def test_a_webhook_to_a_refused_address_cannot_be_saved(client, admin_key, url: str, refused: str) -> None:  # type: ignore[no-untyped-def]
    r = rpc(client, "AlertService", "CreateWebhook", {"url": url}, key=admin_key)
    assert r.status_code == 400 and refused in r.json()["message"], r.text
    assert rpc(client, "AlertService", "ListWebhooks", {}, key=admin_key).json() == {"webhooks": []}


@pytest.mark.parametrize("settings", [{"webhook_allow_private": True}], indirect=True)
def test_an_admin_may_allow_lan_receivers(client, admin_key) -> None:  # type: ignore[no-untyped-def]
    for url in ("http://192.168.1.10:8123/api/webhook/fleet", "http://[fd12::5]/ntfy"):
        r = rpc(client, "AlertService", "CreateWebhook", {"url": url}, key=admin_key)
        assert r.status_code == 200, r.text
    r = rpc(client, "AlertService", "CreateWebhook", {"url": "http://169.254.169.254/"}, key=admin_key)
    assert r.status_code == 400 and "metadata" in r.json()["message"]


class Resolver:
    """``socket.getaddrinfo`` that answers the names in ``answers`` (one list of addresses per call, the last
    repeated) and passes everything else to the real resolver."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []
        real = socket.getaddrinfo

        def fake(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
            name = host.decode() if isinstance(host, bytes) else host
            if name not in self.answers:
                return real(host, port, *args, **kw)
            self.calls.append(name)
            queue = self.answers[name]
            addresses = queue.pop(0) if len(queue) > 1 else queue[0]
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                     (a, int(port or 0))) for a in addresses]

        monkeypatch.setattr(socket, "getaddrinfo", fake)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as rx:
        yield rx


def deliver_once(fleet: Any, url: str, policy: Policy) -> webhooks.Delivery:
    hook = fleet.store.write_sync(lambda c: webhooks.create(c, SYSTEM, name="h", url=url))
    fleet.store.write_sync(lambda c: webhooks.enqueue(c, "alert.fired", {"incident": {"id": "i1"}}, time.time()))
    d = Deliverer(fleet.store, policy=policy, max_attempts=1)

    async def go() -> None:
        await d.run_once()
        await d.stop()

    asyncio.run(go())
    [delivery] = fleet.store.read_sync(lambda c: webhooks.list_deliveries(c, webhook_id=hook.id))
    fleet.store.write_sync(lambda c: webhooks.delete(c, SYSTEM, hook.id))
    return delivery


def test_a_delivery_connects_to_the_address_it_checked(fleet, receiver: Receiver,  # type: ignore[no-untyped-def]
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    port = receiver.server.server_address[1]
    # The second answer would be TEST-NET (nothing listens): the delivery must not ask again.
    dns = Resolver(monkeypatch, {"hooks.rebind.test": [["127.0.0.1"], ["192.0.2.1"]]})
    got = deliver_once(fleet, f"http://hooks.rebind.test:{port}/hook", LOOPBACK)
    assert (got.state, got.last_status, got.last_error) == ("delivered", 200, "")
    assert dns.calls == ["hooks.rebind.test"]
    assert receiver.received[0].headers["host"] == f"hooks.rebind.test:{port}"


@pytest.mark.parametrize(("answer", "policy", "refused"), [
    (["127.0.0.1"], DEFAULT, "hooks.rebind.test resolves to 127.0.0.1: 127.0.0.1 is a loopback address"),
    (["93.184.216.34", "127.0.0.1"], DEFAULT, "loopback"),  # every address is checked, not just the first
    (["169.254.169.254"], Policy.of(True, ["0.0.0.0/0"]), "cloud metadata address"),
    (["10.0.0.7"], DEFAULT, "webhook_allow_private"),
])
def test_a_name_that_resolves_to_a_refused_address_is_not_delivered(fleet, receiver: Receiver,  # type: ignore[no-untyped-def]
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    answer: list[str], policy: Policy,
                                                                    refused: str) -> None:
    # Saved while the name pointed elsewhere (or while the admin allowed it); delivered after it changed.
    Resolver(monkeypatch, {"hooks.rebind.test": [answer]})
    got = deliver_once(fleet, f"http://hooks.rebind.test:{receiver.server.server_address[1]}/hook", policy)
    assert (got.state, got.last_status) == ("failed", None) and refused in got.last_error, got.last_error
    assert receiver.received == []


def test_a_loopback_webhook_saved_while_allowed_is_refused_once_the_setting_is_off(fleet,  # type: ignore[no-untyped-def]
                                                                                   receiver: Receiver) -> None:
    assert deliver_once(fleet, receiver.url, LOOPBACK).state == "delivered"
    got = deliver_once(fleet, receiver.url, DEFAULT)
    assert got.state == "failed" and "127.0.0.1 is a loopback address" in got.last_error
    assert len(receiver.received) == 1


@pytest.mark.parametrize(("status", "error"), [
    (500, "HTTP 500 Internal Server Error"),
    (302, "HTTP 302 Found (redirects are not followed)"),
])
def test_a_failing_reply_is_logged_by_status_never_by_body(fleet, status: int, error: str) -> None:  # type: ignore[no-untyped-def]
    with Receiver(statuses=[status], reply=b"root:x:0:0 internal secret") as rx:
        got = deliver_once(fleet, rx.url, LOOPBACK)
        assert len(rx.received) == 1  # the redirect to the metadata address was not followed
    assert (got.state, got.last_status, got.last_error) == ("failed", status, error)


def test_https_keeps_the_name_for_the_certificate_while_connecting_to_the_checked_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    Resolver(monkeypatch, {"hooks.example.test": [["203.0.113.9"]]})
    seen: list[httpx.Request] = []
    transport = pinned_transport(Policy.of(False, ["203.0.113.0/24"]), 5.0)
    transport.inner = httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(204))  # type: ignore[attr-defined]

    async def go() -> int:
        async with httpx.AsyncClient(transport=transport) as client:
            return (await client.post("https://hooks.example.test:8443/x", content=b"{}")).status_code

    assert asyncio.run(go()) == 204
    [r] = seen
    assert (r.url.host, r.url.port, r.headers["host"], r.extensions["sni_hostname"]) == (
        "203.0.113.9", 8443, "hooks.example.test:8443", "hooks.example.test")
