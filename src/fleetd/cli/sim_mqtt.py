"""`fleetd simulate --mqtt`: simulated devices on the server's MQTT broker, as fleet-agents go there (docs/mqtt.md).

A device enrolls, authenticates and checks in over HTTPS as before; once a check-in answer names the broker
(``mqtt_url``) it asks for its client certificate (IssueCertificate with a CSR for its own Ed25519 key, renewed at
the server's ``renew_after``), connects to the broker with it (mutual TLS, client id = device id, a persistent
session), subscribes to its own ``actions``, ``checkin/answer`` and ``errors`` topics, and from then on checks in,
reports and sends telemetry (with a ``batch_id``) through the broker. Actions are carried out the moment they
arrive; downloads stay HTTPS. While the broker cannot be reached a device uses HTTPS, as the agent does.

Every device has its own connection (what the broker sees is one client per device), all on the worker's one
event loop: aiomqtt drives each paho client from the loop's readers and writers, no thread per device (only the
blocking connect and TLS handshake go through the loop's small thread pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import ssl
import tempfile
import time
from collections import deque
from typing import Any

import aiomqtt
import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..devices.actions import DeviceAction
from ..devices.device_api import CheckInResponse
from .devclient import DeviceError
from .sim_engine import Engine, Identity, SimDevice

ROOT = "fleetd/v1/devices"
DOWNLINK = ("actions", "checkin/answer", "errors")
SESSION_EXPIRY = 3600  # seconds the broker queues a device's actions while it is away (the agent: a day)
KEEPALIVE = 60
ANSWER_TIMEOUT = 30.0  # seconds a check-in over MQTT waits for its answer
RECONNECT_MIN, RECONNECT_MAX = 1.0, 30.0
RECENT = 64  # action ids a device remembers having finished (a check-in answer may list one it got over MQTT)
_URL = re.compile(r"mqtts://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?/?")
_action = msgspec.json.Decoder(DeviceAction, strict=False)
_answer = msgspec.json.Decoder(CheckInResponse, strict=False)
NO_BROKER = ("the server names no MQTT broker: start it with `fleetd serve --mqtt mqtts://HOST:PORT` on a broker "
             "that `fleetd mqtt broker-config` set up (docs/mqtt.md), or simulate without --mqtt")


def broker_address(url: str) -> tuple[str, int]:
    m = _URL.fullmatch(url)
    if not m:
        raise DeviceError("failed_precondition", f"the server named an MQTT broker the simulator cannot use: {url!r} "
                          "(it takes mqtts://HOST[:PORT])")
    return m[1].strip("[]"), int(m[2] or 8883)


def tls_context(ca_pem: str, cert_pem: str, ident: Identity) -> ssl.SSLContext:
    """Trust the fleet CA; present the device's certificate and key. The key goes through a 0600 temporary file
    (all the ssl module loads from) that is gone before this returns."""
    ctx = ssl.create_default_context(cadata=ca_pem)
    key_pem = ident.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode()
    fd, path = tempfile.mkstemp(prefix="fleetd-sim-", suffix=".pem")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(cert_pem + key_pem)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)
    return ctx


class Link:
    """One device's connection to the broker, kept up (reconnecting with backoff) until cancelled."""

    def __init__(self, dev: MqttSimDevice, url: str) -> None:
        self.dev, self.url = dev, url
        self.host, self.port = broker_address(url)
        self.client: aiomqtt.Client | None = None
        self.answer: asyncio.Future[bytes] | None = None  # the check-in waiting for its answer
        self.task = asyncio.create_task(self.run(), name=f"mqtt-{dev.hardware_id}")

    @property
    def connected(self) -> bool:
        return self.dev.on_mqtt

    def topic(self, leaf: str) -> str:
        return f"{ROOT}/{self.dev.ident.device_id}/{leaf}"

    def _new_client(self) -> aiomqtt.Client:
        dev = self.dev
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY
        return aiomqtt.Client(self.host, self.port, identifier=dev.ident.device_id,
                              protocol=aiomqtt.ProtocolVersion.V5, clean_start=False, properties=props,
                              tls_context=tls_context(dev.broker_ca(), dev.ident.certificate, dev.ident),
                              keepalive=KEEPALIVE, timeout=ANSWER_TIMEOUT)

    async def run(self) -> None:
        dev, delay = self.dev, RECONNECT_MIN
        while True:
            try:
                async with self._new_client() as client:
                    await client.subscribe([(self.topic(leaf), 1) for leaf in DOWNLINK])
                    self.client, dev.on_mqtt, dev.was_on_mqtt, delay = client, True, True, RECONNECT_MIN
                    dev.eng.stats.mqtt_connects += 1
                    dev.check_in_now()  # tell the server at once that it is on the broker
                    async for message in client.messages:
                        self._dispatch(str(message.topic), message.payload)
            except (aiomqtt.MqttError, OSError, ssl.SSLError, ValueError) as e:
                dev.eng.stats.error(DeviceError("unavailable", f"MQTT broker {self.host}:{self.port}: {e}"))
            finally:
                self.client, dev.on_mqtt = None, False
                if self.answer is not None and not self.answer.done():
                    self.answer.set_exception(DeviceError("unavailable", "lost the MQTT broker"))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(RECONNECT_MAX, delay * 2)

    def _dispatch(self, topic: str, payload: Any) -> None:
        leaf = topic.removeprefix(self.topic(""))
        data = payload if isinstance(payload, bytes) else b""
        try:
            if leaf == "actions":
                self.dev.arrived(_action.decode(data))
            elif leaf == "checkin/answer":
                if self.answer is not None and not self.answer.done():
                    self.answer.set_result(data)
            elif leaf == "errors":
                body = json.loads(data)
                error = DeviceError(str(body.get("code", "unknown")), f"refused over MQTT ({body.get('topic')}): "
                                    f"{body.get('message', '')}")
                if body.get("topic") == "checkin" and self.answer is not None and not self.answer.done():
                    self.answer.set_exception(error)
                else:
                    self.dev.eng.stats.error(error)
        except (ValueError, msgspec.ValidationError) as e:
            self.dev.eng.stats.error(DeviceError("invalid_argument", f"a malformed message on {topic}: {e}"))

    async def publish(self, leaf: str, body: dict[str, Any]) -> None:
        """QoS 1, returning once the broker has it."""
        client = self.client
        if client is None:
            raise DeviceError("unavailable", "not connected to the MQTT broker")
        try:
            await client.publish(self.topic(leaf), json.dumps(body), qos=1)
        except aiomqtt.MqttError as e:
            raise DeviceError("unavailable", f"the MQTT broker did not take the message: {e}") from None

    async def check_in(self, body: dict[str, Any]) -> CheckInResponse:
        self.answer = asyncio.get_running_loop().create_future()
        try:
            await self.publish("checkin", body)
            async with asyncio.timeout(ANSWER_TIMEOUT):
                return _answer.decode(await self.answer)
        except TimeoutError:
            raise DeviceError("unavailable", f"no check-in answer over MQTT within {ANSWER_TIMEOUT:g} s") from None
        finally:
            self.answer = None

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(2):
                await self.task


