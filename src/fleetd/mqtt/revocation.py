"""Revocation at the broker (docs/mqtt.md, "Revocation at the broker"): Mosquitto 2.0 reads ``crlfile`` only at start
(and on SIGHUP) and keeps the clients already connected, so fleetd also tells the broker itself, over the dynamic
security plugin's ``$CONTROL`` topic as its service client: the revoked (or deleted) device gets the deny-all role
(whatever it reconnects with can neither publish nor subscribe) and is disabled, which disconnects it at once.

broker-config loads the plugin with a configuration in which fleetd's service user may use ``$CONTROL`` and that
holds the deny-all role. Devices are not dynamic-security clients until revoked: the ACL file governs them.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from ..core import clock
from ..devices import storage
from ..devices.registry import DeviceChanged, DeviceGone
from . import topics

if TYPE_CHECKING:
    import asyncio

    import aiomqtt

    from ..fleet import Fleet

log = logging.getLogger(__name__)

CONTROL = "$CONTROL/dynamic-security/v1"
RESPONSE = CONTROL + "/response"
DENY_ROLE = "fleetd-revoked"
CONTROL_ROLE = "fleetd-control"
_ALL = ("publishClientSend", "publishClientReceive", "subscribePattern")
PER_MESSAGE = 100  # devices shut out per $CONTROL message (3 commands each)


def plugin_config() -> dict[str, Any]:
    """The dynamic security plugin's starting configuration (it keeps its own state in that file afterwards)."""
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                             "unsubscribe": False},
        "clients": [{"username": topics.SERVICE_USER, "textname": "fleetd", "roles": [{"rolename": CONTROL_ROLE}]}],
        "groups": [],
        "roles": [
            {"rolename": CONTROL_ROLE, "textname": "fleetd drives revocations",
             "acls": [{"acltype": t, "topic": "$CONTROL/dynamic-security/#", "priority": 0, "allow": True}
                      for t in _ALL]},
            {"rolename": DENY_ROLE, "textname": "revoked devices: nothing",
             "acls": [{"acltype": t, "topic": "#", "priority": 0, "allow": False} for t in _ALL]},
        ],
    }


def commands(device_id: str) -> list[dict[str, Any]]:
    """Deny the device everything and disconnect it. createClient fails harmlessly when it is there already
    (revoked before, or the broker's plugin state kept), and addClientRole then gives it the role."""
    return [{"command": "createClient", "username": device_id, "roles": [{"rolename": DENY_ROLE}]},
            {"command": "addClientRole", "username": device_id, "rolename": DENY_ROLE},
            {"command": "disableClient", "username": device_id}]


def log_response(payload: bytes) -> None:
    """Log the plugin's refusals, but not createClient's or addClientRole's: one of them fails by design (the
    client is there already, or it was just made with the role)."""
    try:
        answers = json.loads(payload)["responses"]
    except (ValueError, KeyError, TypeError):
        log.warning("MQTT: an answer on %s that is not the dynamic security plugin's: %r", RESPONSE, payload[:200])
        return
    for a in answers:
        if a.get("error") and a.get("command") not in ("createClient", "addClientRole"):
            log.error("MQTT: the broker's dynamic security plugin refused %s for %s: %s (is the plugin loaded as "
                      "fleetd mqtt broker-config prints?)", a.get("command"), a.get("username", "?"), a["error"])


class BrokerRevocations:
    """Revoked and deleted devices to shut out at the broker, sent by the MQTT part's connection. Among replicas
    the lease holder sends them (every replica runs every replica's effects, store/changes.py)."""

    def __init__(self, fleet: Fleet, wake: Any) -> None:
        self.fleet = fleet
        self._wake = wake  # a callable: wakes the MQTT part's send loop
        self.pending: dict[str, None] = {}  # device ids, in order
        self.sent = 0
        fleet.store.on_effect(DeviceChanged, self._changed)
        fleet.store.on_effect(DeviceGone, self._gone)
        fleet.metrics.counter("fleetd_mqtt_revocations_total", "Revoked or deleted devices disconnected and shut "
                              "out at the broker (its dynamic security plugin).", lambda: self.sent)

    def _changed(self, e: DeviceChanged) -> None:
        if e.status == "revoked":
            self._add(e.device_id)

    def _gone(self, e: DeviceGone) -> None:
        self._add(e.device_id)

    def _add(self, device_id: str) -> None:
        lease = self.fleet.lease
        if lease is not None and not lease.running:
            return
        self.pending[device_id] = None
        self._wake()

    async def send(self, client: aiomqtt.Client, wake: asyncio.Event) -> None:
        """On connecting, shut out again every device that still has a revoked certificate that has not expired
        (the broker's plugin state may be new, or a revocation was made while no fleetd was connected), then send
        the pending ones as they come (a failure leaves them pending for the next connection)."""
        # Every replica does (harmless twice over): one that connects before it holds the lease must not skip it.
        for device_id in await self.fleet.store.read(lambda c: storage.shut_out_devices(c, clock.now())):
            self.pending[device_id] = None
        while True:
            if not self.pending:
                wake.clear()
                await wake.wait()
            taken = list(self.pending)[:PER_MESSAGE]
            body = json.dumps({"commands": [c for device_id in taken for c in commands(device_id)]})
            await client.publish(CONTROL, body, qos=1)
            for device_id in taken:
                self.pending.pop(device_id, None)
            self.sent += len(taken)
            log.info("MQTT: %d device(s) disconnected and shut out at the broker: %s", len(taken),
                     ", ".join(taken[:5]) + (", ..." if len(taken) > 5 else ""))
