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
from ..core.effects import Publish
from ..core.names import matches_any
from ..devices import actions
from ..store.database import effect
from . import storage
from .progress import RolloutRow
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
                *, previous_outcome: str = "completed") -> None:
    if r.stage >= 0:
        storage.end_stage(conn, r.id, r.stage, previous_outcome, now)
    storage.start_stage(conn, r.id, k, now)
    previous = r.state
    storage.set_running_stage(conn, r.id, k, now)
    audit.record(conn, actor, "rollout.stage", r.id, stage=k, percent=r.stages[k])
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
        active = storage.active_among(conn, chunk)
        keep += [d for d in chunk if d in active and d not in taken]
    return keep


def create_installs(conn: sqlite3.Connection, actor: Actor, r: RolloutRow, device_ids: list[str],
                    change: Change, limit: int | None = None) -> None:
    limit = limit or CHUNK
    free = _free(conn, r, device_ids, "install")
    types = {d: t for chunk in _chunks(free) for d, t in storage.device_types_of(conn, chunk).items()}
    allowed = artifacts.get(conn, r.artifact_id).device_types
    free = [d for d in free if d in types and matches_any(allowed, types[d])]  # it may have changed type since
    free = free[:limit]  # the rest: at the next pass, as devices of a started stage without an action
    for chunk in _chunks(free):
        actions.create_install(conn, actor, chunk, r.artifact_id, consent=r.consent, rollout_id=r.id)
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
