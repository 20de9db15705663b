"""fleetd as a service client of the MQTT broker (docs/mqtt.md): a background part.

It keeps one connection with a persistent session (a fixed client id, clean start off, a session that outlives a
restart), subscribes with QoS 1 to every device's uplink topics (through a shared subscription on PostgreSQL,
where several replicas may run) and handles each message with the same calls as the Connect API's device methods
(devices/device_calls.py), the device taken from the topic, which the broker's ACL binds to its certificate.
A message is acknowledged only once handled: one that was not (fleetd stopped, the database failed) comes again
when the session resumes, and telemetry batches carry an id so a redelivery is stored once (storage.py). New
actions are published on the device's ``actions`` topic as their write commits (the NewActions effect), and
revoked devices are shut out at the broker (revocation.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import logging
import socket
import ssl
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import aiomqtt
import msgspec
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..core.config import mqtt_address
from ..core.decoding import decoding
from ..core.errors import Aborted, FleetdError, InvalidArgument, ResourceExhausted, Unavailable
from ..core.lifecycle import Scope
from ..core.tasks import cancel_and_wait
from ..devices import actions, device_calls, registry
from ..devices.registry import NewActions
from . import identity, revocation, storage, topics

if TYPE_CHECKING:
    from ..fleet import Fleet

log = logging.getLogger(__name__)

SESSION_EXPIRY = 7 * 86400  # seconds the broker keeps fleetd's session (and queues its messages) while it is away
KEEPALIVE = 30
RECONNECT_MIN, RECONNECT_MAX = 0.5, 15.0
BATCH_DAYS = 1  # how long telemetry batch ids are remembered
PUBLISH_CHUNK = 100  # devices whose new actions are read and published together (paho queues beyond its window)
IN_FLIGHT = 1024  # device messages handled at once; the broker holds the rest (unacknowledged, so safe)
GROUP_MAX = 256  # messages in one group: smaller than IN_FLIGHT, so the broker keeps sending while groups are stored
OVERLAP = 2  # groups of telemetry messages handled at once: one being written while the next is read


class TelemetryMessage(device_calls.PushTelemetryRequest, kw_only=True):
    """PushTelemetryRequest with the batch's id, unique per device: a redelivered batch is stored once."""

    batch_id: str


class ErrorMessage(msgspec.Struct, kw_only=True):
    """What fleetd publishes on a device's ``errors`` topic when it refuses one of its messages."""

    topic: str
    code: str
    message: str


_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    topics.CHECKIN: msgspec.json.Decoder(device_calls.CheckInRequest, strict=False),
    topics.STATUS: msgspec.json.Decoder(device_calls.ReportStatusRequest, strict=False),
    topics.TELEMETRY: msgspec.json.Decoder(TelemetryMessage, strict=False),
}
_encode = msgspec.json.Encoder().encode
_TELEMETRY_TAIL = "/" + topics.TELEMETRY


def default_client_id(data_dir: str) -> str:
    """fleetd-<12 hex>: the same for this host and data dir on every start (the persistent session's name)."""
    return "fleetd-" + hashlib.sha256(f"{socket.gethostname()}:{data_dir}".encode()).hexdigest()[:12]


