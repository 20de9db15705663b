"""hawkBit DDI feedback and config data, mapped onto fleetd's actions and inventory::

    scheduled, resumed, download, downloaded  → downloading    proceeding → installing
    closed + success (or none)                → succeeded      closed + failure → failed
    rejected                                  → rejected (offered actions) or failed
    canceled                                  → cancelled (acknowledges a cancellation)

Progress never goes backwards: a report of an earlier step updates message and progress only.
A deployment closed with success sets the device's component to the artifact's version, since
a DDI device reports no components. Config data ``data`` lands in the inventory's ``extra``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Literal

import msgspec

from ..accounts import audit
from ..accounts.audit import Actor
from ..core.clock import now
from ..core.decoding import decoding
from ..core.errors import FleetdError, InvalidArgument, NotFound
from ..core.fields import Int32
from ..devices import actions, registry
from ..devices import storage as devices_storage
from ..devices.actions import PROGRESS, TERMINAL
from ..devices.inventory import MAX_EXTRA, check_inventory_size
from ..store.database import effect
from . import storage
from .state import ActionRow, ConfigAnswered, Installed, device_action
from .tokens import check_device_type

MAX_CONFIG_ENTRIES = 100
MAX_CONFIG_KEY = 128
MAX_CONFIG_VALUE = 128
# A config data attribute with this key sets the device type (artifacts are matched on it).
DEVICE_TYPE_ATTRIBUTE = "device_type"


class ActionGone(FleetdError):
    """Feedback for an action that is no longer active: hawkBit answers 410 Gone."""

    code = "failed_precondition"
    http_status = 410


# --- request bodies ------------------------------------------------------------------

Execution = Literal["closed", "proceeding", "canceled", "scheduled", "rejected", "resumed", "downloaded",
                    "download", "downloading"]


class DdiProgress(msgspec.Struct):
    cnt: Int32
    of: Int32 | None = None


class DdiResult(msgspec.Struct):
    finished: Literal["success", "failure", "none"]
    progress: DdiProgress | None = None


class DdiStatus(msgspec.Struct):
    execution: Execution
    result: DdiResult
    code: Int32 | None = None
    details: list[str] = []


class DdiActionFeedback(msgspec.Struct):
    status: DdiStatus
    time: str = ""


class DdiConfigData(msgspec.Struct):
    data: dict[str, str]
    mode: Literal["merge", "replace", "remove"] = "merge"


_BODY_NAMES = {"DdiActionFeedback": "feedback (DdiActionFeedback: {\"status\": {\"execution\": ..., "
                                     "\"result\": {\"finished\": ...}}})",
               "DdiConfigData": "config data (DdiConfigData: {\"data\": {\"key\": \"value\"}, \"mode\": ...})"}


def decode_body(body: bytes, t: type[Any]) -> Any:
    with decoding(_BODY_NAMES.get(t.__name__, t.__name__), "body"):
        return msgspec.json.decode(body, type=t)


# --- feedback --------------------------------------------------------------------------

def _message(status: DdiStatus) -> str:
    parts = [d for d in status.details if d]
    if status.code is not None:
        parts.append(f"device reported status code {status.code}")
    return "; ".join(parts)[:actions.MAX_MESSAGE]


def _progress(status: DdiStatus, fallback: int) -> int:
    p = status.result.progress
    if p is None:
        return fallback
    if p.of:
        return max(0, min(100, p.cnt * 100 // p.of)) if p.of > 0 else fallback
    return max(0, min(100, p.cnt))


# Progress executions and the fleetd state each one reaches.
_REACHES = {"scheduled": "downloading", "resumed": "downloading", "download": "downloading",
            "downloading": "downloading", "downloaded": "downloading", "proceeding": "installing"}


def _outcome(conn: sqlite3.Connection, device_id: str, action_id: str, installed: int | None = None) -> actions.Action:
    """The action after the feedback, with its effects: the event stream hears of it, the hub whether the device
    still has open actions, and a deployment closed with success (``installed``, its number) is the device's new
    installedBase."""
    action = actions.get(conn, action_id)
    actions.settled(conn, action)
    if installed is not None:
        effect(conn, Installed(device_id, installed))
    return action


def _ack_cancel(conn: sqlite3.Connection, row: ActionRow, device_id: str, message: str, *, stopped: bool) -> None:
    t = now()
    storage.ack_cancel(conn, row.id, device_id, t, stopped=stopped)
    devices_storage.insert_action_event(conn, row.id, t, row.state, message[:actions.MAX_MESSAGE], row.progress)


def apply_feedback(conn: sqlite3.Connection, device_id: str, controller_id: str, num: int,
                   fb: DdiActionFeedback) -> actions.Action:
    """Deployment feedback → the action's state, message and progress (one transaction)."""
    row = device_action(conn, device_id, controller_id, num)
    st = fb.status
    ex = st.execution
    message = _message(st)
    if row.state in TERMINAL:
        if row.state == "cancelled" and ex == "canceled" and row.fetched and not row.cancel_acked:
            _ack_cancel(conn, row, device_id, message or "the device confirmed the cancellation", stopped=True)
            return _outcome(conn, device_id, row.id)
        if (row.state == "cancelled" and row.fetched and not row.cancel_stopped and ex == "closed"
                and st.result.finished != "failure"):
            # A client past the point of no return rejects the cancellation and finishes (rauc-hawkbit-updater
            # does). The action stays cancelled, but the version the device now runs is a fact worth keeping.
            _set_component(conn, device_id, row.artifact_id)
            _ack_cancel(conn, row, device_id, message or "installed after all: the device finished the update "
                        "it was asked to cancel", stopped=False)
            return _outcome(conn, device_id, row.id, num)
        raise ActionGone(f"action {num} is no longer active (it ended as {row.state}); send no more feedback "
                         "for it")
    progress = _progress(st, row.progress)
    state = row.state

    def report(new: str, msg: str = message, pct: int = progress) -> None:
        nonlocal state
        actions.advance(conn, device_id, row.id, new, msg, pct)
        state = new

    if ex == "canceled":
        actions.cancel(conn, Actor("device", device_id, controller_id), row.id)
        _ack_cancel(conn, row, device_id, message or "cancelled by the device", stopped=True)
        return _outcome(conn, device_id, row.id)
    if ex == "rejected":
        if state == "offered":
            report("rejected", message or "declined on the device")
        else:
            report("failed", message or "the device rejected the update")
    elif ex == "closed":
        if st.result.finished == "failure":
            report("failed", message or "the device reported failure", progress)
        else:
            if state == "offered":
                report("accepted")
            report("succeeded", message, 100)
    else:
        if state == "offered":
            report("accepted")
        target = _REACHES[ex]
        if PROGRESS.index(target) > PROGRESS.index(state):
            report(target)
        else:
            report(state)  # the same state again: updates message and progress
    installed = None
    if state == "succeeded":
        _set_component(conn, device_id, row.artifact_id)
        installed = num
    return _outcome(conn, device_id, row.id, installed)


