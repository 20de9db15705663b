"""The writes a rollout makes, inside the caller's write transaction: state changes, stage starts, install
and rollback actions (through ``actions``, at most :data:`CHUNK` per call), cancellations, faults.

What they change outside the database (the check-in hub learns about new and cancelled actions, the event
stream about transitions) they record as effects, which the store runs once the transaction has committed; the
:class:`Change` they fill says what a write did, for the orchestrator's counts.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from ..accounts import audit
from ..accounts.audit import Actor
from ..artifacts import catalog as artifacts
from ..artifacts.catalog import DEFAULT_MODULE, module_of
from ..artifacts.modules import how_to_get, lacks_module, modules_in
from ..core.effects import Publish
from ..core.names import matches_any
from ..devices import actions
from ..store.database import effect
from . import storage
from .progress import SKIPPED_MARK, RolloutRow
from .states import ENDED

ORCHESTRATOR = Actor("system", None, "orchestrator")
CHUNK = 2000  # actions created per write transaction


@dataclass
class Change:
    """What a write did to a rollout."""

    rollout_id: str
    new_actions: list[str] = field(default_factory=list)  # devices with a new open action
    rev: int = 0


def set_state(conn: sqlite3.Connection, actor: Actor, r: RolloutRow, state: str, now: float, change: Change,
              verb: str, reason: str | None = None, **details: Any) -> None:
    ended = state in ENDED
    storage.set_rollout_state(conn, r.id, state, reason, now, ended)
    if ended and r.stage >= 0:
        storage.end_stage(conn, r.id, r.stage, state, now)
    audit.record(conn, actor, f"rollout.{verb}", r.id, state=state, previous=r.state,
                 **({"reason": reason} if reason else {}), **details)
    effect(conn, Publish("rollout.state", {"id": r.id, "state": state, "previous": r.state,
                                           "reason": reason if reason is not None else r.reason, "stage": r.stage}))
    r.state = state


def start_stage(conn: sqlite3.Connection, actor: Actor, r: RolloutRow, k: int, now: float, change: Change,
                *, installs: int, previous_outcome: str = "completed") -> None:
    """Start stage ``k``; its one audit entry counts the ``installs`` the stage start hands out (made by
    :func:`create_installs` with ``audited=False``, in this transaction and the next few)."""
    if r.stage >= 0:
        storage.end_stage(conn, r.id, r.stage, previous_outcome, now)
    storage.start_stage(conn, r.id, k, now)
    previous = r.state
    storage.set_running_stage(conn, r.id, k, now)
    audit.record(conn, actor, "rollout.stage", r.id, stage=k, percent=r.stages[k], installs=installs,
                 artifact=r.artifact)
    effect(conn, Publish("rollout.stage", {"id": r.id, "stage": k, "percent": r.stages[k]}))
    if previous != "running":
        audit.record(conn, actor, "rollout.start", r.id, previous=previous)
        effect(conn, Publish("rollout.state", {"id": r.id, "state": "running", "previous": previous, "reason": "",
                                               "stage": k}))
    r.stage, r.state = k, "running"


def _chunks(ids: list[str], size: int = 500) -> list[list[str]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def _free(conn: sqlite3.Connection, r: RolloutRow, ids: list[str], kind: str) -> list[str]:
    """Of ``ids``: active devices with no open action for the component and no ``kind`` action of this rollout."""
    keep = []
    for chunk in _chunks(ids):
        taken = storage.devices_with_action(conn, chunk, r.component, r.id, kind)
        active = storage.active_types_among(conn, chunk)
        keep += [d for d in chunk if d in active and d not in taken]
    return keep


def create_installs(conn: sqlite3.Connection, actor: Actor, r: RolloutRow, device_ids: list[str],
                    change: Change, now: float, limit: int | None = None, *, audited: bool = True) -> None:
    """Install actions for those of ``device_ids`` that may get one, at most ``limit`` (default :data:`CHUNK`), in
    bulk. ``audited``: one audit entry for them all; a stage start leaves it to the stage's own entry.

    A device whose inventory does not list the artifact's update module (a deploy would be refused for it) gets
    no action: it is recorded as skipped, with the reason, and shown so in the rollout (:data:`SKIPPED_MARK`).
    This is checked for every device as it gets its action (each stage's start, and devices that joined the
    target or a started stage later), against its inventory as it is then."""
    limit = limit or CHUNK
    art = artifacts.get(conn, r.artifact_id)
    module = module_of(art)
    fits: dict[str, bool] = {}  # device type → whether the artifact is built for it (a handful of types)
    free: list[str] = []
    skipped: list[tuple[str, str]] = []
    for chunk in _chunks(device_ids):
        taken = storage.devices_with_action(conn, chunk, r.component, r.id, "install")
        types = storage.active_types_among(conn, chunk)  # a device may have changed type since it was targeted
        inventories = storage.inventories_among(conn, chunk) if module not in ("", DEFAULT_MODULE) else {}
        for d in chunk:
            t = types.get(d)
            if t is None or d in taken:
                continue
            fit = fits.get(t)
            if fit is None:
                fit = fits[t] = matches_any(art.device_types, t)
            if not fit:
                continue
            if inventories and lacks_module(module, inventories.get(d)):
                skipped.append((d, f"{SKIPPED_MARK}its inventory does not list the {module!r} update module "
                                   f"(it has {', '.join(sorted(modules_in(inventories.get(d))))}); "
                                   f"{how_to_get(module, 'it')}, then deploy to it (this rollout leaves it out)"))
                continue
            free.append(d)
        if len(free) >= limit:
            break
    if skipped:
        storage.insert_faults(conn, r.id, skipped, now)
    free = free[:limit]  # the rest: at the next pass, as devices of a started stage without an action
    ids = actions.insert_installs(conn, actor, free, art, consent=r.consent, rollout_id=r.id)
    if audited:
        audit.record_batch(conn, actor, "action.install", ids, free, component=art.name,
                           artifact=f"{art.name}@{art.version}", rollout=r.id)
    change.new_actions += free


def create_rollbacks(conn: sqlite3.Connection, actor: Actor, r: RolloutRow, device_ids: list[str],
                     change: Change, limit: int | None = None) -> None:
    limit = limit or CHUNK
    free = _free(conn, r, device_ids, "rollback")[:limit]  # the rest: the rolled-back rollout's next pass
    for chunk in _chunks(free):
        actions.create_rollback(conn, actor, chunk, r.component, rollout_id=r.id)
    change.new_actions += free


def cancel_open_installs(conn: sqlite3.Connection, r: RolloutRow, now: float, message: str) -> int:
    """End the rollout's install actions that have not ended (one statement each, however many)."""
    devices = storage.cancel_open_installs(conn, r.id, now, message)
    actions.note_open(conn, devices)
    return len(devices)


def record_faults(conn: sqlite3.Connection, r: RolloutRow, faults: list[tuple[str, str]], now: float) -> None:
    storage.insert_faults(conn, r.id, faults, now)


def roll_back(conn: sqlite3.Connection, actor: Actor, r: RolloutRow, installed: list[str], now: float, reason: str,
              change: Change) -> None:
    """Halt: cancel what has not installed yet, send every device that runs the new version back."""
    cancelled = cancel_open_installs(conn, r, now, f"rollout {r.id} rolled back")
    set_state(conn, actor, r, "rolled_back", now, change, "rollback", reason, cancelled=cancelled,
              rollbacks=len(installed))
    create_rollbacks(conn, actor, r, installed, change)