class MqttBridge:
    """The background part (core/lifecycle.py Part): start() returns at once, the connection is its task's."""

    name = "mqtt"
    scope: Scope = "process"

    def __init__(self, fleet: Fleet) -> None:
        s = fleet.settings
        self.fleet = fleet
        self.host, self.port = mqtt_address(s.mqtt_url)
        self.client_id = s.mqtt_client_id or default_client_id(str(s.data_path))
        self.shared = fleet.store.dsn is not None  # replicas on one database: each message to one of them
        if s.mqtt_cert_file:
            self.cert_file, self.key_file = s.mqtt_cert_file, s.mqtt_key_file
        else:
            cert, key = identity.ensure_service_certificate(fleet.data_dir, fleet.keys)
            self.cert_file, self.key_file = str(cert), str(key)
        self.handled: Counter[str] = Counter()  # messages handled, by uplink topic leaf; "refused", "duplicate"
        self.published = 0
        self.connects = 0
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[str, list[str]] = {}  # device id -> new action ids not yet published
        self._wake: asyncio.Event | None = None
        fleet.store.on_effect(NewActions, self.actions_created)
        self._revoke_wake: asyncio.Event | None = None
        self.revocations = revocation.BrokerRevocations(
            fleet, lambda: self._revoke_wake.set() if self._revoke_wake is not None else None)
        m = fleet.metrics
        m.gauge("fleetd_mqtt_connected", "1 while fleetd is connected to the MQTT broker, else 0.",
                lambda: int(self._client is not None))
        m.counter("fleetd_mqtt_messages_total", "MQTT messages from devices handled, by topic (refused: answered "
                  "on the device's errors topic; duplicate: a telemetry batch already stored).",
                  lambda: [({"topic": k}, v) for k, v in list(self.handled.items())])
        m.counter("fleetd_mqtt_actions_published_total", "Actions published to devices over MQTT.",
                  lambda: self.published)

    @property
    def connected(self) -> bool:
        return self._client is not None

    # --- the part ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._wake, self._revoke_wake = asyncio.Event(), asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="mqtt")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    def actions_created(self, e: NewActions) -> None:
        """The effect handler: queue the new actions for publishing. Among replicas, the lease holder publishes:
        every replica runs every replica's effects (store/changes.py), and one message per action is enough."""
        lease = self.fleet.lease
        if lease is not None and not lease.running:
            return
        for device_id, action_id in zip(e.device_ids, e.action_ids, strict=True):
            self._pending.setdefault(device_id, []).append(action_id)
        if self._wake is not None:
            self._wake.set()

    # --- the connection ---------------------------------------------------------------------------------------

    def _tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.fleet.keys.ca_path))
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def _new_client(self) -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY
        props.ReceiveMaximum = IN_FLIGHT  # the broker may send this many unacknowledged (its default: 20)
        client = aiomqtt.Client(self.host, self.port, identifier=self.client_id,
                                protocol=aiomqtt.ProtocolVersion.V5, clean_start=False, properties=props,
                                tls_context=self._tls(), keepalive=KEEPALIVE, timeout=10)
        # Acknowledge a message once handled, not on arrival: one fleetd did not finish comes again.
        client._client.manual_ack_set(True)
        return client

    async def _run(self) -> None:
        delay = RECONNECT_MIN
        while True:
            try:
                async with self._new_client() as client:
                    await client.subscribe([(f, 1) for f in topics.uplink_filters(self.shared)]
                                           + [(revocation.RESPONSE, 1)])
                    self._client = client
                    self.connects += 1
                    delay = RECONNECT_MIN
                    log.info("connected to the MQTT broker %s:%d as %s", self.host, self.port, self.client_id)
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._publish_loop(client))
                        tg.create_task(self._forget_loop())
                        assert self._revoke_wake is not None
                        tg.create_task(self.revocations.send(client, self._revoke_wake))
                        await self._receive(client, tg)
            except* (aiomqtt.MqttError, OSError) as group:
                log.warning("MQTT broker %s:%d: %s; connecting again in %.1f s", self.host, self.port,
                            group.exceptions[0], delay)
            except* Exception as group:  # e.g. the database failed: the message was not acknowledged, so it comes
                # again once the session resumes; a message that always fails holds up the ones behind it (logged)
                log.error("handling an MQTT message failed; connecting again in %.1f s", delay,
                          exc_info=group.exceptions[0])
            finally:
                self._client = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    # --- device -> fleetd -------------------------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client, tg: asyncio.TaskGroup) -> None:
        """Handle the messages in groups: each time, all that have arrived, up to GROUP_MAX (the broker sends at
        most IN_FLIGHT unacknowledged, so it goes on sending while a group is stored), their telemetry batches
        claimed in one write and given to the intake together (it commits what arrives together in one
        transaction). A group of telemetry only is handled while the one before it is being written, the later
        one's writes queued after the earlier one's (the store writes in order, so each device's batches are stored
        in the order the broker sent them); a group with anything else waits for those before it and handles its
        messages one after another. Each group's messages are acknowledged once handled,
        in the order they arrived, after those of the group before, as MQTT asks. A message whose handling fails is
        never acknowledged: the failure ends the task group, the connection with it, and the broker sends it again
        when the session resumes."""
        incoming = client._queue  # what aiomqtt has read from the socket and not yet handed out
        running: collections.deque[asyncio.Task[None]] = collections.deque()  # the groups being handled, in order
        async for first in client.messages:
            group = [first]
            while len(group) < GROUP_MAX and not incoming.empty():
                group.append(incoming.get_nowait())
            only_telemetry = all(str(m.topic).endswith(_TELEMETRY_TAIL) for m in group)
            while running and (running[0].done() or not only_telemetry or len(running) >= OVERLAP):
                if not await _finished(running.popleft()):
                    return  # it failed: the task group ends, the connection with it
            running.append(tg.create_task(self._handle_group(client, group, only_telemetry,
                                                             running[-1] if running else None)))

    async def _handle_group(self, client: aiomqtt.Client, group: list[aiomqtt.Message], only_telemetry: bool,
                            before: asyncio.Task[None] | None) -> None:
        if only_telemetry:
            await self._telemetry(client, group)
        else:
            run: list[aiomqtt.Message] = []  # telemetry messages in a row: handled together
            for message in group:
                if str(message.topic).endswith(_TELEMETRY_TAIL):
                    run.append(message)
                    continue
                if run:
                    await self._telemetry(client, run)
                    run = []
                await self._handle(client, message)
            if run:
                await self._telemetry(client, run)
        if before is not None and not await _finished(before):
            return  # it failed: none of these is acknowledged, they come again
        ack = client._client.ack
        for message in group:
            if message.qos > 0:
                ack(message.mid, message.qos)

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        parsed = topics.parse_uplink(topic)
        payload = message.payload if isinstance(message.payload, bytes) else b""  # a broker's are always bytes
        if topic == revocation.RESPONSE:
            revocation.log_response(payload)
        elif parsed is not None:
            device_id, leaf = parsed
            try:
                await self._dispatch(client, device_id, leaf, payload)
            except FleetdError as e:
                await self._refuse(client, device_id, leaf, e)

    async def _refuse(self, client: aiomqtt.Client, device_id: str, leaf: str, e: FleetdError) -> None:
        """The device's mistake: tell it (a redelivery would be refused again). Other errors are raised: not the
        device's, the message is not acknowledged and comes again after the reconnect."""
        if _transient(e):
            raise e
        self.handled["refused"] += 1
        log.info("MQTT %s from %s refused: %s", leaf, device_id, e.message)
        await client.publish(topics.device_topic(device_id, topics.ERRORS),
                             _encode(ErrorMessage(topic=leaf, code=e.code, message=e.message)), qos=1)

    def _check(self, device_id: str, leaf: str, payload: bytes, *, active_to: str = "") -> Any:
        """The calling device allowed to send this (with ``active_to``: only if active), and its message decoded
        (raises FleetdError if not)."""
        fleet = self.fleet
        # Over HTTPS a revoked device has no token; here its certificate may still be good until the CRL says not.
        rt = device_calls.calling_device(fleet, device_id)[1]
        registry.ensure_not_revoked(rt.status)
        if active_to and rt.status != "active":
            device_calls.calling_device(fleet, device_id, active_to=active_to)  # raises its PermissionDenied
        fleet.hub.mqtt_seen[device_id] = time.time()  # how it connects, for GetDevice / ListDevices
        with decoding(f"{leaf} message", f"{leaf} message"):
            return _DECODERS[leaf].decode(payload or b"{}")

    async def _dispatch(self, client: aiomqtt.Client, device_id: str, leaf: str, payload: bytes) -> None:
        fleet = self.fleet
        req = self._check(device_id, leaf, payload)
        if leaf == topics.CHECKIN:
            answer = await device_calls.check_in(fleet, device_id, None, req)
            await client.publish(topics.device_topic(device_id, topics.CHECKIN_ANSWER), _encode(answer), qos=1)
        elif leaf == topics.STATUS:
            await device_calls.report_status(fleet, device_id, req)
        self.handled[leaf] += 1

    async def _telemetry(self, client: aiomqtt.Client, messages: list[aiomqtt.Message]) -> None:
        """Telemetry messages (their topics end in /telemetry) handled together: the batch ids claimed in one
        write, then the new batches stored. Raises (nothing acknowledged) when a batch could not be stored; the
        claims of those not stored are released first, so that their redelivery is stored."""
        batches: list[tuple[str, TelemetryMessage]] = []
        for message in messages:
            parsed = topics.parse_uplink(str(message.topic))
            if parsed is None:
                continue  # not a device's topic (the broker's ACL lets none publish there)
            device_id = parsed[0]
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                req = self._check(device_id, topics.TELEMETRY, payload, active_to="send telemetry")
                if not 0 < len(req.batch_id) <= 64:
                    raise InvalidArgument("a telemetry message needs a batch_id of 1-64 characters, unique per "
                                          "batch: its redelivery is then stored once")
            except FleetdError as e:
                await self._refuse(client, device_id, topics.TELEMETRY, e)
                continue
            batches.append((device_id, req))
        if not batches:
            return
        store = self.fleet.store
        fresh = await store.write(functools.partial(
            _claim_all, claims=[(d, req.batch_id) for d, req in batches], at=time.time()))
        new = [b for b, ok in zip(batches, fresh, strict=True) if ok]
        self.handled["duplicate"] += len(batches) - len(new)
        # Given to the intake in this order, in this step of the event loop: one insert for all, in order.
        results = await asyncio.gather(*(device_calls.push_telemetry(self.fleet, d, req.points) for d, req in new),
                                       return_exceptions=True)
        failed = [(b, r) for b, r in zip(new, results, strict=True) if isinstance(r, BaseException)]
        self.handled[topics.TELEMETRY] += len(new) - len(failed)
        refused = [(b, r) for b, r in failed if isinstance(r, FleetdError) and not _transient(r)]
        for (device_id, _), why in refused:  # the device's mistake (e.g. a bad point): its batch is not stored
            assert isinstance(why, FleetdError)
            await self._refuse(client, device_id, topics.TELEMETRY, why)
        errors = [r for _, r in failed if not (isinstance(r, FleetdError) and not _transient(r))]
        unstored = [(d, req.batch_id) for (d, req), _ in failed]
        if unstored:
            with contextlib.suppress(Exception):  # stored nothing: let their redelivery be stored
                await store.write(functools.partial(_release_all, claims=unstored))
        if errors:
            raise errors[0]

    async def _forget_loop(self) -> None:
        while True:
            await self.fleet.store.write(functools.partial(storage.forget_batches,
                                                           before=time.time() - BATCH_DAYS * 86400))
            await asyncio.sleep(3600)

    # --- fleetd -> device -------------------------------------------------------------------------------------

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        """Publish the actions created since the last pass (and, after a reconnect, those queued meanwhile)."""
        assert self._wake is not None
        base = self.fleet.public_url
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            taken, self._pending = self._pending, {}
            devices = list(taken.items())
            sending: list[asyncio.Future[Any]] = []
            try:
                # A chunk of devices read, then published while the next is read: with a deploy to thousands of
                # devices the first get theirs before the last are read.
                for i in range(0, len(devices), PUBLISH_CHUNK):
                    found = await self.fleet.store.read(functools.partial(
                        _new_actions, taken=dict(devices[i:i + PUBLISH_CHUNK]), base=base))
                    sending.append(asyncio.gather(*(
                        client.publish(topics.device_topic(device_id, topics.ACTIONS), _encode(action), qos=1)
                        for device_id, action in found)))
                for sent in sending:
                    self.published += len(await sent)
            except BaseException:
                for sent in sending:
                    sent.cancel()
                for device_id, ids in taken.items():  # not published: the next connection tries again
                    self._pending.setdefault(device_id, [])[:0] = ids
                raise


def _claim_all(conn: Any, claims: list[tuple[str, str]], at: float) -> list[bool]:
    return [storage.claim_batch(conn, device_id, batch_id, at) for device_id, batch_id in claims]


def _release_all(conn: Any, claims: list[tuple[str, str]]) -> None:
    for device_id, batch_id in claims:
        storage.release_batch(conn, device_id, batch_id)


async def _finished(task: asyncio.Task[None]) -> bool:
    """Wait for the task (without taking its failure as ours); True if it succeeded."""
    await asyncio.wait([task])
    return not task.cancelled() and task.exception() is None


def _transient(e: FleetdError) -> bool:
    """Errors that a later try may not meet (the server busy or its database away), unlike the device's mistakes."""
    return isinstance(e, Unavailable | Aborted) or (isinstance(e, ResourceExhausted) and e.retry_after is not None)


def _new_actions(conn: Any, taken: dict[str, list[str]], base: str) -> list[tuple[str, actions.DeviceAction]]:
    """The still open ones of these new actions, as devices get them, by device."""
    out = []
    for device_id, ids in taken.items():
        wanted = set(ids)
        out += [(device_id, a) for a in actions.open_for_device(conn, device_id, base) if a.id in wanted]
    return out
