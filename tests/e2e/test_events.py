"""GET /v1/events: the SSE format, heartbeats and presence in-process; a real server streaming to a client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import threading
import time
from typing import Any

import httpx

from fleetd.app import create_app
from fleetd.devices.inventory import Component
from fleetd.devices.presence import Presence
from fleetd.devices.registry import DeviceRuntime
from fleetd.http import events as http_events
from tests.support.devices_helper import TestDevice

from .server import ServerProcess

# --- in-process ----------------------------------------------------------------------------


def test_stream_format_heartbeat_filter_and_unsubscribe(fleet) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        gen = http_events.stream(fleet, ("alert.", "device.online"), heartbeat=0.05)
        assert await gen.__anext__() == b"retry: 3000\n: connected\n\n"
        assert fleet.events.subscriber_count == 1  # subscribed before it says so
        assert await gen.__anext__() == b": heartbeat\n\n"
        fleet.events.publish("action.state", {"id": "a1"})  # filtered out
        fleet.events.publish("alert.fired", {"id": "inc1", "message": "hot\nline"})
        chunk = (await gen.__anext__()).decode()
        lines = chunk.split("\n")
        assert lines[1:3] == ["event: alert.fired", lines[2]] and lines[0].startswith("id: ")
        assert chunk.endswith("\n\n") and chunk.count("\n") == 4  # newlines in data are escaped in the JSON
        data = json.loads(lines[2].removeprefix("data: "))
        assert data["type"] == "alert.fired" and data["data"] == {"id": "inc1", "message": "hot\nline"}
        assert str(data["id"]) == lines[0].removeprefix("id: ")
        await gen.aclose()
        assert fleet.events.subscriber_count == 0
        # A closing server ends every stream (no heartbeat keeps it open).
        closing = asyncio.Event()
        gen = http_events.stream(fleet, (), heartbeat=0.05, closing=closing)
        await gen.__anext__()
        closing.set()
        assert [chunk async for chunk in gen] == []
        assert fleet.events.subscriber_count == 0

    asyncio.run(scenario())


def test_close_streams_ends_open_streams_from_any_thread(fleet) -> None:  # type: ignore[no-untyped-def]
    app = create_app(fleet)

    async def scenario() -> None:
        gen = http_events.stream(fleet, (), closing=http_events._closing(app))
        await gen.__anext__()
        threading.Thread(target=http_events.close_streams, args=(app,)).start()  # as a signal handler would
        assert [chunk async for chunk in gen] == []

    asyncio.run(scenario())


def test_presence_publishes_transitions_only(fleet) -> None:  # type: ignore[no-untyped-def]
    hub = fleet.hub
    hub.runtime["dev_a"] = DeviceRuntime("active", 60, "sim")
    hub.runtime["dev_b"] = DeviceRuntime("active", 60, "sim")
    hub.note_checkin("dev_a", None, None, [Component(name="x", version="1")])
    clock = [time.time()]
    p = Presence(hub, fleet.events, clock=lambda: clock[0])
    seen: list[tuple[str, str]] = []
    fleet.events.publish = lambda t, d: seen.append((t, d["device_id"]))  # type: ignore[method-assign]

    async def scenario() -> None:
        assert await p.sweep() == ([], [])  # the first sweep only learns: a is online already
        hub.note_checkin("dev_b", None, None, [])
        assert await p.sweep() == (["dev_b"], [])
        assert await p.sweep() == ([], [])
        clock[0] += 2 * 60 + 31  # past two intervals and the slack
        hub.note_checkin("dev_b", None, None, [])
        clock[0] = time.time() + 1
        hub.runtime["dev_b"] = DeviceRuntime("revoked", 60, "sim")
        assert await p.sweep() == ([], ["dev_b"])

    asyncio.run(scenario())
    assert seen == [("device.online", "dev_b"), ("device.offline", "dev_b")]


# --- a real server ------------------------------------------------------------------------------

class SSEReader:
    """Reads /v1/events in a thread and keeps every message as {"id", "event", "data"}."""

    def __init__(self, server: ServerProcess, key: str, query: str = "") -> None:
        self.messages: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self.status = 0
        self.headers: dict[str, str] = {}
        self._client = server.client(key, timeout=httpx.Timeout(5, read=60))
        self._thread = threading.Thread(target=self._run, args=(query,), daemon=True)
        self._lock = threading.RLock()
        self._response: httpx.Response | None = None

    def _run(self, query: str) -> None:
        try:
            with self._client.stream("GET", "/v1/events" + query) as r:
                self._response = r
                self.status, self.headers = r.status_code, dict(r.headers)
                msg: dict[str, Any] = {}
                for line in r.iter_lines():
                    if line.startswith(":"):
                        with self._lock:
                            self.comments.append(line)
                    elif line == "":
                        if "event" in msg:
                            with self._lock:
                                self.messages.append(msg)
                        msg = {}
                    else:
                        field, _, value = line.partition(": ")
                        msg[field] = json.loads(value) if field == "data" else value
        except (httpx.HTTPError, RuntimeError):
            pass  # closed by close()

    def start(self) -> SSEReader:
        self._thread.start()
        self.wait(lambda: any("connected" in c for c in self.comments), "the stream to open")
        return self

    def wait(self, cond: Any, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if cond():
                    return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; got {self.messages} {self.comments}")

    def of(self, event: str, **match: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.messages if m.get("event") == event
                    and all(m["data"]["data"].get(k) == v for k, v in match.items())]

    def close(self) -> None:
        if self._response is not None:
            # Closing the response from another thread does not wake the blocked read; shutting the socket does,
            # and the server sees the client go.
            sock = self._response.extensions["network_stream"].get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._client.close()
        self._thread.join(5)


def test_viewer_sees_device_online_and_action_progress(server: ServerProcess, admin_key: str) -> None:
    viewer = server.create_key("viewer", f"e2e-events-{secrets.token_hex(2)}")
    with server.client() as anon:
        assert anon.get("/v1/events").status_code == 401
    reader = SSEReader(server, viewer).start()
    try:
        assert reader.status == 200 and reader.headers["content-type"].startswith("text/event-stream")
        token = server.rpc("EnrollmentService", "CreateToken", {}, admin_key).json()["token"]
        with server.client() as http:
            d = TestDevice(http, hardware_id=f"sse-{secrets.token_hex(3)}")
            assert d.enroll(token).status_code == 200 and d.authenticate().status_code == 200
            # A device token is not a viewer.
            assert http.get("/v1/events", headers={"Authorization": f"Bearer {d.token}"}).status_code == 403
            assert d.call("CheckIn", {}).status_code == 200
            reader.wait(lambda: reader.of("device.online", device_id=d.device_id), "device.online")

            r = server.rpc("DeviceAdminService", "CreateAction", {"device_ids": [d.device_id], "kind": "reboot"},
                           admin_key)
            assert r.status_code == 200, r.text
            action_id = r.json()["action_ids"][0]
            assert [a["id"] for a in d.call("CheckIn", {}).json()["actions"]] == [action_id]
            for state, progress in (("installing", 50), ("succeeded", 100)):
                r = d.call("ReportStatus", {"action_id": action_id, "state": state, "progress": progress})
                assert r.status_code == 200, r.text
            reader.wait(lambda: len(reader.of("action.state", id=action_id)) == 2, "two action.state events")
        states = [(m["data"]["data"]["state"], m["data"]["data"]["progress"], m["data"]["data"]["device_id"])
                  for m in reader.of("action.state", id=action_id)]
        assert states == [("installing", 50, d.device_id), ("succeeded", 100, d.device_id)]
        ids = [int(m["id"]) for m in reader.messages]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert all(m["data"]["type"] == m["event"] and int(m["id"]) == m["data"]["id"] for m in reader.messages)
    finally:
        reader.close()


def test_every_enrolment_path_publishes_device_enrolled(server: ServerProcess, admin_key: str) -> None:
    """Connect Enroll (with a token, or pending and then claimed) publishes it as DDI registration does."""
    reader = SSEReader(server, admin_key, "?types=device.").start()
    try:
        token = server.rpc("EnrollmentService", "CreateToken", {}, admin_key).json()["token"]
        with server.client() as http:
            active = TestDevice(http, hardware_id=f"enr-{secrets.token_hex(3)}")
            assert active.enroll(token).status_code == 200
            pending = TestDevice(http, hardware_id=f"enr-{secrets.token_hex(3)}")
            r = pending.enroll()
            assert r.status_code == 200 and r.json()["status"] == "pending"
            assert active.enroll(token).status_code == 200  # the same key again: nothing new, no event
        r = server.rpc("EnrollmentService", "ClaimDevice", {"claim_code": r.json()["claim_code"]}, admin_key)
        assert r.status_code == 200, r.text
        reader.wait(lambda: reader.of("device.enrolled", id=pending.device_id, via="claim"), "the claim's event")
        got = [m["data"]["data"] for m in reader.messages if m["event"] == "device.enrolled"
               and m["data"]["data"]["id"] in (active.device_id, pending.device_id)]
        assert got == [
            {"id": active.device_id, "hardware_id": active.hardware_id, "via": "connect", "status": "active"},
            {"id": pending.device_id, "hardware_id": pending.hardware_id, "via": "connect", "status": "pending"},
            {"id": pending.device_id, "hardware_id": pending.hardware_id, "via": "claim", "status": "active"},
        ]
    finally:
        reader.close()


def test_open_event_stream_does_not_hold_up_shutdown(own_server: ServerProcess) -> None:
    own_server.start()
    key = own_server.create_key("viewer", "events-shutdown")
    opened = threading.Event()

    def listen() -> None:
        with contextlib.suppress(httpx.HTTPError), own_server.client(key, timeout=30) as c, \
                c.stream("GET", "/v1/events") as r:
            opened.set()
            for _ in r.iter_lines():
                pass

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert opened.wait(10)
    started = time.monotonic()
    own_server.stop()  # SIGTERM; uvicorn re-raises it after a graceful shutdown, so the status is -15
    # uvicorn's graceful timeout is 10 s; an open stream must not use it up.
    assert time.monotonic() - started < 5
    assert "Application shutdown complete" in own_server.log()
    t.join(5)
