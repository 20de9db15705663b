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
    conn.execute("UPDATE rollouts SET state = ?, reason = COALESCE(?, reason), rev = rev + 1, updated_at = ?, "
                 "finished_at = CASE WHEN ? THEN ? ELSE finished_at END WHERE id = ?",
                 (state, reason, now, ended, now, r.id))
    if ended and r.stage >= 0:
        conn.execute("UPDATE rollout_stages SET ended_at = ?, outcome = ? WHERE rollout_id = ? AND idx = ? "
                     "AND ended_at IS NULL", (now, state, r.id, r.stage))
    audit.record(conn, actor, f"rollout.{verb}", r.id, state=state, previous=r.state,
                 **({"reason": reason} if reason else {}), **details)
    effect(conn, Publish("rollout.state", {"id": r.id, "state": state, "previous": r.state,
                                           "reason": reason if reason is not None else r.reason, "stage": r.stage}))
    r.state = state


def start_stage(conn: sqlite3.Connection, actor: Actor, r: RolloutRow, k: int, now: float, change: Change,
                *, previous_outcome: str = "completed") -> None:
    if r.stage >= 0:
        conn.execute("UPDATE rollout_stages SET ended_at = ?, outcome = ? WHERE rollout_id = ? AND idx = ? "
                     "AND ended_at IS NULL", (now, previous_outcome, r.id, r.stage))
    conn.execute("INSERT OR REPLACE INTO rollout_stages (rollout_id, idx, started_at) VALUES (?, ?, ?)",
                 (r.id, k, now))
    previous = r.state
    conn.execute("UPDATE rollouts SET stage = ?, state = 'running', rev = rev + 1, updated_at = ?, "
                 "started_at = COALESCE(started_at, ?) WHERE id = ?", (k, now, now, r.id))
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
        marks = ",".join("?" * len(chunk))
        taken = {row[0] for row in conn.execute(
            f"SELECT device_id FROM actions WHERE device_id IN ({marks}) AND ((open = 1 AND component = ?) "
            f"OR (rollout_id = ? AND kind = ?))", [*chunk, r.component, r.id, kind])}
        active = {row[0] for row in conn.execute(
            f"SELECT id FROM devices WHERE id IN ({marks}) AND status = 'active'", chunk)}
        keep += [d for d in chunk if d in active and d not in taken]
    return keep


def create_installs(conn: sqlite3.Connection, actor: Actor, r: RolloutRow, device_ids: list[str],
                    change: Change, limit: int | None = None) -> None:
    limit = limit or CHUNK
    free = _free(conn, r, device_ids, "install")
    types = {row[0]: row[1] for chunk in _chunks(free) for row in conn.execute(
        f"SELECT id, device_type FROM devices WHERE id IN ({','.join('?' * len(chunk))})", chunk)}
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
    conn.execute("INSERT INTO action_events (action_id, ts, state, message, progress) SELECT id, ?, 'cancelled', ?, "
                 "progress FROM actions WHERE rollout_id = ? AND kind = 'install' AND open = 1", (now, message, r.id))
    devices = [row[0] for row in conn.execute(
        "UPDATE actions SET state = 'cancelled', open = 0, message = ?, updated_at = ?, finished_at = ? "
        "WHERE rollout_id = ? AND kind = 'install' AND open = 1 RETURNING device_id", (message, now, now, r.id))]
    actions.note_open(conn, devices)
    return len(devices)


def record_faults(conn: sqlite3.Connection, r: RolloutRow, faults: list[tuple[str, str]], now: float) -> None:
    conn.executemany("INSERT OR IGNORE INTO rollout_faults (rollout_id, device_id, reason, at) VALUES (?, ?, ?, ?)",
                     [(r.id, d, why, now) for d, why in faults])


def roll_back(conn: sqlite3.Connection, actor: Actor, r: RolloutRow, installed: list[str], now: float, reason: str,
              change: Change) -> None:
    """Halt: cancel what has not installed yet, send every device that runs the new version back."""
    cancelled = cancel_open_installs(conn, r, now, f"rollout {r.id} rolled back")
    set_state(conn, actor, r, "rolled_back", now, change, "rollback", reason, cancelled=cancelled,
              rollbacks=len(installed))
    create_rollbacks(conn, actor, r, installed, change)