class MqttSimDevice(SimDevice):
    """A simulated device that goes over to the broker once the server names one (the module's docstring)."""

    def __init__(self, eng: Engine, n: int, ident: Identity) -> None:
        super().__init__(eng, n, ident)
        self.link: Link | None = None
        self.inbox: deque[DeviceAction] = deque()  # actions that came over MQTT, to carry out
        self.wake = asyncio.Event()
        self._check_in_now = False
        self._seen: dict[str, None] = {}  # action ids received (first receipt timed), the latest RECENT
        self._finished: dict[str, None] = {}  # action ids carried out, the latest RECENT
        self._ca = ""

    def broker_ca(self) -> str:
        ca = self._ca or self.eng.ca_pem
        if not ca:
            raise DeviceError("failed_precondition", "no fleet CA to check the broker's certificate with")
        return ca

    def check_in_now(self) -> None:
        self._check_in_now = True
        self.wake.set()

    # --- the transport -------------------------------------------------------------------------------------------
    def _linked(self) -> Link | None:
        return self.link if self.link is not None and self.link.connected else None

    async def check_in(self) -> CheckInResponse:
        body = {"components": self.components(), "inventory": self.inventory()}
        link = self._linked()
        if link is not None:
            await self.ensure_certificate()  # renewal, over HTTPS
            return await link.check_in(body)
        resp = await super().check_in()
        if resp.status == "active":
            if not resp.mqtt_url:
                self.stopped = True  # nothing to simulate: every device would say the same
                raise DeviceError("failed_precondition", NO_BROKER)
            await self.ensure_certificate()
            if self.link is None or self.link.url != resp.mqtt_url:
                if self.link is not None:
                    await self.link.close()
                self.link = Link(self, resp.mqtt_url)
        return resp

    async def push_telemetry(self, points: list[dict[str, Any]]) -> int:
        link = self._linked()
        if link is None:
            return await super().push_telemetry(points)
        await link.publish("telemetry", {"batch_id": secrets.token_hex(16), "points": points})
        return len(points)  # taken by the broker (fleetd stores each batch once)

    async def report(self, action_id: str, state: str, message: str = "", progress: int = 0,
                     result: dict[str, Any] | None = None) -> None:
        link = self._linked()
        if link is None:
            await super().report(action_id, state, message, progress, result)
            return
        body: dict[str, Any] = {"action_id": action_id, "state": state, "message": message, "progress": progress}
        if result is not None:
            body["result"] = result
        await link.publish("status", body)

    async def ensure_certificate(self) -> None:
        ident = self.ident
        if ident.certificate and time.time() < ident.certificate_renew_after:
            return
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, ident.device_id)])).sign(ident.key, None)
        got = await self.client.issue_certificate(csr.public_bytes(serialization.Encoding.PEM).decode())
        ident.certificate, ident.certificate_renew_after = got.certificate, float(got.renew_after)
        self._ca = got.ca_certificate
        self.changed()

    # --- actions ----------------------------------------------------------------------------------------------------
    def received(self, a: DeviceAction, how: str) -> None:
        if a.id in self._seen:
            return
        _remember(self._seen, a.id)
        super().received(a, how)

    def arrived(self, a: DeviceAction) -> None:
        """An action on the device's actions topic: carried out at once (by the device's own task)."""
        if a.id in self._finished or any(x.id == a.id for x in self.inbox):
            return
        self.received(a, "mqtt")
        self.inbox.append(a)
        self.wake.set()

    async def execute(self, a: DeviceAction) -> None:
        if a.id in self._finished:
            return  # listed by a check-in answer after it came (and was done) over MQTT
        await super().execute(a)
        _remember(self._finished, a.id)

    async def wait_until(self, due: float) -> None:
        """Until the next check-in is due, carrying out actions as they arrive."""
        while True:
            while self.inbox and not self.eng.stop.is_set():
                a = self.inbox.popleft()
                self.busy = True
                try:
                    await self.execute(a)
                except Exception as e:  # counted; a transient one leaves the action open for the next check-in
                    self.eng.stats.error(e)
                finally:
                    self.busy = False
                self._check_in_now = True  # tell the server about the new versions at once, as after a poll
            if self._check_in_now:
                self._check_in_now = False
                return
            left = due - time.monotonic()
            if left <= 0:
                return
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.wake.wait()

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            if self.link is not None:
                await self.link.close()


def _remember(recent: dict[str, None], action_id: str) -> None:
    recent[action_id] = None
    if len(recent) > RECENT:
        del recent[next(iter(recent))]
