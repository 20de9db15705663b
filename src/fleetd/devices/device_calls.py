"""What a device's check-in, status report and telemetry do, whichever transport brought them: the Connect API's
DeviceService (device_api.py, the device from its bearer token) and MQTT (mqtt/, the device from its topic, which
the broker binds to its certificate). One set of messages, one set of rules."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from ..core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from ..core.fields import Int32
from ..telemetry.intake import Point
from . import actions
from .actions import ActionResult, DeviceAction
from .inventory import Component, Inventory
from .registry import DeviceRuntime

if TYPE_CHECKING:
    from ..fleet import Fleet

MAX_COMPONENTS = 64


class CheckInRequest(msgspec.Struct, kw_only=True):
    inventory: Inventory | None = None
    # Everything installed, on every check-in: a component left out is taken as removed.
    components: list[Component] = []


class CheckInResponse(msgspec.Struct, kw_only=True):
    status: str
    # The device's configured interval: what its online state is judged by.
    poll_interval: int
    actions: list[DeviceAction] = []
    # Seconds until the next check-in: poll_interval, or less (never under 5) while an action is being worked on.
    next_checkin: int
    # The MQTT broker devices with a client certificate may use instead of polling (mqtts://HOST:PORT; docs/mqtt.md);
    # "" when the fleet has none.
    mqtt_url: str = ""


class ReportStatusRequest(msgspec.Struct, kw_only=True):
    action_id: str
    state: str
    message: str = ""
    progress: Int32 = 0
    # Only with the succeeded report of a logs action: the app's last lines.
    result: ActionResult | None = None


class ReportStatusResponse(msgspec.Struct, kw_only=True):
    action_id: str
    state: str


class PushTelemetryRequest(msgspec.Struct, kw_only=True):
    points: list[Point]


class PushTelemetryResponse(msgspec.Struct, kw_only=True):
    accepted: int


_NO_ACTIONS: list[DeviceAction] = []


def calling_device(fleet: Fleet, device_id: str | None, *, active_to: str = "") -> tuple[str, DeviceRuntime]:
    """The calling device's id and runtime; with ``active_to``, refuse it unless it is active."""
    rt = fleet.hub.runtime.get(device_id) if device_id else None
    if device_id is None or rt is None:
        raise Unauthenticated("unknown device; enroll again")
    if active_to and rt.status != "active":
        raise PermissionDenied(f"only active devices {active_to}; this one is {rt.status}")
    return device_id, rt


async def check_in(fleet: Fleet, device_id: str | None, addr: str | None, req: CheckInRequest) -> CheckInResponse:
    hub = fleet.hub
    device_id, rt = calling_device(fleet, device_id)
    if len(req.components) > MAX_COMPONENTS:
        raise InvalidArgument(f"at most {MAX_COMPONENTS} components")
    hub.note_checkin(device_id, addr, req.inventory, req.components)
    pending = _NO_ACTIONS
    if rt.status == "active" and device_id in hub.open_actions:
        base = fleet.public_url
        pending = await fleet.store.read(lambda c: actions.open_for_device(c, device_id, base))
    return CheckInResponse(status=rt.status, poll_interval=rt.poll_interval, actions=pending,
                           next_checkin=actions.next_checkin(rt.poll_interval, pending),
                           mqtt_url=fleet.settings.mqtt_url)


async def report_status(fleet: Fleet, device_id: str | None, req: ReportStatusRequest) -> ReportStatusResponse:
    device_id, _ = calling_device(fleet, device_id, active_to="report action status")
    action = await fleet.store.write(
        lambda c: actions.report(c, device_id, req.action_id, req.state, req.message, req.progress, req.result))
    return ReportStatusResponse(action_id=action.id, state=action.state)


async def push_telemetry(fleet: Fleet, device_id: str | None, points: list[Point]) -> PushTelemetryResponse:
    device_id, _ = calling_device(fleet, device_id, active_to="send telemetry")
    accepted = await fleet.telemetry.add(device_id, points)
    fleet.alerts.note_points(device_id, points)  # alert rules on these metrics look again soon
    return PushTelemetryResponse(accepted=accepted)
