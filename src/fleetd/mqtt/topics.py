"""The topic map (docs/mqtt.md): every device has its own subtree, ``fleetd/v1/devices/{device_id}/...``.

The broker binds the ``{device_id}`` level to the client certificate's common name (its ACL pattern ``%u``), so a
message on a device's topic comes from that device: fleetd takes the device's identity from the topic.
"""

from __future__ import annotations

ROOT = "fleetd/v1/devices"

# Device -> fleetd (the device publishes; fleetd subscribes to them for every device).
CHECKIN = "checkin"  # a CheckInRequest; fleetd answers with a CheckInResponse on CHECKIN_ANSWER
STATUS = "status"  # a ReportStatusRequest
TELEMETRY = "telemetry"  # a PushTelemetryRequest with a batch_id
UPLINK = (CHECKIN, STATUS, TELEMETRY)

# fleetd -> device (the device subscribes to its own).
ACTIONS = "actions"  # one DeviceAction per message, published the moment the action is created
CHECKIN_ANSWER = "checkin/answer"  # the CheckInResponse to the device's last check-in
ERRORS = "errors"  # why fleetd refused one of the device's messages: {"topic", "code", "message"}
DOWNLINK = (ACTIONS, CHECKIN_ANSWER, ERRORS)

# The shared-subscription group of fleetd's replicas: the broker gives each message to one of them.
SHARE_GROUP = "fleetd"

# The common name of fleetd's own client certificate, its user name at the broker (the ACL's `user` line).
# Device ids are "dev_" + hex (core/clock.py new_id), so no device's certificate carries this name.
SERVICE_USER = "fleetd-service"


def device_topic(device_id: str, leaf: str) -> str:
    return f"{ROOT}/{device_id}/{leaf}"


def uplink_filters(shared: bool) -> list[str]:
    """What fleetd subscribes to: every device's uplink topics, through the shared group when ``shared``."""
    filters = [f"{ROOT}/+/{leaf}" for leaf in UPLINK]
    return [f"$share/{SHARE_GROUP}/{f}" for f in filters] if shared else filters


def parse_uplink(topic: str) -> tuple[str, str] | None:
    """``(device_id, leaf)`` of an uplink topic, None for any other topic."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != ROOT or parts[4] not in UPLINK or not parts[3]:
        return None
    return parts[3], parts[4]
