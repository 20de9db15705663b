"""The agent over MQTT (docs/mqtt.md): actions the moment they are made, reports and telemetry through the broker.

Used when the server's check-in answer names a broker (``mqtt_url``): the agent gets its client certificate from
the fleet CA through IssueCertificate (certificate.py: ``client.pem`` for its own Ed25519 key ``device.key``, renewed
at two thirds of its life, after which the link connects again with the new one). paho-mqtt (Debian's
python3-paho-mqtt) is imported only then. The link is an addition, never a dependency: when the broker cannot be
reached, the agent polls and reports over HTTPS as it always did, and downloads always go over HTTPS.

paho runs the connection on its own thread and reconnects by itself; the session is persistent (clean start
off, a session expiry), so actions published while the device was briefly away reach it when it is back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROOT = "fleetd/v1/devices"
SESSION_EXPIRY = 86400  # seconds the broker queues actions for this device while it is away
PUBLISH_TIMEOUT = 10.0
_URL = re.compile(r"mqtts://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?/?")


def batch_id(points: list[Any]) -> str:
    """The id of a telemetry batch: a hash of its points, so that sending the same batch again (a retry after a
    lost acknowledgement) has the same id and the server stores it once."""
    return hashlib.sha256(json.dumps(points, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


class LinkDown(Exception):
    """The broker did not take a message (not connected, or no acknowledgement in time): use HTTPS."""


class MqttLink:
    """One device's connection to the broker. ``actions`` receives each action the server publishes (dicts, as in
    a check-in answer); ``on_action`` is called (on paho's thread) after each one is queued."""

    def __init__(self, url: str, device_id: str, ca: Path, cert: Path, key: Path, on_action: Any = None) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        m = _URL.fullmatch(url)
        if not m:
            raise ValueError(f"the server named an MQTT broker this agent cannot use: {url!r}")
        self.url, self.host, self.port = url, m[1].strip("[]"), int(m[2] or 8883)
        self.device_id = device_id
        self.actions: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.on_action = on_action
        self._connected = threading.Event()
        self._props = Properties(PacketTypes.CONNECT)
        self._props.SessionExpiryInterval = SESSION_EXPIRY
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=paho.MQTTv5,
                                  reconnect_on_failure=True)
        self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def topic(self, leaf: str) -> str:
        return f"{ROOT}/{self.device_id}/{leaf}"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect in the background (paho's thread retries until it reaches the broker)."""
        self.client.connect_async(self.host, self.port, keepalive=60, clean_start=False, properties=self._props)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._connected.clear()

    def publish(self, leaf: str, body: dict[str, Any]) -> None:
        """Publish with QoS 1 and wait for the broker's acknowledgement; LinkDown if it does not come."""
        if not self.connected:
            raise LinkDown("not connected to the broker")
        info = self.client.publish(self.topic(leaf), json.dumps(body), qos=1)
        try:
            info.wait_for_publish(PUBLISH_TIMEOUT)
        except (RuntimeError, ValueError) as e:  # paho: not queued (disconnected, queue full)
            raise LinkDown(str(e)) from None
        if not info.is_published():
            raise LinkDown(f"no acknowledgement from the broker within {PUBLISH_TIMEOUT:g} s")

    # --- paho's thread ----------------------------------------------------------------------------------------
    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.warning("the MQTT broker %s refused this device: %s", self.url, reason)
            return
        client.subscribe([(self.topic("actions"), 1), (self.topic("errors"), 1)])
        self._connected.set()
        log.info("connected to the MQTT broker %s", self.url)

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if self._connected.is_set():
            log.warning("lost the MQTT broker %s (%s); HTTPS until it is back", self.url, reason)
        self._connected.clear()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        try:
            body = json.loads(message.payload)
        except ValueError:
            log.warning("a malformed message on %s, ignored", message.topic)
            return
        if message.topic == self.topic("errors"):
            log.error("the server refused a message on %s: %s", body.get("topic"), body.get("message"))
            return
        if isinstance(body, dict) and body.get("id"):
            self.actions.put(body)
            if self.on_action is not None:
                self.on_action()