def _set_component(conn: sqlite3.Connection, device_id: str, artifact_id: str | None) -> None:
    """A DDI device reports no components: a deployment it closed with success sets the version it runs.

    The version it replaces stays as the known-good one a rollback goes back to (like a check-in report)."""
    if artifact_id is None:
        return
    art = storage.artifact_name_version(conn, artifact_id)
    if art is None:
        return
    old = devices_storage.component(conn, device_id, art["name"])
    previous = old["previous_version"] if old else None
    if old and old["version"] != art["version"] and old["health"] != "unhealthy" and old["state"] != "failed":
        previous = old["version"]
    devices_storage.upsert_component(conn, device_id, art["name"], art["version"], previous, "running", "", 0,
                                     time.time())


def apply_cancel_feedback(conn: sqlite3.Connection, device_id: str, controller_id: str, num: int,
                          fb: DdiActionFeedback) -> bool:
    """The device's answer to a cancelAction. Returns whether the cancellation is now answered."""
    row = device_action(conn, device_id, controller_id, num)
    if row.state != "cancelled":
        if row.state in TERMINAL:
            raise ActionGone(f"action {num} ended as {row.state}; there is no cancellation to answer")
        raise NotFound(f"action {num} of controller {controller_id} is not being cancelled")
    if row.cancel_acked:
        raise ActionGone(f"the cancellation of action {num} was already answered")
    st = fb.status
    message = _message(st)
    stopped = st.execution in ("closed", "canceled") and st.result.finished != "failure"
    if stopped:
        done = "the device confirmed the cancellation"
    elif st.execution in ("closed", "canceled"):
        done = "the device could not complete the cancellation"
    elif st.execution == "rejected":
        done = "the device rejected the cancellation"
    else:
        return False  # progress on the way to cancelling: keep showing cancelAction
    _ack_cancel(conn, row, device_id, f"{done}: {message}" if message else done, stopped=stopped)
    return True


# --- config data -------------------------------------------------------------------------

def apply_config_data(conn: sqlite3.Connection, device_id: str, controller_id: str,
                      cfg: DdiConfigData) -> None:
    """Controller attributes → the device's inventory ``extra`` (and its type, from ``device_type``)."""
    if len(cfg.data) > MAX_CONFIG_ENTRIES:
        raise InvalidArgument(f"config data has at most {MAX_CONFIG_ENTRIES} attributes, got {len(cfg.data)}")
    for k, v in cfg.data.items():
        if not k or len(k) > MAX_CONFIG_KEY:
            raise InvalidArgument(f"config data keys are 1-{MAX_CONFIG_KEY} characters, got {k[:140]!r}")
        if len(v) > MAX_CONFIG_VALUE:
            raise InvalidArgument(f"config data value of {k!r} is longer than {MAX_CONFIG_VALUE} characters")
    r = devices_storage.device_by_id(conn, device_id)
    if r is None:
        raise NotFound(f"no controller {controller_id}")
    inventory = json.loads(r["inventory"])
    extra = dict(inventory.get("extra") or {})
    if cfg.mode == "replace":
        extra = dict(cfg.data)
    elif cfg.mode == "remove":
        for k in cfg.data:
            extra.pop(k, None)
    else:
        extra.update(cfg.data)
    if len(extra) > MAX_EXTRA:
        raise InvalidArgument(f"a device keeps at most {MAX_EXTRA} config data attributes; this would make "
                              f"{len(extra)} (send mode \"replace\", or \"remove\" some first)")
    inventory["extra"] = extra
    encoded = json.dumps(inventory)
    check_inventory_size(encoded)
    device_type = r["device_type"]
    if cfg.mode != "remove" and cfg.data.get(DEVICE_TYPE_ATTRIBUTE):
        device_type = check_device_type(cfg.data[DEVICE_TYPE_ATTRIBUTE])
    devices_storage.set_inventory_and_type(conn, device_id, encoded, device_type)
    storage.config_answered(conn, device_id)
    effect(conn, ConfigAnswered(device_id))
    if device_type != r["device_type"]:
        audit.record(conn, Actor("device", device_id, controller_id), "device.update", device_id,
                     device_type=device_type, via="ddi configData")
        registry.changed(conn, device_id)


__all__ = ["ActionGone", "DdiActionFeedback", "DdiConfigData", "apply_cancel_feedback",
           "apply_config_data", "apply_feedback", "decode_body"]
